"""The entry service's side of a generator call: deadlines, cancellation, and failures as answers.

BentoML keeps a generator working after the caller has gone (a timed-out or disconnected
request, upstream issue #5642), so each request carries a deadline the generator enforces, and
when the caller goes away the generator is told to drop the request. Whatever goes wrong
comes back as an `Outcome` with an HTTP status, never as a hang or a bare 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bentoml.exceptions import BentoMLException
from starlette.requests import Request

from genserve.workers import Outcome, Queued

logger = logging.getLogger(__name__)

#: What a refused client is told to wait (Retry-After): about one batch of work.
RETRY_AFTER_S = 5
DISCONNECT_POLL_S = 0.5


async def dispatch(
    generator: Any, item: Any, timeout_s: float, request: Request | None = None, wait_if_busy: bool = False
) -> Outcome:
    """Run `item` through `generator` (a `bentoml.depends` handle) and return its outcome.

    `request`: the client's HTTP request, watched for a disconnect. `wait_if_busy`: when the
    generator's queue is full, wait and retry until the deadline instead of answering 429 (for
    background jobs, which a client has already been promised).
    """
    queued = Queued(item=item, deadline=time.time() + timeout_s)
    while True:
        outcome = await _call_once(generator, queued, request)
        retry = outcome.status == 429 and wait_if_busy and time.time() + RETRY_AFTER_S < queued.deadline
        if not retry:
            return outcome
        await asyncio.sleep(RETRY_AFTER_S)


async def _call_once(generator: Any, queued: Queued, request: Request | None) -> Outcome:
    work = asyncio.ensure_future(generator.to_async.generate([queued]))
    try:
        if request is not None:
            await _until_done_or_disconnected(work, request)
        [outcome] = await work
        return outcome
    except asyncio.CancelledError:
        # The caller is gone (disconnect, or the server's own timeout cancelled this coroutine):
        # stop the generator working for nobody. Shielded: this coroutine is being cancelled.
        work.cancel()
        await asyncio.shield(_cancel(generator, queued.request_id))
        raise
    except BentoMLException as error:
        status = int(error.error_code)
        if status in (429, 503):
            return Outcome(status=status, error="the generators are busy or still loading; retry later")
        logger.error("generator call failed: %s", error)
        return Outcome(status=500, error="generation failed; see the server log")
    except Exception as error:  # the generator process died or its connection broke
        logger.error("generator unreachable: %r", error)
        return Outcome(status=503, error="the generator stopped while working on this request; retry later")


async def _until_done_or_disconnected(work: asyncio.Future, request: Request) -> None:
    while not work.done():
        await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if not work.done() and await request.is_disconnected():
            logger.info("client disconnected; cancelling its request")
            raise asyncio.CancelledError


async def _cancel(generator: Any, request_id: str) -> None:
    try:
        await generator.to_async.cancel([request_id])
    except Exception as error:  # best effort: the deadline still stops the work
        logger.warning("could not cancel request %s: %r", request_id, error)
