"""`python -m bench.soak` (`make soak`): does any process of `make serve` keep memory per request?

One `bentoml serve service.py` on the tiny preset gets a closed-loop load in phases: a warm-up
of each kind, then text to image, image to video (uploads), text-to-video jobs (submit, poll,
fetch), and all three mixed. The RSS of every process is sampled as it goes; for each phase
and process the report gives the growth per 1,000 requests after the phase's warm-up (a robust
slope) and over the whole run, against the target of 0.5 MiB, and a plot of RSS against
requests served. bench/README.md says more.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

from bench.servers import ROOT, Server, import_tiny_models, start
from genserve.core.presets import MIN_FRAMES
from genserve.core.protocol import JOB_POLL_INTERVAL_S, JOB_RUNNING
from genserve.serving.processes import serve_command

MIB = 1024 * 1024
#: The target: less than this many MiB kept per 1,000 requests, by every process, after warm-up.
TARGET_MIB_PER_1000 = 0.5
#: The share of each phase's requests left out of its slope: caches, pools and the allocator's
#: arenas fill up first.
WARMUP_SHARE = 0.25
KINDS = ("txt2img", "img2vid", "txt2vid")
#: Each phase's name and the kinds of request it sends, in turn. The warm-ups come first and are
#: not measured: a generator's memory rises in steps until every batch size of its kind has run.
WARMUPS = {f"warm-up {kind}": (kind,) for kind in KINDS}
PHASES = {**WARMUPS, **{kind: (kind,) for kind in KINDS}, "mixed": KINDS}
STEPS = 1  # the cheapest real work: the soak measures serving, not the models
TIMEOUT = aiohttp.ClientTimeout(total=300)


@dataclass
class Phase:
    """One phase's samples: (requests served so far in the phase, {process role: RSS bytes})."""

    name: str
    kinds: tuple[str, ...]
    requests: int
    samples: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def measured(self) -> bool:
        return self.name not in WARMUPS

    def growth_per_1000(self, process: str) -> float:
        """MiB per 1,000 requests after the phase's warm-up share: the repeated-median (Siegel)
        slope of RSS against requests served, the median over samples of each sample's median
        slope to the others. A steady growth shows whole; a one-off step of the allocator (a
        few MiB, glibc keeping a new high-water mark) leaves it near zero, since most samples
        lie on one side of the step."""
        points = [(n, rss[process] / MIB) for n, rss in self.samples]
        warm = np.array([(n, rss) for n, rss in points if n >= WARMUP_SHARE * points[-1][0]], dtype=float)
        served, rss = warm.T
        apart = served[None, :] != served[:, None]  # samples with no request served between them say nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            slopes = np.where(
                apart, (rss[None, :] - rss[:, None]) / (served[None, :] - served[:, None]), np.nan
            )
        per_sample = [np.median(row[~np.isnan(row)]) for row in slopes if (~np.isnan(row)).any()]
        if len(per_sample) < 2:
            raise ValueError(f"{self.name}: too few samples after warm-up; sample more often or send more")
        return float(np.median(per_sample) * 1000)


def net_growth_per_1000(phases: list[Phase], process: str) -> float:
    """MiB per 1,000 requests from the end of the warm-ups to the end of the run: everything a
    process kept, steps included."""
    measured = [phase for phase in phases if phase.measured]
    warmed = [phase for phase in phases if not phase.measured][-1]
    served = sum(phase.samples[-1][0] for phase in measured)
    return (measured[-1].samples[-1][1][process] - warmed.samples[-1][1][process]) / MIB / served * 1000


