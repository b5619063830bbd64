"""Overload: many more clients than the queue holds. Every request is served or refused before
any work is sent for it, none hangs, every round serves some, and memory does not grow from round
to round."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest
from helpers import genserve_metric, running_server

from genserve.serving.processes import descendants

pytestmark = pytest.mark.slow

CLIENTS = 64
QUEUE = 4  # requests the image generator holds, running and waiting; beyond it: 429 at once
ROUNDS = 4  # after one warm-up round
#: A client waits at most this long: far above what a queue of 4 cheap requests takes to serve,
#: far below the test's own bound, so a hung request fails the test as a timeout, not a stall.
CLIENT_TIMEOUT_S = 60
#: Allowed growth of the server's total RSS (arbiter and workers) from the end of the warm-up
#: round to the end of the last. Allocator noise measured 2-15 MiB; a leak of 0.4 MiB per request
#: (one request's latents and text embeddings are MiBs) would pass it over 4 x 64 requests.
MAX_GROWTH_BYTES = 100 * 2**20


@pytest.fixture(scope="module")
def small_queue(tiny_models, tmp_path_factory):
    """A server of its own (running_server gives it a BentoML home of its own): a small queue."""
    env = {"GENSERVE_IMAGE_MAX_QUEUE": str(QUEUE), "GENSERVE_IMAGE_MAX_BATCH_SIZE": "2"}
    with running_server(tmp_path_factory.mktemp("overload"), **env) as served:
        yield served


def server_rss(arbiter: int) -> int:
    """Resident memory of the BentoML arbiter and all its workers, in bytes."""
    total = 0
    for pid in (arbiter, *descendants(arbiter)):
        match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
    return total


async def burst(url: str) -> list[httpx.Response | BaseException]:
    """`CLIENTS` concurrent requests for cheap images, each on its own connection."""
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        requests = (
            client.post(f"{url}/txt2img", json={"prompt": f"robot {i}", "num_inference_steps": 1, "seed": i})
            for i in range(CLIENTS)
        )
        return await asyncio.gather(*requests, return_exceptions=True)


def overload_round(url: str) -> Counter[int]:
    """One burst: every request answered, with an image or a refusal that says when to retry.

    The queue is empty when a round starts (the last round's answers are all in), so some of its
    requests must be served: a round that serves none means work the generator does for nobody.
    A refusal is decided before any work is sent: the generator starts exactly the served ones.
    """
    started = genserve_metric(url, "genserve_queue_wait_seconds_count")
    responses = asyncio.run(burst(url))
    unanswered = [repr(r) for r in responses if not isinstance(r, httpx.Response)]
    assert not unanswered, f"{len(unanswered)} requests got no answer: {unanswered[:3]}"
    statuses = Counter(response.status_code for response in responses)
    for response in responses:
        if response.status_code == 200:
            assert response.headers["content-type"] == "image/png"
        else:
            assert response.status_code in (429, 503), response.text
            assert int(response.headers["retry-after"]) > 0, response.headers
    assert statuses[200] > 0, f"no request was served: {dict(statuses)}"
    assert genserve_metric(url, "genserve_queue_wait_seconds_count") - started == statuses[200]
    return statuses


@pytest.mark.timeout(600)
def test_overload_is_refused_at_once_never_hangs_and_does_not_leak(small_queue) -> None:
    url, process = small_queue
    overload_round(url)  # warm-up: first-call allocations are not growth
    baseline = server_rss(process.pid)
    statuses = sum((overload_round(url) for _ in range(ROUNDS)), Counter())
    growth = server_rss(process.pid) - baseline
    assert statuses[429] > 0, dict(statuses)
    assert growth < MAX_GROWTH_BYTES, f"RSS grew {growth / 2**20:.0f} MiB over {ROUNDS} rounds"
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
