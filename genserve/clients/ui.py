"""The web UI's only way to genserve: the BentoML client SDK, and for the jobs API (/jobs), which the
SDK does not know, the SDK's own HTTP connection; failures turned into messages.

The UI runs as its own process (or Deployment), so it knows the API only by URL and key
(GENSERVE_URL, GENSERVE_API_KEY). Files come back from the SDK as paths; they are read into
memory and removed at once, since a session's client lives as long as the session.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bentoml
import httpx
from bentoml.exceptions import BentoMLException

from genserve.clients.api import CONNECT_TIMEOUT_S, api_key, api_url, parse_error, take_file
from genserve.clients.sdk import upload
from genserve.core.protocol import DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class Connection:
    """Where the API is and the key to send (as the SDK's `token`: `Authorization: Bearer`)."""

    url: str
    api_key: str | None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Connection:
        return cls(url=api_url(environ), api_key=api_key(environ))

    def sdk_options(self) -> dict[str, Any]:
        """Client arguments: a dead host fails in seconds, not after the generation timeout, and
        `server_ready_timeout=0` skips the SDK's busy-wait on /readyz (an error is shown instead)."""
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, CONNECT_TIMEOUT_S))
        return {"token": self.api_key, "timeout": timeout, "server_ready_timeout": 0}


class UIError(Exception):
    """A failure already worded for the person at the page: what happened and what to do."""


#: What a call may raise: the server's answer (the SDK's exceptions), the network, or the UI's own.
FAILURES = (BentoMLException, httpx.HTTPError, UIError)


def explain(error: BentoMLException | httpx.HTTPError | UIError, url: str, labels: Mapping[str, str]) -> str:
    """One message for any failure of a call, naming the fields the server named (by their UI label)."""
    if isinstance(error, UIError):
        return str(error)
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return f"Cannot reach the genserve API at {url}: is it running? ({error})"
    if isinstance(error, httpx.TimeoutException):
        return f"The genserve API at {url} did not answer in time; it may be overloaded."
    if isinstance(error, httpx.HTTPStatusError):  # an answer to a call outside the SDK (/jobs)
        status, text = error.response.status_code, error.response.text
    elif isinstance(error, httpx.HTTPError):
        return f"The connection to the genserve API at {url} failed: {error}"
    else:
        status, text = int(error.error_code), str(error)
    message, fields = parse_error(text)
    message = message or "no details"
    if status == 401:
        return f"The API needs a valid key (401: {message}). Set GENSERVE_API_KEY for the UI."
    if status == 429:
        return f"The API is busy (429: {message}). Try again in a few seconds."
    if status == 503:
        return f"The API is not ready yet (503: {message}). Try again when its models have loaded."
    if 400 <= status < 500:
        refusals = [
            f"{labels[name]} ({name}): {text}" if name in labels else f"{name}: {text}"
            for name, text in fields
        ]
        return f"The API refused the request ({status}): " + ("; ".join(refusals) or message)
    return f"The API failed ({status}): {message}"


class GenServe:
    """One page session's client. Its own, not shared: the SDK closes every file it opened after each
    call, so two sessions sharing a client could close each other's uploads."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        try:
            self.sdk = bentoml.SyncHTTPClient(connection.url, **connection.sdk_options())
        except BentoMLException as error:
            # The SDK reads the API's /schema.json on connect and reports only that it could not.
            raise UIError(
                f"{connection.url} answered, but not as a genserve API ({error}). Check GENSERVE_URL."
            ) from None

    def _http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call to a route the SDK has no method for, on its connection (URL, key, timeouts);
        an error answer raises httpx.HTTPStatusError."""
        response = self.sdk.client.request(method, path, **kwargs)
        response.raise_for_status()
        return response

    def models(self) -> dict[str, Any]:
        """The presets' defaults and limits and the formats, as the server reports them."""
        return self._http("GET", "/models").json()

    def field_bounds(self, endpoint: str, field: str, step: float = 0) -> tuple[float, float]:
        """A field's bounds from the endpoint schema the SDK fetched (for those /models leaves out).
        An exclusive bound (`gt`, `lt`) is moved `step` inside: the nearest value a slider may offer."""
        schema = self.sdk.endpoints[endpoint].input["properties"][field]
        low = schema["minimum"] if "minimum" in schema else schema["exclusiveMinimum"] + step
        high = schema["maximum"] if "maximum" in schema else schema["exclusiveMaximum"] - step
        return low, high

    def txt2img(self, **fields: Any) -> bytes:
        return take_file(self.sdk.txt2img(**fields))

    def img2vid(self, image: bytes, filename: str, **fields: Any) -> bytes:
        with upload(image, filename) as path:
            return take_file(self.sdk.img2vid(image=path, **fields))

    def img2img(self, image: bytes, filename: str, **fields: Any) -> bytes:
        with upload(image, filename) as path:
            return take_file(self.sdk.img2img(image=path, **fields))

    def inpaint(self, image: bytes, filename: str, mask: bytes, mask_filename: str, **fields: Any) -> bytes:
        """Each file in a folder of its own (`upload`), so the two may have the same name."""
        with upload(image, filename) as image_path, upload(mask, mask_filename) as mask_path:
            return take_file(self.sdk.inpaint(image=image_path, mask=mask_path, **fields))

    def submit_job(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Submit a job of a JSON kind (txt2img, txt2vid) to /jobs; the job as the server shows it."""
        return self._http("POST", f"/jobs/{kind}", json=fields).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """The job: its state, queue position, progress per stage, ETA, seed, fields, error."""
        return self._http("GET", f"/jobs/{job_id}").json()

    def cancel_job(self, job_id: str) -> None:
        """Cancel the job on the server; one that has just ended (409) is left as it ended."""
        response = self.sdk.client.delete(f"/jobs/{job_id}")
        if response.status_code != 409:
            response.raise_for_status()

    def job_result(self, job_id: str) -> bytes:
        """A completed job's file."""
        return self._http("GET", f"/jobs/{job_id}/result").content
