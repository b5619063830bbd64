"""Generation: lists of requests in, results in the same order out.

This is what the batching services call. A batch that BentoML hands over may mix
parameters that one pipeline call cannot mix (size, steps, guidance, frames...), so
requests are grouped by those parameters and each group is one pipeline call. Every
request gets its own `torch.Generator` seeded from its own seed, so its result does not
depend on its neighbours (up to float rounding, at most one 8-bit step). Generators live
on the CPU, which makes a seed give the same noise on every device.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
    StableVideoDiffusionPipeline,
)
from PIL import Image, ImageOps

from genserve.core.directed_noise import seeded_directed_noise
from genserve.core.media import decode_image
from genserve.core.presets import ImagePreset, VideoPreset
from genserve.core.schemas import EditJob, ImageRequest, VideoJob

T = TypeVar("T")


#: Asked between denoising steps with a request's index: is its result still wanted?
StopCheck = Callable[[int], bool]
#: Told after each denoising step: these requests (indices) have done `step` of `total` steps.
Progress = Callable[[Sequence[int], int, int], None]


#: A diffusers step-end callback: (pipeline, step index, timestep, tensors) -> tensors.
StepCallback = Callable[[DiffusionPipeline, int, object, dict], dict]


class GroupStopped(Exception):
    """Raised between steps to abandon a pipeline call whose every request is unwanted."""


def _step_callback(
    indices: Sequence[int], unwanted: StopCheck | None, progress: Progress | None
) -> StepCallback | None:
    """A diffusers step-end callback: reports the group's progress, and aborts the call once no
    request of the group is wanted.

    Aborting mid-call (rather than setting the pipeline's interrupt flag, after which it still
    decodes) frees the GPU at the next step for requests that are still waited for.
    """
    if unwanted is None and progress is None:
        return None

    def callback(pipe: DiffusionPipeline, step: int, _timestep, tensors: dict) -> dict:
        if progress is not None:
            progress(indices, step + 1, pipe.num_timesteps)
        if unwanted is not None and all(unwanted(index) for index in indices):
            raise GroupStopped
        return tensors

    return callback


#: The tensors that classifier-free guidance doubles in SD3's denoising loop: the negative prompts'
#: rows, then the prompts'.
GUIDED_TENSORS = ("prompt_embeds", "pooled_prompt_embeds")


def _stop_guidance_after(steps: int) -> StepCallback:
    """A step-end callback for SD3's text-to-image pipeline that ends classifier-free guidance once
    `steps` steps are done: each later step runs the transformer on one row per prompt, not two.

    diffusers' own `SD3CFGCutoffCallback` keeps only the last row of the embeddings, right for one
    prompt (huggingface/diffusers#11890): in a batch every prompt would get the last one's.
    """

    def callback(pipe: DiffusionPipeline, step: int, _timestep, tensors: dict) -> dict:
        if step + 1 == steps and pipe.do_classifier_free_guidance:
            pipe._guidance_scale = 0.0  # what `do_classifier_free_guidance` reads, as upstream's does
            for name in GUIDED_TENSORS:
                tensors[name] = tensors[name].chunk(2)[1]
        return tensors

    return callback


def _guidance_cutoff(preset: ImagePreset, steps: int) -> dict:
    """`_run_pipeline`'s arguments that end guidance after the preset's `guided_share` of `steps`.

    Text to image only: SD3's img2img and inpaint pipelines do not hand their pooled embeddings to
    step callbacks, so a callback cannot end their guidance."""
    guided_steps = math.ceil(preset.guided_share * steps)
    if guided_steps >= steps:
        return {}
    return {
        "each_step": _stop_guidance_after(guided_steps),
        "callback_on_step_end_tensor_inputs": ["latents", *GUIDED_TENSORS],
    }


def _run_pipeline(
    pipe: DiffusionPipeline,
    indices: Sequence[int],
    unwanted: StopCheck | None,
    progress: Progress | None,
    each_step: StepCallback | None = None,
    **arguments,
):
    """One pipeline call for the group of requests `indices`; None if it was abandoned. `each_step`
    is the caller's own step-end callback, run before progress is reported (the tensors it needs
    are in `arguments`, as `callback_on_step_end_tensor_inputs`).

    An abandoned call skips what the pipeline does last, so that is done here: offloaded models
    (GENSERVE_CPU_OFFLOAD) go back to the CPU instead of holding the GPU's memory.
    """
    callbacks = [each_step, _step_callback(indices, unwanted, progress)]
    try:
        return pipe(**arguments, callback_on_step_end=_in_turn([c for c in callbacks if c is not None]))
    except GroupStopped:
        pipe.maybe_free_model_hooks()
        return None


def _in_turn(callbacks: Sequence[StepCallback]) -> StepCallback | None:
    """One step-end callback that runs `callbacks` in turn, each on the tensors the last returned."""
    if len(callbacks) <= 1:
        return callbacks[0] if callbacks else None

    def callback(pipe: DiffusionPipeline, step: int, timestep, tensors: dict) -> dict:
        for each in callbacks:
            tensors = each(pipe, step, timestep, tensors)
        return tensors

    return callback


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
    progress: Progress | None = None,
) -> list[np.ndarray | None]:
    """Text to image for a batch of requests, one pipeline call per compatible group.

    Returns one (height, width, 3) uint8 RGB array per request, in request order; None for a
    request whose group was abandoned because `unwanted` said nobody waits for any of it.
    """
    results: list[np.ndarray | None] = [None] * len(requests)
    for indices in group_compatible(requests, _image_batch_key):
        group = [requests[i] for i in indices]
        first = group[0]
        output = _run_pipeline(
            pipe,
            indices,
            unwanted,
            progress,
            **_guidance_cutoff(preset, first.num_inference_steps),
            prompt=[r.prompt for r in group],
            negative_prompt=[r.negative_prompt for r in group],
            width=first.width,
            height=first.height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            max_sequence_length=preset.max_sequence_length,
            generator=_generators([r.seed for r in group]),
            output_type="np",
        )
        if output is not None:
            for index, pixels in zip(indices, _to_uint8(output.images), strict=True):
                results[index] = pixels
    return results


@dataclass(frozen=True)
class ImagePipelines:
    """The image generator's pipelines on one set of weights: the editing ones are built from the
    loaded text-to-image pipeline (`from_pipe`) and share its modules, so memory does not grow.

    With GENSERVE_CPU_OFFLOAD they run with the offload hooks text to image installed on the
    shared modules (diffusers installs hooks per module, in an order that editing keeps).
    """

    text_to_image: StableDiffusion3Pipeline
    image_to_image: StableDiffusion3Img2ImgPipeline
    inpaint: StableDiffusion3InpaintPipeline

    @classmethod
    def sharing(cls, pipe: StableDiffusion3Pipeline) -> ImagePipelines:
        # `dtype`: from_pipe converts the shared modules to float32 unless told otherwise.
        editors = [
            editor.from_pipe(pipe, dtype=pipe.dtype)
            for editor in (StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline)
        ]
        for editor in editors:
            editor.set_progress_bar_config(disable=True)  # as loading.py does for text to image
        return cls(pipe, *editors)


def _edit_batch_key(job: EditJob) -> Hashable:
    r = job.request
    size = decode_image(job.image).size  # the header only
    return (job.kind, size, r.num_inference_steps, r.guidance_scale, r.strength)


def repaint_mask(mask: bytes) -> np.ndarray:
    """Where to repaint, as booleans: white (at least half grey), as diffusers binarises masks."""
    return np.asarray(decode_image(mask).convert("L")) >= 128


def generate_edits(
    pipes: ImagePipelines,
    preset: ImagePreset,
    jobs: Sequence[EditJob],
    unwanted: StopCheck | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray | None]:
    """Image to image and inpainting for a batch of jobs, one pipeline call per compatible group.

    Results have their input's size, as in `generate_images`. An inpainted result keeps the
    input's pixels outside its mask exactly: the pipeline repaints in latent space, whose 8x8
    blocks and VAE round trip would otherwise change a little of what the mask keeps.
    """
    results: list[np.ndarray | None] = [None] * len(jobs)
    for indices in group_compatible(jobs, _edit_batch_key):
        group = [jobs[i] for i in indices]
        first = group[0].request
        images = [decode_image(job.image).convert("RGB") for job in group]
        width, height = images[0].size
        masks = [repaint_mask(job.mask) for job in group if job.mask is not None]
        if masks:
            pipe, extra = pipes.inpaint, {"mask_image": [Image.fromarray(mask) for mask in masks]}
        else:
            pipe, extra = pipes.image_to_image, {}
        output = _run_pipeline(
            pipe,
            indices,
            unwanted,
            progress,
            prompt=[job.request.prompt for job in group],
            negative_prompt=[job.request.negative_prompt for job in group],
            image=images,
            strength=first.strength,
            width=width,
            height=height,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            max_sequence_length=preset.max_sequence_length,
            generator=_generators([job.request.seed for job in group]),
            output_type="np",
            **extra,
        )
        if output is None:
            continue
        edited = _to_uint8(output.images)
        if masks:
            edited = [
                np.where(mask[..., None], pixels, np.asarray(image))
                for mask, pixels, image in zip(masks, edited, images, strict=True)
            ]
        for index, pixels in zip(indices, edited, strict=True):
            results[index] = pixels
    return results


def generate_image_work(
    pipes: ImagePipelines,
    preset: ImagePreset,
    items: Sequence[ImageRequest | EditJob],
    unwanted: StopCheck | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray | None]:
    """What the image generator runs: a batch of text-to-image requests and edits, each kind
    in its own pipeline calls; results in the batch's order."""
    results: list[np.ndarray | None] = [None] * len(items)
    texts = [i for i, item in enumerate(items) if isinstance(item, ImageRequest)]
    edits = [i for i, item in enumerate(items) if isinstance(item, EditJob)]
    for indices, generate in (
        (texts, partial(generate_images, pipes.text_to_image)),
        (edits, partial(generate_edits, pipes)),
    ):
        if not indices:
            continue
        part_unwanted = None if unwanted is None else partial(_unwanted_in, indices, unwanted)
        part_progress = None if progress is None else partial(_progress_in, indices, progress)
        part = [items[i] for i in indices]
        for index, pixels in zip(indices, generate(preset, part, part_unwanted, part_progress), strict=True):
            results[index] = pixels
    return results


