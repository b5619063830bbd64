"""BentoML's private names genserve uses (genserve/serving/bentoml_compat.py) still exist, and an
untested BentoML release is refused."""

from __future__ import annotations

import asyncio
import importlib
from functools import reduce

import bentoml as bentoml_package
import pytest
from _bentoml_impl.client.proxy2 import SessionManager
from _bentoml_impl.tasks import Sqlite3Store

from genserve.serving import bentoml_compat
from genserve.serving.bentoml_compat import (
    PRIVATE_INSTANCE_ATTRIBUTES,
    PRIVATE_NAMES,
    TESTED_BENTOML,
    check_bentoml_version,
)


@pytest.mark.parametrize(("module", "path"), PRIVATE_NAMES, ids=[f"{m}:{p}" for m, p in PRIVATE_NAMES])
def test_every_private_name_still_exists(module: str, path: str) -> None:
    reduce(getattr, path.split("."), importlib.import_module(module))


@bentoml_package.service
class Probe:
    """A service of the new SDK's kind, for its API method's attributes."""

    @bentoml_package.api
    def generate(self, value: int) -> int:
        return value


def instances(tmp_path) -> dict[str, object]:
    """One instance of each class whose instance attributes genserve uses."""

    async def batch(inputs):
        return inputs

    dispatcher = bentoml_compat.CorkDispatcher(10, 4, fallback=lambda: None)
    dispatcher(batch)  # sets its callback
    job = bentoml_compat.Job(enqueue_time=0.0, data=None, future=asyncio.get_running_loop().create_future())
    return {
        "CorkDispatcher": dispatcher,
        "Optimizer": dispatcher.optimizer,
        "Job": job,
        "SessionManager": SessionManager("http://127.0.0.1:9", timeout=1, headers={}),
        "Sqlite3Store": Sqlite3Store(str(tmp_path / "tasks.db")),
        "APIMethod": Probe.apis["generate"],
    }


def has_path(value: object, path: str) -> bool:
    for name in path.split("."):
        if not hasattr(value, name):
            return False
        value = getattr(value, name)
    return True


def test_every_private_instance_attribute_still_exists(tmp_path) -> None:
    async def check() -> list[str]:
        built = instances(tmp_path)
        manager = built["SessionManager"]
        built["ClientSession"] = manager._make_client()  # what the dependency client sends with
        try:
            return [
                f"{cls}.{path}"
                for cls, paths in PRIVATE_INSTANCE_ATTRIBUTES.items()
                for path in paths
                if not has_path(built[cls], path)
            ]
        finally:
            await built["ClientSession"].close()

    assert not asyncio.run(check())


def test_the_tested_release_starts_and_another_is_refused_unless_allowed(monkeypatch, caplog) -> None:
    check_bentoml_version(allow_untested=False)  # the installed one is the tested one
    assert bentoml_package.__version__ in TESTED_BENTOML
    monkeypatch.setattr(bentoml_package, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="GENSERVE_ALLOW_UNTESTED_BENTOML=1"):
        check_bentoml_version(allow_untested=False)
    check_bentoml_version(allow_untested=True)
    assert "9.9.9" in caplog.text
