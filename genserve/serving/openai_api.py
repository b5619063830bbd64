"""OpenAI's Images API, `POST /v1/images/generations`, as an ASGI app mounted on the GenServe service.

Clients of OpenAI's API switch by changing `base_url` to `<service>/v1` and `api_key` to a
genserve key: it arrives as `Authorization: Bearer <key>`, which the service's auth middleware
checks before this app runs. Parameters, the response and the errors follow OpenAI's shapes;
sizes and prompts are checked against the served image preset's limits, as on `/txt2img`.

The `n` images of a call go to the image generator as one list of `n` requests, each with its
own random seed, so adaptive batching runs them together (and with other callers' requests).

`response_format="url"` is refused: OpenAI's URLs point at stored copies, and genserve keeps
none (its workers and replicas share no storage to serve them from); `b64_json` is the default.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from typing import Literal

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from genserve.core.media import encode_image
from genserve.core.presets import IMAGE_PRESETS
from genserve.core.schemas import ImageFormat, image_request_model
from genserve.core.settings import Settings
from genserve.serving.dispatch import RETRY_AFTER_S, dispatch_all
from genserve.serving.http import openai_error
from genserve.serving.workers import CLIENT_LEFT, Outcome

logger = logging.getLogger(__name__)

#: Where service.py mounts this app: OpenAI clients' `base_url` is `<service>/v1`.
PREFIX = "/v1"

#: Images per call (OpenAI allows 10): as many as fit in one batch on every image preset, 4.
MAX_IMAGES = min(preset.batching.max_batch_size for preset in IMAGE_PRESETS.values())
SIZE = re.compile(r"([0-9]+)x([0-9]+)")
#: The request schema's fields that OpenAI's `size` sets.
SIZE_FIELDS = ("width", "height")


class GenerationRequest(BaseModel):
    """The OpenAI parameters genserve takes; others are refused by name, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    n: int | None = Field(None, ge=1, le=MAX_IMAGES)
    size: str | None = None  # "WIDTHxHEIGHT" or "auto"
    response_format: Literal["b64_json", "url"] | None = None
    output_format: ImageFormat | None = None
    user: str | None = None  # accepted and ignored, like its successor below
    safety_identifier: str | None = None


def invalid_request(error: ValidationError) -> JSONResponse:
    """A 400 naming the first offending parameter; `width`/`height` problems are `size`'s."""
    first = error.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "json_invalid":
        return openai_error(400, "We could not parse the JSON body of your request.")
    if not field:
        return openai_error(400, f"Invalid request body: {first['msg']}.")
    if first["type"] == "missing":
        return openai_error(
            400, f"Missing required parameter: '{field}'.", field, "missing_required_parameter"
        )
    if first["type"] == "extra_forbidden":
        return openai_error(400, f"Unknown parameter: '{field}'.", field, "unknown_parameter")
    param = "size" if field in SIZE_FIELDS else field
    detail = f"{field}: {first['msg']}" if param != field else first["msg"]
    return openai_error(400, f"Invalid value for '{param}': {detail}.", param, "invalid_value")


def parse_size(size: str | None) -> dict[str, int] | None:
    """Width and height from "WIDTHxHEIGHT"; neither for "auto" (the preset's default); None if malformed."""
    if size is None or size == "auto":
        return {}
    match = SIZE.fullmatch(size)
    if match is None:
        return None
    return dict(zip(SIZE_FIELDS, map(int, match.groups()), strict=True))


def generation_error(status: int) -> JSONResponse:
    """A generator's refusal or failure, as OpenAI reports overload, timeouts and server errors."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if status == 429:
        message = "The generators are busy; retry later."
        return openai_error(429, message, None, "rate_limit_exceeded", "rate_limit_error", retry)
    if status == 503:
        message = "The generators are busy or loading; retry later."
        return openai_error(503, message, kind="server_error", headers=retry)
    if status == 504:
        return openai_error(504, "Image generation timed out.", kind="server_error")
    if status == CLIENT_LEFT.status:  # nobody reads it; the logs show why the request ended
        return openai_error(status, CLIENT_LEFT.error or "")
    return openai_error(500, "Image generation failed; see the server log.", kind="server_error")


def b64_image(pixels: np.ndarray, fmt: str) -> str:
    return base64.b64encode(encode_image(pixels, fmt)).decode("ascii")


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """Unknown paths and wrong methods under /v1, in OpenAI's error shape too."""
    assert isinstance(error, HTTPException)
    return openai_error(error.status_code, error.detail, headers=error.headers)


class ImagesAPI:
    """OpenAI's Images API for the served image preset, with the service's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.request_model = image_request_model(settings.image.preset)

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/images/generations", self.generations, methods=["POST"])],
            exception_handlers={HTTPException: http_error},
        )

    async def generate(self, requests: list[BaseModel], client: Request) -> list[Outcome]:
        """The n requests as one call to the image generator: they join its batching queue together."""
        service = bentoml.get_current_service()
        timeout = self.settings.request_timeout_s
        return await dispatch_all(service.images, service.image_queue, requests, timeout, client)

    async def generations(self, request: Request) -> JSONResponse:
        """OpenAI's `images.generate`: `n` images of one prompt, base64-encoded in `data[].b64_json`."""
        try:
            params = GenerationRequest.model_validate_json(await request.body())
        except ValidationError as error:
            return invalid_request(error)
        preset = self.settings.image.preset.name
        if params.model not in (None, preset):
            message = f"Invalid value: '{params.model}'. Supported values are: '{preset}'."
            return openai_error(400, message, "model", "invalid_value")
        if params.response_format == "url":
            message = "response_format 'url' is not supported: genserve stores no images to link to; "
            message += "use 'b64_json'."
            return openai_error(400, message, "response_format", "unsupported_value")
        size = parse_size(params.size)
        if size is None:
            message = (
                f"Invalid value for 'size': '{params.size}'; use 'WIDTHxHEIGHT' (e.g. '64x64') or 'auto'."
            )
            return openai_error(400, message, "size", "invalid_value")
        n, queue = params.n or 1, self.settings.image.max_queue
        if n > queue:  # never admitted: a 429 would ask to retry for ever
            message = f"Invalid value for 'n': at most {queue} on this server."
            return openai_error(400, message, "n", "invalid_value")
        fmt = params.output_format or "png"
        try:
            # Each request validates to its own random seed: n different images.
            images = [self.request_model(prompt=params.prompt, output_format=fmt, **size) for _ in range(n)]
        except ValidationError as error:
            return invalid_request(error)
        outcomes = await self.generate(images, request)
        if failed := next((outcome for outcome in outcomes if outcome.error is not None), None):
            return generation_error(failed.status)
        encoded = await asyncio.gather(*(asyncio.to_thread(b64_image, done.value, fmt) for done in outcomes))
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": data} for data in encoded],
                "output_format": fmt,
                "size": f"{images[0].width}x{images[0].height}",
            }
        )


def openai_app(settings: Settings) -> Starlette:
    """The ASGI app service.py mounts at PREFIX."""
    return ImagesAPI(settings).app()
