"""Generation on the tiny preset: real diffusers pipelines, real files decoded back."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from decoding import read_image, read_video
from diffusers.callbacks import SD3CFGCutoffCallback
from helpers import DEMO
from PIL import Image

from genserve.core import tiny
from genserve.core.directed_noise import seeded_directed_noise
from genserve.core.generation import (
    ImagePipelines,
    VideoJob,
    fit_image,
    generate_edits,
    generate_image_work,
    generate_images,
    generate_videos,
    group_compatible,
    repaint_mask,
)
from genserve.core.media import encode_image, encode_video
from genserve.core.schemas import EditJob, edit_request_model, image_request_model, video_request_model

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


def test_guidance_ends_after_the_presets_share_of_the_steps(image_pipe, settings, image_request) -> None:
    preset = replace(settings.image.preset, guided_share=0.5)
    requests = [image_request(prompt=f"a tower, {i} floors", num_inference_steps=4, seed=i) for i in range(2)]
    rows = []
    hook = image_pipe.transformer.register_forward_pre_hook(
        lambda _module, _args, kwargs: rows.append(len(kwargs["hidden_states"])), with_kwargs=True
    )
    steps_done = []

    def progress(_done, step: int, _total) -> None:
        steps_done.append(step)

    try:
        cut = generate_images(image_pipe, preset, requests, progress=progress)
    finally:
        hook.remove()
    assert rows == [4, 4, 2, 2]  # two guided steps (each prompt and its negative), then the prompts alone
    assert steps_done == [1, 2, 3, 4]  # progress is still reported
    # Each prompt keeps its own embeddings when guidance ends: as if it were alone, and as diffusers'
    # own cutoff (right for one prompt) makes it.
    for request, pixels in zip(requests, cut, strict=True):
        [alone] = generate_images(image_pipe, preset, [request])
        assert max_step_difference(pixels, alone) <= ONE_STEP
        upstream = image_pipe(
            prompt=request.prompt,
            num_inference_steps=4,
            guidance_scale=request.guidance_scale,
            width=request.width,
            height=request.height,
            max_sequence_length=preset.max_sequence_length,
            generator=torch.Generator().manual_seed(request.seed),
            callback_on_step_end=SD3CFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1),
            output_type="np",
        ).images[0]
        assert max_step_difference(pixels, (upstream * 255).round().astype(np.uint8)) <= ONE_STEP
    guided = generate_images(image_pipe, settings.image.preset, requests)
    assert max_step_difference(cut[0], guided[0]) > ONE_STEP


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


@pytest.mark.slow
def test_a_directed_noise_preset_starts_each_video_from_its_seeds_directed_noise(
    video_pipe, settings, video_request
) -> None:
    """The demo preset's way: each video starts from `seeded_directed_noise` of its own seed, batched
    or not, and the pipeline draws the rest (the picture's noise augmentation) from the same generator."""
    preset = replace(settings.video.preset, directed_noise=True)
    picture = np.full((preset.height, preset.width, 3), (220, 30, 30), np.uint8)
    requests = [video_request(num_frames=4, num_inference_steps=2, seed=seed) for seed in (1, 2)]
    jobs = [VideoJob(image=encode_image(picture, "png"), request=request) for request in requests]
    videos = generate_videos(video_pipe, preset, jobs)
    generator = torch.Generator().manual_seed(2)
    scale = video_pipe.vae_scale_factor
    shape = (4, video_pipe.unet.config.out_channels, preset.height // scale, preset.width // scale)
    noise, _ = seeded_directed_noise(generator, shape)
    second = video_pipe(
        image=Image.fromarray(picture),
        width=preset.width,
        height=preset.height,
        num_frames=4,
        num_inference_steps=2,
        fps=requests[1].fps,
        motion_bucket_id=requests[1].motion_bucket_id,
        noise_aug_strength=requests[1].noise_aug_strength,
        latents=noise[None],
        generator=generator,
        output_type="np",
    ).frames[0]
    assert max_step_difference(videos[1], (second * 255).round().astype(np.uint8)) <= ONE_STEP
    [plain] = generate_videos(video_pipe, settings.video.preset, jobs[1:])  # SVD's own noise
    assert max_step_difference(videos[1], plain) > ONE_STEP


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


# Image editing: the editing pipelines on the text-to-image pipeline's weights.


@pytest.fixture(scope="module")
def image_pipes(image_pipe):
    return ImagePipelines.sharing(image_pipe)


@pytest.fixture(scope="module")
def edit_request(settings):
    return edit_request_model(settings.image.preset)


def red_circle(width: int = 64, height: int = 64) -> np.ndarray:
    """A red disc on blue: a picture whose every region the tests can name."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:] = (30, 40, 220)
    rows, columns = np.mgrid[:height, :width]
    picture[(rows - height // 2) ** 2 + (columns - width // 2) ** 2 < (min(width, height) // 4) ** 2] = (
        220,
        30,
        30,
    )
    return picture


def square_mask(width: int = 64, height: int = 64) -> np.ndarray:
    """White (repaint) in the middle half of each side, black elsewhere; greyscale."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return mask


def edit_one(pipes, settings, job: EditJob) -> np.ndarray:
    [pixels] = generate_edits(pipes, settings.image.preset, [job])
    return pixels


def test_editing_pipelines_share_the_text_to_image_weights(image_pipe, image_pipes) -> None:
    def tensors(pipe) -> set[int]:
        modules = [part for part in pipe.components.values() if isinstance(part, torch.nn.Module)]
        return {tensor.data_ptr() for module in modules for tensor in module.parameters()}

    assert tensors(image_pipes.image_to_image) == tensors(image_pipes.inpaint) == tensors(image_pipe)
    assert image_pipes.text_to_image is image_pipe


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (64, 128)])
def test_an_edit_has_its_input_size(image_pipes, settings, edit_request, size) -> None:
    width, height = size
    picture = encode_image(red_circle(width, height), "png")
    mask = encode_image(np.repeat(square_mask(width, height)[..., None], 3, axis=2), "png")
    for job in (
        EditJob(image=picture, request=edit_request(prompt="a cat", seed=1)),
        EditJob(image=picture, mask=mask, request=edit_request(prompt="a cat", seed=1)),
    ):
        assert edit_one(image_pipes, settings, job).shape == (height, width, 3)


