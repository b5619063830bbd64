"""The generator side of serving: load a pipeline in the background, run batches, record metrics.

BentoML routes requests to a service even before it is ready, and a service whose
`__init__` blocks while loading makes health probes hang. So a generator starts loading
in a thread, `/readyz` reports the flag, and a batch that arrives early waits for the load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel, ConfigDict, Field

from genserve.core.media import encode_image
from genserve.core.presets import MIN_FRAMES
from genserve.core.schemas import VideoJob, image_request_model, video_request_model
from genserve.core.settings import Settings
from genserve.serving import bentoml_compat
from genserve.serving.job_store import JobStore
from genserve.serving.metrics import generated_total, generation_seconds, queue_wait_seconds

if TYPE_CHECKING:
    from diffusers import StableVideoDiffusionPipeline

    from genserve.core.generation import ImagePipelines

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")

REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex


class Queued(BaseModel, Generic[T]):
    """A request on its way to a generator: an id to cancel it by, when it was queued, and
    the moment after which nobody waits for its result any more."""

    model_config = ConfigDict(frozen=True)

    item: T
    deadline: float  # time.time() seconds
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=REQUEST_ID.pattern)
    queued_at: float = Field(default_factory=time.time)
    job_id: str | None = Field(None, pattern=REQUEST_ID.pattern)  # a job's request: progress, cancel


@dataclass(frozen=True)
class Outcome:
    """What a generator hands back for one request: the media, or why there is none.

    Errors travel as values, not exceptions, so one request's failure never fails its
    neighbours in the batch. `status` is the HTTP status the client should get.
    """

    value: Any = None  # np.ndarray on success (typed Any: BentoML cannot schema ndarray fields)
    status: int = 200
    error: str | None = None


#: A request whose client went away (nginx's status "client closed request"): only logs see it.
CLIENT_LEFT = Outcome(status=499, error="cancelled: the client went away")
JOB_CANCELLED = Outcome(status=499, error="cancelled: the job was cancelled")


def label_answers_json(generator: Any) -> None:
    """Say once what a generator's `generate` answers: JSON (pickle between services, labelled
    JSON all the same). BentoML otherwise works the label out from the answer type's JSON
    schema, which it rebuilds for every answer (~1 ms of the generator's event loop each)."""
    bentoml_compat.set_answer_media_type(generator, "generate", "application/json")


class Cancellations:
    """Ids of requests nobody waits for any more (the client left or timed out), kept for a while.

    A generator with several workers gets each `cancel` call on one of them, not necessarily the
    one running the request, so the ids are files in a directory all its workers share: one
    empty file per id, checked between denoising steps (a stat call), dropped after `keep_s`.
    """

    def __init__(self, directory: Path, keep_s: float) -> None:
        self.directory = directory
        self.keep_s = keep_s
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_service(cls, service: str, keep_s: float) -> Cancellations:
        """The directory shared by the workers of `service` under this BentoML server (their
        parent process): servers running side by side keep apart."""
        return cls(Path(tempfile.gettempdir()) / f"genserve-{os.getppid()}" / f"cancelled-{service}", keep_s)

    def add(self, request_ids: list[str]) -> None:
        now = time.time()
        for path in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):  # another worker may drop it first
                if now - path.stat().st_mtime > self.keep_s:
                    path.unlink()
        for request_id in request_ids:
            if REQUEST_ID.fullmatch(request_id):  # a file name: nothing else gets through
                (self.directory / request_id).touch()

    def __contains__(self, request_id: str) -> bool:
        return REQUEST_ID.fullmatch(request_id) is not None and (self.directory / request_id).exists()


class BackgroundLoad(Generic[P]):
    """Runs `load` (load and warm up a pipeline) in a thread; `get` waits for its result."""

    def __init__(self, name: str, load: Callable[[], P]) -> None:
        self.name = name
        self._load = load
        self._done = threading.Event()
        self._value: P | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=f"load-{name}", daemon=True).start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._value = self._load()
            logger.info("%s ready in %.1f s", self.name, time.perf_counter() - started)
        except BaseException as error:  # reported by `get` and `/readyz`, not lost in a thread
            logger.exception("%s failed to load", self.name)
            self._error = error
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self._error is None

    def get(self) -> P:
        self._done.wait()
        if self._error is not None:
            raise ServiceUnavailable(f"{self.name} failed to load: {self._error}")
        return self._value  # type: ignore[return-value]  # set whenever there is no error


Generate = Callable[[list[T], Callable[[int], bool], Callable[[Sequence[int], int, int], None]], list]


