"""Generator-side helpers: background loading and batch bookkeeping."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import numpy as np
import pytest
import torch
from bentoml.exceptions import ServiceUnavailable
from helpers import new_job, run_script

from genserve.core.generation import generate_images
from genserve.core.schemas import image_request_model
from genserve.serving.job_store import SQLiteJobStore, StoreLimits
from genserve.serving.workers import BackgroundLoad, Cancellations, Queued, Watch, run_batch


@pytest.fixture
def cancellations(tmp_path) -> Cancellations:
    return Cancellations(tmp_path / "cancelled", keep_s=60)


def test_cancellations_are_shared_by_the_workers_of_a_generator(tmp_path) -> None:
    """A cancel call lands on any worker; the one running the request must see it."""
    worker_a, worker_b = (Cancellations(tmp_path / "shared", keep_s=60) for _ in range(2))
    ids = [queued(i).request_id for i in range(2)]
    worker_a.add(ids[:1])
    assert ids[0] in worker_b and ids[0] in worker_a
    assert ids[1] not in worker_b


def test_each_generator_of_each_server_has_its_own_cancellations(monkeypatch, tmp_path) -> None:
    """Shared by the workers of one service under one BentoML server (their parent), no wider."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # not the machine's /tmp
    images, videos = (
        Cancellations.of_service(name, keep_s=60) for name in ("ImageGenerator", "VideoGenerator")
    )
    assert images.directory != videos.directory
    assert images.directory.parent.name == f"genserve-{os.getppid()}"


def test_cancellations_expire_and_only_request_ids_are_kept(tmp_path) -> None:
    cancelled = Cancellations(tmp_path, keep_s=60)
    old, new = queued(1).request_id, queued(2).request_id
    cancelled.add([old])
    os.utime(tmp_path / old, (time.time() - 61, time.time() - 61))
    cancelled.add([new, "../escape", "x" * 32])
    assert old not in cancelled and new in cancelled
    assert sorted(path.name for path in tmp_path.iterdir()) == [new]


def test_not_ready_until_loaded_and_get_waits() -> None:
    release = threading.Event()
    load = BackgroundLoad("test", lambda: release.wait(5) and "pipeline")
    assert not load.ready
    release.set()
    assert load.get() == "pipeline"
    assert load.ready


def test_failed_load_is_reported_not_lost() -> None:
    def broken() -> None:
        raise OSError("weights missing")

    load = BackgroundLoad("test", broken)
    with pytest.raises(ServiceUnavailable, match="weights missing"):
        load.get()
    assert not load.ready


def queued(item, timeout_s: float = 60) -> Queued:
    return Queued(item=item, deadline=time.time() + timeout_s)


def fake_generate(items: list, unwanted, progress=None) -> list:
    return [np.full(1, item) for item in items]


def test_run_batch_unwraps_items_in_order(cancellations) -> None:
    outcomes = run_batch(
        "image", [queued(i) for i in (3, 1, 2)], fake_generate, Watch("image", cancellations, None)
    )
    assert [int(o.value[0]) for o in outcomes] == [3, 1, 2]
    assert all(o.status == 200 and o.error is None for o in outcomes)


def test_expired_and_cancelled_requests_are_not_generated(cancellations) -> None:
    seen: list[list] = []

    def generate(items, unwanted, progress):
        seen.append(items)
        return fake_generate(items, unwanted)

    cancelled = cancellations
    batch = [queued("late", timeout_s=-1), queued("gone"), queued("kept")]
    cancelled.add([batch[1].request_id])
    outcomes = run_batch("image", batch, generate, Watch("image", cancelled, None))
    assert seen == [["kept"]]
    assert [o.status for o in outcomes] == [504, 499, 200]
    assert "timed out" in outcomes[0].error and "cancelled" in outcomes[1].error


