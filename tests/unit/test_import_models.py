"""The model import command: tiny is built and demo copied offline; hub presets fail clearly
without a network."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT

COMMAND = [sys.executable, str(ROOT / "models" / "import_models.py")]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, timeout=300
    )


def test_tiny_import_is_idempotent(tiny_models) -> None:
    result = run("--image", "tiny")
    assert result.returncode == 0
    assert "genserve-image-tiny: already in the model store" in result.stdout


def test_demo_import_copies_the_committed_weights_once(demo_models) -> None:
    result = run("--image", "demo", "--video", "demo")
    assert result.returncode == 0
    assert "genserve-image-demo: already in the model store" in result.stdout
    assert "genserve-video-demo: already in the model store" in result.stdout


def test_hub_preset_without_network_fails_with_a_clear_message(tiny_models) -> None:
    result = run("--image", "sd35-large", HF_HUB_OFFLINE="1")
    assert result.returncode != 0
    assert "cannot download stabilityai/stable-diffusion-3.5-large" in result.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list", "-o", "json"], capture_output=True, text=True
    )
    assert "genserve-image-tiny" in listed.stdout
    assert "genserve-image-sd35-large" not in listed.stdout  # nothing half-imported is left behind


def test_no_preset_named_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "--image" in result.stderr
