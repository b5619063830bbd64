"""What the tests share besides fixtures (those are in conftest.py): paths, the presets' environments,
a served API's start and metrics."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from genserve.core.media import encode_image
from genserve.serving.job_store import JobRecord
from genserve.serving.processes import (
    free_port,
    log_tail,
    private_bentoml_home,
    serve_command,
    start_process,
    wait_until_ready,
)
from genserve.serving.processes import stop_process_tree as stop

ROOT = Path(__file__).resolve().parent.parent
TINY = {"GENSERVE_IMAGE_PRESET": "tiny", "GENSERVE_VIDEO_PRESET": "tiny"}
DEMO = {"GENSERVE_IMAGE_PRESET": "demo", "GENSERVE_VIDEO_PRESET": "demo"}
ENV_KEYS = ("env-key-one", "env-key-two")
FILE_KEY = "file-key-three"


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


def genserve_metric(url: str, name: str, kind: str = "image") -> float:
    """One of genserve's own metrics (`genserve_generated_total`, `..._seconds_count`...) for a kind
    of work, summed over the processes behind `url`'s /metrics; 0 before any was recorded."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(value) for value in re.findall(rf'^{name}{{kind="{kind}"}} (\S+)$', text, re.MULTILINE))


def job_status(url: str, task_id: str) -> str:
    """A text-to-video job's status."""
    return httpx.get(f"{url}/txt2vid/status", params={"task_id": task_id}, timeout=10).json()["status"]


def half_mask(width: int, height: int) -> bytes:
    """An inpainting mask as a PNG: its left half black (kept), its right half white (repainted)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, width // 2 :] = 255
    return encode_image(pixels, "png")


def run_script(name: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run tests/scripts/`name` in a fresh Python (what a new worker process imports), from the
    repository root, with service.py importable; its output is captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "scripts" / name
    return subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A real `redis-server` (Debian's: .ci/run installs it) on a free port; yields its URL. Without
    one the test is skipped, saying so."""
    import pytest

    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = free_port()
    log = directory / f"redis-{port}.log"
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = start_process(command, log, directory, {})
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while "Ready to accept connections" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {log_tail(log)}")
            time.sleep(0.05)
        yield url
    finally:
        stop(process)


def new_job(owner: str = "alice", callback: str | None = None, created: float | None = None) -> JobRecord:
    """A text-to-image job record, queued, for the job store's tests."""
    return JobRecord(
        id=uuid.uuid4().hex,
        kind="txt2img",
        owner=owner,
        created_at=created if created is not None else time.time(),
        seed=7,
        fields={"prompt": "a red circle"},
        stages=["image"],
        callback_url=callback,
    )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP server that records every request and answers each path's scripted replies in
    turn, (status, headers, seconds to wait first), then 200 once the script runs out."""

    port: int = 0
    script: dict[str, list[tuple[int, dict[str, str], float]]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [request.path for request in self.received]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A running `Receiver` on a free loopback port."""
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            state.received.append(Received(self.path, dict(self.headers.items()), body))
            replies = state.script.get(self.path, [])
            status, headers, wait_s = replies.pop(0) if replies else (200, {}, 0.0)
            time.sleep(wait_s)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()
