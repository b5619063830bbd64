"""The clients' floor (genserve/clients): light enough for the UI's image, and its shared job loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from helpers import ROOT

from genserve.clients.api import JOB_ACTIVE, JobProgress, JobTimeout, wait_for_job
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


def statuses(*values: str, seen: list[str] | None = None):
    """A job's status function that answers `values` in turn, noting each in `seen`."""
    answers = iter(values)

    async def status() -> str:
        value = next(answers)
        if seen is not None:
            seen.append(value)
        return value

    return status


def test_wait_for_job_polls_until_the_job_stops_running() -> None:
    seen: list[str] = []
    final = asyncio.run(wait_for_job(statuses("pending", "in_progress", "completed", seen=seen), 60))
    assert (final, seen) == ("completed", ["pending", "in_progress", "completed"])


def test_wait_for_job_knows_the_jobs_api_states() -> None:
    job = statuses("queued", "running", "cancelled", "never asked")
    assert asyncio.run(wait_for_job(job, 60, running=JOB_ACTIVE)) == "cancelled"
    assert JOB_ACTIVE == ("queued", "running")


def test_wait_for_job_gives_up_after_its_timeout() -> None:
    with pytest.raises(JobTimeout, match="still in_progress after"):
        asyncio.run(wait_for_job(statuses("in_progress", "in_progress"), timeout_s=0))


def job(state: str, fraction: float, image: tuple[int, int | None], video: tuple[int, int | None], **rest):
    """A txt2vid job's document as GET /jobs/{id} answers it (service side: job_store.job_document)."""
    stages = {
        name: {"step": step, "total": total, "fraction": step / total if total else 0.0}
        for name, (step, total) in {"image": image, "video": video}.items()
    }
    return {"state": state, "progress": {"fraction": fraction, "stages": stages, "eta_s": None} | rest}


def test_job_progress_names_the_stage_under_way_its_steps_and_eta() -> None:
    queued = job("queued", 0.0, (0, None), (0, None))
    queued["position"] = 2
    assert JobProgress.of(queued).summary() == "queued, 2 jobs ahead, 0 %"
    imaging = JobProgress.of(job("running", 0.3, (3, 5), (0, None), eta_s=4.4))
    assert (imaging.stage, imaging.step, imaging.total) == ("image", 3, 5)
    assert imaging.summary() == "running, image 3/5 steps, 30 %, ETA 4 s"
    between = JobProgress.of(job("running", 0.5, (5, 5), (0, None), eta_s=4.0))
    assert between.summary() == "running, video starting, 50 %, ETA 4 s"
    almost = JobProgress.of(job("running", 0.999, (5, 5), (25, 25), eta_s=0.0))
    assert almost.summary() == "running, video 25/25 steps, 99 %, ETA 0 s"  # 100 % once completed
    done = JobProgress.of(job("completed", 1.0, (5, 5), (25, 25)))
    assert done.summary() == "completed, video 25/25 steps, 100 %"
