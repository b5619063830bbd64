"""What every client of genserve's HTTP API shares (the CLI, the web UI, the gRPC gateway): where
the API is and its key, how long to try, how to read its errors, wait for a job, and take a file.

Clients import nothing heavier than this floor and `genserve.core`'s pure modules (protocol,
presets, schemas, shapes): no torch, diffusers or imageio (tests/unit/test_clients.py checks it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from genserve.core.protocol import JOB_POLL_INTERVAL_S, JOB_RUNNING

DEFAULT_API_URL = "http://127.0.0.1:3000"  # `make serve`'s address
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
    status: Callable[[], Awaitable[str]],
    timeout_s: float,
    started: float | None = None,
    on_status: Callable[[str, float], None] | None = None,
) -> str:
    """Ask `status()` every JOB_POLL_INTERVAL_S until the job stops running, and return its last
    status. Raises JobTimeout when it still runs `timeout_s` after `started` (a monotonic time;
    now if not given: a page that reruns passes the job's own start)."""
    started = time.monotonic() if started is None else started
    while (current := await status()) in JOB_RUNNING:
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise JobTimeout(current, elapsed)
        if on_status is not None:
            on_status(current, elapsed)
        await asyncio.sleep(JOB_POLL_INTERVAL_S)
    return current


def take_file(path: Path) -> bytes:
    """A result file the BentoML client SDK saved, read and removed: the SDK removes its folder
    only with the client, and a web UI session's client lives as long as the session."""
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
