"""Generation: lists of requests in, results in the same order out.

This is what the batching services call. A batch that BentoML hands over may mix
parameters that one pipeline call cannot mix (size, steps, guidance, frames...), so
requests are grouped by those parameters and each group is one pipeline call. Every
request gets its own `torch.Generator` seeded from its own seed, so its result does not
depend on its neighbours (up to float rounding, at most one 8-bit step). Generators live
on the CPU, which makes a seed give the same noise on every device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np
import torch
from diffusers import DiffusionPipeline, StableDiffusion3Pipeline, StableVideoDiffusionPipeline
from PIL import Image, ImageOps

from genserve.core.media import decode_image
from genserve.core.presets import ImagePreset, VideoPreset
from genserve.core.schemas import ImageRequest, VideoJob

T = TypeVar("T")


#: Asked between denoising steps with a request's index: is its result still wanted?
StopCheck = Callable[[int], bool]


class GroupStopped(Exception):
    """Raised between steps to abandon a pipeline call whose every request is unwanted."""


def _stop_callback(indices: Sequence[int], unwanted: StopCheck | None) -> Callable | None:
    """A diffusers step-end callback that aborts the call once no request of the group is wanted.

    Aborting mid-call (rather than setting the pipeline's interrupt flag, after which it still
    decodes) frees the GPU at the next step for requests that are still waited for.
    """
    if unwanted is None:
        return None

    def callback(_pipe, _step: int, _timestep, tensors: dict) -> dict:
        if all(unwanted(index) for index in indices):
            raise GroupStopped
        return tensors

    return callback


def _clean_up_after_stop(pipe: DiffusionPipeline) -> None:
    """What a pipeline call does last, skipped when GroupStopped leaves it: offloaded models
    (GENSERVE_CPU_OFFLOAD) go back to the CPU instead of holding the GPU's memory."""
    pipe.maybe_free_model_hooks()


def group_compatible(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[int]]:
    """Indices of `items` grouped by `key`, groups in order of first appearance."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[key(item)].append(index)
    return list(groups.values())


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] to uint8, rounding as diffusers' own PIL conversion does."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def _image_batch_key(request: ImageRequest) -> Hashable:
    return (request.width, request.height, request.num_inference_steps, request.guidance_scale)


def generate_images(
    pipe: StableDiffusion3Pipeline,
    preset: ImagePreset,
    requests: Sequence[ImageRequest],
    unwanted: StopCheck | None = None,
) -> list[np.ndarray | None]:
    """Text to image for a batch of requests, one pipeline call per compatible group.

    Returns one (height, width, 3) uint8 RGB array per request, in request order; None for a
    request whose group was abandoned because `unwanted` said nobody waits for any of it.
    """
    results: list[np.ndarray | None] = [None] * len(requests)
    for indices in group_compatible(requests, _image_batch_key):
        group = [requests[i] for i in indices]
        first = group[0]
        try:
            images = pipe(
                prompt=[r.prompt for r in group],
                negative_prompt=[r.negative_prompt for r in group],
                width=first.width,
                height=first.height,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                max_sequence_length=preset.max_sequence_length,
                generator=_generators([r.seed for r in group]),
                output_type="np",
                callback_on_step_end=_stop_callback(indices, unwanted),
            ).images
        except GroupStopped:
            _clean_up_after_stop(pipe)
            continue
        for index, pixels in zip(indices, _to_uint8(images), strict=True):
            results[index] = pixels
    return results


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop to the target aspect (centred) and resize: the video model sees no distortion."""
    return ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS)


def _video_batch_key(job: VideoJob) -> Hashable:
    r = job.request
    return (r.num_frames, r.fps, r.motion_bucket_id, r.noise_aug_strength, r.num_inference_steps)


def generate_videos(
    pipe: StableVideoDiffusionPipeline,
    preset: VideoPreset,
    jobs: Sequence[VideoJob],
    unwanted: StopCheck | None = None,
) -> list[np.ndarray | None]:
    """Image to video for a batch of jobs, one pipeline call per compatible group.

    Returns one (frames, height, width, 3) uint8 RGB array per job, in job order; None for an
    abandoned group, as in `generate_images`.
    """
    results: list[np.ndarray | None] = [None] * len(jobs)
    for indices in group_compatible(jobs, _video_batch_key):
        group = [jobs[i] for i in indices]
        first = group[0].request
        try:
            latents = pipe(
                image=[fit_image(decode_image(job.image), preset.width, preset.height) for job in group],
                width=preset.width,
                height=preset.height,
                num_frames=first.num_frames,
                num_inference_steps=first.num_inference_steps,
                min_guidance_scale=preset.min_guidance_scale,
                max_guidance_scale=preset.max_guidance_scale,
                fps=first.fps,
                motion_bucket_id=first.motion_bucket_id,
                noise_aug_strength=first.noise_aug_strength,
                generator=_generators([job.request.seed for job in group]),
                output_type="latent",
                callback_on_step_end=_stop_callback(indices, unwanted),
            ).frames
        except GroupStopped:
            _clean_up_after_stop(pipe)
            continue
        for index, video_latents in zip(indices, latents, strict=True):
            results[index] = _decode_video(pipe, video_latents, first.num_frames, preset.decode_chunk_size)
    return results


@torch.inference_mode()
def _decode_video(
    pipe: StableVideoDiffusionPipeline, latents: torch.Tensor, num_frames: int, chunk_size: int
) -> np.ndarray:
    """Decode one video's latents to uint8 frames.

    Decoded one video at a time because the pipeline's own decoder cuts the whole batch's
    frames into chunks and its temporal layers would mix frames of neighbouring videos.
    """
    frames = pipe.decode_latents(latents.unsqueeze(0), num_frames, chunk_size)
    return _to_uint8(pipe.video_processor.postprocess_video(video=frames, output_type="np"))[0]
