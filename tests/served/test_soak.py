"""The soak benchmark keeps working: a short run end to end, and its growth measure.

No memory figure is asserted on the short run: a few dozen requests say nothing about growth.
The growth the soak measures is checked on samples made up here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from decoding import read_image
from helpers import ROOT

MIB = 1024 * 1024

if TYPE_CHECKING:
    from bench.soak import Phase


@pytest.fixture(autouse=True)
def importable_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/ is run from the repository root (`python -m bench.soak`), not installed."""
    monkeypatch.syspath_prepend(str(ROOT))


def _phase(name: str, rss: Callable[[int], float], requests: int = 4000) -> Phase:
    """A phase sampled every 100 requests, `rss(served)` MiB."""
    from bench.soak import KINDS, Phase

    samples = [(served, {"GenServe": int(rss(served) * MIB)}) for served in range(0, requests + 1, 100)]
    return Phase(name, KINDS, requests, samples=samples)


def test_growth_is_the_slope_after_warm_up() -> None:
    warming = _phase("txt2img", lambda n: 100 + 50 * min(n, 1000) / 1000 + 2 * n / 1000)  # +50 MiB warm-up
    assert warming.growth_per_1000("GenServe") == pytest.approx(2.0, rel=1e-3)
    assert _phase("txt2img", lambda n: 100).growth_per_1000("GenServe") == 0


def test_a_one_off_step_hardly_moves_a_phase_s_growth_but_counts_in_the_whole_run() -> None:
    from bench.soak import net_growth_per_1000

    warm_up = _phase("warm-up txt2img", lambda n: 100)
    stepped = _phase("txt2img", lambda n: 100 + 4 * (n > 2600))  # the allocator keeps 4 MiB more
    assert abs(stepped.growth_per_1000("GenServe")) < 0.1
    assert net_growth_per_1000([warm_up, stepped], "GenServe") == pytest.approx(1.0)


def test_a_process_that_comes_and_goes_is_not_reported() -> None:
    from bench.soak import Phase, long_lived

    phase = Phase(
        "img2vid", ("img2vid",), 10, samples=[(0, {"GenServe": 1, "ffmpeg": 1}), (10, {"GenServe": 1})]
    )
    assert long_lived([phase]) == ["GenServe"]


@pytest.mark.slow
def test_short_soak_runs_every_phase_and_writes_the_report(tiny_models, tmp_path) -> None:
    from bench.soak import PHASES

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--requests",
            "40",
            "--warmup",
            "40",
            "--sample-every",
            "0.2",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for phase in PHASES:
        assert re.search(rf"^{phase}: 40 requests in \d+ s, 0 failed$", run.stdout, re.MULTILINE), run.stdout
        assert f"| {phase} |" in run.stdout
    report = (tmp_path / "soak.md").read_text()
    for process in ("GenServe", "ImageGenerator", "VideoGenerator"):
        assert f"| {process} |" in report
    mime, pixels = read_image((tmp_path / "soak.png").read_bytes())
    assert mime == "image/png" and pixels.shape[0] > 100
