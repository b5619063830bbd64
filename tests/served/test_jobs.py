"""The jobs API, served: every kind of job, progress and events, cancel, ownership, webhooks, bad
input; and two servers sharing a real `redis-server`, one of them killed while it runs a job."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import ENV_KEYS, redis_server, running_server, webhook_receiver
from standardwebhooks.webhooks import Webhook

from genserve.core.media import encode_image
from genserve.serving.job_store import RedisJobStore, StoreLimits

TIMEOUT = 120
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
#: A job long enough on the tiny preset to be watched, cancelled and killed mid-way.
LONG = {"prompt": "a long job", "width": 256, "height": 256, "num_inference_steps": 50}


def picture(width: int = 96, height: int = 64) -> bytes:
    pixels = np.full((height, width, 3), (30, 40, 220), np.uint8)
    pixels[:, : width // 2] = (220, 30, 30)
    return encode_image(pixels, "png")


def mask(width: int = 96, height: int = 64) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[height // 4 : 3 * height // 4] = 255
    return encode_image(pixels, "png")


#: Per kind: the endpoint that makes the same thing at once, and the request as httpx sends it.
KINDS = {
    "txt2img": ("/txt2img", {"json": {"prompt": "a red cat", "seed": 5, "width": 96}}),
    "img2img": ("/img2img", {"files": {"image": picture()}, "data": {"prompt": "a cat", "seed": "5"}}),
    "inpaint": (
        "/inpaint",
        {"files": {"image": picture(), "mask": mask()}, "data": {"prompt": "a cat", "seed": "5"}},
    ),
    "img2vid": (
        "/img2vid",
        {"files": {"image": picture()}, "data": {"num_frames": "3", "num_inference_steps": "2", "seed": "5"}},
    ),
}


def submit(url: str, kind: str, headers: dict | None = None, **request) -> dict:
    response = httpx.post(f"{url}/jobs/{kind}", headers=headers, timeout=TIMEOUT, **request)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    return job


def job(url: str, job_id: str, headers: dict | None = None) -> dict:
    response = httpx.get(f"{url}/jobs/{job_id}", headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def wait(url: str, job_id: str, until=lambda j: j["state"] in ("completed", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while not until(current := job(url, job_id)):
        assert time.monotonic() < deadline, current
        time.sleep(0.05)
    return current


def result(url: str, job_id: str) -> httpx.Response:
    response = httpx.get(f"{url}/jobs/{job_id}/result", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(
    "kind", [pytest.param(kind, marks=[pytest.mark.slow] * (kind == "img2vid")) for kind in KINDS]
)
def test_a_job_makes_what_its_endpoint_makes(server, kind) -> None:
    route, request = KINDS[kind]
    submitted = submit(server, kind, **request)
    assert submitted["state"] in ("queued", "running") and submitted["seed"] == 5
    done = wait(server, submitted["id"])
    assert (done["state"], done["progress"]["fraction"], done["attempts"]) == ("completed", 1.0, 1)
    made = result(server, submitted["id"])
    direct = httpx.post(f"{server}{route}", timeout=TIMEOUT, **request)
    assert made.headers["content-type"] == direct.headers["content-type"]
    assert made.headers["x-seed"] == "5"
    assert made.content == direct.content


@pytest.mark.slow
def test_a_text_to_video_job_reports_both_stages(server) -> None:
    submitted = submit(server, "txt2vid", json={"prompt": "a cat", "num_frames": 3, "output_format": "gif"})
    done = wait(server, submitted["id"])
    stages = done["progress"]["stages"]
    assert done["state"] == "completed" and set(stages) == {"image", "video"}
    assert all(stage["step"] == stage["total"] > 0 for stage in stages.values())
    assert result(server, submitted["id"]).headers["content-type"] == "image/gif"


def test_progress_streams_as_events_and_rises_to_one(server) -> None:
    submitted = submit(server, "txt2img", json=LONG)
    events: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{server}/jobs/{submitted['id']}/events", timeout=TIMEOUT) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    fractions = [document["progress"]["fraction"] for _, document in events]
    steps = [document["progress"]["stages"]["image"]["step"] for _, document in events]
    assert fractions == sorted(fractions) and steps == sorted(steps)  # never backwards
    assert events[-1][0] == "state" and events[-1][1]["state"] == "completed" and fractions[-1] == 1.0
    assert any(0 < fraction < 1 for fraction in fractions)  # seen on the way, not only at the end


@pytest.fixture(scope="module")
def one_runner(tiny_models, tmp_path_factory) -> Iterator[str]:
    """A server that runs one job at a time (so others queue), with webhooks to loopback."""
    env = {
        "GENSERVE_JOB_RUNNERS": "1",
        "GENSERVE_WEBHOOK_SECRET": SECRET,
        "GENSERVE_WEBHOOK_HOSTS": "127.0.0.1",
        "GENSERVE_WEBHOOK_RETRY_S": "0.05",
    }
    with running_server(tmp_path_factory.mktemp("jobs"), **env) as (url, _):
        yield url


def test_cancel_stops_a_running_job_within_two_steps_and_a_queued_one_never_runs(one_runner) -> None:
    running = submit(one_runner, "txt2img", json=LONG)
    queued = submit(one_runner, "txt2img", json={"prompt": "never made"})
    wait(one_runner, running["id"], lambda j: (j["progress"]["stages"]["image"]["step"] or 0) >= 2)
    assert job(one_runner, queued["id"])["position"] == 0
    for target in (queued, running):
        cancelled = httpx.delete(f"{one_runner}/jobs/{target['id']}", timeout=TIMEOUT)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    step_at_cancel = job(one_runner, running["id"])["progress"]["stages"]["image"]["step"]
    time.sleep(1)  # a job still running would move on many steps meanwhile
    stopped = job(one_runner, running["id"])
    assert stopped["state"] == "cancelled"
    assert stopped["progress"]["stages"]["image"]["step"] <= step_at_cancel + 2
    never = job(one_runner, queued["id"])
    assert (never["state"], never["started_at"], never["attempts"]) == ("cancelled", None, 0)
    assert httpx.get(f"{one_runner}/jobs/{queued['id']}/result", timeout=TIMEOUT).status_code == 409


def test_a_webhook_arrives_signed_when_the_job_ends(one_runner) -> None:
    with webhook_receiver() as receiver:
        submitted = submit(one_runner, "txt2img", json={"prompt": "a cat", "callback_url": receiver.url()})
        wait(one_runner, submitted["id"])
        deadline = time.monotonic() + TIMEOUT
        while not receiver.received:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    [delivery] = receiver.received
    event = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert event["type"] == "job.completed" and event["data"]["id"] == submitted["id"]
    assert delivery.headers["webhook-id"] == f"msg_{submitted['id']}"


@pytest.mark.parametrize(
    "callback", ["http://example.com/hook", "ftp://127.0.0.1/hook", "http://user:secret@127.0.0.1/hook"]
)
def test_a_callback_outside_the_allow_list_is_refused(one_runner, callback) -> None:
    response = httpx.post(
        f"{one_runner}/jobs/txt2img", json={"prompt": "a cat", "callback_url": callback}, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["callback_url"]


def test_jobs_belong_to_the_key_that_made_them(keyed) -> None:
    url, _, _ = keyed
    alice, bob = ({"Authorization": f"Bearer {key}"} for key in ENV_KEYS)
    mine = submit(url, "txt2img", headers=alice, json={"prompt": "a private cat"})
    assert httpx.get(f"{url}/jobs/{mine['id']}", headers=bob, timeout=TIMEOUT).status_code == 404
    assert httpx.delete(f"{url}/jobs/{mine['id']}", headers=bob, timeout=TIMEOUT).status_code == 404
    assert httpx.get(f"{url}/jobs/{mine['id']}/result", headers=bob, timeout=TIMEOUT).status_code == 404
    listed = {
        name: [j["id"] for j in httpx.get(f"{url}/jobs", headers=key, timeout=TIMEOUT).json()["jobs"]]
        for name, key in (("alice", alice), ("bob", bob))
    }
    assert mine["id"] in listed["alice"] and mine["id"] not in listed["bob"]
    assert httpx.get(f"{url}/jobs", timeout=TIMEOUT).status_code == 401


def test_listing_is_newest_first_by_state_and_in_pages(server) -> None:
    ids = [submit(server, "txt2img", json={"prompt": f"cat {i}"})["id"] for i in range(3)]
    for job_id in ids:
        wait(server, job_id)
    page = httpx.get(f"{server}/jobs", params={"limit": 2, "state": "completed"}, timeout=TIMEOUT).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    following = httpx.get(
        f"{server}/jobs",
        params={"limit": 2, "state": "completed", "before": page["next_before"]},
        timeout=TIMEOUT,
    ).json()
    assert following["jobs"][0]["id"] == ids[0]


UNKNOWN = "0123456789abcdef0123456789abcdef"
JSON = {"content-type": "application/json"}
ONE_FRAME = {"files": {"image": picture()}, "data": {"num_frames": "1"}}


@pytest.mark.parametrize(
    ("method", "path", "request_", "status", "field"),
    [
        ("POST", "/jobs/sketch", {"json": {"prompt": "a cat"}}, 404, "kind"),
        ("POST", "/jobs/txt2img", {"json": {"prompt": "a cat", "width": 100}}, 400, "width"),
        ("POST", "/jobs/txt2img", {"json": {"prompt": "a cat", "colour": "red"}}, 400, "colour"),
        ("POST", "/jobs/txt2img", {"json": ["a cat"]}, 400, "body"),
        (
            "POST",
            "/jobs/txt2img",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "body",
        ),
        ("POST", "/jobs/img2img", {"data": {"prompt": "a cat"}}, 400, "image"),
        ("POST", "/jobs/img2img", {"files": {"image": b"text"}, "data": {"prompt": "a cat"}}, 400, "image"),
        ("POST", "/jobs/inpaint", {"files": {"image": picture()}, "data": {"prompt": "a cat"}}, 400, "mask"),
        (
            "POST",
            "/jobs/img2vid",
            {"files": {"image": picture()}, "data": {"num_frames": "1"}},
            400,
            "num_frames",
        ),
        ("GET", "/jobs/not-a-job", {}, 400, "job_id"),
        ("GET", f"/jobs/{UNKNOWN}", {}, 404, "job_id"),
        ("GET", f"/jobs/{UNKNOWN}/result", {}, 404, "job_id"),
        ("GET", f"/jobs/{UNKNOWN}/events", {}, 404, "job_id"),
        ("DELETE", f"/jobs/{UNKNOWN}", {}, 404, "job_id"),
        ("GET", "/jobs", {"params": {"state": "done"}}, 400, "state"),
        ("GET", "/jobs", {"params": {"limit": "0"}}, 400, "limit"),
        ("GET", "/jobs", {"params": {"limit": "many"}}, 400, "limit"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem(server, method, path, request_, status, field) -> None:
    response = httpx.request(method, f"{server}{path}", timeout=TIMEOUT, **request_)
    assert response.status_code == status, response.text
    assert field in [".".join(map(str, item["loc"])) for item in response.json()["detail"]], response.text


def test_a_finished_job_cannot_be_cancelled(server) -> None:
    done = wait(server, submit(server, "txt2img", json={"prompt": "a cat"})["id"])
    response = httpx.delete(f"{server}/jobs/{done['id']}", timeout=TIMEOUT)
    assert response.status_code == 409 and "completed" in response.json()["error"]


# Two servers ("replicas") sharing one Redis server.


@pytest.fixture(scope="module")
def replicas(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    directory = tmp_path_factory.mktemp("replicas")
    with redis_server(directory) as redis_url:
        env = {"GENSERVE_JOB_STORE_URL": redis_url, "GENSERVE_JOB_LEASE_S": "2"}
        with running_server(directory, **env) as (first, _), running_server(directory, **env) as (second, _):
            yield first, second, redis_url


@pytest.mark.slow
def test_a_job_submitted_on_one_replica_is_polled_and_fetched_on_the_other(replicas) -> None:
    first, second, _ = replicas
    submitted = submit(first, "txt2img", json={"prompt": "a shared cat", "seed": 9})
    assert wait(second, submitted["id"])["state"] == "completed"
    direct = httpx.post(f"{first}/txt2img", json={"prompt": "a shared cat", "seed": 9}, timeout=TIMEOUT)
    assert result(second, submitted["id"]).content == direct.content


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_is_completed_by_another_with_the_same_bytes(replicas) -> None:
    first, second, redis_url = replicas
    store = RedisJobStore(redis_url, StoreLimits(1000, 3600, 2**26))
    submitted = submit(first, "txt2img", json={**LONG, "seed": 21})
    running = wait(first, submitted["id"], lambda j: (j["progress"]["stages"]["image"]["step"] or 0) >= 1)
    holder = store.get(submitted["id"]).lease_owner  # "<host>-<pid>-<random>": the entry worker running it
    os.kill(int(holder.split("-")[-2]), signal.SIGKILL)
    done = wait(second, submitted["id"])
    assert (done["state"], done["attempts"]) == ("completed", 2), (running, done)
    assert store.get(submitted["id"]).lease_owner != holder
    direct = httpx.post(f"{second}/txt2img", json={**LONG, "seed": 21}, timeout=TIMEOUT)
    assert result(second, submitted["id"]).content == direct.content
