"""HTTP responses of the public API: media files with their seed, and JSON errors naming a field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SEED_HEADER = "X-Seed"


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


class ValidateJSONBody:
    """ASGI middleware checking a JSON body against a pydantic model before the app sees it.

    BentoML stores a task submission before validating it, so a bad `/txt2vid/submit`
    would be accepted and fail later; this answers 400 naming the field, as BentoML does
    for plain endpoints, at submit time.
    """

    def __init__(self, app: ASGIApp, path: str, model: type[BaseModel]) -> None:
        self.app = app
        self.path = path
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            self.model.model_validate_json(body or b"{}")
        except ValidationError as error:
            detail = error.errors(include_url=False, include_context=False, include_input=False)
            body_error = {"error": f"invalid {self.model.__name__}", "detail": detail}
            await JSONResponse(body_error, status_code=400)(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class BodyLimit:
    """ASGI middleware answering 413 to a body over `max_bytes`, declared or streamed, before it is stored."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, f"request body is larger than {self.max_bytes} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        received = 0
        started = False

        async def track_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, track_send)
        except BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised inside the app when a streamed body passes the limit."""
