"""Generator-side helpers: background loading and batch bookkeeping."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bentoml.exceptions import ServiceUnavailable

from genserve.workers import BackgroundLoad, Queued, run_batch


def test_not_ready_until_loaded_and_get_waits() -> None:
    release = threading.Event()
    load = BackgroundLoad("test", lambda: release.wait(5) and "pipeline")
    assert not load.ready
    release.set()
    assert load.get() == "pipeline"
    assert load.ready


def test_failed_load_is_reported_not_lost() -> None:
    def broken() -> None:
        raise OSError("weights missing")

    load = BackgroundLoad("test", broken)
    with pytest.raises(ServiceUnavailable, match="weights missing"):
        load.get()
    assert not load.ready


def test_run_batch_unwraps_items_in_order() -> None:
    batch = [Queued(item=i) for i in (3, 1, 2)]
    results = run_batch("image", batch, lambda items: [np.full(1, item) for item in items])
    assert [int(r[0]) for r in results] == [3, 1, 2]