def _unwanted_in(indices: Sequence[int], unwanted: StopCheck, index: int) -> bool:
    """`unwanted` of a part of a batch: its `index` is the part's, `indices` map it to the batch's."""
    return unwanted(indices[index])


def _progress_in(
    indices: Sequence[int], progress: Progress, done: Sequence[int], step: int, total: int
) -> None:
    """`progress` of a part of a batch, as `_unwanted_in`."""
    progress([indices[index] for index in done], step, total)


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
    progress: Progress | None = None,
) -> list[np.ndarray | None]:
    """Image to video for a batch of jobs, one pipeline call per compatible group.

    Returns one (frames, height, width, 3) uint8 RGB array per job, in job order; None for an
    abandoned group, as in `generate_images`.
    """
    results: list[np.ndarray | None] = [None] * len(jobs)
    for indices in group_compatible(jobs, _video_batch_key):
        group = [jobs[i] for i in indices]
        first = group[0].request
        generators = _generators([job.request.seed for job in group])
        noise = _directed_noise(pipe, preset, generators, first.num_frames) if preset.directed_noise else None
        output = _run_pipeline(
            pipe,
            indices,
            unwanted,
            progress,
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
            latents=noise,
            generator=generators,
            output_type="latent",
        )
        if output is None:
            continue
        for index, video_latents in zip(indices, output.frames, strict=True):
            results[index] = _decode_video(pipe, video_latents, first.num_frames, preset.decode_chunk_size)
    return results


def _directed_noise(
    pipe: StableVideoDiffusionPipeline, preset: VideoPreset, generators: list[torch.Generator], frames: int
) -> torch.Tensor:
    """Each video's `seeded_directed_noise`, drawn from its generator before the pipeline draws the
    rest (the conditioning picture's noise augmentation)."""
    scale = pipe.vae_scale_factor
    shape = (frames, pipe.unet.config.out_channels, preset.height // scale, preset.width // scale)
    return torch.stack([seeded_directed_noise(generator, shape)[0] for generator in generators]).to(
        pipe.unet.dtype
    )


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