class Watch:
    """What a generator checks and reports between denoising steps, for the requests of a batch:
    cancelled (by the client or, for a job, in the job store) or past their deadline; and, for a
    job, its progress, written to the job store for the jobs API to show."""

    def __init__(self, kind: str, cancelled: Cancellations, jobs: JobStore | None) -> None:
        self.kind = kind
        self.cancelled = cancelled
        self.jobs = jobs

    def unwanted(self, queued: Queued) -> Outcome | None:
        if queued.request_id in self.cancelled:
            return CLIENT_LEFT
        if time.time() > queued.deadline:
            return Outcome(status=504, error="timed out: the request waited longer than its timeout")
        if queued.job_id and self.jobs is not None and self._job_cancelled(queued.job_id):
            return JOB_CANCELLED
        return None

    def _job_cancelled(self, job_id: str) -> bool:
        try:
            return self.jobs.is_cancelled(job_id)
        except Exception as error:  # the store unreachable: the job's runner still stops it
            logger.warning("could not read job %s: %r", job_id, error)
            return False

    def stepped(self, batch: Sequence[Queued], step: int, total: int) -> None:
        for queued in batch:
            if queued.job_id and self.jobs is not None:
                try:
                    self.jobs.set_progress(queued.job_id, self.kind, step, total)
                except Exception as error:  # progress is for show: never fail the batch for it
                    logger.warning("could not record the progress of job %s: %r", queued.job_id, error)


def run_batch(kind: str, batch: Sequence[Queued[T]], generate: Generate, watch: Watch) -> list[Outcome]:
    """Generate one batch; record queue wait, batch time and output count.

    Requests already unwanted (cancelled, past their deadline) are not generated at all; a
    pipeline call is abandoned between steps once none of its requests is wanted. If the batch
    fails as a whole (out of GPU memory, typically), each request is retried alone, so a
    request fails only for its own sake.
    """
    started = time.time()
    for queued in batch:
        queue_wait_seconds.labels(kind=kind).observe(max(0.0, started - queued.queued_at))
    outcomes = _generate_all(batch, generate, watch)
    generation_seconds.labels(kind=kind).observe(time.time() - started)
    generated_total.labels(kind=kind).inc(sum(outcome.error is None for outcome in outcomes))
    return outcomes


def _generate_all(batch: Sequence[Queued[T]], generate: Generate, watch: Watch) -> list[Outcome]:
    outcomes: list[Outcome | None] = [watch.unwanted(queued) for queued in batch]
    live = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if not live:
        return outcomes  # type: ignore[return-value]  # all filled

    def unwanted(index: int) -> bool:
        return watch.unwanted(batch[live[index]]) is not None

    def progress(indices: Sequence[int], step: int, total: int) -> None:
        watch.stepped([batch[live[index]] for index in indices], step, total)

    try:
        values = generate([batch[i].item for i in live], unwanted, progress)
    except Exception as error:
        if len(live) == 1:
            logger.exception("generation failed")
            outcomes[live[0]] = Outcome(status=500, error=f"generation failed: {type(error).__name__}")
            return outcomes  # type: ignore[return-value]
        logger.warning("a batch of %d failed (%s); retrying its requests one by one", len(live), error)
        _free_accelerator_memory()
        for i in live:
            [outcomes[i]] = _generate_all([batch[i]], generate, watch)
        return outcomes  # type: ignore[return-value]
    for i, value in zip(live, values, strict=True):
        abandoned = watch.unwanted(batch[i]) or Outcome(status=500, error="generation was abandoned")
        outcomes[i] = Outcome(value=value) if value is not None else abandoned
    return outcomes  # type: ignore[return-value]


def _free_accelerator_memory() -> None:
    """Return the failed batch's cached GPU memory before the one-by-one retries."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warmed_image_pipelines(settings: Settings) -> ImagePipelines:
    """Load the image pipeline, build the editing ones on its weights, and run text to image once,
    so the first real request pays no first-call costs (the editing pipelines share them)."""
    from genserve.core.generation import ImagePipelines, generate_images
    from genserve.core.loading import load_image_pipeline

    pipe = load_image_pipeline(settings)
    warmup = image_request_model(settings.image.preset)(prompt="warm-up", num_inference_steps=1, seed=0)
    generate_images(pipe, settings.image.preset, [warmup])
    return ImagePipelines.sharing(pipe)


def warmed_video_pipeline(settings: Settings) -> StableVideoDiffusionPipeline:
    """Load the video pipeline and run it once (shortest video, one step)."""
    from genserve.core.generation import generate_videos
    from genserve.core.loading import load_video_pipeline

    pipe = load_video_pipeline(settings)
    preset = settings.video.preset
    blank = encode_image(np.zeros((preset.height, preset.width, 3), np.uint8), "png")
    request = video_request_model(preset)(num_frames=MIN_FRAMES, num_inference_steps=1, seed=0)
    generate_videos(pipe, preset, [VideoJob(image=blank, request=request)])
    return pipe
