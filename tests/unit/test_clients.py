"""The clients' floor (genserve/clients): light enough for the UI's image, and its shared job loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from helpers import ROOT

from genserve.clients.api import JobTimeout, wait_for_job
from genserve.serving.processes import free_port


def test_every_client_imports_without_torch_diffusers_or_imageio() -> None:
    """The UI's image installs none of them: its page, the CLI and the gateway must not need them."""
    script = ROOT / "tests" / "scripts" / "clients_without_torch.py"
    env = {"GENSERVE_URL": f"http://127.0.0.1:{free_port()}", "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    result = subprocess.run(
        [sys.executable, str(script), str(ROOT / "frontend" / "app.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clients imported without torch" in result.stdout


def statuses(*values: str):
    """A job's status function that answers `values` in turn."""
    answers = iter(values)

    async def status() -> str:
        return next(answers)

    return status


def test_wait_for_job_polls_until_the_job_stops_running() -> None:
    seen: list[str] = []
    job = statuses("pending", "in_progress", "completed")
    final = asyncio.run(wait_for_job(job, 60, on_status=lambda status, _: seen.append(status)))
    assert (final, seen) == ("completed", ["pending", "in_progress"])


def test_wait_for_job_gives_up_after_its_timeout_counted_from_the_jobs_start() -> None:
    with pytest.raises(JobTimeout, match="still in_progress after"):
        asyncio.run(wait_for_job(statuses("in_progress"), timeout_s=5, started=-1e9))
