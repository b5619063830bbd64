"""genserve's BentoML services: a table of contents.

- `ImageGenerator` and `VideoGenerator` (GPU): each loads its pipeline once and exposes one
  batchable method; BentoML's adaptive batching merges concurrent requests into batches.
- `GenServe` (CPU): the public HTTP API. It validates, calls the generators through
  `bentoml.depends`, and encodes the results.

Serve it with `bentoml serve service.py` (or `make serve`); settings are environment
variables, listed in `genserve/settings.py` and the README.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from pydantic import create_model
from starlette.responses import Response

from genserve.auth import BearerAuth, KeyRing
from genserve.generation import VideoJob, generate_images, generate_videos
from genserve.http import BodyLimit, JSONDocument, ValidateJSONBody, error_response, media_response
from genserve.loading import load_image_pipeline, load_video_pipeline
from genserve.media import IMAGE_FORMATS, VIDEO_FORMATS, encode_image, encode_video
from genserve.presets import MAX_BODY_BYTES, MIN_FRAMES
from genserve.schemas import (
    ImageRequest,
    TextToVideoRequest,
    VideoRequest,
    image_request_model,
    text_to_video_request_model,
    video_request_model,
)
from genserve.settings import Settings
from genserve.uploads import UploadError, check_image_upload
from genserve.workers import BackgroundLoad, Queued, run_batch

logger = logging.getLogger("genserve")
RETRY_AFTER_S = 5  # what a refused client is told to wait: about one batch of work
settings = Settings.from_env()

# Request schemas with this deployment's presets' defaults and limits (shown in /docs).
TextToImage = image_request_model(settings.image_preset)
VideoParameters = video_request_model(settings.video_preset)
ImageToVideo = create_model(
    "ImageToVideo",
    __base__=VideoParameters,
    __doc__="Image to video: the image file, plus the video parameters as form fields.",
    image=(Path, ...),
)
TextToVideo = text_to_video_request_model(settings.image_preset, settings.video_preset)
ImageFile = Annotated[Path, ContentType("image/*")]
VideoFile = Annotated[Path, ContentType("video/*")]


@bentoml.service(
    resources=settings.generator_resources(settings.image_gpus),
    traffic={"timeout": settings.request_timeout_s, "max_concurrency": settings.image_max_queue},
)
class ImageGenerator:
    """Text to image with the image preset's pipeline."""

    def __init__(self) -> None:
        self.pipe = BackgroundLoad("image pipeline", self._load)

    @staticmethod
    def _load():
        pipe = load_image_pipeline(settings)
        warmup = TextToImage(prompt="warm-up", num_inference_steps=1, seed=0)
        generate_images(pipe, settings.image_preset, [warmup])
        return pipe

    def __is_ready__(self) -> bool:
        return self.pipe.ready

    @bentoml.api(**settings.batching(settings.image_max_batch_size, settings.image_max_latency_ms))
    def generate(self, batch: list[Queued[ImageRequest]]) -> list[np.ndarray]:
        pipe = self.pipe.get()
        return run_batch("image", batch, lambda items: generate_images(pipe, settings.image_preset, items))


@bentoml.service(
    resources=settings.generator_resources(settings.video_gpus),
    traffic={"timeout": settings.request_timeout_s, "max_concurrency": settings.video_max_queue},
)
class VideoGenerator:
    """Image to video with the video preset's pipeline."""

    def __init__(self) -> None:
        self.pipe = BackgroundLoad("video pipeline", self._load)

    @staticmethod
    def _load():
        pipe = load_video_pipeline(settings)
        preset = settings.video_preset
        blank = encode_image(np.zeros((preset.height, preset.width, 3), np.uint8), "png")
        request = VideoParameters(num_frames=MIN_FRAMES, num_inference_steps=1, seed=0)
        generate_videos(pipe, preset, [VideoJob(image=blank, request=request)])
        return pipe

    def __is_ready__(self) -> bool:
        return self.pipe.ready

    @bentoml.api(**settings.batching(settings.video_max_batch_size, settings.video_max_latency_ms))
    def generate(self, batch: list[Queued[VideoJob]]) -> list[np.ndarray]:
        pipe = self.pipe.get()
        return run_batch("video", batch, lambda jobs: generate_videos(pipe, settings.video_preset, jobs))


