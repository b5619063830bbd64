"""The entry service's side of a generator call: deadlines, cancellation, and failures as answers.

BentoML keeps a generator working after the caller has gone (a timed-out or disconnected
request, bentoml/BentoML#5642), so each request carries a deadline the generator enforces, and
when the caller goes away the generator is told to drop the request. Whatever goes wrong
comes back as an `Outcome` with an HTTP status, never as a hang or a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from typing import Any

from bentoml.exceptions import BentoMLException
from starlette.requests import Request

from genserve.serving import bentoml_compat
from genserve.serving.workers import CLIENT_LEFT, Outcome, Queued

logger = logging.getLogger(__name__)

#: What a refused client is told to wait (Retry-After): about one batch of work.
RETRY_AFTER_S = 5
DISCONNECT_POLL_S = 0.5
#: How long an idle connection to a generator is reused: less than the generators' uvicorn
#: keep-alive (5 s, `bentoml serve` gives its dependency workers no other), see below.
POOL_KEEPALIVE_S = 3
#: A generator's `runner_connection` setting: its callers keep one connection pool for good.
#: BentoML's client otherwise renews its session every 100 calls and every 5 minutes and closes
#: the old one while calls still use it (bentoml/BentoML#5540; bench/README.md has the 503s it
#: caused). The generators are local processes: nothing to renew.
KEEP_CONNECTION_POOL = {"max_requests": sys.maxsize, "max_age": math.inf}


class Admission:
    """The bounded queue of one generator, counted here, on the caller's side.

    A full queue must be refused at once, before any work is sent. BentoML's own limit on the
    generator (`max_concurrency`) answers 429 without reading the request, which breaks the
    caller's connection mid-send: the caller cannot tell "busy" from "crashed", and requests
    that did get through run for nobody. Counting here avoids both. With several entry
    replicas, a generator holds up to replicas x limit.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_enter(self, count: int) -> bool:
        if self.in_flight + count > self.limit:
            return False
        self.in_flight += count
        return True

    def leave(self, count: int) -> None:
        self.in_flight -= count


async def dispatch(
    generator: Any,
    admission: Admission,
    item: Any,
    timeout_s: float,
    request: Request | None = None,
    wait_if_busy: bool = False,
    job_id: str | None = None,
) -> Outcome:
    """Run one item through `generator`; see `dispatch_all`. `job_id`: the job it is a stage of."""
    [outcome] = await dispatch_all(generator, admission, [item], timeout_s, request, wait_if_busy, job_id)
    return outcome


async def dispatch_all(
    generator: Any,
    admission: Admission,
    items: list[Any],
    timeout_s: float,
    request: Request | None = None,
    wait_if_busy: bool = False,
    job_id: str | None = None,
) -> list[Outcome]:
    """Run `items` through `generator` (a `bentoml.depends` handle) as one call; their outcomes.

    Items sent together join the adaptive batch together. `admission`: the generator's queue
    bound; when it is full the answer is 429 at once, or, with `wait_if_busy` (background jobs,
    which a client has already been promised), a wait for room until the deadline.
    `request`: the client's HTTP request, watched for a disconnect.
    """
    deadline = time.time() + timeout_s
    while not admission.try_enter(len(items)):
        if not (wait_if_busy and time.time() + RETRY_AFTER_S < deadline):
            return [Outcome(status=429, error="the generators are busy; retry later")] * len(items)
        await asyncio.sleep(RETRY_AFTER_S)
    try:
        queued = [Queued(item=item, deadline=deadline, job_id=job_id) for item in items]
        return await _call_once(generator, queued, request)
    finally:
        admission.leave(len(items))


async def _call_once(generator: Any, queued: list[Queued], request: Request | None) -> list[Outcome]:
    def everyone(outcome: Outcome) -> list[Outcome]:
        return [outcome] * len(queued)

    _tune_connection_pool(generator)
    work = asyncio.ensure_future(generator.to_async.generate(queued))
    try:
        if request is not None and await _disconnected_before_done(work, request):
            # Answered all the same, though nobody reads it: the log shows 499, and the request
            # ends as a request rather than as an error.
            logger.info("client disconnected; cancelling its request")
            await _abandon(work, generator, queued)
            return everyone(CLIENT_LEFT)
        return await work
    except asyncio.CancelledError:
        # The server's own timeout cancelled this coroutine: stop the generator working for
        # nobody. Shielded: this coroutine is being cancelled.
        await asyncio.shield(_abandon(work, generator, queued))
        raise
    except BentoMLException as error:
        status = int(error.error_code)
        if status in (429, 503):
            busy = "the generators are busy or still loading; retry later"
            return everyone(Outcome(status=status, error=busy))
        logger.error("generator call failed: %s", error)
        return everyone(Outcome(status=500, error="generation failed; see the server log"))
    except Exception as error:  # the generator process died or its connection broke
        logger.error("generator unreachable: %r", error)
        await _abandon(work, generator, queued)  # in case the request got through
        stopped = "the generator stopped while working on this request; retry later"
        return everyone(Outcome(status=503, error=stopped))


def _tune_connection_pool(generator: Any) -> None:
    """Reuse only connections the generator keeps open.

    BentoML starts generators with uvicorn's keep-alive of 5 s, and its client keeps idle
    connections for aiohttp's 15 s: a request sent on a connection idle for about 5 s can meet
    the generator closing it ("Can not write request body", a 503 here; bentoml/BentoML#4971).
    The pool of the client (one for good: `KEEP_CONNECTION_POOL`) drops them sooner.
    """

    bentoml_compat.set_keepalive(generator, POOL_KEEPALIVE_S)


async def _disconnected_before_done(work: asyncio.Future, request: Request) -> bool:
    """Wait for `work`; True if the client disconnected first."""
    while not work.done():
        await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if not work.done() and await request.is_disconnected():
            return True
    return False


async def _abandon(work: asyncio.Future, generator: Any, queued: list[Queued]) -> None:
    """Stop waiting for `work` and tell the generator to drop its requests."""
    work.cancel()
    request_ids = [q.request_id for q in queued]
    try:
        await generator.to_async.cancel(request_ids)
    except Exception as error:  # best effort: the deadline still stops the work
        logger.warning("could not cancel requests %s: %r", request_ids, error)
