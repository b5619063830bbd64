"""HTTP responses of the public API: media files with their seed, and JSON errors naming a field."""

from __future__ import annotations

import logging
import math
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genserve.core.protocol import SEED_HEADER

logger = logging.getLogger(__name__)


def media_response(data: bytes, media_type: str, seed: int, extension: str) -> Response:
    """The file itself (no base64, no size limit beyond HTTP's), with the seed that made it."""
    return Response(
        content=data,
        media_type=media_type,
        headers={
            SEED_HEADER: str(seed),
            "Content-Disposition": f'inline; filename="genserve-{seed}.{extension}"',
        },
    )


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error shaped like BentoML's own validation errors: `detail[].loc` names the field."""
    body: dict = {"error": message}
    if field is not None:
        body["detail"] = [{"loc": [field], "msg": message}]
    return JSONResponse(body, status_code=status, headers=headers)


def invalid_fields(error: ValidationError, what: str) -> JSONResponse:
    """A 400 listing the fields a request got wrong, in the shape of BentoML's own (`detail[].loc`)."""
    detail = error.errors(include_url=False, include_context=False, include_input=False)
    return JSONResponse({"error": f"invalid {what}", "detail": detail}, status_code=400)


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error object, which its clients turn into their typed exceptions."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class JSONDocument:
    """ASGI middleware serving one JSON document at `GET path`; every other request passes through.

    A middleware rather than a mounted app because a mount only matches below its path
    (`/models/`) and BentoML's router would redirect `/models` there.
    """

    def __init__(self, app: ASGIApp, path: str, document: Any) -> None:
        self.app = app
        self.path = path
        self.body = JSONResponse(document).body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD"):
            response: Response = Response(self.body, media_type="application/json")
        else:
            response = error_response(405, f"use GET {self.path}", headers={"Allow": "GET"})
        await response(scope, receive, send)


class BodyTooLarge(Exception):
    """The body went past the limit given to `read_body`."""


async def read_body(receive: Receive, max_bytes: float = math.inf) -> bytes | None:
    """Read a request's whole body from `receive`; None if the client went away first.

    Raises BodyTooLarge as soon as more than `max_bytes` have arrived, without reading the rest.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_bytes:
            raise BodyTooLarge
        if not message.get("more_body"):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` (already read) first, then the real channel."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class BodyLimit:
    """ASGI middleware answering 413 to a body over `max_bytes`, declared or streamed, before it is stored.

    A streamed body (no Content-Length) is read here first: BentoML answers 500 to any error
    raised while it reads a body, so the limit cannot be enforced from inside its reads.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, f"request body is larger than {self.max_bytes} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit():  # the server reads no more than declared
            if int(declared) > self.max_bytes:
                await too_large(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_bytes)
        except BodyTooLarge:
            await too_large(scope, receive, send)
            return
        if body is not None:  # else the client left
            await self.app(scope, replaying(body, receive), send)


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class ValidateForm:
    """ASGI middleware checking the shape of a form body before BentoML parses it.

    BentoML answers 500 to a malformed multipart body, to a non-UTF-8 file part in a form field,
    and to a file field sent as text (which it takes for a URL to download). So here: the form
    must parse, `file_fields` must be files and every other field must be text. Only on `paths`,
    the endpoints': another path is the router's to answer (404).
    """

    def __init__(self, app: ASGIApp, paths: frozenset[str], file_fields: dict[str, frozenset[str]]) -> None:
        self.app = app
        self.paths = paths
        self.file_fields = file_fields  # path -> its file fields

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in self.paths
            or not content_type.startswith(FORM_TYPES)
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:  # the client left
            return
        problem = await self._problem(Request(scope, replaying(body, receive)), scope["path"])
        if problem is not None:
            await problem(scope, receive, send)
            return
        await self.app(scope, replaying(body, receive), send)

    async def _problem(self, request: Request, path: str) -> Response | None:
        files = self.file_fields.get(path, frozenset())
        try:
            form = await request.form()
        except (MultiPartException, HTTPException) as error:
            return error_response(400, f"invalid form body: {getattr(error, 'detail', None) or error}")
        try:
            for name, value in form.multi_items():
                is_file = isinstance(value, UploadFile)
                if name in files and not is_file:
                    return error_response(400, f"{name} must be a file upload", name)
                if name not in files and is_file:
                    return error_response(400, f"{name} must be a form field, not a file", name)
        finally:
            await form.close()
        return None


class CatchErrors:
    """ASGI middleware: an exception raised before a response started becomes a logged JSON 500,
    shaped like every other error of the API (Starlette's own answer is a plain-text 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("request to %s failed", scope.get("path"))
            if scope["type"] != "http" or started:
                raise
            await error_response(500, "internal error; see the server log")(scope, receive, send)


class JSONNotFound:
    """ASGI middleware: the router's plain-text 404 for an unknown path becomes a JSON error shaped
    like every other (a 404 the app words itself, an unknown task say, passes as it is)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 404:
                headers = dict(message.get("headers", []))
                replaced = headers.get(b"content-type", b"").startswith(b"text/plain")
            if not replaced:
                await send(message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await error_response(404, f"no such path: {scope['path']}")(scope, receive, send)

        await self.app(scope, receive, replacing_send)
