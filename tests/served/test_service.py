"""The served API, end to end: a real `bentoml serve` of service.py on the tiny preset."""

from __future__ import annotations

import asyncio
import io
import time

import bentoml
import httpx
import numpy as np
import pytest
from decoding import read_image, read_video
from helpers import ENV_KEYS, job_status
from PIL import Image

from genserve.core.generation import ImagePipelines, generate_edits, generate_images
from genserve.core.media import PARAMETERS_CHUNK, encode_image
from genserve.core.schemas import EditJob, edit_request_model, image_request_model
from genserve.serving.processes import batch_sizes

TIMEOUT = 120


def post_image(url: str, **fields) -> httpx.Response:
    return httpx.post(f"{url}/txt2img", json=fields, timeout=TIMEOUT)


def png_of(color: tuple[int, int, int], width: int = 80, height: int = 64) -> bytes:
    return encode_image(np.full((height, width, 3), color, np.uint8), "png")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_txt2img_returns_the_image_file_and_its_seed(server, fmt) -> None:
    response = post_image(server, prompt="a red cat", width=128, height=64, seed=5, output_format=fmt)
    assert response.status_code == 200, response.text
    mime, pixels = read_image(response.content)
    assert response.headers["content-type"] == mime == f"image/{fmt}"
    assert pixels.shape == (64, 128, 3)
    assert response.headers["x-seed"] == "5"


def test_txt2img_without_seed_reports_the_one_used(server) -> None:
    first = post_image(server, prompt="a calm ocean")
    seed = int(first.headers["x-seed"])
    again = post_image(server, prompt="a calm ocean", seed=seed)
    assert again.content == first.content
    other = post_image(server, prompt="a calm ocean")  # another random seed, another image
    assert other.headers["x-seed"] != first.headers["x-seed"] and other.content != first.content


def test_served_image_equals_in_process_result(server, image_pipe, settings) -> None:
    fields = {"prompt": "a golden dragon", "seed": 11, "num_inference_steps": 4}
    served = read_image(post_image(server, **fields).content)[1]
    request = image_request_model(settings.image.preset)(**fields)
    [local] = generate_images(image_pipe, settings.image.preset, [request])
    assert np.abs(served.astype(int) - local.astype(int)).max() <= 1


def test_a_png_says_how_it_was_made(server, settings) -> None:
    response = post_image(server, prompt="a red cat", negative_prompt="blur", seed=5, width=128)
    preset = settings.image.preset
    with Image.open(io.BytesIO(response.content)) as image:
        parameters = image.text[PARAMETERS_CHUNK]
    expected = (
        "a red cat\nNegative prompt: blur\n"
        f"Steps: {preset.default_steps}, CFG scale: {preset.default_guidance}, Seed: 5, "
        f"Size: 128x{preset.default_height}, Model: {preset.name}"
    )
    assert parameters == expected


