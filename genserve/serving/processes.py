"""Start, wait for and stop server processes: used by the tests, the bench and the image test,
so that all of them start, probe and clean up a server the same way (the service never imports it)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx
import psutil

#: How much of a server's log an error shows: enough for a traceback.
LOG_TAIL_CHARS = 5000


def free_port() -> int:
    """A loopback port free now: servers started at once each get their own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(port: int) -> list[str]:
    """`bentoml serve service.py` on loopback `port`, as `make serve` runs it (from the repository root)."""
    return [sys.executable, "-m", "bentoml", "serve", "service.py", "--host=127.0.0.1", f"--port={port}"]


def tiny_import_command() -> list[str]:
    """The tiny preset into the model store, as `make models` does (from the repository root)."""
    return [sys.executable, "models/import_models.py", "--image", "tiny", "--video", "tiny"]


def demo_import_command() -> list[str]:
    """The demo presets into the model store, as `make models` does (from the repository root)."""
    return [sys.executable, "models/import_models.py", "--image", "demo", "--video", "demo"]


def private_bentoml_home(directory: Path) -> Path:
    """A BENTOML_HOME of a server's own in `directory` that shares the current model store.

    Servers running at once must not share a home: each clears the metrics directory there at
    start, and their task stores (SQLite) would collide.
    """
    home = directory / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    models = home / "models"
    if not models.exists():
        shared = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
        models.symlink_to(shared / "models")
    return home


def start_process(command: Sequence[str], log: Path, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """`command` with `env` added to ours, its output in `log`, in a session of its own: a Ctrl-C
    meant for the caller does not reach it, and stop_process_tree() stops it in order."""
    with log.open("wb") as output:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(log: Path) -> str:
    """The end of a server's log: where it says why it failed."""
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:]


def _log_note(log: Path | None) -> str:
    return f"; log:\n{log_tail(log)}" if log else ""


def wait_until_ready(
    url: str,
    exit_code: Callable[[], int | None],
    *,
    timeout_s: float,
    poll_s: float,
    log: Path | None = None,
    probe: str = "/readyz",
) -> None:
    """Poll `url` + `probe` until it answers 200.

    `exit_code` is None while the server runs (as `Popen.poll`): a server that died fails the wait at
    once, not at the deadline. The errors end with the tail of the server's `log`, which says why.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if (code := exit_code()) is not None:
                raise RuntimeError(f"{url} exited with {code} before it was ready{_log_note(log)}")
            try:
                if client.get(f"{url}{probe}").status_code == 200:
                    return
            except httpx.HTTPError:  # not listening yet, or too busy loading to answer
                pass
            time.sleep(poll_s)
    raise TimeoutError(f"{url} was not ready within {timeout_s} s{_log_note(log)}")


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and all processes below it (none when it is gone).

    Found by parent, not by process group: BentoML workers run in sessions of their own.
    """
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def descendants(pid: int) -> list[int]:
    """The pids of all processes below `pid`."""
    return [process.pid for process in process_tree(pid)[1:]]


def stop_process_tree(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM `process` (a BentoML arbiter stops its workers); SIGKILL whatever of its tree is left
    after `grace_s`.

    The tree is read before the SIGTERM: once the arbiter is gone, nothing links its workers to it.
    """
    below = process_tree(process.pid)[1:] if process.poll() is None else []
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in below:
        with contextlib.suppress(psutil.NoSuchProcess):  # also where its pid now names another process
            child.kill()


def batch_sizes(url: str, generator: str = "ImageGenerator") -> dict[str, float]:
    """Count and sum of a generator's adaptive batch-size histogram, read from `url`'s /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    totals = {"count": 0.0, "sum": 0.0}
    for kind in totals:
        labels = rf'{{[^}}]*runner_name="{generator}"[^}}]*}}'
        pattern = rf"^bentoml_service_adaptive_batch_size_{kind}{labels} (\S+)$"
        totals[kind] = sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))
    return totals
