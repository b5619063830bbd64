"""Greedy batching on BentoML's real dispatcher: batches still form under load, no learned wait."""

from __future__ import annotations

import asyncio

import pytest
from bentoml._internal.marshal import dispatcher

from genserve.batching import GreedyOptimizer, batch_greedily

MAX_BATCH = 8
BATCH_S = 0.02


async def _serve_bursts() -> tuple[dispatcher.CorkDispatcher, list[int]]:
    """BentoML's dispatcher in front of a model that takes BATCH_S per batch: its training
    requests one by one, then bursts of twice `MAX_BATCH` concurrent requests."""

    def fail() -> None:
        raise AssertionError("the dispatcher gave up on a request")

    cork = dispatcher.CorkDispatcher(60_000, MAX_BATCH, fallback=fail, get_batch_size=lambda _: 1)
    batch_sizes: list[int] = []

    async def model(batch: tuple[int, ...]) -> list[int]:
        batch_sizes.append(len(batch))
        await asyncio.sleep(BATCH_S)
        return [x * 2 for x in batch]

    call = cork(model)
    try:
        for i in range(12):  # the dispatcher trains on its first ~11 batches, one request each
            assert await call(i) == i * 2
        for _ in range(3):
            answers = await asyncio.gather(*(call(i) for i in range(2 * MAX_BATCH)))
            assert answers == [i * 2 for i in range(2 * MAX_BATCH)]
        cork.optimizer.trigger_refresh()  # refreshes are rate-limited to one per 5 s
    finally:
        cork.shutdown()
    return cork, batch_sizes


def test_bentoml_dispatcher_learns_to_hold_lone_requests() -> None:
    """What genserve works around: requests queued behind a running batch teach BentoML's stock
    dispatcher to hold the next lone request back for partners."""
    cork, _ = asyncio.run(_serve_bursts())
    assert type(cork.optimizer) is not GreedyOptimizer
    assert cork.optimizer.wait > 0


def test_greedy_dispatcher_batches_under_load_and_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "Optimizer", dispatcher.Optimizer)  # restored after the test
    batch_greedily()
    cork, batch_sizes = asyncio.run(_serve_bursts())
    assert isinstance(cork.optimizer, GreedyOptimizer)
    assert cork.optimizer.wait == 0
    assert cork.optimizer.o_a > 0  # the batch-cost model is still learned
    bursts = batch_sizes[12:]
    assert sum(bursts) == 3 * 2 * MAX_BATCH
    assert max(bursts) == MAX_BATCH  # concurrent requests still share batches
