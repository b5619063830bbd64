"""Deploy-time settings, read from the environment once.

Every knob an operator may turn lives here, with its environment variable, so the
README, the container and the Kubernetes manifests have one list to follow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from genserve.core.presets import ImagePreset, VideoPreset, image_preset, video_preset
from genserve.core.protocol import DEFAULT_TIMEOUT_S

N = TypeVar("N", int, float)
B = TypeVar("B", bool, None)
DEVICES = ("auto", "cpu", "cuda")
#: The presets when none is chosen. The demo image model, trained by genserve, shows on a CPU what
#: it does; the demo video model is not trained yet (docs/demo-training.md), so video is tiny's.
DEFAULT_IMAGE_PRESET = "demo"
DEFAULT_VIDEO_PRESET = "tiny"
#: Default queue bound of a generator, in batches: enough to keep it busy, short enough that a
#: queued request is served long before its timeout.
QUEUE_BATCHES = 4


def _flag(environ: Mapping[str, str], name: str, default: B) -> bool | B:
    value = environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _number(environ: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], minimum: N) -> N:
    """The variable `name` parsed as a number of at least `minimum`; `default` when unset."""
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not {'an integer' if parse is int else 'a number'}") from None
    if number < minimum:
        raise ValueError(f"{name}={value!r} must be at least {minimum}")
    return number


def _gpus(environ: Mapping[str, str], name: str) -> float:
    return _number(environ, name, 1.0, float, 0.0)


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _number(environ, name, default, int, 1)


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value) if value else None


@dataclass(frozen=True)
class Settings:
    """What to load and how, chosen at deploy time."""

    image_preset: ImagePreset
    video_preset: VideoPreset
    image_source: str  # Hugging Face id, local directory, or "bentoml:<tag>"
    video_source: str
    device: str  # "auto" picks CUDA when present
    cpu_offload: bool  # diffusers model CPU offload: less GPU memory, slower
    vae_slicing: bool | None  # decode a batch one image at a time: less peak memory; None: on GPUs
    vae_tiling: bool  # decode large images in tiles: less peak memory
    image_max_batch_size: int
    image_max_latency_ms: int
    video_max_batch_size: int
    video_max_latency_ms: int
    image_gpus: float  # GPUs per image generator worker; 0.5 lets both generators share one GPU
    video_gpus: float
    image_workers: int  # processes of the image generator, each with its own pipeline
    video_workers: int
    image_cpu_threads: int  # torch threads per image generator worker on a CPU; 0: all cores
    video_cpu_threads: int
    request_timeout_s: int  # long enough for a queued video job
    image_max_queue: int  # requests a generator holds (running + waiting); beyond: 429 at once
    video_max_queue: int
    api_keys: tuple[str, ...]  # empty and no key file: the API is open
    api_keys_file: Path | None  # one key per line, re-read when it changes (rotation)
    protect_metrics: bool  # /metrics needs a key too
    allow_untested_bentoml: bool  # start on a BentoML release genserve was not tested with

    @staticmethod
    def batching(max_batch_size: int, max_latency_ms: int) -> dict:
        """`bentoml.api` arguments of a generator method. A batch size of 1 turns adaptive batching
        off (BentoML refuses batchable methods with a maximum of 1); the method is the same."""
        if max_batch_size == 1:
            return {"batchable": False}
        return {"batchable": True, "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}

    def generator_resources(self, gpus: float) -> dict:
        """BentoML `resources` of a generator service: GPUs to schedule it on, if any."""
        if gpus == 0:
            return {"cpu": "1"}
        return {"gpu": int(gpus) if float(gpus).is_integer() else gpus}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        image = image_preset(environ.get("GENSERVE_IMAGE_PRESET") or DEFAULT_IMAGE_PRESET)
        video = video_preset(environ.get("GENSERVE_VIDEO_PRESET") or DEFAULT_VIDEO_PRESET)
        device = environ.get("GENSERVE_DEVICE") or "auto"
        if device not in DEVICES:
            raise ValueError(f"GENSERVE_DEVICE={device!r} must be one of {DEVICES}")
        return cls(
            image_preset=image,
            video_preset=video,
            image_source=environ.get("GENSERVE_IMAGE_MODEL") or image.source,
            video_source=environ.get("GENSERVE_VIDEO_MODEL") or video.source,
            device=device,
            cpu_offload=_flag(environ, "GENSERVE_CPU_OFFLOAD", False),
            vae_slicing=_flag(environ, "GENSERVE_VAE_SLICING", None),
            vae_tiling=_flag(environ, "GENSERVE_VAE_TILING", False),
            image_max_batch_size=_positive_int(
                environ, "GENSERVE_IMAGE_MAX_BATCH_SIZE", image.batching.max_batch_size
            ),
            image_max_latency_ms=_positive_int(
                environ, "GENSERVE_IMAGE_MAX_LATENCY_MS", image.batching.max_latency_ms
            ),
            video_max_batch_size=_positive_int(
                environ, "GENSERVE_VIDEO_MAX_BATCH_SIZE", video.batching.max_batch_size
            ),
            video_max_latency_ms=_positive_int(
                environ, "GENSERVE_VIDEO_MAX_LATENCY_MS", video.batching.max_latency_ms
            ),
            image_gpus=_gpus(environ, "GENSERVE_IMAGE_GPUS"),
            video_gpus=_gpus(environ, "GENSERVE_VIDEO_GPUS"),
            image_workers=_positive_int(environ, "GENSERVE_IMAGE_WORKERS", 1),
            video_workers=_positive_int(environ, "GENSERVE_VIDEO_WORKERS", 1),
            image_cpu_threads=_number(environ, "GENSERVE_CPU_THREADS", image.cpu_threads, int, 0),
            video_cpu_threads=_number(environ, "GENSERVE_CPU_THREADS", video.cpu_threads, int, 0),
            request_timeout_s=_positive_int(environ, "GENSERVE_REQUEST_TIMEOUT_S", DEFAULT_TIMEOUT_S),
            image_max_queue=_positive_int(
                environ, "GENSERVE_IMAGE_MAX_QUEUE", QUEUE_BATCHES * image.batching.max_batch_size
            ),
            video_max_queue=_positive_int(
                environ, "GENSERVE_VIDEO_MAX_QUEUE", QUEUE_BATCHES * video.batching.max_batch_size
            ),
            api_keys=tuple(
                key.strip() for key in environ.get("GENSERVE_API_KEYS", "").split(",") if key.strip()
            ),
            api_keys_file=_path(environ, "GENSERVE_API_KEYS_FILE"),
            protect_metrics=_flag(environ, "GENSERVE_PROTECT_METRICS", False),
            allow_untested_bentoml=_flag(environ, "GENSERVE_ALLOW_UNTESTED_BENTOML", False),
        )
