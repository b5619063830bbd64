"""`python -m bench --preset sd35-large`: the real SD3.5 Large and SVD-XT architectures on a GPU.

Builds both from their published configs (bench/real_configs.py) with random weights, directly
on the GPU in each preset's precision (bf16 / fp16): no download, no licence, the same compute
as the real models. Then times genserve's own generation code at the presets' defaults
(1024×1024, 28 steps; 1024×576, 25 frames, 25 steps), one request and a batch of the preset's
`max_batch_size`, with the peak GPU memory of each. Without CUDA it says so and does nothing.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.real_configs import SD35_LARGE, SVD_XT

if TYPE_CHECKING:
    from diffusers import StableDiffusion3Pipeline, StableVideoDiffusionPipeline

    from genserve.core.presets import ImagePreset, VideoPreset

GIB = 1024**3
REPEATS = 2  # single-request timings per pipeline; the median is reported


def _random(factory: Callable[[], torch.nn.Module], dtype: torch.dtype, device: str) -> torch.nn.Module:
    """A model with random weights, created on `device` in `dtype`: no float32 copy of 8 B parameters.
    On the "meta" device it has shapes only (the tests count its parameters)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = factory()
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()  # buffers some models compute in float32


def sd35_large_pipeline(device: str = "cuda", config: dict = SD35_LARGE):
    """SD3.5 Large (the Turbo's architecture too), or Medium with `config=SD35_MEDIUM`."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from genserve.core.tiny import build_clip_tokenizer, build_t5_tokenizer

    # The tiny preset's tokenizers: token ids only need to be in range, and the encoders pad to
    # fixed lengths (77 CLIP tokens, 256 T5 tokens), so the compute is the real models'.
    clip_tokenizer, t5_tokenizer = build_clip_tokenizer(), build_t5_tokenizer()
    special = {
        "bos_token_id": clip_tokenizer.bos_token_id,
        "eos_token_id": clip_tokenizer.eos_token_id,
        "pad_token_id": clip_tokenizer.pad_token_id,
    }
    dtype = torch.bfloat16
    pipe = StableDiffusion3Pipeline(
        transformer=_random(lambda: SD3Transformer2DModel(**config["transformer"]), dtype, device),
        scheduler=FlowMatchEulerDiscreteScheduler(**config["scheduler"]),
        vae=_random(lambda: AutoencoderKL(**config["vae"]), dtype, device),
        text_encoder=_random(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder"], **special)),
            dtype,
            device,
        ),
        tokenizer=clip_tokenizer,
        text_encoder_2=_random(
            lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"], **special)),
            dtype,
            device,
        ),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=_random(
            lambda: T5EncoderModel(
                T5Config(
                    **config["text_encoder_3"],
                    pad_token_id=t5_tokenizer.pad_token_id,
                    eos_token_id=t5_tokenizer.eos_token_id,
                )
            ),
            dtype,
            device,
        ),
        tokenizer_3=t5_tokenizer,
    )
    pipe.vae.enable_slicing()  # as served: GENSERVE_VAE_SLICING defaults to on for GPUs
    pipe.set_progress_bar_config(disable=True)
    return pipe


def svd_xt_pipeline(device: str = "cuda"):
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config, dtype = SVD_XT, torch.float16
    pipe = StableVideoDiffusionPipeline(
        vae=_random(lambda: AutoencoderKLTemporalDecoder(**config["vae"]), dtype, device),
        image_encoder=_random(
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"])),
            dtype,
            device,
        ),
        unet=_random(lambda: UNetSpatioTemporalConditionModel(**config["unet"]), dtype, device),
        scheduler=EulerDiscreteScheduler(**config["scheduler"]),
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _timed(call: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Seconds and peak GPU memory (GiB; 0 off the GPU) of one call."""
    if device.type != "cuda":
        started = time.perf_counter()
        call()
        return time.perf_counter() - started, 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return time.perf_counter() - started, torch.cuda.max_memory_allocated() / GIB


