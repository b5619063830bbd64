"""`python -m bench`: genserve served against the pipeline's own limit and against the original design.

Starts everything it needs (the tiny models, two genserve servers, the baseline server),
measures them side by side in interleaved rounds, prints the report and writes it, with a
plot, to `bench/results/`. `--quick` is a smoke run of the same code; `--preset sd35-large`
measures the real SD3.5 Large and SVD-XT architectures on a GPU (see bench/gpu.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np

from bench.inprocess import InProcess, measure_bare_load
from bench.load import TIMEOUT_S, Answer, run_load
from bench.report import BASELINE, BATCHING_OFF, BATCHING_ON, EDITS, Results, markdown, plot
from bench.servers import ROOT, Server, baseline_command, import_tiny_models, start
from bench.workload import Workload
from genserve.core.media import decode_image
from genserve.core.settings import Settings
from genserve.serving.processes import serve_command


@dataclass(frozen=True)
class Plan:
    """How much to measure. Rounds interleave every measurement, so drift hits all of them alike."""

    workload: Workload
    requests: dict[int, int]  # per round, by number of concurrent clients (in the order measured)
    singles: int  # in-process single calls before each served run
    batches: int  # in-process batch calls before each served run
    rounds: int
    warmup: int  # sequential requests per server first: BentoML's batching trains on its first ~11


# 128×128 at 8 steps: ~0.1 s per image on 2 cores, so a few ms of serving per request is
# measurable without drowning the work, and a batch of 8 still gains ~2× (bench/README.md).
FULL = Plan(Workload(128, 128, 8), {1: 12, 4: 16, 16: 96}, singles=4, batches=1, rounds=3, warmup=12)
QUICK = Plan(Workload(64, 64, 2), {1: 2, 2: 4}, singles=1, batches=1, rounds=1, warmup=2)


def machine(settings: Settings) -> dict[str, str]:
    import bentoml
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    return {
        "run": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "image generator": f"{settings.image.workers} worker(s) of {settings.image.cpu_threads or 'all'} "
        "torch thread(s), in process the same threads",
        "BentoML": bentoml.__version__,
        "load average at start": f"{os.getloadavg()[0]:.1f}",
    }


def _check_image(answer: Answer) -> str | None:
    if answer.status != 200 or answer.content_type != "image/png":
        return f"{answer.status} {answer.body[:300]!r}"
    return None


def _check_baseline(answer: Answer) -> str | None:
    try:
        image = json.loads(answer.body).get("image") if answer.status == 200 else None
    except (ValueError, AttributeError):  # not a JSON object
        image = None
    return None if image else f"{answer.status} {answer.body[:300]!r}"


CHECKS = {
    BATCHING_ON: _check_image,
    BATCHING_OFF: _check_image,
    BASELINE: _check_baseline,
    EDITS: _check_image,
}


def start_servers(batch: int, log_dir: Path, results: Results) -> dict[str, Server]:
    """Start the three servers one after another, so each cold start has the machine to itself."""
    open_api = {"GENSERVE_API_KEYS": "", "GENSERVE_API_KEYS_FILE": ""}  # whatever the shell has set
    commands = {
        BATCHING_ON: (serve_command, {**open_api, "GENSERVE_IMAGE_MAX_BATCH_SIZE": str(batch)}),
        BATCHING_OFF: (serve_command, {**open_api, "GENSERVE_IMAGE_MAX_BATCH_SIZE": "1"}),
        BASELINE: (baseline_command, {}),
    }
    servers: dict[str, Server] = {}
    try:
        for name, (command, env) in commands.items():
            print(f"starting {name}...", flush=True)
            servers[name] = start(name.replace(", ", "-").replace(" ", "-"), command, env, log_dir)
            results.cold_start_s[name] = servers[name].cold_start_s
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _same_image(servers: dict[str, Server], in_process: InProcess) -> None:
    """Every server makes the image the pipeline makes in process: all of them do the same work."""
    body = in_process.workload.body(0)
    expected = in_process.images(range(1))[0].astype(int)
    for name, server in servers.items():
        response = httpx.post(f"{server.url}/txt2img", json=body, timeout=TIMEOUT_S)
        content_type = response.headers.get("content-type", "").split(";")[0]
        if error := CHECKS[name](Answer(response.status_code, content_type, response.content)):
            raise RuntimeError(f"{name} failed its first request: {error}")
        data = response.content if name != BASELINE else base64.b64decode(response.json()["image"])
        pixels = np.asarray(decode_image(data).convert("RGB")).astype(int)
        if pixels.shape != expected.shape or np.abs(pixels - expected).max() > 1:
            raise RuntimeError(f"{name} made a different image than the pipeline in process")


def _load(
    results: Results, name: str, server: Server, clients: int, requests: int, body: Callable[[int], dict]
) -> None:
    cpu = server.cpu_seconds()
    route, form = ("/img2img", True) if name == EDITS else ("/txt2img", False)
    result = run_load(f"{server.url}{route}", body, clients, requests, CHECKS[name], form)
    results.add_load(name, replace(result, cpu_s=server.cpu_seconds() - cpu))


def _in_process(results: Results, in_process: InProcess, plan: Plan) -> None:
    cpu = time.process_time()
    results.single_s += [in_process.generate(range(i, i + 1)) for i in range(plan.singles)]
    results.single_cpu_s += time.process_time() - cpu
    cpu = time.process_time()
    results.batch_s += [in_process.generate(range(results.batch)) for _ in range(plan.batches)]
    results.batch_cpu_s += time.process_time() - cpu


def _edits(results: Results, in_process: InProcess, plan: Plan, server: Server) -> None:
    """Image to image, at the same load: in process in batches, and served at the most clients."""
    results.edit_batch_s += [
        in_process.generate(range(results.batch), edit=True) for _ in range(plan.batches)
    ]
    top = max(plan.requests)
    _load(results, EDITS, server, top, plan.requests[top], in_process.workload.edit)


def measure(plan: Plan, servers: dict[str, Server], results: Results) -> None:
    """Warm everything up, then measure in rounds of one of everything."""
    workload = plan.workload
    in_process = InProcess(workload)
    _same_image(servers, in_process)  # also the first call of each: lazy initialisation is not measured
    for name, server in servers.items():
        # BentoML's batching dispatcher trains on its first ~11 batches, one request at a time.
        run_load(f"{server.url}/txt2img", workload.body, 1, plan.warmup, CHECKS[name])
        burst = max(plan.requests)
        run_load(f"{server.url}/txt2img", workload.body, burst, burst, CHECKS[name])
    for round_index in range(plan.rounds):
        print(f"round {round_index + 1}/{plan.rounds}", flush=True)
        for name, server in servers.items():
            for clients in plan.requests:
                # The in-process limit is short to measure: a slice before every served run
                # samples the machine's state as often as the served runs do.
                _in_process(results, in_process, plan)
                _load(results, name, server, clients, plan.requests[clients], workload.body)
        _edits(results, in_process, plan, servers[BATCHING_ON])


def run(plan: Plan, out: Path) -> Results:
    settings = Settings.from_env()
    batch, workers = settings.image.max_batch_size, settings.image.workers
    results = Results(
        machine=machine(settings),
        workload=plan.workload,
        batch=batch,
        workers=workers,
        clients=tuple(plan.requests),
    )
    import_tiny_models()
    print("bare load...", flush=True)
    bare = measure_bare_load(plan.workload, batch)
    results.bare_load_s, results.bare_rss = bare.load_s, bare.peak_rss
    servers = start_servers(batch, out, results)
    try:
        measure(plan, servers, results)
        for name, server in servers.items():
            results.rss[name] = server.peak_rss()
    finally:
        for server in servers.values():
            server.stop()
    results.machine["load average at end"] = f"{os.getloadavg()[0]:.1f}"
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny workload, few requests")
    parser.add_argument(
        "--preset", choices=("tiny", "sd35-large"), default="tiny", help="sd35-large: GPU only"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="where to write the report"
    )
    parser.add_argument("--size", type=int, help="image width and height instead of the plan's")
    parser.add_argument("--steps", type=int, help="denoising steps instead of the plan's")
    args = parser.parse_args(argv)
    if args.preset == "sd35-large":
        if args.quick or args.size or args.steps:
            parser.error("--quick, --size and --steps apply to the tiny preset only")
        from bench.gpu import main as gpu_main

        gpu_main(args.out)
        return
    # What the report says it measured, whatever the shell has set; the servers inherit it.
    os.environ.update(GENSERVE_IMAGE_PRESET="tiny", GENSERVE_VIDEO_PRESET="tiny")
    args.out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    size = args.size or plan.workload.width
    plan = replace(plan, workload=Workload(size, size, args.steps or plan.workload.steps))
    results = run(plan, args.out)
    report = markdown(results, "bench.png")
    plot(results, str(args.out / "bench.png"))
    (args.out / "performance.md").write_text(report)
    print(report)
    print(f"written: {args.out / 'performance.md'}, {args.out / 'bench.png'}")


if __name__ == "__main__":
    main()
