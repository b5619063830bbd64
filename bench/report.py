"""Turn measurements into the ratios the issue asks for, a markdown report and a plot."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from bench.load import LoadResult
from bench.workload import Workload

BATCHING_ON, BATCHING_OFF, BASELINE = "genserve", "genserve, batching off", "baseline"
EDITS = "genserve, image to image"  # the batching server's /img2img
SERVERS = (BATCHING_ON, BATCHING_OFF, BASELINE)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float
    target: str
    met: bool


@dataclass
class Results:
    """Everything one bench run measured, side by side."""

    machine: dict[str, str]
    workload: Workload
    batch: int  # the in-process batch: the image generator's max_batch_size
    workers: int  # the image generator's worker processes, each a pipeline like the one in process
    clients: tuple[int, ...]
    single_s: list[float] = field(default_factory=list)  # in process, one request per call
    batch_s: list[float] = field(default_factory=list)  # in process, one call of `batch` requests
    single_cpu_s: float = 0.0  # in-process CPU time of all the single calls
    batch_cpu_s: float = 0.0
    edit_batch_s: list[float] = field(default_factory=list)  # in process, image to image, batches
    bare_load_s: float = 0.0
    bare_rss: int = 0
    loads: dict[str, dict[int, list[LoadResult]]] = field(default_factory=dict)  # server -> clients -> runs
    cold_start_s: dict[str, float] = field(default_factory=dict)
    rss: dict[str, dict[str, int]] = field(default_factory=dict)  # server -> process role -> bytes

    def add_load(self, server: str, result: LoadResult) -> None:
        self.loads.setdefault(server, {}).setdefault(result.clients, []).append(result)

    # Runs of one measurement are pooled (requests over total time), so a burst of noise on
    # a shared machine weighs in proportion to how long it lasted.
    def throughput(self, server: str, clients: int) -> float:
        runs = self.loads[server][clients]
        return sum(len(r.latencies) for r in runs) / sum(r.wall_s for r in runs)

    def latency(self, server: str, clients: int, q: float) -> float:
        return float(np.percentile([x for r in self.loads[server][clients] for x in r.latencies], q))

    def errors(self, server: str) -> int:
        return sum(r.errors for runs in self.loads[server].values() for r in runs)

    def cpu_per_image(self, server: str, clients: int) -> float:
        """CPU seconds per image over all the server's processes: the cost of serving shows here
        even when other work on the machine stretches wall times."""
        runs = self.loads[server][clients]
        return sum(r.cpu_s for r in runs) / sum(len(r.latencies) for r in runs)

    @property
    def inprocess_p50(self) -> float:
        return statistics.median(self.single_s)

    @property
    def inprocess_single_throughput(self) -> float:
        return len(self.single_s) / sum(self.single_s)

    @property
    def inprocess_batch_throughput(self) -> float:
        return self.batch * len(self.batch_s) / sum(self.batch_s)

    @property
    def inprocess_edit_throughput(self) -> float:
        return self.batch * len(self.edit_batch_s) / sum(self.edit_batch_s)

    def ratios(self) -> list[Ratio]:
        """The ratios the issue sets targets for, on the tiny preset on a CPU."""
        top = max(self.clients)
        served = self.throughput(BATCHING_ON, top)
        # Each worker is a pipeline of its own: the limit is one in-process pipeline's, per worker.
        efficiency = served / (self.workers * self.inprocess_batch_throughput)
        edit_efficiency = self.throughput(EDITS, top) / (self.workers * self.inprocess_edit_throughput)
        inprocess_gain = self.inprocess_batch_throughput / self.inprocess_single_throughput
        gain = served / self.throughput(BATCHING_OFF, top)
        speedup = served / self.throughput(BASELINE, top)
        overhead = self.latency(BATCHING_ON, 1, 50) / self.inprocess_p50
        cold = self.cold_start_s[BATCHING_ON] / self.bare_load_s
        return [
            Ratio(
                f"serving efficiency: img/s served at {top} clients ÷ in process, batch of {self.batch}"
                + (f", × {self.workers} workers" if self.workers > 1 else ""),
                efficiency,
                "≥ 0.90",
                efficiency >= 0.9,
            ),
            Ratio(
                f"edit serving efficiency: image to image, img/s served at {top} clients ÷ in process",
                edit_efficiency,
                "≥ 0.90",
                edit_efficiency >= 0.9,
            ),
            Ratio(
                f"batching gain: img/s at {top} clients, batching on ÷ off "
                f"(in process, a batch of {self.batch} gains {inprocess_gain:.2f})",
                gain,
                f"≥ {0.9 * inprocess_gain:.2f} (0.9 × in process)",
                gain >= 0.9 * inprocess_gain,
            ),
            Ratio(f"speed-up over the baseline: img/s at {top} clients", speedup, "≥ 3", speedup >= 3),
            Ratio(
                "single-request overhead: p50 served (1 client) ÷ in process",
                overhead,
                "≤ 1.10",
                overhead <= 1.1,
            ),
            Ratio("cold start: process start → /readyz 200 ÷ bare load", cold, "≤ 1.5", cold <= 1.5),
        ]


def _memory(sizes: dict[str, int]) -> str:
    total = f"{sum(sizes.values()) / MIB:.0f}"
    if len(sizes) == 1:
        return total
    return total + " (" + ", ".join(f"{role} {size / MIB:.0f}" for role, size in sorted(sizes.items())) + ")"


def markdown(results: Results, plot_name: str) -> str:
    """The report: machine, workload, measurements, ratios against their targets, the plot."""
    r = results
    top = max(r.clients)
    plural = {c: f"{c} client{'s' * (c > 1)}" for c in r.clients}
    lines = [
        "# Performance: the tiny preset on a CPU",
        "",
        "Measured by `python -m bench` (bench/README.md says what and how).",
        "",
        "Machine: " + "; ".join(f"{key} {value}" for key, value in r.machine.items()) + ".",
        f"Workload: text to image on the tiny preset, {r.workload.label()}, a different prompt and seed "
        "per request; closed-loop clients (each sends its next request when its last is answered).",
        "",
        "| in process (no serving) | value |",
        "|---|---|",
        f"| p50 latency of one request | {r.inprocess_p50 * 1000:.0f} ms |",
        f"| throughput, one call per request | {r.inprocess_single_throughput:.2f} img/s "
        f"({r.single_cpu_s / len(r.single_s):.2f} CPU s/img) |",
        f"| throughput, one call with a batch of {r.batch} | {r.inprocess_batch_throughput:.2f} img/s "
        f"({r.batch_cpu_s / (r.batch * len(r.batch_s)):.2f} CPU s/img) |",
        f"| bare load: process start → both pipelines loaded and warmed up | {r.bare_load_s:.1f} s |",
        f"| peak RSS of that process (after a batch of {r.batch}) | {r.bare_rss / MIB:.0f} MiB |",
        "",
        "| served | p50 / p95, 1 client | "
        + " | ".join(f"img/s, {plural[c]}" for c in r.clients)
        + f" | p50 / p95, {plural[top]} | CPU s/img, {plural[top]} | failed requests | cold start "
        "| peak RSS, MiB |",
        "|---|---" + "|---" * len(r.clients) + "|---|---|---|---|---|",
    ]
    for server in SERVERS:
        cells = [
            f"{r.latency(server, 1, 50) * 1000:.0f} / {r.latency(server, 1, 95) * 1000:.0f} ms",
            *(f"{r.throughput(server, c):.2f}" for c in r.clients),
            f"{r.latency(server, top, 50):.2f} / {r.latency(server, top, 95):.2f} s",
            f"{r.cpu_per_image(server, top):.2f}",
            str(r.errors(server)),
            f"{r.cold_start_s[server]:.1f} s",
            _memory(r.rss[server]),
        ]
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Image to image at the same load (`/img2img`: the same size and steps, strength 1, {plural[top]}):",
        "",
        "| image to image | img/s | p50 / p95 |",
        "|---|---|---|",
        f"| in process, one call with a batch of {r.batch} | {r.inprocess_edit_throughput:.2f} | |",
        f"| {EDITS}, {plural[top]} | {r.throughput(EDITS, top):.2f} "
        f"| {r.latency(EDITS, top, 50):.2f} / {r.latency(EDITS, top, 95):.2f} s |",
    ]
    lines += ["", "| ratio | value | target | met |", "|---|---|---|---|"]
    for ratio in r.ratios():
        lines.append(
            f"| {ratio.name} | {ratio.value:.3f} | {ratio.target} | {'yes' if ratio.met else '**no**'} |"
        )
    lines += ["", f"![throughput and latency against concurrent clients]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(results: Results, path: str) -> None:
    """Throughput and p50/p95 latency against concurrent clients, one colour per server."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    r = results
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, color in zip(SERVERS, ("tab:blue", "tab:orange", "tab:gray"), strict=True):
        p50, p95 = ([r.latency(server, c, q) for c in r.clients] for q in (50, 95))
        throughput.plot(
            r.clients, [r.throughput(server, c) for c in r.clients], "o-", color=color, label=server
        )
        latency.plot(r.clients, p50, "o-", color=color, label=f"{server}, p50")
        latency.plot(r.clients, p95, "x--", color=color, label=f"{server}, p95")
    throughput.axhline(
        r.inprocess_batch_throughput, color="tab:green", ls=":", label=f"in process, batch of {r.batch}"
    )
    throughput.axhline(
        r.inprocess_single_throughput, color="tab:red", ls=":", label="in process, one at a time"
    )
    throughput.set(xlabel="concurrent clients", ylabel="images / s", title="throughput")
    latency.set(xlabel="concurrent clients", ylabel="seconds", title="latency")
    for axes in (throughput, latency):
        axes.set_xscale("log")
        axes.set_xticks(r.clients, [str(c) for c in r.clients])
        axes.minorticks_off()
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(f"genserve, tiny preset on CPU: {r.workload.label()}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
