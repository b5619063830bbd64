"""Shared fixtures: the tiny models are built once per test session, in a private model store."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A private BentoML home, set before anything imports bentoml, so tests never touch the
# user's model store and always start from a fresh one.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genserve-test-bentoml-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models() -> None:
    """The tiny preset in the model store, imported by the same command `make serve` runs."""
    subprocess.run(
        [sys.executable, str(ROOT / "models" / "import_models.py"), "--image", "tiny", "--video", "tiny"],
        check=True,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def settings(tiny_models):
    from genserve.settings import Settings

    return Settings.from_env({})


@pytest.fixture(scope="session")
def image_pipe(settings):
    from genserve.loading import load_image_pipeline

    return load_image_pipeline(settings)


@pytest.fixture(scope="session")
def video_pipe(settings):
    from genserve.loading import load_video_pipeline

    return load_video_pipeline(settings)