def _measure(
    name: str, generate: Callable[[int, int | None], object], batch: int, device: torch.device
) -> dict:
    """`generate(n, steps)` makes n requests; steps None means the preset's default."""
    print(f"{name}: warm-up", flush=True)
    generate(1, 2)  # kernel selection and allocator growth are not part of a request's cost
    singles = [_timed(lambda: generate(1, None), device) for _ in range(REPEATS)]
    batched, batch_peak = _timed(lambda: generate(batch, None), device)
    single = statistics.median(s for s, _ in singles)
    return {
        "model": name,
        "latency_s": single,
        "peak_gib": max(p for _, p in singles),
        "batch": batch,
        "batch_s": batched,
        "batch_peak_gib": batch_peak,
        "batching_gain": batch * single / batched,
    }


def measure_image(pipe: StableDiffusion3Pipeline, preset: ImagePreset) -> dict:
    """Time genserve's image generation with `pipe` at `preset`'s defaults: one request, a batch."""
    from genserve.core.generation import generate_images
    from genserve.core.schemas import image_request_model

    request = image_request_model(preset)

    def generate(n: int, steps: int | None) -> object:
        fields = {} if steps is None else {"num_inference_steps": steps}
        requests = [request(prompt=f"a red cat {i}", seed=i, **fields) for i in range(n)]
        return generate_images(pipe, preset, requests)

    label = f"{preset.name} architecture, {pipe.dtype}, {preset.default_width}×{preset.default_height}"
    batch = preset.batching.max_batch_size
    return _measure(f"{label}, {preset.default_steps} steps", generate, batch, pipe.device)


def measure_video(pipe: StableVideoDiffusionPipeline, preset: VideoPreset) -> dict:
    """Time genserve's video generation with `pipe` at `preset`'s defaults: one request, a batch."""
    from genserve.core.generation import generate_videos
    from genserve.core.media import encode_image
    from genserve.core.schemas import VideoJob, video_request_model

    request = video_request_model(preset)
    noise = np.random.default_rng(0).integers(0, 256, (preset.height, preset.width, 3), dtype=np.uint8)
    image = encode_image(noise, "png")

    def generate(n: int, steps: int | None) -> object:
        fields = {} if steps is None else {"num_inference_steps": steps}
        jobs = [VideoJob(image=image, request=request(seed=i, **fields)) for i in range(n)]
        return generate_videos(pipe, preset, jobs)

    size = f"{preset.width}×{preset.height}, {preset.default_frames} frames"
    label = f"{preset.name} architecture, {pipe.dtype}, {size}"
    batch = preset.batching.max_batch_size
    return _measure(f"{label}, {preset.default_steps} steps", generate, batch, pipe.device)


def markdown(rows: list[dict], device: str) -> str:
    lines = [
        f"## Benchmark: real architectures, random weights, on {device}",
        "",
        "| model | latency, 1 request | peak GPU memory | batch | batch time | batching gain | peak, batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['latency_s']:.1f} s | {row['peak_gib']:.1f} GiB | {row['batch']} "
            f"| {row['batch_s']:.1f} s | {row['batching_gain']:.2f} | {row['batch_peak_gib']:.1f} GiB |"
        )
    return "\n".join(lines) + "\n"


def main(out: Path) -> None:
    if not torch.cuda.is_available():
        print(
            "skipped: --preset sd35-large builds the real SD3.5 Large (8 B-parameter MMDiT, T5-XXL) and "
            "SVD-XT architectures in bf16/fp16 and needs a CUDA GPU; none is visible here."
        )
        return
    from genserve.core.presets import IMAGE_PRESETS, VIDEO_PRESETS

    # One at a time: each pipeline is freed before the next is built.
    rows = [measure_image(sd35_large_pipeline(), IMAGE_PRESETS["sd35-large"])]
    gc.collect()  # a pipeline's modules refer to each other: freed by the collector, not at once
    torch.cuda.empty_cache()
    rows.append(measure_video(svd_xt_pipeline(), VIDEO_PRESETS["svd-xt"]))
    out.mkdir(parents=True, exist_ok=True)
    report = markdown(rows, torch.cuda.get_device_name())
    (out / "gpu.md").write_text(report)
    (out / "gpu.json").write_text(json.dumps(rows, indent=2))
    print(report)
    print(f"written: {out / 'gpu.md'}")
