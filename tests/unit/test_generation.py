"""Generation on the tiny preset: real diffusers pipelines, real files decoded back."""

from __future__ import annotations

import numpy as np
import pytest
from decoding import read_image, read_video
from PIL import Image

from genserve.core import tiny
from genserve.core.generation import VideoJob, fit_image, generate_images, generate_videos, group_compatible
from genserve.core.media import encode_image, encode_video
from genserve.core.schemas import image_request_model, video_request_model

ONE_STEP = 1  # the largest difference batching may make, in 8-bit steps


@pytest.fixture(scope="module")
def image_request(settings):
    return image_request_model(settings.image.preset)


@pytest.fixture(scope="module")
def video_request(settings):
    return video_request_model(settings.video.preset)


def max_step_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def generate_one(pipe, settings, request) -> np.ndarray:
    [pixels] = generate_images(pipe, settings.image.preset, [request])
    return pixels


def test_group_compatible_keeps_first_appearance_order() -> None:
    assert group_compatible([3, 1, 3, 2, 1], key=lambda x: x) == [[0, 2], [1, 4], [3]]


@pytest.mark.parametrize("size", [(64, 64), (128, 64), (64, 96)])
def test_text_to_image_has_the_requested_size(image_pipe, settings, image_request, size) -> None:
    width, height = size
    request = image_request(prompt="a red cat", width=width, height=height, seed=1)
    pixels = generate_one(image_pipe, settings, request)
    mime, decoded = read_image(encode_image(pixels, "png"))
    assert mime == "image/png"
    assert decoded.shape == (height, width, 3)
    assert decoded.std() > 0  # an image, not a blank


def test_same_seed_gives_identical_bytes(image_pipe, settings, image_request) -> None:
    request = image_request(prompt="a misty castle", seed=7)
    first = encode_image(generate_one(image_pipe, settings, request), "png")
    second = encode_image(generate_one(image_pipe, settings, request), "png")
    assert first == second
    other_seed = encode_image(
        generate_one(image_pipe, settings, request.model_copy(update={"seed": 8})), "png"
    )
    assert other_seed != first


def test_batched_matches_alone(image_pipe, settings, image_request) -> None:
    requests = [image_request(prompt=f"a giant robot number {i}", seed=100 + i) for i in range(4)]
    batched = generate_images(image_pipe, settings.image.preset, requests)
    for request, pixels in zip(requests, batched, strict=True):
        assert max_step_difference(pixels, generate_one(image_pipe, settings, request)) <= ONE_STEP


def test_mixed_batch_gives_each_request_its_own_output_in_order(image_pipe, settings, image_request) -> None:
    requests = [
        image_request(prompt="a blue ocean", width=64, height=64, seed=1),
        image_request(prompt="a neon city", width=128, height=64, seed=2),
        image_request(prompt="a golden dragon", width=64, height=64, num_inference_steps=3, seed=3),
        image_request(prompt="a calm forest", width=64, height=64, seed=4, guidance_scale=1.0),
        image_request(prompt="a tiny flower", width=64, height=128, seed=5),
        image_request(prompt="a blue ocean", width=64, height=64, seed=6, negative_prompt="blurry"),
    ]
    results = generate_images(image_pipe, settings.image.preset, requests)
    for request, pixels in zip(requests, results, strict=True):
        assert pixels.shape == (request.height, request.width, 3)
        assert max_step_difference(pixels, generate_one(image_pipe, settings, request)) <= ONE_STEP
    # Same size and steps but different prompt/seed/negative prompt: different images.
    assert max_step_difference(results[0], results[5]) > ONE_STEP


def test_fit_image_crops_to_aspect_without_distortion() -> None:
    # A wide image with a red left half and a blue right half, fitted into a square:
    # the centre crop keeps both colours in equal halves instead of squeezing them.
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :150, 0] = 255
    wide[:, 150:, 2] = 255
    fitted = np.asarray(fit_image(Image.fromarray(wide), 64, 64))
    assert fitted.shape == (64, 64, 3)
    assert fitted[:, :30, 0].min() > 200 and fitted[:, 34:, 2].min() > 200


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mp4", "gif", "webp"])
def test_video_decodes_back_with_requested_frames_and_fps(video_pipe, settings, video_request, fmt) -> None:
    preset = settings.video.preset
    request = video_request(num_frames=6, fps=10, num_inference_steps=2, seed=3, output_format=fmt)
    image = encode_image(np.full((80, 100, 3), (200, 40, 40), np.uint8), "png")
    [video] = generate_videos(video_pipe, preset, [VideoJob(image=image, request=request)])
    assert video.shape == (6, preset.height, preset.width, 3)
    frames, fps = read_video(encode_video(video, request.fps, fmt), fmt)
    assert frames.shape == (6, preset.height, preset.width, 3)
    assert fps == pytest.approx(10, abs=0.1)


@pytest.mark.slow
def test_video_batch_matches_alone_and_keeps_order(video_pipe, settings, video_request) -> None:
    preset = settings.video.preset
    red = encode_image(np.full((64, 64, 3), (220, 30, 30), np.uint8), "png")
    green = encode_image(np.full((64, 96, 3), (30, 220, 30), np.uint8), "jpeg")
    jobs = [
        VideoJob(image=red, request=video_request(num_frames=4, num_inference_steps=2, seed=1)),
        VideoJob(image=green, request=video_request(num_frames=3, num_inference_steps=2, seed=2)),
        VideoJob(image=green, request=video_request(num_frames=4, num_inference_steps=2, seed=3)),
    ]
    videos = generate_videos(video_pipe, preset, jobs)
    assert [len(video) for video in videos] == [4, 3, 4]
    for job, video in zip(jobs, videos, strict=True):
        [alone] = generate_videos(video_pipe, preset, [job])
        assert max_step_difference(video, alone) <= ONE_STEP


def test_an_unwanted_group_is_stopped_and_the_others_are_served(image_pipe, settings, image_request) -> None:
    one, two = (image_request(prompt="a cat", seed=1, num_inference_steps=steps) for steps in (1, 2))
    results = generate_images(image_pipe, settings.image.preset, [one, two], unwanted=lambda i: i == 0)
    assert results[0] is None and results[1].shape == (64, 64, 3)


def test_a_stopped_group_frees_the_offloaded_models(settings, image_request, monkeypatch) -> None:
    """A stop raises out of the pipeline's loop, past its own `maybe_free_model_hooks()`: genserve
    calls it, so with model offload the models go back to the CPU (on a GPU, their memory)."""
    pipe = tiny.build_image_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")  # the accelerate hooks GENSERVE_CPU_OFFLOAD installs
    hooks_before = list(pipe._all_hooks)
    freed = []
    free = pipe.maybe_free_model_hooks
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: freed.append(True) or free())
    [result] = generate_images(pipe, settings.image.preset, [image_request(prompt="a cat")], lambda _: True)
    assert result is None and freed == [True]
    assert all(new is not old for new, old in zip(pipe._all_hooks, hooks_before, strict=True))
