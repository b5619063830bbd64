"""Closed-loop HTTP load: each client sends its next request as soon as its last one is answered.

A closed loop (rather than a fixed arrival rate) is how the issue states the load, "N concurrent
clients", and it measures capacity: with 16 clients the server always has work queued.
The clients use aiohttp, the cheapest asyncio HTTP client at hand (BentoML depends on it): every
server shares the machine with them, and with httpx they took ~1.2 ms of CPU and ~5 ms of latency
more per request (bench/README.md).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

TIMEOUT_S = 600


@dataclass(frozen=True)
class Answer:
    """A server's answer to one request, read whole."""

    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class LoadResult:
    """Latencies (seconds) of the successful requests of one run, its failures, its wall time and
    the CPU time the server spent on it."""

    clients: int
    latencies: tuple[float, ...]
    errors: int
    wall_s: float
    cpu_s: float = 0.0


def _payload(body: dict, form: bool) -> dict:
    if not form:
        return {"json": body}
    data = aiohttp.FormData()
    for name, value in body.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename=name, content_type="application/octet-stream")
        else:
            data.add_field(name, str(value))
    return {"data": data}


def run_load(
    url: str,
    bodies: Callable[[int], dict],
    clients: int,
    requests: int,
    check: Callable[[Answer], str | None],
    form: bool = False,
) -> LoadResult:
    """POST `requests` bodies to `url` from `clients` concurrent clients, as JSON or, with `form`,
    as multipart forms (bytes values as files). `check` says what is wrong with an answer, if
    anything: failures are counted, not fatal, so a run always reports."""
    indices = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []

    async def one_client(session: aiohttp.ClientSession) -> None:
        while (index := next(indices)) < requests:
            started = time.perf_counter()
            try:
                async with session.post(url, **_payload(bodies(index), form)) as response:
                    answer = Answer(response.status, response.content_type, await response.read())
            except (aiohttp.ClientError, TimeoutError) as failure:  # aiohttp's timeout: TimeoutError
                errors.append(repr(failure))
                continue
            elapsed = time.perf_counter() - started
            if error := check(answer):
                errors.append(error)
            else:
                latencies.append(elapsed)

    async def all_clients() -> float:
        connections = aiohttp.TCPConnector(limit=clients)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connections, timeout=timeout) as session:
            started = time.perf_counter()
            await asyncio.gather(*(one_client(session) for _ in range(clients)))
            return time.perf_counter() - started

    wall = asyncio.run(all_clients())
    if errors:  # counted in the report; the first says what went wrong
        print(f"{len(errors)} of {requests} requests to {url} failed; the first: {errors[0]}", flush=True)
    return LoadResult(clients=clients, latencies=tuple(latencies), errors=len(errors), wall_s=wall)
