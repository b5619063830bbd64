"""genserve's API through BentoML's client SDK, as the web UI and the gRPC gateway call it: uploads
from bytes, results as bytes, and text to video as one job submitted (or resumed), waited for and
fetched. The CLI speaks plain HTTP instead (httpx): it starts without importing BentoML.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml

from genserve.clients.api import take_file, wait_for_job


@dataclass
class TextToVideoJob:
    """A text-to-video job: its fields, when it started, and its id once submitted. A web UI page
    keeps it across reruns, so that waiting resumes instead of submitting again."""

    fields: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    task_id: str | None = None


class JobCanceled(Exception):
    """The job was canceled on the server: there is no result to fetch."""


@contextmanager
def upload(data: bytes, filename: str = "image") -> Iterator[Path]:
    """`data` as a file named `filename` (the SDK uploads files from paths), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="genserve-upload-") as folder:
        path = Path(folder) / Path(filename).name
        path.write_bytes(data)
        yield path


async def result(path: Path) -> bytes:
    """The file the SDK saved a result to, read and removed off the event loop."""
    return await asyncio.to_thread(take_file, path)


async def text_to_video(
    sdk: bentoml.AsyncHTTPClient,
    job: TextToVideoJob,
    timeout_s: float,
    on_status: Callable[[str, float], None] | None = None,
) -> bytes:
    """Submit `job` (unless it has an id already), wait for it with the clients' one job loop
    (JobTimeout past `timeout_s` from its start; JobCanceled), and return the video. A failed
    job's result is the server's error, which the SDK raises."""
    if job.task_id is None:
        job.task_id = (await sdk.txt2vid.submit(**job.fields)).id
    task_id = job.task_id

    async def status() -> str:
        return (await sdk.txt2vid.get_status(task_id)).value

    if await wait_for_job(status, timeout_s, job.started, on_status) == "canceled":
        raise JobCanceled(f"job {task_id} was canceled on the server")
    return await result(await sdk.txt2vid.get(task_id))
