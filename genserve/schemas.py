"""Request schemas: what a client may ask for, checked against the preset's limits.

The base classes name the fields the generation code reads. The `*_request_model`
factories derive, for one preset, a subclass whose defaults and bounds come from that
preset, so the OpenAPI document shows the real limits and a bad value is rejected with
a message that names its field. After validation every field is filled in: a missing
seed becomes a random one, which is reported back to the client.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from genserve.presets import MAX_PROMPT_CHARS, MIN_FRAMES, SIZE_MULTIPLE, ImagePreset, VideoPreset

MAX_SEED = 2**32 - 1
MIN_SIZE = 4 * SIZE_MULTIPLE
ImageFormat = Literal["png", "jpeg", "webp"]
VideoFormat = Literal["mp4", "gif", "webp"]


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def _seed_or_random(value: Any) -> Any:
    return random_seed() if value is None else value


Seed = Annotated[
    int,
    BeforeValidator(_seed_or_random),
    Field(ge=0, le=MAX_SEED, description="Random seed; omitted or null picks one, reported back"),
]
Prompt = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S", description="What to generate"),
]
NegativePrompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS, description="What to steer away from")]


class Strict(BaseModel):
    """Unknown fields are errors, not silently ignored: a typo must not change the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRequest(Strict):
    """Text to image."""

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: Seed = Field(default=None, validate_default=True)
    output_format: ImageFormat = "png"


class VideoRequest(Strict):
    """Image to video: everything but the image itself, which travels beside it."""

    num_frames: int
    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    num_inference_steps: int
    seed: Seed = Field(default=None, validate_default=True)
    output_format: VideoFormat = "mp4"


def image_request_model(preset: ImagePreset) -> type[ImageRequest]:
    """`ImageRequest` with the defaults and bounds of one image preset."""
    size = dict(ge=MIN_SIZE, multiple_of=SIZE_MULTIPLE)
    return create_model(
        "ImageRequest",
        __base__=ImageRequest,
        __doc__=ImageRequest.__doc__,
        width=(int, Field(preset.default_width, le=preset.max_width, **size)),
        height=(int, Field(preset.default_height, le=preset.max_height, **size)),
        num_inference_steps=(int, Field(preset.default_steps, ge=1, le=preset.max_steps)),
        guidance_scale=(float, Field(preset.default_guidance, ge=0.0, le=preset.max_guidance)),
    )


def video_request_model(preset: VideoPreset) -> type[VideoRequest]:
    """`VideoRequest` with the defaults and bounds of one video preset."""
    return create_model(
        "VideoRequest",
        __base__=VideoRequest,
        __doc__=VideoRequest.__doc__,
        num_frames=(int, Field(preset.default_frames, ge=MIN_FRAMES, le=preset.max_frames)),
        fps=(int, Field(preset.default_fps, ge=1, le=preset.max_fps)),
        motion_bucket_id=(
            int,
            Field(preset.default_motion_bucket_id, ge=0, le=255, description="More means more motion"),
        ),
        noise_aug_strength=(
            float,
            Field(
                preset.default_noise_aug_strength,
                ge=0.0,
                le=1.0,
                description="Noise added to the input image; more departs further from it",
            ),
        ),
        num_inference_steps=(int, Field(preset.default_steps, ge=1, le=preset.max_steps)),
    )