def test_a_failed_batch_is_retried_one_by_one(cancellations) -> None:
    """An out-of-memory batch (injected: more than one item fails) still serves everyone it can."""

    def generate(items, unwanted, progress):
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if items == ["poison"]:
            raise ValueError("this request alone is broken")
        return fake_generate([len(items[0])], unwanted)

    outcomes = run_batch(
        "image", [queued("a"), queued("poison"), queued("ccc")], generate, Watch("image", cancellations, None)
    )
    assert [o.status for o in outcomes] == [200, 500, 200]
    assert [int(outcomes[i].value[0]) for i in (0, 2)] == [1, 3]
    assert "ValueError" in outcomes[1].error


def test_out_of_memory_batch_with_a_real_pipeline_matches_requests_made_alone(
    image_pipe, settings, cancellations
) -> None:
    """The injected fault: the real tiny pipeline 'runs out of GPU memory' on any batch of two or more."""
    preset = settings.image.preset
    requests = [image_request_model(preset)(prompt=f"a robot {i}", seed=i) for i in range(3)]

    def generate(items, unwanted, progress):
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return generate_images(image_pipe, preset, items, unwanted)

    outcomes = run_batch(
        "image", [queued(r) for r in requests], generate, Watch("image", cancellations, None)
    )
    for request, outcome in zip(requests, outcomes, strict=True):
        [alone] = generate_images(image_pipe, preset, [request])
        assert outcome.status == 200
        np.testing.assert_array_equal(outcome.value, alone)


def test_pipeline_call_is_abandoned_between_steps(image_pipe, settings, cancellations) -> None:
    """Cancelling mid-call stops a real pipeline at the next step instead of finishing it."""
    request = image_request_model(settings.image.preset)(prompt="a cat", num_inference_steps=40, seed=1)
    cancelled = cancellations
    batch = [queued(request)]
    steps = 0

    def generate(items, unwanted, progress):
        def counting(index: int) -> bool:
            nonlocal steps
            steps += 1
            if steps == 3:
                cancelled.add([batch[0].request_id])
            return unwanted(index)

        return generate_images(image_pipe, settings.image.preset, items, counting)

    [outcome] = run_batch("image", batch, generate, Watch("image", cancelled, None))
    assert outcome.status == 499 and outcome.value is None
    assert steps == 3  # stopped at the step after the cancellation, not after 40 steps


def test_a_jobs_progress_is_recorded_and_its_cancellation_stops_the_pipeline(
    image_pipe, settings, cancellations, tmp_path
) -> None:
    """For a job's request the generator writes each step to the job store and reads the job's
    cancellation there: a real pipeline stops at the step after the job is cancelled."""
    store = SQLiteJobStore(tmp_path / "jobs.db", StoreLimits(10, 60, 2**20))
    job = new_job()
    store.create(job, {})
    request = image_request_model(settings.image.preset)(prompt="a cat", num_inference_steps=40, seed=1)
    batch = [Queued(item=request, deadline=time.time() + 60, job_id=job.id)]
    seen: list[int] = []

    def generate(items, unwanted, progress):
        def counting(indices, step, total):
            progress(indices, step, total)
            seen.append(store.progress(job.id)["image"].step)
            if step == 3:
                store.cancel(job.id)

        return generate_images(image_pipe, settings.image.preset, items, unwanted, counting)

    [outcome] = run_batch("image", batch, generate, Watch("image", cancellations, store))
    assert (outcome.status, outcome.error) == (499, "cancelled: the job was cancelled")
    assert seen == [1, 2, 3]  # each step recorded; stopped right after the cancellation
    assert store.progress(job.id)["image"].total == 40


# Run in a process of its own: importing service.py sets BentoML's global configuration.


def test_generators_label_their_answers_as_bentoml_would() -> None:
    result = run_script("answer_labels.py")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines()[-2:]]
    assert [name for name, _, _ in lines] == ["ImageGenerator", "VideoGenerator"]
    assert all(label == worked_out == "application/json" for _, label, worked_out in lines)
