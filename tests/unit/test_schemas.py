"""Request validation: defaults come from the preset, every bad value is named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genserve.core.presets import IMAGE_PRESETS, MAX_PROMPT_CHARS, VIDEO_PRESETS
from genserve.core.schemas import MAX_SEED, image_request_model, video_request_model

TINY_IMAGE = IMAGE_PRESETS["tiny"]
TINY_VIDEO = VIDEO_PRESETS["tiny"]
ImageRequest = image_request_model(TINY_IMAGE)
VideoRequest = video_request_model(TINY_VIDEO)


def test_image_defaults_come_from_the_preset() -> None:
    request = ImageRequest(prompt="a cat")
    assert (request.width, request.height) == (TINY_IMAGE.default_width, TINY_IMAGE.default_height)
    assert request.num_inference_steps == TINY_IMAGE.default_steps
    assert request.guidance_scale == TINY_IMAGE.default_guidance
    assert request.output_format == "png"


def test_defaults_differ_between_presets() -> None:
    turbo = image_request_model(IMAGE_PRESETS["sd35-large-turbo"])(prompt="a cat")
    assert (turbo.num_inference_steps, turbo.guidance_scale) == (4, 0.0)
    assert (turbo.width, turbo.height) == (1024, 1024)
    xt = video_request_model(VIDEO_PRESETS["svd-xt"])()
    assert xt.num_frames == 25


@pytest.mark.parametrize("seed", [None, "omitted"])
def test_missing_seed_becomes_a_random_one(seed) -> None:
    fields = {} if seed == "omitted" else {"seed": seed}
    seeds = {ImageRequest(prompt="a cat", **fields).seed for _ in range(5)}
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) > 1
    assert len({VideoRequest(**fields).seed for _ in range(5)}) > 1


def test_given_seed_is_kept() -> None:
    assert ImageRequest(prompt="a cat", seed=42).seed == 42
    assert VideoRequest(seed=0).seed == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * (MAX_PROMPT_CHARS + 1)),
        ("prompt", 123),
        ("negative_prompt", "x" * (MAX_PROMPT_CHARS + 1)),
        ("width", 72),  # not a multiple of 16
        ("width", TINY_IMAGE.max_width + 16),
        ("width", 0),
        ("height", -64),
        ("height", "tall"),
        ("num_inference_steps", 0),
        ("num_inference_steps", TINY_IMAGE.max_steps + 1),
        ("guidance_scale", -1.0),
        ("guidance_scale", TINY_IMAGE.max_guidance + 1),
        ("seed", -1),
        ("seed", MAX_SEED + 1),
        ("seed", 1.5),
        ("output_format", "bmp"),
        ("output_format", "mp4"),
        ("colour", "blue"),  # unknown fields are errors, not ignored
    ],
)
def test_bad_image_field_is_named(field: str, value) -> None:
    fields = {"prompt": "a cat", field: value}
    with pytest.raises(ValidationError) as caught:
        ImageRequest(**fields)
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_missing_prompt_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        ImageRequest()
    assert caught.value.errors()[0]["loc"] == ("prompt",)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_frames", 1),  # SVD needs at least two
        ("num_frames", TINY_VIDEO.max_frames + 1),
        ("fps", 0),
        ("fps", TINY_VIDEO.max_fps + 1),
        ("motion_bucket_id", 256),
        ("motion_bucket_id", -1),
        ("noise_aug_strength", 1.5),
        ("noise_aug_strength", -0.1),
        ("num_inference_steps", 0),
        ("num_inference_steps", TINY_VIDEO.max_steps + 1),
        ("seed", "abc"),
        ("output_format", "png"),
        ("width", 64),  # the video size is the preset's, not the client's
    ],
)
def test_bad_video_field_is_named(field: str, value) -> None:
    with pytest.raises(ValidationError) as caught:
        VideoRequest(**{field: value})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_requests_are_immutable() -> None:
    request = ImageRequest(prompt="a cat")
    with pytest.raises(ValidationError):
        request.width = 128
