"""genserve's BentoML services: a table of contents.

- `ImageGenerator` and `VideoGenerator` (GPU): each loads its pipeline once and exposes one
  batchable method (the image generator's also edits images, on the same weights); BentoML's
  adaptive batching merges concurrent requests into batches, greedily: a batch starts whenever
  the generator is free (`genserve/serving/batching.py`).
- `GenServe` (CPU): the public HTTP API: text to image, image editing (img2img, inpaint), image
  to video, text to video as a job. It validates, calls the generators through
  `bentoml.depends`, and encodes the results.

Serve it with `bentoml serve service.py` (or `make serve`); settings are environment
variables, listed in `genserve/core/settings.py` and the README.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, create_model
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from genserve.core.presets import MAX_BODY_BYTES
from genserve.core.protocol import IMAGE_FORMATS, VIDEO_FORMATS, JobKind
from genserve.core.schemas import (
    EditJob,
    EditRequest,
    ImageRequest,
    VideoJob,
    VideoRequest,
    edit_request_model,
    image_request_model,
    text_to_video_request_model,
    video_request_model,
)
from genserve.core.settings import GeneratorSettings, Settings
from genserve.serving.auth import BearerAuth, KeyRing
from genserve.serving.batching import batch_greedily
from genserve.serving.bentoml_compat import check_bentoml_version
from genserve.serving.dispatch import KEEP_CONNECTION_POOL, RETRY_AFTER_S, Admission
from genserve.serving.http import (
    BodyLimit,
    CatchErrors,
    JSONDocument,
    JSONNotFound,
    ValidateForm,
    error_response,
    media_response,
)
from genserve.serving.job_api import JobsAPI, JobsRoute
from genserve.serving.job_runner import JobRunner
from genserve.serving.job_store import job_store
from genserve.serving.openai_api import PREFIX as OPENAI_PREFIX
from genserve.serving.openai_api import openai_app
from genserve.serving.produce import Produced, Producer
from genserve.serving.timeout import cancel_timers_when_done
from genserve.serving.uploads import UploadError, check_edit, check_image_upload
from genserve.serving.webhooks import WebhookSettings
from genserve.serving.workers import (
    BackgroundLoad,
    Cancellations,
    Outcome,
    Queued,
    Watch,
    label_answers_json,
    run_batch,
    warmed_image_pipelines,
    warmed_video_pipeline,
)

TIMEOUT_GRACE_S = 30  # BentoML's own timeouts fire after genserve's deadlines, which answer clearly
settings = Settings.from_env()
check_bentoml_version(settings.allow_untested_bentoml)  # genserve/serving/bentoml_compat.py
batch_greedily()  # a batch starts whenever a generator is free (genserve/serving/batching.py)
cancel_timers_when_done()  # BentoML's request timeout kept every request in memory (serving/timeout.py)

# Request schemas with this deployment's presets' defaults and limits (shown in /docs).
TextToImage = image_request_model(settings.image.preset)
VideoParameters = video_request_model(settings.video.preset)
ImageToVideo = create_model(
    "ImageToVideo",
    __base__=VideoParameters,
    __doc__="Image to video: the image file, plus the video parameters as form fields.",
    image=(Path, ...),
)
TextToVideo = text_to_video_request_model(settings.image.preset, settings.video.preset)
EditParameters = edit_request_model(settings.image.preset)
ImageToImage = create_model(
    "ImageToImage",
    __base__=EditParameters,
    __doc__="Image to image: the image file, plus the edit's parameters as form fields.",
    image=(Path, ...),
)
Inpaint = create_model(
    "Inpaint",
    __base__=ImageToImage,
    __doc__="Inpainting: the image file and its mask (white: repaint), plus the edit's parameters.",
    mask=(Path, ...),
)
#: What each kind of job is validated with (its endpoint's fields; files travel apart).
JOB_MODELS: dict[JobKind, type[BaseModel]] = {
    "txt2img": TextToImage,
    "img2img": EditParameters,
    "inpaint": EditParameters,
    "img2vid": VideoParameters,
    "txt2vid": TextToVideo,
}
WEBHOOKS = WebhookSettings.from_env(os.environ)
ImageFile = Annotated[Path, ContentType("image/*")]
VideoFile = Annotated[Path, ContentType("video/*")]


class Generator:
    """What both generators share: the pipeline loaded in the background, readiness, cancellation."""

    def __init__(self, kind: str, load: Callable[[], Any]) -> None:
        self.kind = kind
        self.pipe = BackgroundLoad(f"{kind} pipeline", load)
        cancelled = Cancellations.of_service(type(self).__name__, keep_s=settings.request_timeout_s)
        self.cancelled = cancelled
        self.watch = Watch(kind, cancelled, job_store(settings))
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"generate-{kind}")

    def __is_ready__(self) -> bool:
        return self.pipe.ready

    async def run_in_thread(self, batch: list[Queued], generate: Callable, preset: Any) -> list[Outcome]:
        """Generate `batch` in this generator's thread. Handed over at once, not through another
        queue, so a batch starts the moment the dispatcher takes it (`genserve/serving/batching.py`)."""

        def work() -> list[Outcome]:
            return run_batch(self.kind, batch, partial(generate, self.pipe.get(), preset), self.watch)

        return await asyncio.get_running_loop().run_in_executor(self.thread, work)

    @bentoml.api
    async def cancel(self, request_ids: list[str]) -> None:
        """Stop work nobody waits for; async, so it is not queued behind the running batch."""
        self.cancelled.add(request_ids)


def generator_service(generator: GeneratorSettings) -> dict:
    """`bentoml.service` arguments of a generator; its queue bound is counted in GenServe."""
    return {
        "workers": generator.workers,
        "resources": generator.resources(),
        "traffic": {"timeout": settings.request_timeout_s + TIMEOUT_GRACE_S},
        "runner_connection": KEEP_CONNECTION_POOL,
        # GenServe's access log has a line for every request: the generators' doubled it, and its cost.
        "logging": {"access": {"enabled": False}},
    }


@bentoml.service(**generator_service(settings.image))
class ImageGenerator(Generator):
    """Text to image and image editing with the image preset's weights."""

    def __init__(self) -> None:
        super().__init__("image", lambda: warmed_image_pipelines(settings))

    @bentoml.api(**settings.image.batching())
    async def generate(self, batch: list[Queued[ImageRequest | EditJob]]) -> list[Outcome]:
        from genserve.core.generation import generate_image_work  # torch: in the generator processes only

        return await self.run_in_thread(batch, generate_image_work, settings.image.preset)


