"""OpenAI's Images API, `POST /v1/images/generations` and `/v1/images/edits`, as an ASGI app mounted
on the GenServe service.

Clients of OpenAI's API switch by changing `base_url` to `<service>/v1` and `api_key` to a
genserve key: it arrives as `Authorization: Bearer <key>`, which the service's auth middleware
checks before this app runs. Parameters, the response and the errors follow OpenAI's shapes;
sizes and prompts are checked against the served image preset's limits, as on `/txt2img`.

The `n` images of a call go to the image generator as one list of `n` requests, each with its
own random seed, so adaptive batching runs them together (and with other callers' requests).

`response_format="url"` is refused: OpenAI's URLs point at stored copies, and genserve keeps
none (its workers and replicas share no storage to serve them from); `b64_json` is the default.

Edits follow OpenAI's conventions: a mask's transparent pixels are where to edit (a mask with
no alpha channel: its white pixels, as on /inpaint); with no mask, an image with transparent
pixels is repainted there (as dall-e-2 does), an opaque one is edited as a whole (/img2img),
each at the preset's default strength. `size` resizes the image (and mask) before editing;
without it the result has the image's size.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import time
from collections.abc import Callable
from typing import Literal

import bentoml
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genserve.core.media import encode_image
from genserve.core.presets import IMAGE_PRESETS, MAX_BODY_BYTES
from genserve.core.schemas import (
    EditJob,
    EditRequest,
    ImageFormat,
    ImageRequest,
    edit_request_model,
    image_request_model,
)
from genserve.core.settings import Settings
from genserve.serving.dispatch import RETRY_AFTER_S, dispatch_all
from genserve.serving.http import openai_error
from genserve.serving.produce import png_parameters
from genserve.serving.uploads import UploadError, check_edit, check_image_upload
from genserve.serving.workers import CLIENT_LEFT

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


class EditParameters(GenerationRequest):
    """An edit's form fields besides its files (form values are strings: `n` is parsed)."""


#: An edit's files: the image (OpenAI's client sends a list of them as `image[]`) and the mask.
IMAGE_FIELDS = ("image", "image[]")
MASK_FIELD = "mask"
OPAQUE = 128  # alpha from which a pixel counts as opaque, as masks are binarised


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


def b64_image(pixels: np.ndarray, fmt: str, parameters: str | None) -> str:
    return base64.b64encode(encode_image(pixels, fmt, parameters)).decode("ascii")


def invalid_upload(error: UploadError, resized: bool) -> JSONResponse:
    """An unusable file as OpenAI reports it; a size problem after resizing is `size`'s."""
    param = "size" if resized and error.field == "image" and error.status == 400 else error.field
    return openai_error(error.status, str(error), param, "invalid_value")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def edit_files(image: bytes, mask: bytes | None, size: dict[str, int]) -> tuple[bytes, bytes | None]:
    """The image and genserve's mask (white: repaint) from OpenAI's (transparent: edit), resized
    to `size` if one was asked for. No mask, and an image with transparent pixels: those."""
    with Image.open(io.BytesIO(image)) as opened:
        picture = opened.convert("RGBA")
    if mask is not None:
        with Image.open(io.BytesIO(mask)) as opened:
            has_alpha = "A" in opened.getbands()
            drawn = opened.convert("RGBA") if has_alpha else opened.convert("L")
        repaint = drawn.getchannel("A").point(lambda a: 255 if a < OPAQUE else 0) if has_alpha else drawn
    elif picture.getchannel("A").getextrema()[0] < OPAQUE:
        repaint = picture.getchannel("A").point(lambda a: 255 if a < OPAQUE else 0)
    else:
        repaint = None
    if size:
        target = (size["width"], size["height"])
        picture = picture.resize(target, Image.Resampling.LANCZOS)
        repaint = repaint.resize(target, Image.Resampling.NEAREST) if repaint is not None else None
    return _png(picture.convert("RGB")), _png(repaint) if repaint is not None else None


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """Unknown paths and wrong methods under /v1, in OpenAI's error shape too."""
    assert isinstance(error, HTTPException)
    return openai_error(error.status_code, error.detail, headers=error.headers)


