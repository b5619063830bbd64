"""Faults against a real server: timeouts stop work, departed clients cancel it, killed workers
recover, jobs are never silently lost, and SIGTERM drains in-flight requests."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import genserve_metric, job_status, running_server, wait_ready

from genserve.core.media import encode_image
from genserve.serving.processes import descendants

pytestmark = pytest.mark.slow

# The tiny preset's largest, longest image: about 4 s on 2 idle cores. SLOW_BATCH of them at once
# (one batch) keep the image generator busy for well over the 5 s timeout used below.
SLOW_IMAGE = {"prompt": "a slow cat", "width": 256, "height": 256, "num_inference_steps": 50, "seed": 1}
SLOW_BATCH = 4
QUICK_IMAGE = {"prompt": "a quick cat", "seed": 2}
# The tiny preset's longest video and its shortest (a fraction of a second). The longest is only
# ~1.6 s on 2 idle cores, its last denoising step at ~1.4 s, after which it can no longer be
# stopped. A client that leaves after DEPART_S is noticed at the entry service's next check
# (genserve.serving.dispatch.DISCONNECT_POLL_S, 0.5 s), so the cancel lands ~0.5-0.8 s in: well before.
# (A 1 s departure let the cancel land after the last step on a quiet machine.)
SLOW_VIDEO = {"num_frames": "16", "num_inference_steps": "25", "seed": "1"}
QUICK_VIDEO = {"num_frames": "2", "num_inference_steps": "1", "seed": "2"}
DEPART_S = 0.3
STILL = {"image": ("still.png", encode_image(np.full((64, 64, 3), 128, np.uint8), "png"), "image/png")}


def post_video(url: str, fields: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/img2vid", files=STILL, data=fields, **{"timeout": 120, **kwargs})


def generated(url: str, kind: str = "image") -> float:
    return genserve_metric(url, "genserve_generated_total", kind)


def started_requests(url: str, kind: str = "image") -> float:
    return genserve_metric(url, "genserve_queue_wait_seconds_count", kind)


def finished_batches(url: str, kind: str) -> float:
    return genserve_metric(url, "genserve_generation_seconds_count", kind)


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


def post_in_background(url: str, path: str, results: list, **kwargs) -> threading.Thread:
    def run() -> None:
        try:
            results.append(httpx.post(f"{url}{path}", **{"timeout": 120, **kwargs}))
        except httpx.HTTPError as error:
            results.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def slow_batch_in_background(url: str, **kwargs) -> tuple[list[threading.Thread], list]:
    """SLOW_BATCH slow images requested at once (distinct seeds); the threads and their results."""
    results: list = []
    threads = [
        post_in_background(url, "/txt2img", results, json={**SLOW_IMAGE, "seed": seed}, **kwargs)
        for seed in range(SLOW_BATCH)
    ]
    return threads, results


def join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a request hung"


@pytest.fixture(scope="module")
def short_timeout(tiny_models, tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("timeout"), GENSERVE_REQUEST_TIMEOUT_S="1") as (url, _):
        yield url


@pytest.fixture
def fresh(tiny_models, tmp_path):
    """A server of its own: these tests kill parts of it. A job's lease lapses in 3 s."""
    with running_server(tmp_path, GENSERVE_JOB_LEASE_S="3") as served:
        yield served


def test_timed_out_request_is_504_and_its_work_stops(short_timeout) -> None:
    url = short_timeout
    before, batches = generated(url, "video"), finished_batches(url, "video")
    started = time.monotonic()
    response = post_video(url, SLOW_VIDEO)
    assert response.status_code == 504
    assert "timed out" in response.json()["error"]
    assert time.monotonic() - started < 15  # answered at its deadline, not when the work would end
    wait_until(lambda: finished_batches(url, "video") > batches, 60, "the generator to end the batch")
    assert generated(url, "video") == before  # it ended without a video: abandoned, not finished


def test_departed_client_cancels_its_work_and_others_are_served(fresh) -> None:
    url, arbiter = fresh
    before = generated(url, "video")
    batches = started_requests(url, "video")
    with pytest.raises(httpx.ReadTimeout):
        post_video(url, SLOW_VIDEO, timeout=httpx.Timeout(60, read=DEPART_S))
    assert started_requests(url, "video") > batches  # the slow video did start before its client left
    assert post_video(url, QUICK_VIDEO).status_code == 200
    assert generated(url, "video") - before == 1  # the departed client's video was never finished
    # Nothing of the departed request is left running: SIGTERM stops the server at once, where a
    # request ended without an answer held it until BentoML's request timeout (minutes).
    arbiter.send_signal(signal.SIGTERM)
    assert arbiter.wait(timeout=60) == 0