MODELS_INFO = {
    "image": {**asdict(settings.image_preset), "source": settings.image_source},
    "video": {**asdict(settings.video_preset), "source": settings.video_source},
    "image_formats": sorted(IMAGE_FORMATS),
    "video_formats": sorted(VIDEO_FORMATS),
}


@bentoml.service(traffic={"timeout": settings.request_timeout_s})
class GenServe:
    """The public API: text to image, image to video, and text to video as a background job."""

    images = bentoml.depends(ImageGenerator)
    videos = bentoml.depends(VideoGenerator)

    @bentoml.api(route="/txt2img", input_spec=TextToImage)
    async def txt2img(self, **fields: Any) -> ImageFile:
        """Generate an image from a prompt. Returns the image file; the seed is in `X-Seed`."""
        request = TextToImage(**fields)
        return await self._call(self._image(request))

    @bentoml.api(route="/img2vid", input_spec=ImageToVideo)
    async def img2vid(self, image: Path, **fields: Any) -> VideoFile:
        """Animate an uploaded PNG/JPEG/WebP image. Returns the video file; the seed is in `X-Seed`."""
        try:
            data = check_image_upload(image.read_bytes())
        except UploadError as error:
            return error_response(error.status, str(error), error.field)
        request = VideoRequest(**fields)
        return await self._call(self._video(data, request))

    @bentoml.task(route="/txt2vid", input_spec=TextToVideo)
    async def txt2vid(self, **fields: Any) -> VideoFile:
        """Text to video as a job: submit, poll status, get the video (made at the video's own size)."""
        return await self._call(self._text_to_video(TextToVideo(**fields)))

    async def _image(self, request: ImageRequest) -> Response:
        [pixels] = await self.images.to_async.generate([Queued(item=request)])
        fmt = request.output_format
        data = await asyncio.to_thread(encode_image, pixels, fmt)
        return media_response(data, IMAGE_FORMATS[fmt], request.seed, fmt)

    async def _video(self, image: bytes, request: VideoRequest) -> Response:
        [frames] = await self.videos.to_async.generate([Queued(item=VideoJob(image=image, request=request))])
        fmt = request.output_format
        data = await asyncio.to_thread(encode_video, frames, request.fps, fmt)
        return media_response(data, VIDEO_FORMATS[fmt], request.seed, fmt)

    async def _text_to_video(self, request: TextToVideoRequest) -> Response:
        first_stage = request.image_request(settings.video_preset)
        [pixels] = await self.images.to_async.generate([Queued(item=first_stage)])
        still = await asyncio.to_thread(encode_image, pixels, "png")
        return await self._video(still, request.video_request())

    @staticmethod
    async def _call(work) -> Response:
        """Await generator work, turning a generator's failure into a JSON error, never a hang."""
        try:
            return await work
        except BentoMLException as error:
            status = int(error.error_code)
            logger.warning("generator call failed with %s: %s", status, error)
            if status in (429, 503):
                busy = "generators are busy or loading; retry later"
                return error_response(status, busy, headers={"Retry-After": str(RETRY_AFTER_S)})
            return error_response(500, "generation failed; see the server log")


# Outermost first: refuse without a key, then refuse oversized bodies, then serve/validate.
GenServe.add_asgi_middleware(
    BearerAuth,
    keys=KeyRing(settings.api_keys, settings.api_keys_file),
    protect_metrics=settings.protect_metrics,
)
GenServe.add_asgi_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
GenServe.add_asgi_middleware(JSONDocument, path="/models", document=MODELS_INFO)
GenServe.add_asgi_middleware(ValidateJSONBody, path="/txt2vid/submit", model=TextToVideo)
