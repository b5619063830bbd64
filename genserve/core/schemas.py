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

from genserve.core.presets import MAX_PROMPT_CHARS, MIN_FRAMES, SIZE_MULTIPLE, ImagePreset, VideoPreset
from genserve.core.protocol import IMAGE_FORMATS, VIDEO_FORMATS

MAX_SEED = 2**32 - 1
MIN_SIZE = 4 * SIZE_MULTIPLE
ImageFormat = Literal[tuple(IMAGE_FORMATS)]
VideoFormat = Literal[tuple(VIDEO_FORMATS)]


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def _seed_or_random(value: Any) -> Any:
    return random_seed() if value is None else value


# Published as "an integer in range, or null" (OpenAPI cannot say "omitted picks one"); after
# validation it is always an int: a missing or null seed becomes a random one.
Seed = Annotated[
    Annotated[int, Field(ge=0, le=MAX_SEED)] | None,
    BeforeValidator(_seed_or_random),
    Field(description="Random seed; omitted or null picks one, reported back"),
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


class TextToVideoRequest(VideoRequest):
    """Text to video: an image made from the prompt at the video's size, then animated."""

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    image_steps: int
    guidance_scale: float

    def image_request(self, preset: VideoPreset) -> ImageRequest:
        """The first stage: a PNG at exactly the video's size, so nothing is cropped or stretched."""
        return ImageRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=preset.width,
            height=preset.height,
            num_inference_steps=self.image_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            output_format="png",
        )

    def video_request(self) -> VideoRequest:
        return VideoRequest(**self.model_dump(include=set(VideoRequest.model_fields)))


class EditRequest(Strict):
    """Image to image, or inpainting with a mask: everything but the pictures, which travel
    beside it. The result has the input image's size."""

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    strength: float
    num_inference_steps: int
    guidance_scale: float
    seed: Seed = Field(default=None, validate_default=True)
    output_format: ImageFormat = "png"


def _image_fields(preset: ImagePreset) -> dict:
    return {
        "num_inference_steps": (int, Field(preset.default_steps, ge=1, le=preset.max_steps)),
        "guidance_scale": (float, Field(preset.default_guidance, ge=0.0, le=preset.max_guidance)),
    }


def image_request_model(preset: ImagePreset) -> type[ImageRequest]:
    """`ImageRequest` with the defaults and bounds of one image preset."""
    size = dict(ge=MIN_SIZE, multiple_of=SIZE_MULTIPLE)
    return create_model(
        "ImageRequest",
        __base__=ImageRequest,
        __doc__=ImageRequest.__doc__,
        width=(int, Field(preset.default_width, le=preset.max_width, **size)),
        height=(int, Field(preset.default_height, le=preset.max_height, **size)),
        **_image_fields(preset),
    )


def edit_request_model(preset: ImagePreset) -> type[EditRequest]:
    """`EditRequest` with the defaults and bounds of one image preset."""
    strength = Field(
        preset.default_strength,
        gt=0.0,
        le=1.0,
        description="How far the result may depart from the image: near 0 keeps it, 1 ignores it",
    )
    return create_model(
        "EditRequest",
        __base__=EditRequest,
        __doc__=EditRequest.__doc__,
        strength=(float, strength),
        **_image_fields(preset),
    )


def _video_fields(preset: VideoPreset) -> dict:
    return dict(
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


def video_request_model(preset: VideoPreset) -> type[VideoRequest]:
    """`VideoRequest` with the defaults and bounds of one video preset."""
    return create_model(
        "VideoRequest", __base__=VideoRequest, __doc__=VideoRequest.__doc__, **_video_fields(preset)
    )


def text_to_video_request_model(image: ImagePreset, video: VideoPreset) -> type[TextToVideoRequest]:
    """`TextToVideoRequest` with the image preset's steps and guidance and the video preset's rest."""
    image_fields = _image_fields(image)
    return create_model(
        "TextToVideoRequest",
        __base__=TextToVideoRequest,
        __doc__=TextToVideoRequest.__doc__,
        image_steps=image_fields["num_inference_steps"],
        guidance_scale=image_fields["guidance_scale"],
        **_video_fields(video),
    )


def generation_parameters(request: ImageRequest | EditRequest, model: str, width: int, height: int) -> str:
    """How an image was made, in AUTOMATIC1111's "parameters" text: enough to make it again."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    settings = {
        "Steps": request.num_inference_steps,
        "CFG scale": request.guidance_scale,
        "Seed": request.seed,
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if isinstance(request, EditRequest):
        settings["Denoising strength"] = request.strength
    lines.append(", ".join(f"{name}: {value}" for name, value in settings.items()))
    return "\n".join(lines)


class VideoJob(BaseModel):
    """One image-to-video request: the conditioning image (encoded, as uploaded) and its parameters.

    The image travels encoded because jobs cross process boundaries between services.
    """

    model_config = ConfigDict(frozen=True)

    image: bytes
    request: VideoRequest


class EditJob(BaseModel):
    """One edit: the image, the mask when inpainting (white: repaint), and the parameters.

    The pictures travel encoded, as checked by the entry service (the mask has the image's size).
    """

    model_config = ConfigDict(frozen=True)

    image: bytes
    mask: bytes | None = None
    request: EditRequest

    @property
    def kind(self) -> str:
        return "inpaint" if self.mask is not None else "img2img"
