"""Closed-loop HTTP load: each client sends its next request as soon as its last one is answered.

A closed loop (rather than a fixed arrival rate) is how the issue states the load, "N concurrent
clients", and it measures capacity: with 16 clients the server always has work queued.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

TIMEOUT_S = 600


@dataclass(frozen=True)
class LoadResult:
    """Latencies (seconds) of the successful requests of one run, its failures and wall time."""

    clients: int
    latencies: tuple[float, ...]
    errors: int
    wall_s: float

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.wall_s


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    return float(np.percentile(values, q))


async def _load(
    url: str,
    bodies: Callable[[int], dict],
    clients: int,
    requests: int,
    check: Callable[[httpx.Response], str | None],
) -> LoadResult:
    indices = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:

        async def one_client() -> None:
            while (index := next(indices)) < requests:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=bodies(index))
                except httpx.TransportError as failure:
                    errors.append(repr(failure))
                    continue
                elapsed = time.perf_counter() - started
                if error := check(response):
                    errors.append(error)
                else:
                    latencies.append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    if errors:  # counted in the report; the first says what went wrong
        print(f"{len(errors)} of {requests} requests to {url} failed; the first: {errors[0]}", flush=True)
    return LoadResult(clients=clients, latencies=tuple(latencies), errors=len(errors), wall_s=wall)


def run_load(
    url: str,
    bodies: Callable[[int], dict],
    clients: int,
    requests: int,
    check: Callable[[httpx.Response], str | None],
) -> LoadResult:
    """POST `requests` bodies to `url` from `clients` concurrent clients. `check` says what is
    wrong with an answer, if anything: failures are counted, not fatal, so a run always reports."""
    return asyncio.run(_load(url, bodies, clients, requests, check))
