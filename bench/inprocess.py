"""The pipeline's own limits, with no serving: what genserve's served numbers are divided by.

`InProcess` times generation calls in this process. `python -m bench.inprocess` is the bare
process of the cold-start and memory comparisons: it imports genserve, loads and warms up both
pipelines as the generators do (what the service's /readyz waits for), says so on stdout, runs
one full batch of the workload (what the image generator's peak memory includes) and prints its
peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from bench.servers import ROOT, peak_rss
from bench.workload import Workload

if TYPE_CHECKING:
    from diffusers import StableDiffusion3Pipeline

    from genserve.core.generation import ImagePipelines


class InProcess:
    """The image pipeline of the tiny preset, loaded here, generating the workload's requests.

    Generation runs in one worker thread, as in the image generator (BentoML calls a sync API in
    a worker thread): torch's OpenMP threads wait differently for a team that is not the main
    thread's, which changed timings several-fold on a busy machine.
    """

    def __init__(self, workload: Workload, pipe: StableDiffusion3Pipeline | None = None) -> None:
        from genserve.core.loading import load_image_pipeline
        from genserve.core.schemas import image_request_model
        from genserve.core.settings import Settings

        settings = Settings.from_env()
        self.preset = settings.image.preset
        self.pipe = pipe if pipe is not None else load_image_pipeline(settings)
        self.request_model = image_request_model(self.preset)
        self.workload = workload
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    def images(self, indices: range) -> list[np.ndarray]:
        """Requests `indices` of the workload, generated as one batch, as genserve's generator does."""
        from genserve.core.generation import generate_images

        requests = [self.request_model(**self.workload.body(i)) for i in indices]
        return self._thread.submit(generate_images, self.pipe, self.preset, requests).result()

    @cached_property
    def pipes(self) -> ImagePipelines:
        """The editing pipelines on the same weights, as the image generator builds them."""
        from genserve.core.generation import ImagePipelines

        return ImagePipelines.sharing(self.pipe)

    def edits(self, indices: range) -> list[np.ndarray]:
        """Image-to-image requests `indices` of the workload, edited as one batch."""
        from genserve.core.generation import generate_edits
        from genserve.core.schemas import EditJob, edit_request_model

        request = edit_request_model(self.preset)
        jobs = []
        for index in indices:
            fields = self.workload.edit(index)
            jobs.append(EditJob(image=fields.pop("image"), request=request(**fields)))
        return self._thread.submit(generate_edits, self.pipes, self.preset, jobs).result()

    def generate(self, indices: range, edit: bool = False) -> float:
        """Seconds for one pipeline call generating (or, with `edit`, editing) requests `indices`."""
        started = time.perf_counter()
        (self.edits if edit else self.images)(indices)
        return time.perf_counter() - started


@dataclass(frozen=True)
class BareLoad:
    load_s: float  # process start to both pipelines loaded and warmed up
    peak_rss: int  # bytes, after one full batch


def measure_bare_load(workload: Workload, batch: int) -> BareLoad:
    """Run the bare process and time it from its start to its 'loaded' line."""
    command = [sys.executable, "-m", "bench.inprocess", "--batch", str(batch)]
    command += ["--size", str(workload.width), str(workload.height), "--steps", str(workload.steps)]
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        loaded = process.stdout.readline()
        load_s = time.perf_counter() - started
        report = process.stdout.readline()
    if process.returncode != 0 or loaded.strip() != "loaded":
        raise RuntimeError(f"the bare load process failed with {process.returncode}")
    return BareLoad(load_s=load_s, peak_rss=json.loads(report)["peak_rss"])


def _bare(workload: Workload, batch: int) -> None:
    import os

    from genserve.core.settings import Settings
    from genserve.serving.workers import warmed_image_pipelines, warmed_video_pipeline

    settings = Settings.from_env()
    images = InProcess(workload, warmed_image_pipelines(settings).text_to_image)
    warmed_video_pipeline(settings)
    print("loaded", flush=True)
    images.generate(range(batch))
    print(json.dumps({"peak_rss": peak_rss(os.getpid())}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=2, required=True, metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args()
    _bare(Workload(args.size[0], args.size[1], args.steps), args.batch)


if __name__ == "__main__":
    main()