@bentoml.service(**generator_service(settings.video))
class VideoGenerator(Generator):
    """Image to video with the video preset's pipeline."""

    def __init__(self) -> None:
        super().__init__("video", lambda: warmed_video_pipeline(settings))

    @bentoml.api(**settings.video.batching())
    async def generate(self, batch: list[Queued[VideoJob]]) -> list[Outcome]:
        from genserve.core.generation import generate_videos

        return await self.run_in_thread(batch, generate_videos, settings.video.preset)


for generator in (ImageGenerator, VideoGenerator):
    label_answers_json(generator)

MODELS_INFO = {
    "image": {**asdict(settings.image.preset), "source": settings.image.source},
    "video": {**asdict(settings.video.preset), "source": settings.video.source},
    "image_formats": sorted(IMAGE_FORMATS),
    "video_formats": sorted(VIDEO_FORMATS),
}


# OpenAI's Images API: POST /v1/images/generations
@bentoml.asgi_app(openai_app(settings), path=OPENAI_PREFIX)
@bentoml.service(traffic={"timeout": settings.request_timeout_s + TIMEOUT_GRACE_S})
class GenServe:
    """The public API: text to image, image to video, and text to video as a background job."""

    images = bentoml.depends(ImageGenerator)
    videos = bentoml.depends(VideoGenerator)
    image_queue = Admission(settings.image.max_queue)
    video_queue = Admission(settings.video.max_queue)

    def __init__(self) -> None:
        self.produce = Producer(settings, self)

    @bentoml.on_startup
    async def run_jobs(self) -> None:
        """This worker's share of the jobs API's work (genserve/serving/job_runner.py)."""
        self.job_runner = JobRunner(job_store(settings), self.produce, JOB_MODELS, settings, WEBHOOKS)
        self.job_runs = asyncio.create_task(self.job_runner.run_forever(), name="job-runner")

    @bentoml.api(route="/txt2img", input_spec=TextToImage)
    async def txt2img(self, ctx: bentoml.Context, **fields: Any) -> ImageFile:
        """Generate an image from a prompt. Returns the image file; the seed is in `X-Seed`."""
        return answer(ctx, respond(await self.produce.image(TextToImage(**fields), ctx.request)))

    @bentoml.api(route="/img2img", input_spec=ImageToImage)
    async def img2img(self, ctx: bentoml.Context, image: Path, **fields: Any) -> ImageFile:
        """Edit an uploaded image as the prompt says: an image of its size; the seed is in `X-Seed`."""
        return answer(ctx, await self._edit(image, None, EditParameters(**fields), ctx.request))

    @bentoml.api(route="/inpaint", input_spec=Inpaint)
    async def inpaint(self, ctx: bentoml.Context, image: Path, mask: Path, **fields: Any) -> ImageFile:
        """Repaint the white part of `mask` as the prompt says; the rest of the image is kept exactly."""
        return answer(ctx, await self._edit(image, mask, EditParameters(**fields), ctx.request))

    @bentoml.api(route="/img2vid", input_spec=ImageToVideo)
    async def img2vid(self, ctx: bentoml.Context, image: Path, **fields: Any) -> VideoFile:
        """Animate an uploaded PNG/JPEG/WebP image. Returns the video file; the seed is in `X-Seed`."""
        try:
            data = check_image_upload(image.read_bytes())
        except UploadError as error:
            return answer(ctx, error_response(error.status, str(error), error.field))
        return answer(ctx, respond(await self.produce.video(data, VideoRequest(**fields), ctx.request)))

    @bentoml.task(route="/txt2vid", input_spec=TextToVideo)
    async def txt2vid(self, **fields: Any) -> VideoFile:
        """Text to video as a job: submit, poll status, get the video (made at the video's own size)."""
        return respond(await self.produce.text_to_video(TextToVideo(**fields)))

    async def _edit(self, image: Path, mask: Path | None, request: EditRequest, client: Request) -> Response:
        try:
            job = check_edit(image.read_bytes(), mask and mask.read_bytes(), request, settings.image.preset)
        except UploadError as error:
            return error_response(error.status, str(error), error.field)
        return respond(await self.produce.image(job, client))


