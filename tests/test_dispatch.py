"""The entry service's connections to the generators, on BentoML's real client (serving/dispatch.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

# Run in a process of its own: importing service.py sets BentoML's global configuration.
CHECK_POOL = """
import asyncio, json
import service
from _bentoml_impl.client.proxy2 import RemoteProxy
from _bentoml_impl.worker.service import main as worker
from genserve.serving.dispatch import _tune_connection_pool

service.GenServe.inject_config()  # what `bentoml serve` does before the entry service calls anyone


async def check() -> None:
    proxy = RemoteProxy("file:///nowhere.sock", service=service.ImageGenerator)  # as bentoml.depends
    manager = proxy.to_async._session_manager
    _tune_connection_pool(proxy)
    first = await manager.get_session()
    for _ in range(1000):  # one session per call
        session = await manager.get_session()
    print(json.dumps({
        "renewed": session is not first,
        "pool_keepalive_s": session.connector._keepalive_timeout,
        "generator_keepalive_s": next(p.default for p in worker.params if p.name == "timeout_keep_alive"),
    }))
    await manager.close()


asyncio.run(check())
"""


def test_generator_connections_are_kept_and_dropped_before_the_generator_drops_them() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK_POOL], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pool = json.loads(result.stdout.splitlines()[-1])
    assert not pool["renewed"]  # BentoML would renew (and close under running calls) after 100
    assert pool["pool_keepalive_s"] < pool["generator_keepalive_s"]
