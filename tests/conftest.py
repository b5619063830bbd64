"""Shared fixtures: the tiny models are built once per test session, in a private model store."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll /readyz until 200; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready within {timeout} s")


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (BentoML workers run in sessions of their own, out of its group)."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            match = re.search(r"^PPid:\s+(\d+)", status.read_text(), re.MULTILINE)
        except OSError:
            continue
        if match:
            children.setdefault(int(match.group(1)), []).append(int(status.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the BentoML arbiter (it stops its workers); SIGKILL whatever is left after the grace."""
    workers = descendants(process.pid)
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def private_bentoml_home(directory: Path) -> Path:
    """A BENTOML_HOME of a server's own that shares the session's model store.

    Servers running at once must not share a home: each clears the metrics directory there at
    start, and their task stores (SQLite) would collide.
    """
    home = directory / "bentoml-home"
    home.mkdir(exist_ok=True)
    models = home / "models"
    if not models.exists():
        models.symlink_to(Path(os.environ["BENTOML_HOME"]) / "models")
    return home


@contextmanager
def running_server(log_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `bentoml serve service.py` on a free port with extra environment; yields (URL, process)."""
    env = {"BENTOML_HOME": str(private_bentoml_home(log_dir)), **env}
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    command = [sys.executable, "-m", "bentoml", "serve", "service.py", "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, process
    finally:
        stop(process)
        print(f"--- the end of {log} ---\n{log.read_text(errors='replace')[-5000:]}")  # shown on failure


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory) -> Iterator[str]:
    """The shared served API on the tiny preset, default settings; yields its URL."""
    with running_server(tmp_path_factory.mktemp("server")) as (url, _):
        yield url
