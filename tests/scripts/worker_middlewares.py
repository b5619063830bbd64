"""The middlewares BentoML's app factory gives a worker's app once service.py is imported: genserve's
request timeout instead of BentoML's. Run by tests/served/test_timeout.py."""

from types import SimpleNamespace

from bentoml._internal.server.base_app import BaseAppFactory

import service  # noqa: F401  (what a worker imports before it builds its app: it installs the timeout)

factory = SimpleNamespace(timeout=930, max_concurrency=None)
print([m.cls.__name__ for m in BaseAppFactory.middlewares.fget(factory)])
