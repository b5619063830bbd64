"""Every package the code imports is pinned in requirements/: a transitive dependency that genserve
imports itself (starlette through BentoML, say) must not change version behind its back."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from helpers import ROOT

REQUIREMENTS = ROOT / "requirements"
#: What the served code may import: the runtime pins (the bento's and the image's).
SERVED = [
    ROOT / "service.py",
    *(ROOT / "genserve" / "core").rglob("*.py"),
    *(ROOT / "genserve" / "serving").rglob("*.py"),
]
EVERYTHING = [
    *SERVED,
    *(ROOT / "genserve" / "clients").rglob("*.py"),
    *(ROOT / "frontend").rglob("*.py"),
    *(ROOT / "bench").rglob("*.py"),
    *(ROOT / "models").rglob("*.py"),
    *(ROOT / "scripts").rglob("*.py"),
    *(ROOT / "tests").rglob("*.py"),
]
LOCAL = {
    "genserve",
    "helpers",
    "service",
    "bench",
    "conftest",
    "decoding",
    "train_demo",
    "import_models",
    "image_gen_pb2",
}


def pins(*names: str) -> set[str]:
    """The distributions pinned (`name==version`) in the given requirements files."""
    text = "\n".join((REQUIREMENTS / name).read_text() for name in names)
    return {normal(match) for match in re.findall(r"^([A-Za-z0-9_.-]+)==", text, flags=re.M)}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(paths: list[Path]) -> dict[str, set[str]]:
    """The distributions the files import at top level or inside functions, each with its importers."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top in LOCAL or top.startswith("_bentoml"):
                    continue
                for distribution in owners.get(top, [top]):
                    found.setdefault(normal(distribution), set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("paths", "files"),
    [(SERVED, ["runtime.txt"]), (EVERYTHING, [path.name for path in REQUIREMENTS.glob("*.txt")])],
    ids=["served code: runtime.txt", "all code: requirements/"],
)
def test_every_imported_package_is_pinned(paths: list[Path], files: list[str]) -> None:
    unpinned = {name: sorted(users) for name, users in imported_distributions(paths).items()}
    for name in pins(*files):
        unpinned.pop(name, None)
    assert not unpinned, unpinned
