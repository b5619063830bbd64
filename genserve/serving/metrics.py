"""genserve's own Prometheus metrics, next to BentoML's (adaptive batch size, request counts...).

Created at import time, as BentoML requires; every service process shares BentoML's
multiprocess metrics directory, so the entry service's /metrics shows them all.
"""

from __future__ import annotations

import bentoml

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

queue_wait_seconds = bentoml.metrics.Histogram(
    name="genserve_queue_wait_seconds",
    documentation="Time a request waited between reaching a generator's queue and its batch starting",
    labelnames=["kind"],
    buckets=_SECONDS,
)
generation_seconds = bentoml.metrics.Histogram(
    name="genserve_generation_seconds",
    documentation="Seconds one generator batch took, pipeline calls included",
    labelnames=["kind"],
    buckets=_SECONDS,
)
generated_total = bentoml.metrics.Counter(
    name="genserve_generated_total",
    documentation="Images or videos generated",
    labelnames=["kind"],
)