def test_cancel_reaches_the_worker_running_the_request(tiny_models, tmp_path) -> None:
    """With two video workers a cancel call lands on either; the one running the video stops it.
    Three departures: a cancel that only reached the worker it landed on would pass one in two."""
    with running_server(tmp_path, GENSERVE_VIDEO_WORKERS="2") as (url, _):
        before = generated(url, "video")
        for departures in range(1, 4):
            with pytest.raises(httpx.ReadTimeout):
                post_video(url, SLOW_VIDEO, timeout=httpx.Timeout(60, read=DEPART_S))
            wait_until(
                lambda n=departures: finished_batches(url, "video") >= n, 60, "the video's batch to end"
            )
        assert generated(url, "video") == before  # all three abandoned, none finished


def test_killed_generator_fails_its_requests_then_recovers(fresh) -> None:
    url, arbiter = fresh
    batches = started_requests(url)
    threads, results = slow_batch_in_background(url)
    wait_until(lambda: started_requests(url) > batches, 30, "the slow batch to start")
    os.kill(worker_pid(arbiter.pid, "ImageGenerator"), signal.SIGKILL)
    join(threads, timeout=60)
    # The requests in the killed batch fail at once; any not yet sent are served by the new worker.
    failed = [r for r in results if r.status_code == 503]
    assert failed and all(r.status_code in (200, 503) for r in results)
    assert all("stopped" in r.json()["error"] and r.headers["retry-after"] for r in failed)
    wait_ready(url, arbiter)  # /readyz recovers
    assert httpx.post(f"{url}/txt2img", json=QUICK_IMAGE, timeout=60).status_code == 200


def video_job_whose_worker_is_killed(url: str, arbiter: int, service: str, seed: int) -> str:
    """Submit a long text-to-video job and SIGKILL `service`'s worker once the video stage runs;
    the job's task id."""
    job = {"prompt": "a long video", "num_frames": 16, "num_inference_steps": 25, "seed": seed}
    batches = started_requests(url, "video")
    task_id = httpx.post(f"{url}/txt2vid/submit", json=job, timeout=30).json()["task_id"]
    wait_until(lambda: started_requests(url, "video") > batches, 60, "the video stage to start")
    os.kill(worker_pid(arbiter, service), signal.SIGKILL)
    return task_id


def test_job_whose_worker_died_is_reported_failed_with_a_reason(fresh) -> None:
    url, arbiter = fresh
    task_id = video_job_whose_worker_is_killed(url, arbiter.pid, "VideoGenerator", seed=3)
    wait_until(lambda: job_status(url, task_id) != "in_progress", 60, "the job to end")
    assert job_status(url, task_id) == "failed"
    result = httpx.get(f"{url}/txt2vid/get", params={"task_id": task_id})
    assert "stopped" in result.json()["error"]


def test_job_of_a_killed_entry_worker_is_run_again_to_completion(fresh) -> None:
    """The entry worker running a txt2vid task dies: once its lease lapses, the restarted worker
    runs the job again (same seed) and the task completes, as if nothing had happened."""
    url, arbiter = fresh
    task_id = video_job_whose_worker_is_killed(url, arbiter.pid, "GenServe", seed=5)
    wait_until(lambda: job_status(url, task_id) != "in_progress", 120, "the job to end")
    assert job_status(url, task_id) == "completed"
    assert httpx.get(f"{url}/jobs/{task_id}", timeout=10).json()["attempts"] == 2
    result = httpx.get(f"{url}/txt2vid/get", params={"task_id": task_id}, timeout=30)
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"


def test_sigterm_drains_in_flight_requests(tiny_models, tmp_path) -> None:
    with running_server(tmp_path) as (url, arbiter):
        batches = started_requests(url)
        results: list = []
        thread = post_in_background(url, "/txt2img", results, json=SLOW_IMAGE)
        wait_until(lambda: started_requests(url) > batches, 30, "the request to start")
        arbiter.send_signal(signal.SIGTERM)
        thread.join(timeout=90)
        [response] = results
        assert response.status_code == 200, response
        assert arbiter.wait(timeout=60) == 0  # and the server then exits by itself, cleanly