class ImagesAPI:
    """OpenAI's Images API for the served image preset, with the service's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.request_model = image_request_model(settings.image.preset)
        self.edit_model = edit_request_model(settings.image.preset)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/images/generations", self.generations, methods=["POST"]),
                Route("/images/edits", self.edits, methods=["POST"]),
            ],
            exception_handlers={HTTPException: http_error},
        )

    def checked(
        self, parse: Callable[[], GenerationRequest]
    ) -> tuple[GenerationRequest, dict] | JSONResponse:
        """The parameters `parse` reads and the size they ask for, checked as generations and edits
        check them alike; or the error that says why not."""
        try:
            params = parse()
        except ValidationError as error:
            return invalid_request(error)
        if (refused := self.refusal(params)) is not None:
            return refused
        size = parse_size(params.size)
        if size is None:
            message = (
                f"Invalid value for 'size': '{params.size}'; use 'WIDTHxHEIGHT' (e.g. '64x64') or 'auto'."
            )
            return openai_error(400, message, "size", "invalid_value")
        return params, size

    def refusal(self, params: GenerationRequest) -> JSONResponse | None:
        """What generations and edits refuse alike: another model, URLs, more images than queue room."""
        preset = self.settings.image.preset.name
        if params.model not in (None, preset):
            message = f"Invalid value: '{params.model}'. Supported values are: '{preset}'."
            return openai_error(400, message, "model", "invalid_value")
        if params.response_format == "url":
            message = "response_format 'url' is not supported: genserve stores no images to link to; "
            message += "use 'b64_json'."
            return openai_error(400, message, "response_format", "unsupported_value")
        if (
            params.n or 1
        ) > self.settings.image.max_queue:  # never admitted: a 429 would ask to retry for ever
            message = f"Invalid value for 'n': at most {self.settings.image.max_queue} on this server."
            return openai_error(400, message, "n", "invalid_value")
        return None

    async def generate(
        self, items: list[ImageRequest | EditJob], requests: list[ImageRequest | EditRequest], client: Request
    ) -> JSONResponse:
        """The n items as one call to the image generator (they join its batching queue together),
        answered as OpenAI does: the images base64-encoded in `data[].b64_json`."""
        service = bentoml.get_current_service()
        timeout = self.settings.request_timeout_s
        outcomes = await dispatch_all(service.images, service.image_queue, items, timeout, client)
        if failed := next((outcome for outcome in outcomes if outcome.error is not None), None):
            return generation_error(failed.status)
        fmt = requests[0].output_format
        height, width, _ = outcomes[0].value.shape
        parameters = [
            png_parameters(self.settings, r, done.value) for r, done in zip(requests, outcomes, strict=True)
        ]
        encoded = await asyncio.gather(
            *(
                asyncio.to_thread(b64_image, done.value, fmt, text)
                for done, text in zip(outcomes, parameters, strict=True)
            )
        )
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"b64_json": data} for data in encoded],
                "output_format": fmt,
                "size": f"{width}x{height}",
            }
        )

    async def generations(self, request: Request) -> JSONResponse:
        """OpenAI's `images.generate`: `n` images of one prompt."""
        body = await request.body()
        checked = self.checked(lambda: GenerationRequest.model_validate_json(body))
        if isinstance(checked, Response):
            return checked
        params, size = checked
        try:
            # Each request validates to its own random seed: n different images.
            requests = [
                self.request_model(prompt=params.prompt, output_format=params.output_format or "png", **size)
                for _ in range(params.n or 1)
            ]
        except ValidationError as error:
            return invalid_request(error)
        return await self.generate(requests, requests, request)

    async def edits(self, request: Request) -> JSONResponse:
        """OpenAI's `images.edit`: `n` edits of one image (and mask) as the prompt says."""
        form = await request.form(max_files=len(IMAGE_FIELDS) + 1, max_part_size=MAX_BODY_BYTES)
        images = [value for name in IMAGE_FIELDS for value in form.getlist(name)]
        masks = form.getlist(MASK_FIELD)
        if len(images) != 1 or not isinstance(images[0], UploadFile):
            message = "Send one image file as 'image': this server edits one image per request."
            return openai_error(400, message, "image", "invalid_value")
        if len(masks) > 1 or not all(isinstance(mask, UploadFile) for mask in masks):
            return openai_error(400, "Send at most one mask file as 'mask'.", MASK_FIELD, "invalid_value")
        files = {*IMAGE_FIELDS, MASK_FIELD}
        fields = {name: value for name, value in form.multi_items() if name not in files}
        checked = self.checked(lambda: EditParameters.model_validate(fields))
        if isinstance(checked, Response):
            return checked
        params, size = checked
        fmt = params.output_format or "png"
        try:
            # Each request validates to its own random seed: n different edits.
            requests = [
                self.edit_model(prompt=params.prompt, output_format=fmt) for _ in range(params.n or 1)
            ]
            image = check_image_upload(await images[0].read(), "image")
            mask = check_image_upload(await masks[0].read(), MASK_FIELD) if masks else None
            image, mask = await asyncio.to_thread(edit_files, image, mask, size)
            job = check_edit(image, mask, requests[0], self.settings.image.preset)
        except ValidationError as error:
            return invalid_request(error)
        except UploadError as error:
            return invalid_upload(error, resized=bool(size))
        jobs = [job.model_copy(update={"request": edit}) for edit in requests]
        return await self.generate(jobs, requests, request)


def openai_app(settings: Settings) -> Starlette:
    """The ASGI app service.py mounts at PREFIX."""
    return ImagesAPI(settings).app()
