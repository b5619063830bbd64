"""A worker's service app uses genserve's greedy dispatcher, and service.py does not import the app
(its cold start): run by tests/served/test_batching.py."""

import importlib
import sys

import service  # noqa: F401  (what a worker imports first: it installs the dispatcher)

assert "_bentoml_impl.server.app" not in sys.modules, "service.py imported the app"
app = importlib.import_module("_bentoml_impl.server.app")  # as a worker then does
greedy = importlib.import_module("genserve.serving.batching").GreedyDispatcher
print(app.CorkDispatcher is greedy)
