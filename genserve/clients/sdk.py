"""genserve's API through BentoML's client SDK, as the web UI and the gRPC gateway call it: uploads
from bytes, results as bytes, and text to video as one BentoML task submitted, waited for and
fetched. The CLI speaks plain HTTP instead (httpx): it starts without importing BentoML. The jobs
API (/jobs) is not the SDK's: the web UI reaches it over the SDK's own HTTP connection (ui.py).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml

from genserve.clients.api import take_file, wait_for_job


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


async def text_to_video(sdk: bentoml.AsyncHTTPClient, fields: dict[str, Any], timeout_s: float) -> bytes:
    """Submit a text-to-video task, wait for it with the clients' one job loop (JobTimeout past
    `timeout_s`; JobCanceled), and return the video. A failed task's result is the server's error,
    which the SDK raises."""
    task_id = (await sdk.txt2vid.submit(**fields)).id

    async def status() -> str:
        return (await sdk.txt2vid.get_status(task_id)).value

    if await wait_for_job(status, timeout_s) == "canceled":
        raise JobCanceled(f"job {task_id} was canceled on the server")
    return await result(await sdk.txt2vid.get(task_id))
