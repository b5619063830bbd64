"""Loading pipelines: where the weights come from, which device and precision, which memory options.

Every preset, the tiny one included, goes through the same `from_pretrained` call; only
the source differs. A source is one of:

- ``bentoml:<tag>`` - a model in the BentoML model store (how the tiny preset and baked-in
  container models are found);
- a local directory in the diffusers layout;
- anything else is a Hugging Face Hub id (gated models read ``HF_TOKEN``).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusion3Pipeline, StableVideoDiffusionPipeline

from genserve.core.settings import Settings

logger = logging.getLogger(__name__)

STORE_PREFIX = "bentoml:"


def resolve_source(source: str) -> str:
    """Turn a model source into what `from_pretrained` takes: a local path or a hub id."""
    if source.startswith(STORE_PREFIX):
        import bentoml  # imported here: only store sources need it

        tag = source.removeprefix(STORE_PREFIX)
        try:
            return bentoml.models.get(tag).path
        except bentoml.exceptions.NotFound:
            raise FileNotFoundError(
                f"model {tag!r} is not in the BentoML model store; "
                "import it first: python models/import_models.py --help"
            ) from None
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    return source


def pick_device(settings: Settings) -> torch.device:
    """CUDA when asked for or available ("auto"), the CPU otherwise."""
    if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if not (settings.image.preset.embedded and settings.video.preset.embedded):
        # Typically two generators with a whole GPU each on a one-GPU host: BentoML hands the
        # second one CUDA_VISIBLE_DEVICES=1. Set GENSERVE_IMAGE_GPUS/VIDEO_GPUS=0.5 there.
        logger.warning("no CUDA device visible: running a full-size preset on the CPU will be very slow")
    return torch.device("cpu")


def _dtype(device: torch.device, cuda_dtype: str) -> torch.dtype:
    """Half precision on the GPU as each preset prescribes; float32 on the CPU, where half is slow."""
    return getattr(torch, cuda_dtype) if device.type == "cuda" else torch.float32


def _place(pipe: DiffusionPipeline, device: torch.device, settings: Settings) -> DiffusionPipeline:
    """Move the pipeline to its device, with the memory options the settings ask for."""
    if settings.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# glibc's mallopt parameters (malloc.h) and the values a generator on the CPU runs best with.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum on 64-bit systems


def tune_for_cpu(threads: int) -> None:
    """Set up this process to generate on the CPU: torch's threads (0: its default) and malloc.

    Each denoising step allocates and frees activations of a few MiB. glibc serves blocks above
    its mmap threshold (128 KiB at first) with fresh mappings that it returns to the system when
    they are freed, and trims the heap's free top, so the next step page-faults its memory in
    again: ~20 % of a tiny image's time (bench/README.md). A generator's working set is the same
    from one call to the next, so it keeps it. Not glibc: nothing to tune.
    """
    if threads:
        torch.set_num_threads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


def load_image_pipeline(settings: Settings) -> StableDiffusion3Pipeline:
    """Load the text-to-image pipeline of the settings' image preset.

    VAE slicing saves GPU memory at large batches; on a CPU memory is not short and decoding a
    batch at once is ~1.5x faster, so by default it is on for GPUs only.
    """
    device = pick_device(settings)
    if device.type == "cpu":
        tune_for_cpu(settings.image.cpu_threads)
    source = resolve_source(settings.image.source)
    logger.info("loading image pipeline %s from %s on %s", settings.image.preset.name, source, device)
    pipe = StableDiffusion3Pipeline.from_pretrained(
        source, dtype=_dtype(device, settings.image.preset.cuda_dtype)
    )
    if settings.vae_slicing or (settings.vae_slicing is None and device.type == "cuda"):
        pipe.vae.enable_slicing()
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    return _place(pipe, device, settings)


def load_video_pipeline(settings: Settings) -> StableVideoDiffusionPipeline:
    """Load the image-to-video pipeline of the settings' video preset.

    The temporal VAE decodes frames in chunks (`decode_chunk_size`), which bounds its
    memory; slicing and tiling do not apply to it.
    """
    device = pick_device(settings)
    if device.type == "cpu":
        tune_for_cpu(settings.video.cpu_threads)
    preset = settings.video.preset
    source = resolve_source(settings.video.source)
    logger.info("loading video pipeline %s from %s on %s", preset.name, source, device)
    pipe = StableVideoDiffusionPipeline.from_pretrained(
        source, dtype=_dtype(device, preset.cuda_dtype), variant=preset.variant
    )
    return _place(pipe, device, settings)
