"""Property-based fuzzing of the served API from its own OpenAPI document: nothing answers 5xx.

Schemathesis reads `/docs.json` and generates requests for each operation, valid ones (every
type, bound and format the schema allows) and invalid ones (wrong types, out of range,
missing or unknown fields, broken multipart); the only check is that none is answered with a
server error. Examples are bounded and derandomized: a run is short and CI sees the same requests.

Hypothesis drives schemathesis' strategies directly: schemathesis' own pytest integration
(`from_fixture`) fails under pytest 9.2, whose test items no longer have the `_nodeid` it reads.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import schemathesis
from helpers import job_status
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from genserve.core.media import encode_image

#: Fields whose valid values cost generator time: each is set to its schema's minimum, since
#: fuzzing is about what the API accepts, not about making 256x256 images in 50 steps.
COSTLY = {"width", "height", "num_inference_steps", "image_steps", "num_frames"}
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
#: What a valid case uploads instead of the fuzzer's random bytes, so that it is animated.
UPLOAD = encode_image(np.full((64, 64, 3), 128, np.uint8), "png")
TIMEOUT_S = 120

#: Every operation that takes input, with how many valid and invalid requests it gets. Valid ones
#: run the generators (a second or more each); invalid ones are answered at once, and multipart
#: parsing gets the most, as it is where malformed bodies bite. Not fuzzed: `/metrics`,
#: `/livez`, `/readyz`, `/healthz` take no input; `/txt2vid/retry` and `/txt2vid/cancel` are
#: BentoML's task routes beside `/txt2vid/status` (cancel is "not supported" outside BentoCloud).
#: Valid requests to the synchronous `POST /txt2vid` run the same job as `/txt2vid/submit`,
#: fuzzed (and checked to complete) in the background, so only its validation is fuzzed.
OPERATIONS = [
    ("POST", "/txt2img", {POSITIVE: 5, NEGATIVE: 100}),
    ("POST", "/img2vid", {POSITIVE: 5, NEGATIVE: 300}),
    ("POST", "/txt2vid/submit", {POSITIVE: 5, NEGATIVE: 100}),
    ("POST", "/txt2vid", {NEGATIVE: 100}),
    ("GET", "/txt2vid/status", {POSITIVE: 5, NEGATIVE: 50}),
    ("GET", "/txt2vid/get", {POSITIVE: 5, NEGATIVE: 50}),
]
CASES = [(method, path, mode, n) for method, path, counts in OPERATIONS for mode, n in counts.items()]


@pytest.fixture(scope="module")
def api(server):
    return schemathesis.openapi.from_url(f"{server}/docs.json")


@pytest.fixture(scope="module")
def accepted_jobs() -> list[str]:
    """Ids of the text-to-video jobs the fuzzer submitted and the API accepted."""
    return []


def body_fields(case) -> dict[str, dict]:
    """The JSON schema of each field of the case's request body, as the OpenAPI document gives it."""
    request_body = case.operation.definition.raw.get("requestBody", {})
    return request_body.get("content", {}).get(case.media_type, {}).get("schema", {}).get("properties", {})


def cheapen(case, mode: GenerationMode) -> None:
    """Set each costly field that is valid or missing (its default costs too) to its minimum; an
    invalid value stays, to be refused. A valid case uploads a real image."""
    if not isinstance(case.body, dict):
        return
    fields = body_fields(case)
    for field in COSTLY & fields.keys():
        low, high = fields[field]["minimum"], fields[field]["maximum"]
        value = case.body.get(field, low)
        if type(value) is int and low <= value <= high and value % fields[field].get("multipleOf", 1) == 0:
            case.body[field] = low
    if mode is POSITIVE and "image" in case.body:
        case.body["image"] = UPLOAD


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode", "examples"), CASES)
def test_no_request_is_answered_with_a_server_error(api, accepted_jobs, method, path, mode, examples) -> None:
    @given(case=api[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case) -> None:
        cheapen(case, mode)
        response = case.call_and_validate(checks=[not_a_server_error], timeout=TIMEOUT_S)
        if path == "/txt2vid/submit" and response.status_code == 200:
            accepted_jobs.append(response.json()["task_id"])

    fuzz()


@pytest.mark.slow
def test_every_accepted_job_completes(server, accepted_jobs) -> None:
    """An accepted job is a promise, like a 200: it must not fail later (nor outlive this module)."""
    assert accepted_jobs, "no valid /txt2vid/submit was accepted"
    deadline = time.monotonic() + TIMEOUT_S
    for task_id in accepted_jobs:
        while (status := job_status(server, task_id)) == "in_progress":
            assert time.monotonic() < deadline, f"job {task_id} still running after {TIMEOUT_S} s"
            time.sleep(0.5)
        result = httpx.get(f"{server}/txt2vid/get", params={"task_id": task_id}, timeout=TIMEOUT_S)
        assert status == "completed", result.text
