"""Model sources and loading: the store, local directories and hub ids all reach `from_pretrained`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY

from genserve.core.loading import load_image_pipeline, pick_device, resolve_source
from genserve.core.settings import Settings


def test_store_source_resolves_to_the_imported_model(tiny_models) -> None:
    path = Path(resolve_source("bentoml:genserve-image-tiny"))
    assert (path / "model_index.json").is_file()


def test_missing_store_model_says_how_to_import_it(tiny_models) -> None:
    with pytest.raises(FileNotFoundError, match="import_models.py"):
        resolve_source("bentoml:genserve-image-nothing")


def test_local_directory_and_hub_id(tmp_path) -> None:
    assert resolve_source(str(tmp_path)) == str(tmp_path)
    assert (
        resolve_source("stabilityai/stable-diffusion-3.5-large") == "stabilityai/stable-diffusion-3.5-large"
    )


def test_auto_device_is_the_cpu_here() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(Settings.from_env(TINY)).type == expected
    assert pick_device(Settings.from_env({**TINY, "GENSERVE_DEVICE": "cpu"})).type == "cpu"


def test_pipeline_loads_from_a_local_directory_in_float32(tiny_models, tmp_path) -> None:
    store_path = resolve_source("bentoml:genserve-image-tiny")
    pipe = load_image_pipeline(
        Settings.from_env({**TINY, "GENSERVE_IMAGE_MODEL": store_path, "GENSERVE_DEVICE": "cpu"})
    )
    assert pipe.transformer.dtype == torch.float32
    assert pipe.device.type == "cpu"


def test_cpu_pipeline_uses_the_preset_threads_and_decodes_batches_whole(tiny_models) -> None:
    """VAE slicing saves GPU memory; on the CPU it only slows batches down, so it is off there."""
    before = torch.get_num_threads()
    try:
        one_thread = {**TINY, "GENSERVE_DEVICE": "cpu", "GENSERVE_CPU_THREADS": "1"}
        pipe = load_image_pipeline(Settings.from_env(one_thread))
        assert torch.get_num_threads() == 1
        assert not pipe.vae.use_slicing
        sliced = load_image_pipeline(
            Settings.from_env({**TINY, "GENSERVE_DEVICE": "cpu", "GENSERVE_VAE_SLICING": "1"})
        )
        assert sliced.vae.use_slicing
    finally:
        torch.set_num_threads(before)