def _picture(index: int) -> bytes:
    """A small PNG upload that differs from request to request, as real uploads do."""
    image = Image.new("RGB", (96, 64), (index * 37 % 256, index * 91 % 256, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Client:
    """The three kinds of request, each made as a client of the API would and checked."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def txt2img(self, index: int) -> None:
        body = {
            "prompt": f"soak {index}",
            "seed": index,
            "width": 64,
            "height": 64,
            "num_inference_steps": STEPS,
        }
        async with self.session.post(f"{self.url}/txt2img", json=body) as response:
            await _expect(response, "image/png")

    async def img2vid(self, index: int) -> None:
        form = aiohttp.FormData()
        form.add_field("image", _picture(index), filename="soak.png", content_type="image/png")
        for name, value in {"num_frames": MIN_FRAMES, "num_inference_steps": STEPS, "seed": index}.items():
            form.add_field(name, str(value))
        async with self.session.post(f"{self.url}/img2vid", data=form) as response:
            await _expect(response, "video/mp4")

    async def txt2vid(self, index: int) -> None:
        body = {
            "prompt": f"soak {index}",
            "seed": index,
            "image_steps": STEPS,
            "num_frames": MIN_FRAMES,
            "num_inference_steps": STEPS,
        }
        async with self.session.post(f"{self.url}/txt2vid/submit", json=body) as response:
            task = await response.json()
        query = {"task_id": task["task_id"]}
        while True:
            async with self.session.get(f"{self.url}/txt2vid/status", params=query) as response:
                status = (await response.json())["status"]
            if status not in JOB_RUNNING:
                break
            await asyncio.sleep(JOB_POLL_INTERVAL_S / 5)  # a fast poller: more requests per job
        async with self.session.get(f"{self.url}/txt2vid/get", params=query) as response:
            await _expect(response, "video/mp4")

    def request(self, kinds: tuple[str, ...], index: int) -> Awaitable[None]:
        return getattr(self, kinds[index % len(kinds)])(index)


async def _expect(response: aiohttp.ClientResponse, content_type: str) -> None:
    body = await response.read()
    if response.status != 200 or response.content_type != content_type:
        raise RuntimeError(f"{response.url.path}: {response.status} {body[:200]!r}")


async def run_phase(server: Server, phase: Phase, clients: int, sample_every_s: float) -> None:
    """The requests of `phase` from `clients` closed-loop clients, sampling RSS as they go."""
    indices = itertools.count()
    served = 0

    async def one_client(client: Client) -> None:
        nonlocal served
        while (index := next(indices)) < phase.requests:
            try:
                await client.request(phase.kinds, index)
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as failure:
                phase.failures.append(repr(failure))
            served += 1

    async def sample() -> None:
        while True:
            phase.samples.append((served, server.rss()))
            await asyncio.sleep(sample_every_s)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one_client(Client(session, server.url)) for _ in range(clients)))
        sampler.cancel()
    phase.samples.append((served, server.rss()))
    phase.wall_s = time.perf_counter() - started


def long_lived(phases: list[Phase]) -> list[str]:
    """The processes in every sample: the server's own, not the encoders it runs for a moment (ffmpeg)."""
    samples = [set(rss) for phase in phases for _, rss in phase.samples]
    return sorted(set.intersection(*samples))


def report(phases: list[Phase], clients: int, started: str, plot_name: str) -> str:
    """The markdown report of a run that `started` (a UTC time)."""
    processes = long_lived(phases)
    measured = [phase for phase in phases if phase.measured]
    warmups = [phase for phase in phases if not phase.measured]
    lines = [
        "# Soak: memory per request",
        "",
        f"`make soak`: {clients} closed-loop clients, tiny preset, {STEPS} denoising step, 64×64 images "
        f"and {MIN_FRAMES}-frame videos; a warm-up of {warmups[0].requests} requests of each kind, then "
        f"{measured[0].requests} requests a phase; RSS sampled during the run. A phase's growth is the "
        "repeated-median slope of RSS against requests served (robust to the allocator's one-off "
        f"steps), after its first {WARMUP_SHARE:.0%}; the whole run's is RSS at its end less RSS after "
        f"the warm-ups. Target: < {TARGET_MIB_PER_1000} MiB per 1,000 requests for every process.",
        "",
        f"Run {started}, {os.cpu_count()} cores.",
        "",
        "| phase | requests | requests/s | failed |",
        "|---|---|---|---|",
        *(f"| {p.name} | {p.requests} | {p.requests / p.wall_s:.1f} | {len(p.failures)} |" for p in phases),
        "",
        "Growth, MiB per 1,000 requests (RSS at the end):",
        "",
        "| process | " + " | ".join(p.name for p in measured) + " | whole run |",
        "|---|" + "---|" * (len(measured) + 1),
    ]
    worst = 0.0
    for process in processes:
        growths = [phase.growth_per_1000(process) for phase in measured]
        growths.append(net_growth_per_1000(phases, process))
        worst = max(worst, *growths)
        ends = [phase.samples[-1][1][process] / MIB for phase in measured]
        cells = [f"{g:+.3f} ({end:.0f} MiB)" for g, end in zip(growths, [*ends, ends[-1]], strict=True)]
        lines.append(f"| {process} | " + " | ".join(cells) + " |")
    verdict = "met" if worst < TARGET_MIB_PER_1000 else "**not met**"
    lines += ["", f"Largest growth: {worst:+.3f} MiB per 1,000 requests: target {verdict}.", ""]
    lines.append(f"![RSS of each process against requests served]({plot_name})")
    return "\n".join(lines) + "\n"


def plot(phases: list[Phase], path: Path) -> None:
    """RSS of each process against requests served, the phases one after another."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.5))
    offset = 0
    processes = long_lived(phases)
    colours = dict(zip(processes, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for phase in phases:
        for process in processes:
            points = [(offset + n, rss[process] / MIB) for n, rss in phase.samples]
            label = process if phase is phases[0] else None
            axes.plot(*zip(*points, strict=True), color=colours[process], label=label)
        axes.axvline(offset, color="grey", lw=0.5)
        axes.text(
            offset, 0.5, f" {phase.name}", transform=axes.get_xaxis_transform(), rotation=90, fontsize=7
        )
        offset += phase.samples[-1][0]
    axes.set(xlabel="requests served", ylabel="RSS, MiB", title="RSS of each process under load")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="requests in each phase")
    parser.add_argument("--warmup", type=int, default=500, help="requests of each kind before measuring")
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop clients")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="where to write the report"
    )
    args = parser.parse_args(argv)
    # What the report says it measured, whatever the shell has set; the server inherits it.
    os.environ.update(GENSERVE_IMAGE_PRESET="tiny", GENSERVE_VIDEO_PRESET="tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    import_tiny_models()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # txt2vid tasks are jobs: finished ones leave the store after a minute, so that thousands fit
    # under its bound (GENSERVE_JOB_MAX) and the run measures memory, not the store filling up.
    server = start("soak", serve_command, {"GENSERVE_JOB_RETENTION_S": "60"}, args.out)
    phases = [
        Phase(name, kinds, args.warmup if name in WARMUPS else args.requests)
        for name, kinds in PHASES.items()
    ]
    try:
        for phase in phases:
            asyncio.run(run_phase(server, phase, args.clients, args.sample_every))
            print(
                f"{phase.name}: {phase.requests} requests in {phase.wall_s:.0f} s, "
                f"{len(phase.failures)} failed",
                flush=True,
            )
            if phase.failures:
                print(f"  the first failure: {phase.failures[0]}", flush=True)
    finally:
        server.stop()
    text = report(phases, args.clients, started, "soak.png")
    plot(phases, args.out / "soak.png")
    (args.out / "soak.md").write_text(text)
    samples = {phase.name: phase.samples for phase in phases}
    (args.out / "soak.json").write_text(json.dumps(samples))
    print(text)
    print(f"written: {args.out / 'soak.md'}, {args.out / 'soak.png'}, {args.out / 'soak.json'} (the samples)")


if __name__ == "__main__":
    main()