def test_png_parameters_can_be_turned_off(keyed) -> None:
    url, _, _ = keyed
    headers = {"Authorization": f"Bearer {ENV_KEYS[0]}"}
    response = httpx.post(f"{url}/txt2img", json={"prompt": "a red cat"}, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        assert PARAMETERS_CHUNK not in image.text


def edit_files(mask: bool) -> dict:
    """A 96x64 picture, with a mask over its middle when `mask`."""
    picture = np.full((64, 96, 3), (30, 40, 220), np.uint8)
    picture[16:48, 32:64] = (220, 30, 30)
    files = {"image": ("picture.png", encode_image(picture, "png"), "image/png")}
    if mask:
        white = np.zeros((64, 96, 3), np.uint8)
        white[8:56, 24:72] = 255
        files["mask"] = ("mask.png", encode_image(white, "png"), "image/png")
    return files


@pytest.mark.parametrize("route", ["img2img", "inpaint"])
def test_an_edit_is_served_as_made_in_process(server, image_pipe, settings, route) -> None:
    fields = {"prompt": "a green cat", "strength": "0.7", "seed": "12", "num_inference_steps": "4"}
    files = edit_files(mask=route == "inpaint")
    response = httpx.post(f"{server}/{route}", files=files, data=fields, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "12"
    mime, served = read_image(response.content)
    assert (mime, served.shape) == ("image/png", (64, 96, 3))
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.text[PARAMETERS_CHUNK].endswith("Size: 96x64, Model: tiny, Denoising strength: 0.7")
    request = edit_request_model(settings.image.preset)(**fields)
    mask = files["mask"][1] if "mask" in files else None
    job = EditJob(image=files["image"][1], mask=mask, request=request)
    [local] = generate_edits(ImagePipelines.sharing(image_pipe), settings.image.preset, [job])
    assert np.abs(served.astype(int) - local.astype(int)).max() <= 1


def test_concurrent_edits_are_batched(server) -> None:
    before = batch_sizes(server)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{server}/img2img", files=edit_files(mask=False), data={"prompt": f"robot {i}"}
                    )
                    for i in range(12)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 12
    after = batch_sizes(server)
    assert after["sum"] - before["sum"] == 12
    assert after["count"] - before["count"] < 12  # some batch held more than one edit


def test_concurrent_requests_are_batched(server) -> None:
    before = batch_sizes(server)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{server}/txt2img", json={"prompt": f"robot {i}", "seed": i})
                    for i in range(16)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.headers["x-seed"] for r in responses] == [str(i) for i in range(16)]
    after = batch_sizes(server)
    batches = after["count"] - before["count"]
    assert after["sum"] - before["sum"] == 16
    assert batches < 16  # some batch held more than one request


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp"])
def test_img2vid_returns_a_video_with_the_requested_frames(server, settings, fmt) -> None:
    response = httpx.post(
        f"{server}/img2vid",
        files={"image": ("red.png", png_of((200, 30, 30)), "image/png")},
        data={"num_frames": "5", "fps": "10", "num_inference_steps": "2", "seed": "9", "output_format": fmt},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "9"
    frames, fps = read_video(response.content, fmt)
    preset = settings.video.preset
    assert frames.shape == (5, preset.height, preset.width, 3)
    assert fps == pytest.approx(10, abs=0.1)


@pytest.mark.slow
def test_txt2vid_job_round_trip(server, settings) -> None:
    fields = {
        "prompt": "a misty forest",
        "num_frames": 3,
        "num_inference_steps": 2,
        "seed": 4,
        "output_format": "gif",
    }
    submitted = httpx.post(f"{server}/txt2vid/submit", json=fields, timeout=TIMEOUT)
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    deadline = time.monotonic() + TIMEOUT
    while (status := job_status(server, task_id)) not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status == "completed"
    result = httpx.get(f"{server}/txt2vid/get", params={"task_id": task_id}, timeout=TIMEOUT)
    assert result.headers["content-type"] == "image/gif"
    assert result.headers["x-seed"] == "4"
    frames, _ = read_video(result.content, "gif")
    assert frames.shape == (3, settings.video.preset.height, settings.video.preset.width, 3)


def test_bentoml_sync_client_generates_image_and_video(server, tmp_path) -> None:
    with bentoml.SyncHTTPClient(server, timeout=TIMEOUT) as client:
        image_path = client.txt2img(prompt="a neon city", width=64, height=96, seed=3)
        mime, pixels = read_image(image_path.read_bytes())
        assert (mime, pixels.shape) == ("image/png", (96, 64, 3))
        upload = tmp_path / "still.png"
        upload.write_bytes(image_path.read_bytes())
        video_path = client.img2vid(image=upload, num_frames=3, num_inference_steps=1, output_format="gif")
        assert read_video(video_path.read_bytes(), "gif")[0].shape[0] == 3


@pytest.mark.slow
def test_bentoml_async_client_runs_the_txt2vid_task(server) -> None:
    async def run() -> bytes:
        async with bentoml.AsyncHTTPClient(server, timeout=TIMEOUT) as client:
            task = await client.txt2vid.submit(prompt="a tiny robot", num_frames=2, num_inference_steps=1)
            deadline = time.monotonic() + TIMEOUT
            while (await task.get_status()).value == "in_progress":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            return (await task.get()).read_bytes()

    frames, _ = read_video(asyncio.run(run()), "mp4")
    assert len(frames) == 2


def test_models_lists_presets_with_defaults_and_limits(server, settings) -> None:
    info = httpx.get(f"{server}/models").json()
    assert info["image"]["name"] == settings.image.preset.name
    assert info["image"]["max_width"] == settings.image.preset.max_width
    assert info["video"]["max_frames"] == settings.video.preset.max_frames
    assert info["video_formats"] == ["gif", "mp4", "webp"]
    assert httpx.post(f"{server}/models").status_code == 405


def test_health_and_metrics(server) -> None:
    assert httpx.get(f"{server}/livez").status_code == 200
    assert httpx.get(f"{server}/readyz").status_code == 200
    post_image(server, prompt="a blue flower")
    metrics = httpx.get(f"{server}/metrics").text
    for name in (
        "genserve_queue_wait_seconds_bucket",
        "genserve_generation_seconds_bucket",
        'genserve_generated_total{kind="image"}',
        "bentoml_service_adaptive_batch_size_bucket",
    ):
        assert name in metrics
