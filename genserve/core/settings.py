"""Deploy-time settings, read from the environment once.

Every knob an operator may turn lives here, with its environment variable, so the
README, the container and the Kubernetes manifests have one list to follow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from genserve.core.presets import ImagePreset, VideoPreset, image_preset, video_preset
from genserve.core.protocol import DEFAULT_TIMEOUT_S

N = TypeVar("N", int, float)
B = TypeVar("B", bool, None)
P = TypeVar("P", ImagePreset, VideoPreset)
DEVICES = ("auto", "cpu", "cuda")
#: The presets when none is chosen: the demo models, trained by genserve, show on a CPU what it does.
DEFAULT_IMAGE_PRESET = "demo"
DEFAULT_VIDEO_PRESET = "demo"
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


def positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """The variable `name` as an integer of at least 1 (the gRPC gateway reads its own with it)."""
    return _number(environ, name, default, int, 1)


def seconds(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    """The variable `name` as a finite number of seconds, at least `minimum` (webhooks read theirs
    with it too)."""
    value = environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < minimum:
        raise ValueError(f"{name}={value!r} must be at least {minimum}")
    return number


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value) if value else None


@dataclass(frozen=True)
class GeneratorSettings(Generic[P]):
    """How one generator (image or video) is deployed: the same knobs for both, read from
    GENSERVE_IMAGE_* or GENSERVE_VIDEO_*, with its preset's defaults."""

    preset: P
    source: str  # Hugging Face id, local directory, or "bentoml:<tag>"
    max_batch_size: int
    max_latency_ms: int
    gpus: float  # GPUs per worker; 0.5 lets both generators share one GPU
    workers: int  # processes, each with its own pipeline
    cpu_threads: int  # torch threads per worker on a CPU; 0: all cores
    max_queue: int  # requests it holds (running + waiting); beyond: 429 at once

    @classmethod
    def from_env(cls, environ: Mapping[str, str], kind: str, preset: P) -> GeneratorSettings[P]:
        prefix = f"GENSERVE_{kind.upper()}_"
        batching = preset.batching
        return cls(
            preset=preset,
            source=environ.get(f"{prefix}MODEL") or preset.source,
            max_batch_size=positive_int(environ, f"{prefix}MAX_BATCH_SIZE", batching.max_batch_size),
            max_latency_ms=positive_int(environ, f"{prefix}MAX_LATENCY_MS", batching.max_latency_ms),
            gpus=_number(environ, f"{prefix}GPUS", 1.0, float, 0.0),
            workers=positive_int(environ, f"{prefix}WORKERS", 1),
            cpu_threads=_number(environ, "GENSERVE_CPU_THREADS", preset.cpu_threads, int, 0),
            max_queue=positive_int(environ, f"{prefix}MAX_QUEUE", QUEUE_BATCHES * batching.max_batch_size),
        )

    def batching(self) -> dict:
        """`bentoml.api` arguments of the generator's method. A batch size of 1 turns adaptive batching
        off (BentoML refuses batchable methods with a maximum of 1); the method is the same."""
        if self.max_batch_size == 1:
            return {"batchable": False}
        return {
            "batchable": True,
            "max_batch_size": self.max_batch_size,
            "max_latency_ms": self.max_latency_ms,
        }

    def resources(self) -> dict:
        """BentoML `resources` of the generator's service: GPUs to schedule it on, if any."""
        if self.gpus == 0:
            return {"cpu": "1"}
        return {"gpu": int(self.gpus) if float(self.gpus).is_integer() else self.gpus}


@dataclass(frozen=True)
class JobSettings:
    """The jobs API's store and its bounds (genserve/serving/job_store.py)."""

    store_url: str | None  # redis://... shared by replicas; None: an SQLite file on this machine
    lease_s: float  # a runner that stops renewing for this long loses its jobs to another
    retention_s: float  # finished jobs and their results are kept this long
    max_jobs: int  # jobs kept at once; a full store refuses new ones (503)
    max_result_bytes: int
    runners: int  # jobs each entry worker runs at once (they batch together)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> JobSettings:
        return cls(
            store_url=environ.get("GENSERVE_JOB_STORE_URL") or None,
            lease_s=seconds(environ, "GENSERVE_JOB_LEASE_S", 30.0, minimum=1.0),
            retention_s=seconds(environ, "GENSERVE_JOB_RETENTION_S", 3600.0, minimum=1.0),
            max_jobs=positive_int(environ, "GENSERVE_JOB_MAX", 5000),
            max_result_bytes=positive_int(environ, "GENSERVE_JOB_MAX_RESULT_MB", 64) * 2**20,
            runners=positive_int(environ, "GENSERVE_JOB_RUNNERS", 8),
        )


@dataclass(frozen=True)
class Settings:
    """What to load and how, chosen at deploy time."""

    image: GeneratorSettings[ImagePreset]
    video: GeneratorSettings[VideoPreset]
    device: str  # "auto" picks CUDA when present
    cpu_offload: bool  # diffusers model CPU offload: less GPU memory, slower
    vae_slicing: bool | None  # decode a batch one image at a time: less peak memory; None: on GPUs
    vae_tiling: bool  # decode large images in tiles: less peak memory
    request_timeout_s: int  # long enough for a queued video job
    api_keys: tuple[str, ...]  # empty and no key file: the API is open
    api_keys_file: Path | None  # one key per line, re-read when it changes (rotation)
    protect_metrics: bool  # /metrics needs a key too
    allow_untested_bentoml: bool  # start on a BentoML release genserve was not tested with
    png_parameters: bool  # PNG results say how they were made (prompt, seed...); off for privacy
    jobs: JobSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        image = image_preset(environ.get("GENSERVE_IMAGE_PRESET") or DEFAULT_IMAGE_PRESET)
        video = video_preset(environ.get("GENSERVE_VIDEO_PRESET") or DEFAULT_VIDEO_PRESET)
        device = environ.get("GENSERVE_DEVICE") or "auto"
        if device not in DEVICES:
            raise ValueError(f"GENSERVE_DEVICE={device!r} must be one of {DEVICES}")
        return cls(
            image=GeneratorSettings.from_env(environ, "image", image),
            video=GeneratorSettings.from_env(environ, "video", video),
            device=device,
            cpu_offload=_flag(environ, "GENSERVE_CPU_OFFLOAD", False),
            vae_slicing=_flag(environ, "GENSERVE_VAE_SLICING", None),
            vae_tiling=_flag(environ, "GENSERVE_VAE_TILING", False),
            request_timeout_s=positive_int(environ, "GENSERVE_REQUEST_TIMEOUT_S", DEFAULT_TIMEOUT_S),
            api_keys=tuple(
                key.strip() for key in environ.get("GENSERVE_API_KEYS", "").split(",") if key.strip()
            ),
            api_keys_file=_path(environ, "GENSERVE_API_KEYS_FILE"),
            protect_metrics=_flag(environ, "GENSERVE_PROTECT_METRICS", False),
            allow_untested_bentoml=_flag(environ, "GENSERVE_ALLOW_UNTESTED_BENTOML", False),
            png_parameters=_flag(environ, "GENSERVE_PNG_PARAMETERS", True),
            jobs=JobSettings.from_env(environ),
        )
