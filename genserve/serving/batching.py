"""BentoML's adaptive batching, made greedy: a batch starts as soon as the generator is free.

BentoML's batching dispatcher (`CorkDispatcher`) runs one batch at a time, and the requests that
queue while a batch runs form the next one (up to `max_batch_size`): that is the batching, and
under load it fills batches by itself. genserve keeps that dispatcher, its batches,
`max_batch_size` and `max_latency_ms`, and changes two things that leave a generator idle while
requests wait (bench/README.md has the measurements):

- The learned wait. The dispatcher holds a lone request back for about as long as the first
  requests of its last 50 batches waited, which includes their time queued behind a running
  batch: after a burst, every lone request waits a batch's time for partners that do not come.
  Whatever arrives while a generator works joins the next batch anyway: the wait is zero here.
- The hand-over between batches. The dispatcher answers a batch's requests (serialised and sent
  on the event loop, ~5 ms each) before it frees the generator. genserve frees the generator
  first, lets the next batch start, then answers.

No BentoML setting does either; the dispatcher is BentoML's private code (reached through
serving/bentoml_compat.py), and tests/served/test_batching.py checks it behaves as expected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from genserve.serving import bentoml_compat

#: How many of the dispatcher's polling intervals (1 ms) a finished batch's answers wait, at
#: most, for the next batch to start.
HANDOVER_TICKS = 5


class GreedyOptimizer(bentoml_compat.Optimizer):
    """BentoML's batch-cost model, learned as before, with the wait for partners fixed at zero."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = 0.0


class GreedyDispatcher(bentoml_compat.CorkDispatcher):
    """BentoML's dispatcher that never waits for partners and starts the next batch before
    answering the last one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer = GreedyOptimizer(self.max_latency)

    async def outbound_call(self, inputs_info: Sequence[bentoml_compat.Job], training: bool = False) -> None:
        """Run one batch, free the generator, let the next batch start, then answer.

        As BentoML's own: a failed batch answers each of its requests with the exception, a
        cancelled one cancels them, and successful batches train the batch-cost model. (BentoML
        passes `training` for its first batches; with no wait to learn, it changes nothing here.)
        """
        started = time.time()
        try:
            outputs = await self.callback(tuple(job.data for job in inputs_info))
            if len(outputs) != len(inputs_info):
                raise RuntimeError(f"a batch of {len(inputs_info)} returned {len(outputs)} results")
            failed = False
        except Exception as error:
            outputs, failed = [error] * len(inputs_info), True
        except BaseException:
            for job in inputs_info:
                job.future.cancel()
            raise
        finally:
            self._sema.release()
        duration = time.time() - started
        await self._let_next_batch_start()
        for job, output in zip(inputs_info, outputs, strict=True):
            if not job.future.done():
                job.future.set_result(output)
        if not failed:  # the batch-cost model learns from durations; the wait it would learn is 0
            self.optimizer.log_outbound(n=len(inputs_info), wait=0, duration=duration)

    async def _let_next_batch_start(self) -> None:
        """Give the controller (it polls every TICKET_INTERVAL) time to take the queued requests
        as the next batch, then one turn of the event loop, in which that batch's task hands
        its work to the generator's thread."""
        for _ in range(HANDOVER_TICKS):
            if not self._queue or self._sema.is_locked():
                break
            await asyncio.sleep(self.TICKET_INTERVAL)
        await asyncio.sleep(0)


def batch_greedily() -> None:
    """Make the services' batchable methods use `GreedyDispatcher`."""
    bentoml_compat.install_dispatcher(GreedyDispatcher)
