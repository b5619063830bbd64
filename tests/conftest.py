"""Shared fixtures: the tiny models are built once per test session, in a private model store."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from genserve.serving.processes import (
    demo_import_command,
    free_port,
    log_tail,
    private_bentoml_home,
    serve_command,
    start_process,
    tiny_import_command,
    wait_until_ready,
)

# Tests import free_port, stop, wait_ready and descendants from here.
from genserve.serving.processes import descendants as descendants
from genserve.serving.processes import stop_process_tree as stop

ROOT = Path(__file__).resolve().parent.parent

# A private BentoML home, set before anything imports bentoml, so tests never touch the
# user's model store and always start from a fresh one.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genserve-test-bentoml-")
# The servers under test run with genserve's defaults, whatever the shell exported for `make serve`
# (API keys would make every request a 401; a preset would disagree with the `settings` fixture),
# except for the presets: the tiny one, whose speed the suite needs; tests of the demo ask for it.
for name in [name for name in os.environ if name.startswith("GENSERVE_")]:
    del os.environ[name]
TINY = {"GENSERVE_IMAGE_PRESET": "tiny", "GENSERVE_VIDEO_PRESET": "tiny"}
DEMO = {"GENSERVE_IMAGE_PRESET": "demo", "GENSERVE_VIDEO_PRESET": "tiny"}  # no demo video model yet
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


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll /readyz until 200; fail early if the server process died."""
    wait_until_ready(url, process.poll, timeout_s=timeout, poll_s=0.5)


@contextmanager
def running_server(log_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `bentoml serve service.py` on a free port with extra environment; yields (URL, process)."""
    env = {"BENTOML_HOME": str(private_bentoml_home(log_dir)), **env}
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    process = start_process(serve_command(port), log, ROOT, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, process
    finally:
        stop(process)
        print(f"--- the end of {log} ---\n{log_tail(log)}")  # shown on failure


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory) -> Iterator[str]:
    """The shared served API on the tiny preset, default settings; yields its URL."""
    with running_server(tmp_path_factory.mktemp("server")) as (url, _):
        yield url


ENV_KEYS = ("env-key-one", "env-key-two")
FILE_KEY = "file-key-three"


@pytest.fixture(scope="session")
def keyed(tiny_models, tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """The served API with keys: ENV_KEYS from the environment, FILE_KEY from a key file that
    tests may rewrite (and restore); yields its URL, the key file and the server's log folder."""
    directory = tmp_path_factory.mktemp("keyed")
    key_file = directory / "keys"
    key_file.write_text(f"# rotated by the operator\n{FILE_KEY}\n")
    env = {"GENSERVE_API_KEYS": ",".join(ENV_KEYS), "GENSERVE_API_KEYS_FILE": str(key_file)}
    with running_server(directory, **env) as (url, _):
        yield url, key_file, directory


def genserve_metric(url: str, name: str, kind: str = "image") -> float:
    """One of genserve's own metrics (`genserve_generated_total`, `..._seconds_count`...) for a kind
    of work, summed over the processes behind `url`'s /metrics; 0 before any was recorded."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(value) for value in re.findall(rf'^{name}{{kind="{kind}"}} (\S+)$', text, re.MULTILINE))


def batch_sizes(url: str) -> dict[str, float]:
    """Count and sum of the image generator's adaptive batch-size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = {"count": 0.0, "sum": 0.0}
    for kind in totals:
        pattern = (
            rf'^bentoml_service_adaptive_batch_size_{kind}{{[^}}]*runner_name="ImageGenerator"[^}}]*}} (\S+)$'
        )
        totals[kind] = sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))
    return totals


def job_status(url: str, task_id: str) -> str:
    """A text-to-video job's status."""
    return httpx.get(f"{url}/txt2vid/status", params={"task_id": task_id}, timeout=10).json()["status"]
