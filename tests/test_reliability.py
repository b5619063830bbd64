"""Faults against a real server: timeouts stop work, departed clients cancel it, killed workers
recover, jobs are never silently lost, and SIGTERM drains in-flight requests."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import descendants, running_server

pytestmark = pytest.mark.slow

# A request that keeps the tiny image generator busy for several seconds on 2 CPU cores.
SLOW_IMAGE = {"prompt": "a slow cat", "width": 256, "height": 256, "num_inference_steps": 50, "seed": 1}
QUICK_IMAGE = {"prompt": "a quick cat", "seed": 2}


def generated(url: str, kind: str = "image") -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^genserve_generated_total{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def started_batches(url: str, kind: str = "image") -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^genserve_queue_wait_seconds_count{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def worker_pid(arbiter: int, service: str) -> int:
    """The pid of the worker process serving `service` under the BentoML arbiter."""
    found = [
        pid
        for pid in descendants(arbiter)
        if f"--service-name\0{service}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(found) == 1, f"expected one {service} worker, found {found}"
    return found[0]


def is_ready(url: str) -> bool:
    """/readyz is 200; a restarting dependency can make the probe itself time out."""
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def post_in_background(url: str, path: str, results: list, **kwargs) -> threading.Thread:
    def run() -> None:
        try:
            results.append(httpx.post(f"{url}{path}", timeout=120, **kwargs))
        except httpx.HTTPError as error:
            results.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def short_timeout(tiny_models, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("timeout"), GENSERVE_REQUEST_TIMEOUT_S="5") as (url, _):
        yield url


@pytest.fixture
def fresh(tiny_models, tmp_path):
    """A server of its own: these tests kill parts of it."""
    with running_server(tmp_path) as served:
        yield served


def test_timed_out_request_is_504_and_its_work_stops(short_timeout) -> None:
    url = short_timeout
    before = generated(url)
    started = time.monotonic()
    response = httpx.post(f"{url}/txt2img", json=SLOW_IMAGE, timeout=120)
    assert response.status_code == 504
    assert "timed out" in response.json()["error"]
    assert time.monotonic() - started < 15  # answered at its deadline, not when the work would end
    assert httpx.post(f"{url}/txt2img", json=QUICK_IMAGE, timeout=60).status_code == 200
    assert generated(url) - before == 1  # only the quick one: the slow one was abandoned mid-way


def test_departed_client_cancels_its_work_and_others_are_served(fresh) -> None:
    url, _ = fresh
    before = generated(url)
    batches = started_batches(url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/txt2img", json=SLOW_IMAGE, timeout=httpx.Timeout(60, read=2))
    assert started_batches(url) > batches  # the slow request did start before its client left
    assert httpx.post(f"{url}/txt2img", json=QUICK_IMAGE, timeout=60).status_code == 200
    assert generated(url) - before == 1  # the departed client's image was never finished


def test_killed_generator_fails_its_requests_then_recovers(fresh) -> None:
    url, arbiter = fresh
    batches = started_batches(url)
    results: list = []
    thread = post_in_background(url, "/txt2img", results, json=SLOW_IMAGE)
    wait_until(lambda: started_batches(url) > batches, 30, "the slow batch to start")
    os.kill(worker_pid(arbiter.pid, "ImageGenerator"), signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the request hung after its worker was killed"
    [response] = results
    assert response.status_code == 503
    assert "stopped" in response.json()["error"]
    assert response.headers["retry-after"]
    wait_until(lambda: is_ready(url), 180, "/readyz to recover")
    assert httpx.post(f"{url}/txt2img", json=QUICK_IMAGE, timeout=60).status_code == 200


def test_job_whose_worker_died_is_reported_failed_with_a_reason(fresh) -> None:
    url, arbiter = fresh
    job = {"prompt": "a long video", "num_frames": 16, "num_inference_steps": 25, "seed": 3}
    batches = started_batches(url, "video")
    task_id = httpx.post(f"{url}/txt2vid/submit", json=job, timeout=30).json()["task_id"]
    wait_until(lambda: started_batches(url, "video") > batches, 60, "the video stage to start")
    os.kill(worker_pid(arbiter.pid, "VideoGenerator"), signal.SIGKILL)

    def status() -> str:
        return httpx.get(f"{url}/txt2vid/status", params={"task_id": task_id}).json()["status"]

    wait_until(lambda: status() != "in_progress", 60, "the job to end")
    assert status() == "failed"
    result = httpx.get(f"{url}/txt2vid/get", params={"task_id": task_id})
    assert "stopped" in result.json()["error"]


def test_job_of_a_killed_entry_worker_is_reported_failed(fresh) -> None:
    url, arbiter = fresh
    job = {"prompt": "a long video", "num_frames": 16, "num_inference_steps": 25, "seed": 5}
    batches = started_batches(url, "video")
    task_id = httpx.post(f"{url}/txt2vid/submit", json=job, timeout=30).json()["task_id"]
    wait_until(lambda: started_batches(url, "video") > batches, 60, "the video stage to start")
    os.kill(worker_pid(arbiter.pid, "GenServe"), signal.SIGKILL)
    wait_until(lambda: is_ready(url), 180, "the entry service to come back")
    assert httpx.get(f"{url}/txt2vid/status", params={"task_id": task_id}).json()["status"] == "failed"
    result = httpx.get(f"{url}/txt2vid/get", params={"task_id": task_id})
    assert result.status_code == 503
    assert "restarted" in result.json()["error"]


def test_sigterm_drains_in_flight_requests(tiny_models, tmp_path) -> None:
    with running_server(tmp_path) as (url, arbiter):
        batches = started_batches(url)
        results: list = []
        work = {**SLOW_IMAGE, "num_inference_steps": 20}
        thread = post_in_background(url, "/txt2img", results, json=work)
        wait_until(lambda: started_batches(url) > batches, 30, "the request to start")
        arbiter.send_signal(signal.SIGTERM)
        thread.join(timeout=90)
        [response] = results
        assert response.status_code == 200, response
        assert arbiter.wait(timeout=60) is not None  # and the server then exits by itself
