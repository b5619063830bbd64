"""The request timeout: BentoML's kept every request alive until its timeout fired (genserve's
entry service grew ~17 KB a request under load); genserve's lets go of it as soon as it ends."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref

from helpers import run_script
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genserve.serving.http import CatchErrors
from genserve.serving.timeout import RequestTimeout

#: BentoML's own class, whatever its module holds once cancel_timers_when_done() has run.
STOCK = RequestTimeout.__bases__[0]
#: BentoML keeps the request in a context variable (its `ServiceContext`): so does this test.
CURRENT_REQUEST = contextvars.ContextVar("current_request")


class Request:
    """Something a request holds: it must not outlive the request."""


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope() -> Scope:
    return {"type": "http", "method": "GET", "path": "/", "headers": []}


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(middleware: type[STOCK], app: ASGIApp = _ok) -> list[Message]:
    """One request through `middleware`: the messages sent back."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(app, timeout=0.2)(_scope(), _receive, send)
    return sent


async def _requests_alive_after_serving(middleware: type[STOCK], count: int) -> int:
    """How many of `count` served requests are still alive once all are answered."""
    alive: list[weakref.ref] = []

    async def one() -> None:
        request = Request()
        alive.append(weakref.ref(request))
        CURRENT_REQUEST.set(request)
        [start, body] = await _call(middleware)
        assert start["status"] == 200 and body["body"] == b"ok"

    for _ in range(count):
        await asyncio.create_task(one())  # a task each, as uvicorn runs requests
    gc.collect()
    return sum(ref() is not None for ref in alive)


def test_bentoml_s_timeout_keeps_every_request_until_its_timer_fires() -> None:
    assert asyncio.run(_requests_alive_after_serving(STOCK, 50)) == 50


def test_request_timeout_keeps_no_request_once_answered() -> None:
    # 300: the loop drops cancelled timers in bulk once there are more than 100 of them.
    assert asyncio.run(_requests_alive_after_serving(RequestTimeout, 300)) <= 100


def test_a_request_not_started_in_time_is_cancelled_and_answered_504() -> None:
    cancelled = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run() -> list[Message]:
        sent = await _call(RequestTimeout, slow)
        await asyncio.sleep(0)
        assert cancelled.is_set()
        return sent

    start, body = asyncio.run(run())
    assert start["status"] == 504
    assert "0.2 seconds" in json.loads(body["body"])["error"]


def test_a_started_response_may_take_longer_than_the_timeout() -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.4)  # twice the timeout
        await send({"type": "http.response.body", "body": b"late"})

    [start, body] = asyncio.run(_call(RequestTimeout, streaming))
    assert (start["status"], body["body"]) == (200, b"late")


def test_an_app_s_error_goes_up_at_once_not_after_the_timeout() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("broken")

    async def run() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await RequestTimeout(broken, timeout=30)(_scope(), _receive, lambda message: None)
        except RuntimeError:
            return loop.time() - started
        raise AssertionError("the error was swallowed")

    assert asyncio.run(run()) < 1


def test_a_failing_middleware_is_answered_at_once_with_a_json_500() -> None:
    """As service.py chains them: genserve's CatchErrors inside the request timeout."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("broken")

    async def run() -> tuple[list[Message], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = await _call(RequestTimeout, CatchErrors(broken))
        return sent, loop.time() - started

    [start, body], elapsed = asyncio.run(run())
    assert start["status"] == 500 and elapsed < 0.2  # 0.2 s: the timeout
    assert json.loads(body["body"]) == {"error": "internal error; see the server log"}


# A worker's order, in a process of its own: service.py first, then BentoML builds the app's
# middlewares (`BaseAppFactory.middlewares`, read here with the one attribute it needs set).


def test_a_worker_s_apps_use_the_request_timeout() -> None:
    result = run_script("worker_middlewares.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "['RequestTimeout']"
