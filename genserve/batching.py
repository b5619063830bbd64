"""BentoML's adaptive batching, made greedy: a batch starts as soon as the generator is free.

BentoML's batching dispatcher (`bentoml/_internal/marshal/dispatcher.py`, `CorkDispatcher`)
runs one batch at a time, and the requests that queue while a batch runs form the next one
(up to `max_batch_size`): that is the batching, and under load it fills batches by itself.
Besides, the dispatcher holds a lone request back, waiting for partners, for about as long as
the first requests of its last 50 batches waited. That average includes the time requests
queued behind a running batch, so after a burst of load every lone request is held for about a
batch's time for partners that do not come, and those waits keep the average up (bench: one
client's p50 went from 119 ms on a fresh server to ~300 ms after one burst). A generator gains
nothing by idling: whatever arrives while it works joins the next batch anyway. So genserve
keeps BentoML's dispatcher, its batches, `max_batch_size` and `max_latency_ms`, and drops the
learned wait. No BentoML setting does this; BentoML is pinned, and tests/test_batching.py
checks the dispatcher still behaves as this module expects.
"""

from __future__ import annotations

from bentoml._internal.marshal import dispatcher


class GreedyOptimizer(dispatcher.Optimizer):
    """BentoML's batch-cost model, learned as before, with the wait for partners fixed at zero."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = 0.0


def batch_greedily() -> None:
    """Make the dispatchers created from now on (one per batchable method, when a service's
    worker starts) start a batch whenever the generator is free."""
    dispatcher.Optimizer = GreedyOptimizer
