"""Shared fixtures: the tiny models are built once per test session, in a private model store.
Helpers the tests import are in helpers.py."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ENV_KEYS, FILE_KEY, ROOT, TINY, running_server

from genserve.serving.processes import demo_import_command, tiny_import_command

# A private BentoML home, set before anything imports bentoml, so tests never touch the
# user's model store and always start from a fresh one.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genserve-test-bentoml-")
# The servers under test run with genserve's defaults, whatever the shell exported for `make serve`
# (API keys would make every request a 401; a preset would disagree with the `settings` fixture),
# except for the presets: the tiny one, whose speed the suite needs; tests of the demo ask for it.
for name in [name for name in os.environ if name.startswith("GENSERVE_")]:
    del os.environ[name]
os.environ.update(TINY)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models() -> None:
    """The tiny preset in the model store, imported by the same command `make serve` runs."""
    subprocess.run(tiny_import_command(), check=True, cwd=ROOT)


@pytest.fixture(scope="session")
def demo_models(tiny_models) -> None:
    """The demo preset (the committed weights) in the model store, as `make models` imports it."""
    subprocess.run(demo_import_command(), check=True, cwd=ROOT)


@pytest.fixture(scope="session")
def settings(tiny_models):
    from genserve.core.settings import Settings

    return Settings.from_env(TINY)


@pytest.fixture(scope="session")
def image_pipe(settings):
    from genserve.core.loading import load_image_pipeline

    return load_image_pipeline(settings)


@pytest.fixture(scope="session")
def video_pipe(settings):
    from genserve.core.loading import load_video_pipeline

    return load_video_pipeline(settings)


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory) -> Iterator[str]:
    """The shared served API on the tiny preset, default settings; yields its URL."""
    with running_server(tmp_path_factory.mktemp("server")) as (url, _):
        yield url


@pytest.fixture(scope="session")
def keyed(tiny_models, tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """The served API with keys: ENV_KEYS from the environment, FILE_KEY from a key file that
    tests may rewrite (and restore); yields its URL, the key file and the server's log folder.
    It is also the privacy-minded deployment: PNG results do not say how they were made."""
    directory = tmp_path_factory.mktemp("keyed")
    key_file = directory / "keys"
    key_file.write_text(f"# rotated by the operator\n{FILE_KEY}\n")
    env = {
        "GENSERVE_API_KEYS": ",".join(ENV_KEYS),
        "GENSERVE_API_KEYS_FILE": str(key_file),
        "GENSERVE_PNG_PARAMETERS": "0",
    }
    with running_server(directory, **env) as (url, _):
        yield url, key_file, directory
