"""Deploy-time settings from the environment."""

from __future__ import annotations

import pytest
from helpers import TINY

from genserve.core.presets import IMAGE_PRESETS, VIDEO_PRESETS
from genserve.core.settings import Settings


def test_defaults_are_the_demo_presets_from_the_model_store() -> None:
    settings = Settings.from_env({})
    assert (settings.image.preset.name, settings.video.preset.name) == ("demo", "demo")
    assert settings.image.source == "bentoml:genserve-image-demo"
    assert settings.video.source == "bentoml:genserve-video-demo"
    assert settings.image.max_batch_size == IMAGE_PRESETS["demo"].batching.max_batch_size


def test_environment_chooses_presets_sources_and_batching() -> None:
    settings = Settings.from_env(
        {
            "GENSERVE_IMAGE_PRESET": "sd35-large",
            "GENSERVE_VIDEO_PRESET": "svd-xt",
            "GENSERVE_IMAGE_MODEL": "/models/sd35",
            "GENSERVE_DEVICE": "cuda",
            "GENSERVE_CPU_OFFLOAD": "yes",
            "GENSERVE_VIDEO_MAX_BATCH_SIZE": "3",
        }
    )
    assert settings.image.preset is IMAGE_PRESETS["sd35-large"]
    assert settings.image.source == "/models/sd35"
    assert settings.video.source == VIDEO_PRESETS["svd-xt"].source
    assert settings.device == "cuda" and settings.cpu_offload
    assert settings.video.max_batch_size == 3
    assert settings.video.max_latency_ms == VIDEO_PRESETS["svd-xt"].batching.max_latency_ms


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GENSERVE_IMAGE_PRESET", "sd4", "unknown image preset 'sd4'"),
        ("GENSERVE_VIDEO_PRESET", "sora", "unknown video preset 'sora'"),
        ("GENSERVE_DEVICE", "tpu", "GENSERVE_DEVICE"),
        ("GENSERVE_VAE_TILING", "maybe", "GENSERVE_VAE_TILING"),
        ("GENSERVE_IMAGE_MAX_BATCH_SIZE", "0", "GENSERVE_IMAGE_MAX_BATCH_SIZE"),
        ("GENSERVE_VIDEO_MAX_LATENCY_MS", "soon", "GENSERVE_VIDEO_MAX_LATENCY_MS"),
    ],
)
def test_bad_settings_fail_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({name: value})


def test_batch_size_one_turns_batching_off() -> None:
    one = Settings.from_env({"GENSERVE_VIDEO_MAX_BATCH_SIZE": "1"})
    eight = Settings.from_env({"GENSERVE_IMAGE_MAX_BATCH_SIZE": "8", "GENSERVE_IMAGE_MAX_LATENCY_MS": "100"})
    assert one.video.batching() == {"batchable": False}
    assert eight.image.batching() == {"batchable": True, "max_batch_size": 8, "max_latency_ms": 100}


@pytest.mark.parametrize(
    ("gpus", "resources"), [("0", {"cpu": "1"}), ("1", {"gpu": 1}), ("0.5", {"gpu": 0.5})]
)
def test_generator_resources(gpus: str, resources: dict) -> None:
    settings = Settings.from_env({"GENSERVE_IMAGE_GPUS": gpus, "GENSERVE_VIDEO_GPUS": gpus})
    assert settings.image.resources() == settings.video.resources() == resources


def test_worker_layout_and_cpu_threads() -> None:
    """One worker per generator by default; the tiny presets and the demo image preset run one
    torch thread per worker."""
    defaults = Settings.from_env(TINY)
    assert (defaults.image.workers, defaults.video.workers) == (1, 1)
    assert defaults.image.cpu_threads == defaults.video.cpu_threads == 1
    demo = Settings.from_env({})
    assert (demo.image.cpu_threads, demo.video.cpu_threads) == (1, 0)
    assert defaults.vae_slicing is None  # decided by the device: on for GPUs
    large = Settings.from_env({"GENSERVE_IMAGE_PRESET": "sd35-large"})
    assert large.image.cpu_threads == 0  # torch's default: every core
    tuned = Settings.from_env(
        {"GENSERVE_IMAGE_WORKERS": "2", "GENSERVE_CPU_THREADS": "3", "GENSERVE_VAE_SLICING": "on"}
    )
    assert (tuned.image.workers, tuned.video.workers) == (2, 1)
    assert tuned.image.cpu_threads == tuned.video.cpu_threads == 3
    assert tuned.vae_slicing is True
    every_core = Settings.from_env({**TINY, "GENSERVE_CPU_THREADS": "0"})  # tiny on torch's default
    assert every_core.image.cpu_threads == every_core.video.cpu_threads == 0
    with pytest.raises(ValueError, match="GENSERVE_CPU_THREADS"):
        Settings.from_env({"GENSERVE_CPU_THREADS": "-1"})


def test_job_settings_have_defaults_and_refuse_bad_values() -> None:
    jobs = Settings.from_env({}).jobs
    assert (jobs.store_url, jobs.lease_s, jobs.max_jobs, jobs.runners) == (None, 30.0, 5000, 8)
    assert Settings.from_env({"GENSERVE_JOB_MAX_RESULT_MB": "2"}).jobs.max_result_bytes == 2 * 2**20
    for name, value in (
        ("GENSERVE_JOB_LEASE_S", "0.5"),
        ("GENSERVE_JOB_RETENTION_S", "nan"),
        ("GENSERVE_JOB_MAX", "lots"),
        ("GENSERVE_JOB_RUNNERS", "0"),
    ):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: value})
