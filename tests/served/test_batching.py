"""Greedy batching on BentoML's real dispatcher: batches still form under load, no learned wait,
and the next batch starts before the last one is answered."""

from __future__ import annotations

import asyncio

import pytest
from _bentoml_impl.server import app as service_app
from bentoml._internal.marshal import dispatcher
from helpers import run_script

from genserve.serving.batching import GreedyDispatcher, GreedyOptimizer, batch_greedily

MAX_BATCH = 8
BATCH_S = 0.02


async def _serve_bursts(
    cork: dispatcher.CorkDispatcher, events: list[tuple[str, int]] | None = None
) -> list[int]:
    """`cork` in front of a model that takes BATCH_S per batch: its training requests one by
    one, then bursts of twice `MAX_BATCH` concurrent requests. The sizes of its batches; in
    `events`, ("burst", index) as each burst begins, ("start", first request) as each batch
    starts and ("answer", request) as each request gets its answer."""
    events = [] if events is None else events
    batch_sizes: list[int] = []

    async def model(batch: tuple[int, ...]) -> list[int]:
        events.append(("start", batch[0]))
        batch_sizes.append(len(batch))
        await asyncio.sleep(BATCH_S)
        return [x * 2 for x in batch]

    async def call(x: int) -> int:
        answer = await cork(model)(x)
        events.append(("answer", x))
        return answer

    try:
        for i in range(12):  # the dispatcher trains on its first ~11 batches, one request each
            assert await call(i) == i * 2
        for burst in range(3):
            events.append(("burst", burst))
            answers = await asyncio.gather(*(call(i) for i in range(2 * MAX_BATCH)))
            assert answers == [i * 2 for i in range(2 * MAX_BATCH)]
        cork.optimizer.trigger_refresh()  # refreshes are rate-limited to one per 5 s
    finally:
        cork.shutdown()
    return batch_sizes


#: BentoML's own dispatcher class, whatever its module holds once batch_greedily() has run.
STOCK = GreedyDispatcher.__bases__[0]


def _gave_up() -> None:
    raise AssertionError("the dispatcher gave up on a request")


def _stock() -> dispatcher.CorkDispatcher:
    return STOCK(60_000, MAX_BATCH, fallback=_gave_up, get_batch_size=lambda _: 1)


def _greedy() -> GreedyDispatcher:
    return GreedyDispatcher(60_000, MAX_BATCH, fallback=_gave_up, get_batch_size=lambda _: 1)


def _answered_before_next_start(events: list[tuple[str, int]]) -> list[bool]:
    """For each batch of a burst after its first (its requests queued while the one before ran):
    was any request of the batch before it answered before it started?"""
    verdicts: list[bool] = []
    in_burst = running = answered = False
    for kind, _ in events:
        if kind == "burst":
            in_burst, running = True, False
        elif kind == "start":
            if in_burst and running:
                verdicts.append(answered)
            running, answered = True, False
        else:
            answered = True
    return verdicts


def test_bentoml_dispatcher_learns_to_hold_lone_requests() -> None:
    """What genserve works around: requests queued behind a running batch teach BentoML's stock
    dispatcher to hold the next lone request back for partners."""
    cork = _stock()
    asyncio.run(_serve_bursts(cork))
    assert cork.optimizer.wait > 0


def test_greedy_dispatcher_batches_under_load_and_never_waits() -> None:
    cork = _greedy()
    batch_sizes = asyncio.run(_serve_bursts(cork))
    assert isinstance(cork.optimizer, GreedyOptimizer)
    assert cork.optimizer.wait == 0
    assert cork.optimizer.o_a > 0  # the batch-cost model is still learned
    bursts = batch_sizes[12:]
    assert sum(bursts) == 3 * 2 * MAX_BATCH
    assert max(bursts) == MAX_BATCH  # concurrent requests still share batches


def test_bentoml_dispatcher_answers_a_batch_before_starting_the_next() -> None:
    """What genserve works around: the generator idles while the last batch's answers go out."""
    events: list[tuple[str, int]] = []
    asyncio.run(_serve_bursts(_stock(), events))
    verdicts = _answered_before_next_start(events)
    assert len(verdicts) >= 3
    assert all(verdicts)


def test_greedy_dispatcher_starts_the_next_batch_before_answering() -> None:
    events: list[tuple[str, int]] = []
    asyncio.run(_serve_bursts(_greedy(), events))
    verdicts = _answered_before_next_start(events)
    assert len(verdicts) >= 3  # three bursts, each of two batches at least
    assert not any(verdicts)
    assert sorted(x for kind, x in events if kind == "answer") == sorted(
        [*range(12), *range(2 * MAX_BATCH), *range(2 * MAX_BATCH), *range(2 * MAX_BATCH)]
    )  # every request answered once


def test_greedy_dispatcher_answers_a_failed_batch_with_its_error() -> None:
    async def failing(batch: tuple[int, ...]) -> list[int]:
        raise ValueError("out of memory")

    async def serve() -> list[object]:
        cork = _greedy()
        try:
            return await asyncio.gather(*(cork(failing)(i) for i in range(3)), return_exceptions=True)
        finally:
            cork.shutdown()

    outcomes = asyncio.run(serve())
    assert [str(outcome) for outcome in outcomes] == ["out of memory"] * 3


def test_batch_greedily_patches_an_app_imported_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_app, "CorkDispatcher", STOCK)  # restored after the test
    monkeypatch.setattr(dispatcher, "CorkDispatcher", STOCK)
    batch_greedily()
    assert service_app.CorkDispatcher is GreedyDispatcher


# A worker's order, in a process of its own: service.py first, BentoML's service app after.


def test_a_worker_s_service_app_uses_the_greedy_dispatcher() -> None:
    result = run_script("worker_dispatcher.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "True"
