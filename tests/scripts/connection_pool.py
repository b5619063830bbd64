"""The entry service's connection pool to a generator, as `bentoml serve` sets it up: kept for good,
idle connections dropped before the generator drops them. Run by tests/served/test_dispatch.py."""

import asyncio
import json

from _bentoml_impl.client.proxy2 import RemoteProxy
from _bentoml_impl.worker.service import main as worker

import service
from genserve.serving.dispatch import _tune_connection_pool

service.GenServe.inject_config()  # what `bentoml serve` does before the entry service calls anyone


async def check() -> None:
    proxy = RemoteProxy("file:///nowhere.sock", service=service.ImageGenerator)  # as bentoml.depends
    manager = proxy.to_async._session_manager
    _tune_connection_pool(proxy)
    first = await manager.get_session()
    for _ in range(1000):  # one session per call
        session = await manager.get_session()
    print(
        json.dumps(
            {
                "renewed": session is not first,
                "pool_keepalive_s": session.connector._keepalive_timeout,
                "generator_keepalive_s": next(
                    p.default for p in worker.params if p.name == "timeout_keep_alive"
                ),
            }
        )
    )
    await manager.close()


asyncio.run(check())
