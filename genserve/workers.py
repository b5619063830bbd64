"""The generator side of serving: load a pipeline in the background, run batches, record metrics.

BentoML routes requests to a service even before it is ready, and a service whose
`__init__` blocks while loading makes health probes hang. So a generator starts loading
in a thread, `/readyz` reports the flag, and a batch that arrives early waits for the load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel, ConfigDict, Field

from genserve.metrics import generated_total, generation_seconds, queue_wait_seconds

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = TypeVar("P")


class Queued(BaseModel, Generic[T]):
    """A request on its way to a generator, stamped when it entered the queue."""

    model_config = ConfigDict(frozen=True)

    item: T
    queued_at: float = Field(default_factory=time.time)


class BackgroundLoad(Generic[P]):
    """Runs `load` (load and warm up a pipeline) in a thread; `get` waits for its result."""

    def __init__(self, name: str, load: Callable[[], P]) -> None:
        self.name = name
        self._load = load
        self._done = threading.Event()
        self._value: P | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=f"load-{name}", daemon=True).start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._value = self._load()
            logger.info("%s ready in %.1f s", self.name, time.perf_counter() - started)
        except BaseException as error:  # reported by `get` and `/readyz`, not lost in a thread
            logger.exception("%s failed to load", self.name)
            self._error = error
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self._error is None

    def get(self) -> P:
        self._done.wait()
        if self._error is not None:
            raise ServiceUnavailable(f"{self.name} failed to load: {self._error}")
        return self._value  # type: ignore[return-value]  # set whenever there is no error


def run_batch(
    kind: str, batch: Sequence[Queued[T]], generate: Callable[[list[T]], list[np.ndarray]]
) -> list[np.ndarray]:
    """Generate one batch, recording queue wait, batch time and output count."""
    started = time.time()
    for queued in batch:
        queue_wait_seconds.labels(kind=kind).observe(max(0.0, started - queued.queued_at))
    results = generate([queued.item for queued in batch])
    generation_seconds.labels(kind=kind).observe(time.time() - started)
    generated_total.labels(kind=kind).inc(len(results))
    return results