def test_img2img_follows_its_strength(demo_models) -> None:
    """Low strength keeps the picture's look; full strength starts from noise and departs from it.
    On the demo model: the tiny one's random weights change any picture in one step."""
    from genserve.core.loading import load_image_pipeline
    from genserve.core.settings import Settings

    settings = Settings.from_env(DEMO)
    pipes = ImagePipelines.sharing(load_image_pipeline(settings))
    request = edit_request_model(settings.image.preset)
    picture = red_circle()
    image = encode_image(picture, "jpeg")  # any upload format
    gentle, strong = (
        edit_one(pipes, settings, EditJob(image=image, request=request(prompt="x", strength=s, seed=3)))
        for s in (0.05, 1.0)
    )
    distance = [np.abs(result.astype(int) - picture).mean() for result in (gentle, strong)]
    assert distance[0] < distance[1] / 4


def test_inpainting_keeps_every_pixel_outside_the_mask(image_pipes, settings, edit_request) -> None:
    picture, mask = red_circle(), square_mask()
    job = EditJob(
        image=encode_image(picture, "png"),
        mask=encode_image(np.repeat(mask[..., None], 3, axis=2), "png"),
        request=edit_request(prompt="a green square", strength=1.0, seed=4),
    )
    result = edit_one(image_pipes, settings, job)
    keep = mask < 128
    assert np.array_equal(result[keep], picture[keep])
    assert max_step_difference(result[~keep], picture[~keep]) > 10 * ONE_STEP


def test_a_mixed_batch_of_generations_and_edits_matches_each_alone(
    image_pipe, image_pipes, settings, image_request, edit_request
) -> None:
    picture = encode_image(red_circle(), "png")
    other = encode_image(red_circle(96, 64), "webp")
    mask = encode_image(np.repeat(square_mask()[..., None], 3, axis=2), "png")
    items = [
        EditJob(image=picture, request=edit_request(prompt="a blue sky", strength=0.7, seed=1)),
        image_request(prompt="a red cat", seed=2),
        EditJob(image=picture, mask=mask, request=edit_request(prompt="a blue sky", strength=0.7, seed=3)),
        EditJob(image=picture, request=edit_request(prompt="a dark sea", strength=0.7, seed=4)),
        EditJob(image=other, request=edit_request(prompt="a blue sky", strength=0.7, seed=5)),
        EditJob(image=picture, request=edit_request(prompt="a blue sky", strength=0.4, seed=6)),
    ]
    results = generate_image_work(image_pipes, settings.image.preset, items)
    for item, pixels in zip(items, results, strict=True):
        if isinstance(item, EditJob):
            alone = edit_one(image_pipes, settings, item)
        else:
            alone = generate_one(image_pipe, settings, item)
        assert max_step_difference(pixels, alone) <= ONE_STEP
    assert max_step_difference(results[0], results[3]) > ONE_STEP  # a neighbour's prompt is its own


def test_an_unwanted_edit_is_stopped_and_its_neighbours_are_served(
    image_pipes, settings, image_request, edit_request
) -> None:
    picture = encode_image(red_circle(), "png")
    items = [
        image_request(prompt="a cat", seed=1),
        EditJob(image=picture, request=edit_request(prompt="a cat", seed=1)),
        EditJob(image=picture, request=edit_request(prompt="a cat", seed=1, num_inference_steps=3)),
    ]
    results = generate_image_work(image_pipes, settings.image.preset, items, unwanted=lambda i: i == 1)
    assert results[1] is None
    assert results[0].shape == results[2].shape == (64, 64, 3)


def test_a_mask_is_white_where_to_repaint() -> None:
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    assert repaint_mask(encode_image(np.repeat(grey[..., None], 3, axis=2), "png")).tolist() == [
        [False, False],
        [True, True],
    ]
