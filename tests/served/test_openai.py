"""OpenAI's Images API on the served service, called with the real `openai` client."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from decoding import read_image
from helpers import ENV_KEYS, genserve_metric, running_server
from PIL import Image

TIMEOUT = 120


def openai_client(url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai_client(server, "any-key-while-the-api-is-open")


def image_work(url: str) -> tuple[float, float]:
    """(batches run, images made) by the image generator so far, from genserve's own metrics."""
    return genserve_metric(url, "genserve_generation_seconds_count"), genserve_metric(
        url, "genserve_generated_total"
    )


def decoded(result: openai.types.ImagesResponse) -> list[tuple[str, np.ndarray]]:
    return [read_image(base64.b64decode(image.b64_json, validate=True)) for image in result.data]


def test_n_images_are_distinct_at_the_requested_size_and_batched_together(client, server, settings) -> None:
    batches, images = image_work(server)
    result = client.images.generate(model=settings.image.preset.name, prompt="a red cat", n=2, size="96x64")
    (first_mime, first), (second_mime, second) = decoded(result)
    assert first_mime == second_mime == "image/png"
    assert first.shape == second.shape == (64, 96, 3)
    assert not np.array_equal(first, second)  # each image its own seed
    assert (result.size, result.output_format) == ("96x64", "png")
    assert result.created > 0
    assert image_work(server) == (batches + 1, images + 2)  # one batch made both


def test_output_format_and_the_preset_default_size(client, settings) -> None:
    result = client.images.generate(prompt="a blue bird", output_format="jpeg", response_format="b64_json")
    preset = settings.image.preset
    [(mime, pixels)] = decoded(result)
    assert mime == "image/jpeg"
    assert pixels.shape == (preset.default_height, preset.default_width, 3)
    assert result.size == f"{preset.default_width}x{preset.default_height}"


def test_bad_size_is_an_openai_shaped_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(prompt="a cat", size="100x64")
    assert raised.value.status_code == 400
    assert (raised.value.type, raised.value.param, raised.value.code) == (
        "invalid_request_error",
        "size",
        "invalid_value",
    )
    assert "multiple of 16" in raised.value.message


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "a cat", "size": "4096x4096"}, "size", "invalid_value"),
        ({"prompt": "a cat", "size": "large"}, "size", "invalid_value"),
        ({"prompt": "a cat", "n": 5}, "n", "invalid_value"),
        ({"prompt": "a cat", "model": "dall-e-3"}, "model", "invalid_value"),
        ({"prompt": "a cat", "response_format": "url"}, "response_format", "unsupported_value"),
        ({"prompt": "a cat", "output_format": "gif"}, "output_format", "invalid_value"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"n": 1}, "prompt", "missing_required_parameter"),
        ({"prompt": "a cat", "quality": "hd"}, "quality", "unknown_parameter"),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(server, body, param, code) -> None:
    response = httpx.post(f"{server}/v1/images/generations", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


@pytest.mark.slow
def test_the_api_key_is_the_bearer_token(keyed) -> None:
    url = keyed[0]
    assert len(openai_client(url, ENV_KEYS[1]).images.generate(prompt="a cat").data) == 1
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(url, "wrong-key").images.generate(prompt="a cat")
    assert raised.value.code == "invalid_api_key"  # OpenAI's error object, parsed by its client
    assert raised.value.message.endswith("invalid API key: send 'Authorization: Bearer <key>'")


@pytest.mark.slow
def test_n_beyond_the_image_queue_is_a_400_not_a_429_for_ever(tiny_models, tmp_path) -> None:
    """A call's n images enter the generator's queue together: more than it holds never would."""
    with running_server(tmp_path, GENSERVE_IMAGE_MAX_QUEUE="2") as (url, _):
        client = openai_client(url, "unused")
        with pytest.raises(openai.BadRequestError) as raised:
            client.images.generate(prompt="a cat", n=3)
        assert (raised.value.code, raised.value.param) == ("invalid_value", "n")
        assert len(client.images.generate(prompt="a cat", n=2).data) == 2


# images.edit: OpenAI's masks are transparent where to edit.


def picture(width: int = 96, height: int = 64) -> np.ndarray:
    pixels = np.full((height, width, 3), (30, 40, 220), np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (220, 30, 30)
    return pixels


def png_file(pixels: np.ndarray, name: str = "picture.png") -> tuple[str, bytes, str]:
    """An RGB or RGBA array as a PNG upload, as the `openai` client sends files."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return name, buffer.getvalue(), "image/png"


def transparent_in_the_middle(pixels: np.ndarray) -> np.ndarray:
    """`pixels` with an alpha channel: transparent (edit) in the middle third, opaque elsewhere."""
    height, width, _ = pixels.shape
    alpha = np.full((height, width, 1), 255, np.uint8)
    alpha[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 0
    return np.concatenate([pixels, alpha], axis=2)


def test_edit_with_a_mask_repaints_its_transparent_part_n_at_once(client, server) -> None:
    original = picture()
    mask = transparent_in_the_middle(np.zeros_like(original))
    batches, images = image_work(server)
    result = client.images.edit(
        image=png_file(original), mask=png_file(mask, "mask.png"), prompt="a cat", n=2
    )
    assert image_work(server) == (batches + 1, images + 2)  # one batch made both
    assert (result.size, result.output_format) == ("96x64", "png")
    (_, first), (_, second) = decoded(result)
    keep = mask[..., 3] == 255
    for edited in (first, second):
        assert edited.shape == original.shape
        assert np.array_equal(edited[keep], original[keep])
    assert not np.array_equal(first, second)  # each edit its own seed


def test_edit_without_a_mask_repaints_the_images_transparent_part(client) -> None:
    original = transparent_in_the_middle(picture())
    [(_, edited)] = decoded(client.images.edit(image=png_file(original), prompt="a cat"))
    keep = original[..., 3] == 255
    assert np.array_equal(edited[keep], original[..., :3][keep])
    assert not np.array_equal(edited[~keep], original[..., :3][~keep])


def test_edit_of_an_opaque_image_changes_it_as_a_whole_at_the_size_asked(client) -> None:
    result = client.images.edit(image=png_file(picture(128, 128)), prompt="a cat", size="64x64")
    [(mime, edited)] = decoded(result)
    assert (mime, edited.shape, result.size) == ("image/png", (64, 64, 3), "64x64")


IMAGE = {"image": png_file(picture())}
A_CAT = {"prompt": "a cat"}


@pytest.mark.parametrize(
    ("files", "fields", "param", "code"),
    [
        (IMAGE, {}, "prompt", "missing_required_parameter"),
        ({}, A_CAT, "image", "invalid_value"),
        ({**IMAGE, "image[]": png_file(picture())}, A_CAT, "image", "invalid_value"),
        ({"image": ("a.txt", b"text", "text/plain")}, A_CAT, "image", "invalid_value"),
        ({"image": png_file(picture(100, 64))}, A_CAT, "image", "invalid_value"),
        (IMAGE, {**A_CAT, "size": "100x64"}, "size", "invalid_value"),
        ({**IMAGE, "mask": png_file(picture(64, 64))}, A_CAT, "mask", "invalid_value"),
        (IMAGE, {**A_CAT, "n": "5"}, "n", "invalid_value"),
        (IMAGE, {**A_CAT, "model": "dall-e-2"}, "model", "invalid_value"),
        (IMAGE, {**A_CAT, "quality": "hd"}, "quality", "unknown_parameter"),
    ],
)
def test_bad_edits_are_400s_naming_the_parameter(server, files, fields, param, code) -> None:
    response = httpx.post(f"{server}/v1/images/edits", files=files, data=fields, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