@functools.cache
def jobs_app() -> Starlette:
    """The jobs API (`/jobs`), built on first use: importing service.py opens no store."""
    runner = bentoml.get_current_service().job_runner  # this worker's, started before any request
    return JobsAPI(runner.store, JOB_MODELS, settings, WEBHOOKS, submitted=runner.wake).app()


def respond(produced: Produced) -> Response:
    """A result as its file; a failure as a JSON error (busy answers say when to come back)."""
    if produced.error is not None:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if produced.status in (429, 503) else None
        return error_response(produced.status, produced.error, headers=headers)
    return media_response(produced.data, produced.media_type, produced.seed, produced.fmt)


def answer(ctx: bentoml.Context, response: Response) -> Response:
    """BentoML overrides a returned response's status with the context's: keep them in step."""
    ctx.response.status_code = response.status_code
    return response


# Outermost first: turn a middleware's own failure into a logged JSON 500, refuse without a
# key, refuse oversized bodies, word unknown paths' 404 in JSON, refuse malformed forms, then
# serve /models and validate job submissions.
GenServe.add_asgi_middleware(CatchErrors)
GenServe.add_asgi_middleware(
    BearerAuth,
    keys=KeyRing(settings.api_keys, settings.api_keys_file),
    protect_metrics=settings.protect_metrics,
    openai_prefix=OPENAI_PREFIX,
)
GenServe.add_asgi_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
GenServe.add_asgi_middleware(JSONNotFound)
GenServe.add_asgi_middleware(JobsRoute, jobs=jobs_app)
ENDPOINTS = frozenset(api.route for api in GenServe.apis.values())
FILE_FIELDS = {
    "/img2vid": frozenset({"image"}),
    "/img2img": frozenset({"image"}),
    "/inpaint": frozenset({"image", "mask"}),
}
GenServe.add_asgi_middleware(ValidateForm, paths=ENDPOINTS, file_fields=FILE_FIELDS)
GenServe.add_asgi_middleware(JSONDocument, path="/models", document=MODELS_INFO)
