"""The entry service's connections to the generators, on BentoML's real client (serving/dispatch.py)."""

from __future__ import annotations

import json

from helpers import run_script

# Run in a process of its own: importing service.py sets BentoML's global configuration.


def test_generator_connections_are_kept_and_dropped_before_the_generator_drops_them() -> None:
    result = run_script("connection_pool.py")
    assert result.returncode == 0, result.stderr[-3000:]
    pool = json.loads(result.stdout.splitlines()[-1])
    assert not pool["renewed"]  # BentoML would renew (and close under running calls) after 100
    assert pool["pool_keepalive_s"] < pool["generator_keepalive_s"]
