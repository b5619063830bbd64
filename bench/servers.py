"""Start the servers under test, time their cold start, read their processes' peak memory, stop them."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300
POLL_S = 0.05  # fine enough to time a cold start of seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (Linux: VmHWM), 0 where it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def _role(process: psutil.Process, root_pid: int) -> str:
    """A BentoML worker by the service it runs; the process we started as the arbiter."""
    if process.pid == root_pid:
        return "arbiter"
    cmdline = process.cmdline()
    if "--service-name" in cmdline:
        return cmdline[cmdline.index("--service-name") + 1]
    return process.name()


@dataclass
class Server:
    """A server process tree we started, ready on `url`."""

    name: str
    url: str
    process: subprocess.Popen
    cold_start_s: float
    log: Path

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def peak_rss(self) -> dict[str, int]:
        """Peak RSS of each process of the tree, by role."""
        sizes: dict[str, int] = {}
        for process in self._tree():
            try:
                role = _role(process, self.process.pid)
            except psutil.Error:
                continue
            sizes[role] = sizes.get(role, 0) + peak_rss(process.pid)
        return sizes

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the tree has used so far: steadier than wall time on a busy machine."""
        total = 0.0
        for process in self._tree():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        """SIGTERM the arbiter (it stops its workers); SIGKILL whatever of the tree is left after 30 s."""
        try:
            tree = self._tree()
        except psutil.NoSuchProcess:
            return
        self.process.terminate()
        _, alive = psutil.wait_procs(tree, timeout=30)
        for process in alive:  # BentoML workers run in process groups of their own
            process.kill()
        self.process.wait()


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{url} exited with {process.returncode}; log:\n{log.read_text()[-3000:]}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
    raise TimeoutError(f"{url} was not ready within {READY_TIMEOUT_S} s; log: {log}")


def private_bentoml_home(directory: Path) -> Path:
    """A BENTOML_HOME of a server's own, sharing the model store: servers running at once must not
    share one (each clears the metrics directory there when it starts)."""
    home = directory / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    models = home / "models"
    if not models.exists():
        shared = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
        models.symlink_to(shared / "models")
    return home


def start(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> Server:
    """Run `command` (which must listen on the port given by {port}) and time it to /readyz 200."""
    port = free_port()
    log = log_dir / f"{name}.log"
    env = {"BENTOML_HOME": str(private_bentoml_home(log_dir / name)), **env}
    argv = [part.format(port=port) for part in command]
    started = time.perf_counter()
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(name=name, url=url, process=process, cold_start_s=0.0, log=log)
    try:
        _wait_ready(url, process, log)
    except BaseException:
        server.stop()
        raise
    server.cold_start_s = time.perf_counter() - started
    return server


def bentoml_command() -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "service.py", "--host", "127.0.0.1", "--port", "{port}"]


def baseline_command() -> list[str]:
    return [sys.executable, "-m", "bench.baseline_server", "--port", "{port}"]
