"""The HTTP API's wire conventions, one list for the server and its clients: headers, job
states, file formats, how long a request may take. Pure Python, so every client can import it."""

from __future__ import annotations

from typing import Literal

#: The response header that carries the seed a result was made with.
SEED_HEADER = "X-Seed"
#: A background job (`/txt2vid`) in these states is still running: clients ask again after
#: JOB_POLL_INTERVAL_S.
JOB_RUNNING = ("pending", "in_progress")
JOB_POLL_INTERVAL_S = 0.5
#: The jobs API (`/jobs`): what may be submitted, the states a job goes through (queued, then
#: running, then one of the last three), and those it ends in.
JobKind = Literal["txt2img", "img2img", "inpaint", "img2vid", "txt2vid"]
JobState = Literal["queued", "running", "completed", "failed", "cancelled"]
JOB_DONE: tuple[JobState, ...] = ("completed", "failed", "cancelled")
#: How long a request may take, a queued video job included: the server's deadline by default,
#: and how long its clients wait.
DEFAULT_TIMEOUT_S = 900
#: Output formats and their MIME types: the requests' `output_format` choices and the responses'
#: Content-Type.
IMAGE_FORMATS: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
VIDEO_FORMATS: dict[str, str] = {
    "mp4": "video/mp4",
    "gif": "image/gif",
    "webp": "image/webp",
}


def parse_bearer(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` value (HTTP header or gRPC metadata)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
