"""Start the servers under test, time their cold start, read their processes' peak memory, stop them."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from genserve.serving.processes import (
    free_port,
    private_bentoml_home,
    process_tree,
    start_process,
    stop_process_tree,
    tiny_import_command,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300
POLL_S = 0.05  # fine enough to time a cold start of seconds


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (Linux: VmHWM), 0 where it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def role(process: psutil.Process, root_pid: int) -> str:
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

    url: str
    process: subprocess.Popen
    cold_start_s: float

    def by_role(self, measure: Callable[[psutil.Process], int]) -> dict[str, int]:
        """`measure` of the tree's processes, added up by role (a service's workers together)."""
        sizes: dict[str, int] = {}
        for process in process_tree(self.process.pid):
            try:
                name, size = role(process, self.process.pid), measure(process)
            except psutil.Error:  # a process that ended between listing and reading
                continue
            sizes[name] = sizes.get(name, 0) + size
        return sizes

    def peak_rss(self) -> dict[str, int]:
        """Peak RSS of each role's processes."""
        return self.by_role(lambda process: peak_rss(process.pid))

    def rss(self) -> dict[str, int]:
        """RSS now of each role's processes."""
        return self.by_role(lambda process: process.memory_info().rss)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the tree has used so far: steadier than wall time on a busy machine."""
        total = 0.0
        for process in process_tree(self.process.pid):
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        """SIGTERM the arbiter (it stops its workers); SIGKILL whatever of the tree is left after 30 s."""
        stop_process_tree(self.process, grace_s=30)


def start(name: str, command: Callable[[int], list[str]], env: dict[str, str], log_dir: Path) -> Server:
    """Run `command(port)` on a free port and time it from its start to /readyz 200."""
    port = free_port()
    log = log_dir / f"{name}.log"
    env = {"BENTOML_HOME": str(private_bentoml_home(log_dir / name)), **env}
    started = time.perf_counter()
    process = start_process(command(port), log, ROOT, env)
    server = Server(url=f"http://127.0.0.1:{port}", process=process, cold_start_s=0.0)
    try:
        wait_until_ready(server.url, process.poll, timeout_s=READY_TIMEOUT_S, poll_s=POLL_S, log=log)
    except BaseException:
        server.stop()
        raise
    server.cold_start_s = time.perf_counter() - started
    return server


def import_tiny_models() -> None:
    """The tiny preset in the model store, as `make models` puts it there (skipped when present)."""
    subprocess.run(tiny_import_command(), cwd=ROOT, check=True)


def baseline_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bench.baseline_server", "--port", str(port)]
