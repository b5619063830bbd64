"""API keys: who may call the generation endpoints.

Keys come from GENSERVE_API_KEYS (comma-separated) and/or GENSERVE_API_KEYS_FILE (one key per
line, e.g. a mounted Kubernetes Secret). Several keys may be valid at once so they can be
rotated: add the new key, move clients over, remove the old one. The file is re-read when it
changes, so a rotated Secret takes effect without a restart. With no keys configured the API
is open (the local default); keys are never logged.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from genserve.core.protocol import parse_bearer
from genserve.serving.http import error_response, openai_error

logger = logging.getLogger(__name__)

#: Always reachable without a key: probes, the API docs and schema (the SDK client reads it), limits.
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/", "/docs.json", "/schema.json", "/models")
OPEN_PREFIXES = ("/static_content/", "/assets/")


class KeyRing:
    """The valid keys, from the environment and an optional file that may change at run time."""

    def __init__(self, keys: tuple[str, ...] = (), key_file: Path | None = None) -> None:
        self._static = tuple(key for key in keys if key)
        self._file = key_file
        self._file_stamp: tuple[int, int] | None = None
        self._file_keys: tuple[str, ...] = ()

    def _keys_from_file(self) -> tuple[str, ...]:
        if self._file is None:
            return ()
        try:
            stat = self._file.stat()
        except FileNotFoundError:
            logger.error("API key file %s is missing: only keys from the environment are valid", self._file)
            return ()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._file_stamp:
            lines = (line.strip() for line in self._file.read_text().splitlines())
            self._file_keys = tuple(line for line in lines if line and not line.startswith("#"))
            self._file_stamp = stamp
        return self._file_keys

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self._file is not None

    def accepts(self, candidate: str) -> bool:
        """Constant-time comparison against every key, so timing reveals neither key nor position."""
        matched = False
        for key in (*self._static, *self._keys_from_file()):
            matched |= hmac.compare_digest(candidate.encode(), key.encode())
        return matched


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return parse_bearer(value.decode("latin-1"))
    return None


class BearerAuth:
    """ASGI middleware: every path but the open ones needs `Authorization: Bearer <key>`.

    Under `openai_prefix` the refusal is OpenAI's error object (`invalid_api_key`), which OpenAI's
    clients turn into their AuthenticationError with the message.
    """

    def __init__(
        self, app: ASGIApp, keys: KeyRing, protect_metrics: bool = False, openai_prefix: str | None = None
    ) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = OPEN_PATHS if protect_metrics else (*OPEN_PATHS, "/metrics")
        self.openai_prefix = openai_prefix

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None or not self.keys.accepts(token):
            message = "missing API key" if token is None else "invalid API key"
            message = f"{message}: send 'Authorization: Bearer <key>'"
            headers = {"WWW-Authenticate": 'Bearer realm="genserve"'}
            if self.openai_prefix and scope["path"].startswith(f"{self.openai_prefix}/"):
                response = openai_error(401, message, code="invalid_api_key", headers=headers)
            else:
                response = error_response(401, message, headers=headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
