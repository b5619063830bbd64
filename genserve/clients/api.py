"""What every client of genserve's HTTP API shares (the CLI, the web UI, the gRPC gateway): where
the API is and its key, how long to try, how to read its errors, wait for a job and tell how far
it has come, and take a file.

Clients import nothing heavier than this floor and `genserve.core`'s pure modules (protocol,
presets, schemas, shapes): no torch, diffusers or imageio (tests/unit/test_clients.py checks it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from genserve.core.protocol import JOB_DONE, JOB_POLL_INTERVAL_S, JOB_RUNNING, JobState

DEFAULT_API_URL = "http://127.0.0.1:3000"  # `make serve`'s address
#: A job of the jobs API (`/jobs`) in these states has not ended yet.
JOB_ACTIVE: tuple[JobState, ...] = tuple(state for state in get_args(JobState) if state not in JOB_DONE)
#: A connection attempt needs no generation time: a dead host should fail fast, not after the
#: request timeout.
CONNECT_TIMEOUT_S = 10.0


def api_url(environ: Mapping[str, str] = os.environ) -> str:
    """Where the API is: GENSERVE_URL."""
    return (environ.get("GENSERVE_URL") or DEFAULT_API_URL).rstrip("/")


def api_key(environ: Mapping[str, str] = os.environ) -> str | None:
    """The key to send as `Authorization: Bearer`: GENSERVE_API_KEY, if set."""
    return environ.get("GENSERVE_API_KEY") or None


def parse_error(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The message of an error body (`{"error": ..., "detail": [{"loc": [field], "msg": ...}]}`, the
    shape of genserve's errors and BentoML's validation errors) and the `(field, message)` pairs it
    names, for clients to show.

    The JSON may follow a prefix (BentoML's client SDK raises "Error making request: 400: {...}");
    a text without it is the message itself.
    """
    start = text.find("{")
    try:
        body = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return text.strip(), []
    detail = body.get("detail")
    items = [item for item in detail if isinstance(item, dict)] if isinstance(detail, list) else []
    fields = [(".".join(map(str, item.get("loc", []))), str(item.get("msg", ""))) for item in items]
    message = str(body.get("error") or (detail if isinstance(detail, str) else "") or "")
    return message or ("" if fields else text.strip()), fields


class JobTimeout(TimeoutError):
    """A job still running when its client stopped waiting."""

    def __init__(self, status: str, elapsed_s: float) -> None:
        super().__init__(f"still {status} after {elapsed_s:.0f} s")
        self.status = status
        self.elapsed_s = elapsed_s


async def wait_for_job(
    status: Callable[[], Awaitable[str]], timeout_s: float, running: Collection[str] = JOB_RUNNING
) -> str:
    """Ask `status()` every JOB_POLL_INTERVAL_S while the job is in one of the `running` states (the
    BentoML task API's by default; JOB_ACTIVE for /jobs), and return its last status. Raises
    JobTimeout when it still runs `timeout_s` from now."""
    started = time.monotonic()
    while (current := await status()) in running:
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise JobTimeout(current, elapsed)
        await asyncio.sleep(JOB_POLL_INTERVAL_S)
    return current


async def follow_job(
    show: Callable[[], Awaitable[dict[str, Any]]],
    timeout_s: float,
    on_job: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Follow a /jobs job with the one job loop until it ends: `show()` is its document (GET
    /jobs/{id}), each one is handed to `on_job` (the last, ended one too: a bar reaches 100 %), and
    the last is returned. JobTimeout when it has not ended after `timeout_s`."""
    job: dict[str, Any] = {}

    async def state() -> str:
        nonlocal job
        job = await show()
        on_job(job)
        return job["state"]

    await wait_for_job(state, timeout_s, running=JOB_ACTIVE)
    return job


@dataclass(frozen=True)
class JobProgress:
    """How far a /jobs job has come, read from its document for a progress bar: the stage under way
    (the first one not finished), its denoising steps, the job's fraction and its ETA."""

    state: str
    fraction: float
    stage: str
    step: int
    total: int | None  # None until the stage has started
    eta_s: float | None
    position: int | None  # jobs ahead of it, while queued

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobProgress:
        progress, stages = job["progress"], job["progress"]["stages"]
        stage = next((name for name, part in stages.items() if part["fraction"] < 1), list(stages)[-1])
        return cls(
            state=job["state"],
            fraction=progress["fraction"],
            stage=stage,
            step=stages[stage]["step"],
            total=stages[stage]["total"],
            eta_s=progress["eta_s"],
            position=job.get("position"),
        )

    @property
    def percent(self) -> int:
        """Whole percents, rounded down: 100 only once the job has completed."""
        return int(self.fraction * 100)

    def summary(self) -> str:
        """E.g. "queued, 2 jobs ahead, 0 %", "running, video starting, 50 %, ETA 4 s" or
        "running, video 12/25 steps, 74 %, ETA 2 s"."""
        parts = [self.state]
        if self.position is not None:
            parts.append(f"{self.position} job{'' if self.position == 1 else 's'} ahead")
        if self.total:
            parts.append(f"{self.stage} {self.step}/{self.total} steps")
        elif self.state == "running":
            parts.append(f"{self.stage} starting")
        parts.append(f"{self.percent} %")
        if self.eta_s is not None:
            parts.append(f"ETA {self.eta_s:.0f} s")
        return ", ".join(parts)


def take_file(path: Path) -> bytes:
    """A result file the BentoML client SDK saved, read and removed: the SDK removes its folder
    only with the client, and a web UI session's client lives as long as the session."""
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
