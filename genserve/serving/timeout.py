"""BentoML's request timeout (`traffic.timeout`), without the memory it kept for every request.

BentoML's `TimeoutMiddleware` arms a timer for each request with `loop.call_later` and never
cancels it. asyncio keeps a pending timer, and the copy of the request's context variables it was
armed in, until it fires: every request lived on for the whole timeout (930 s by default), and a
busy entry service grew by hundreds of MiB (bench/README.md, "The leak it was written for";
bentoml/BentoML#4760).

`RequestTimeout` keeps BentoML's behaviour (a request that has not started its response within
the timeout is cancelled and answered 504) and lets go of everything once the request ends.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from genserve.serving import bentoml_compat
from genserve.serving.http import error_response


class RequestTimeout(bentoml_compat.TimeoutMiddleware):
    """ASGI middleware: 504 for a request whose response has not started within `timeout` s.

    BentoML's class, built the same way (`app`, `timeout`), with its call rewritten.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        response_started = asyncio.get_running_loop().create_future()

        async def noting_start(message: Message) -> None:
            if not response_started.done():
                response_started.set_result(None)
            await send(message)

        app = asyncio.ensure_future(self.app(scope, receive, noting_start))
        try:
            # asyncio.wait cancels its timer on return, and the loop drops cancelled timers (in
            # bulk, once they are half of its timers): nothing of the request outlives it for long.
            await asyncio.wait(
                {app, response_started}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            app.cancel()
            raise
        if not response_started.done() and app.cancel():
            message = f"Not able to process the request in {self.timeout} seconds"
            await error_response(504, message)(scope, receive, send)
            return
        await app  # the response goes on streaming, or the app's error goes up


def cancel_timers_when_done() -> None:
    """Make every service's app use `RequestTimeout`."""
    bentoml_compat.install_timeout_middleware(RequestTimeout)
