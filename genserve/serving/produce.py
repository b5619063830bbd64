"""From a checked request to an encoded file: the generator calls and the encoding that the HTTP
endpoints and the job runner share, so a job makes exactly what its endpoint would."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from genserve.core.media import encode_image, encode_video
from genserve.core.protocol import IMAGE_FORMATS, VIDEO_FORMATS
from genserve.core.schemas import (
    EditJob,
    EditRequest,
    ImageRequest,
    TextToVideoRequest,
    VideoJob,
    VideoRequest,
    generation_parameters,
)
from genserve.core.settings import Settings
from genserve.serving.dispatch import dispatch


@dataclass(frozen=True)
class Produced:
    """An encoded result, or why there is none: `status` is the HTTP status a client should get."""

    seed: int
    data: bytes = b""
    media_type: str = ""
    fmt: str = ""
    status: int = 200
    error: str | None = None


class Producer:
    """Runs requests through the generators of `service` (GenServe: its `bentoml.depends` handles
    and queue bounds) and encodes the results.

    `options` go to `dispatch`: `wait_if_busy` (a job waits for room rather than being refused)
    and `job_id` (the generator reports the job's progress and stops once it is cancelled).
    """

    def __init__(self, settings: Settings, service: Any) -> None:
        self.settings = settings
        self.service = service

    async def image(
        self, item: ImageRequest | EditJob, client: Request | None = None, **options: Any
    ) -> Produced:
        request = item.request if isinstance(item, EditJob) else item
        timeout = self.settings.request_timeout_s
        outcome = await dispatch(
            self.service.images, self.service.image_queue, item, timeout, client, **options
        )
        if outcome.error is not None:
            return Produced(request.seed, status=outcome.status, error=outcome.error)
        fmt = request.output_format
        parameters = png_parameters(self.settings, request, outcome.value)
        data = await asyncio.to_thread(encode_image, outcome.value, fmt, parameters)
        return Produced(request.seed, data, IMAGE_FORMATS[fmt], fmt)

    async def video(
        self, image: bytes, request: VideoRequest, client: Request | None = None, **options: Any
    ) -> Produced:
        job = VideoJob(image=image, request=request)
        timeout = self.settings.request_timeout_s
        outcome = await dispatch(
            self.service.videos, self.service.video_queue, job, timeout, client, **options
        )
        if outcome.error is not None:
            return Produced(request.seed, status=outcome.status, error=outcome.error)
        fmt = request.output_format
        data = await asyncio.to_thread(encode_video, outcome.value, request.fps, fmt)
        return Produced(request.seed, data, VIDEO_FORMATS[fmt], fmt)

    async def text_to_video(self, request: TextToVideoRequest, **options: Any) -> Produced:
        """An image at the video's own size, then animated. A job was promised to its client:
        when the generators are busy, each stage waits its turn."""
        still = await self.image(
            request.image_request(self.settings.video.preset), wait_if_busy=True, **options
        )
        if still.error is not None:
            return still
        return await self.video(still.data, request.video_request(), wait_if_busy=True, **options)


def png_parameters(settings: Settings, request: ImageRequest | EditRequest, pixels: np.ndarray) -> str | None:
    """What a PNG result says of how it was made, unless GENSERVE_PNG_PARAMETERS=0."""
    if not settings.png_parameters:
        return None
    height, width, _ = pixels.shape
    return generation_parameters(request, settings.image.preset.name, width, height)
