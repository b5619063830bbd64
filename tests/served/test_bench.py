"""The benchmark keeps working: a quick run end to end, and the real architectures' configs.

No timings are asserted: the quick run only proves every measurement runs and reports.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from decoding import read_image
from helpers import ROOT

from genserve.core.presets import Batching

# Published sizes (parameters) of the models whose configs bench/real_configs.py writes out.
PUBLISHED = {
    "SD3.5 Large MMDiT": 8.1e9,
    "T5-XXL encoder": 4.76e9,
    "CLIP ViT-bigG/14 text": 0.695e9,
    "CLIP ViT-L/14 text": 0.124e9,
    "SD3 VAE": 0.084e9,
    "SVD-XT UNet": 1.52e9,
    "SVD temporal VAE": 0.098e9,
    "OpenCLIP ViT-H/14 vision": 0.632e9,
}


@pytest.fixture(autouse=True)
def importable_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/ is run from the repository root (`python -m bench`), not installed."""
    monkeypatch.syspath_prepend(str(ROOT))


def _parameter_counts() -> dict[str, int]:
    """The bench's own GPU pipelines, built on the meta device: shapes only, no memory for their
    16 B parameters, and every line that assembles them runs (the GPU run is rare)."""
    from bench.gpu import sd35_large_pipeline, svd_xt_pipeline

    image, video = sd35_large_pipeline(device="meta"), svd_xt_pipeline(device="meta")
    components = {
        "SD3.5 Large MMDiT": image.transformer,
        "T5-XXL encoder": image.text_encoder_3,
        "CLIP ViT-bigG/14 text": image.text_encoder_2,
        "CLIP ViT-L/14 text": image.text_encoder,
        "SD3 VAE": image.vae,
        "SVD-XT UNet": video.unet,
        "SVD temporal VAE": video.vae,
        "OpenCLIP ViT-H/14 vision": video.image_encoder,
    }
    return {name: sum(p.numel() for p in model.parameters()) for name, model in components.items()}


def test_real_architecture_configs_have_the_published_sizes() -> None:
    counts = _parameter_counts()
    for name, published in PUBLISHED.items():
        assert counts[name] == pytest.approx(published, rel=0.01), name


@pytest.mark.parametrize("preset", ["sd35-large", "sd35-large-turbo", "sd35-medium"])
def test_the_real_architectures_edit_on_their_own_weights(preset) -> None:
    """How the image generator builds its editing pipelines (`ImagePipelines.sharing`), on the
    served presets' architectures (Turbo is Large's, distilled): no parameter twice, none cast."""
    from bench.gpu import sd35_large_pipeline
    from bench.real_configs import SD35_LARGE, SD35_MEDIUM
    from genserve.core.generation import ImagePipelines

    pipe = sd35_large_pipeline(device="meta", config=SD35_MEDIUM if preset == "sd35-medium" else SD35_LARGE)
    pipes = ImagePipelines.sharing(pipe)

    def parameters(pipeline) -> set[int]:
        modules = [part for part in pipeline.components.values() if isinstance(part, torch.nn.Module)]
        return {id(parameter) for module in modules for parameter in module.parameters()}

    for editor in (pipes.image_to_image, pipes.inpaint):
        assert parameters(editor) == parameters(pipe)
        assert {editor.transformer.dtype, editor.text_encoder_3.dtype, editor.vae.dtype} == {torch.bfloat16}
    if preset == "sd35-medium":  # its published 2.5 B counts the position-embedding table too
        transformer = pipe.transformer
        size = sum(tensor.numel() for tensor in [*transformer.parameters(), *transformer.buffers()])
        assert size == pytest.approx(2.5e9, rel=0.02)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the real architectures are built and run")
def test_real_architecture_preset_is_skipped_without_a_gpu(tmp_path, capsys) -> None:
    from bench.run import main

    main(["--preset", "sd35-large", "--out", str(tmp_path)])
    assert "skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_quick_bench_measures_everything_and_writes_the_report(tiny_models, tmp_path) -> None:
    from bench.report import SERVERS

    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " requests to " not in run.stdout, run.stdout  # bench/load.py's line for failed requests
    report = (tmp_path / "performance.md").read_text()
    assert run.stdout.count("| serving efficiency") == report.count("| serving efficiency") == 1
    for server in SERVERS:
        assert f"| {server} |" in report
    ratios = (
        "serving efficiency",
        "edit serving efficiency",
        "batching gain",
        "speed-up",
        "single-request overhead",
    )
    for ratio in (*ratios, "cold start"):
        assert f"| {ratio}" in report
    mime, pixels = read_image((tmp_path / "bench.png").read_bytes())
    assert mime == "image/png" and pixels.shape[0] > 100


def test_gpu_measurements_run_genserve_generation_on_any_pipeline(image_pipe, video_pipe, settings) -> None:
    """The GPU bench's measuring code, on the tiny pipelines on the CPU: it must not first fail on
    the rare machine with a GPU."""
    from bench.gpu import markdown, measure_image, measure_video

    image_preset = replace(settings.image.preset, default_steps=2, batching=Batching(2, 60_000))
    video_preset = replace(
        settings.video.preset, default_frames=2, default_steps=1, batching=Batching(2, 60_000)
    )
    rows = [measure_image(image_pipe, image_preset), measure_video(video_pipe, video_preset)]
    for row in rows:
        assert row["latency_s"] > 0 and row["batch_s"] > 0 and row["batching_gain"] > 0
    report = markdown(rows, "CPU")
    assert report.count("| tiny architecture") == 2


def test_ratios_are_computed_as_bench_readme_defines_them() -> None:
    """Served numbers against in process, with two image workers: each worker is a pipeline."""
    from bench.load import LoadResult
    from bench.report import BASELINE, BATCHING_OFF, BATCHING_ON, EDITS, Results
    from bench.workload import Workload

    results = Results({}, Workload(64, 64, 2), batch=8, workers=2, clients=(1, 16))
    results.single_s = [0.1, 0.1, 0.1]  # in process: 10 img/s one at a time, p50 100 ms
    results.batch_s = [0.4]  # 20 img/s in a batch of 8: a gain of 2
    results.edit_batch_s = [0.5, 0.5]  # 16 img/s editing
    results.bare_load_s, results.cold_start_s = 4.0, {BATCHING_ON: 5.0}
    served = {BATCHING_ON: (0.105, 36.0), BATCHING_OFF: (0.1, 18.0), BASELINE: (0.1, 9.0)}  # p50, img/s
    for server, (p50, throughput) in served.items():
        results.add_load(server, LoadResult(1, (p50,) * 3, 0, 1.0))
        results.add_load(server, LoadResult(16, (1.0,) * int(throughput), 0, 1.0))
    results.add_load(EDITS, LoadResult(16, (1.0,) * 28, 0, 1.0))
    ratios = {ratio.name.split(":")[0]: ratio for ratio in results.ratios()}
    expected = {
        "serving efficiency": (36 / (2 * 20), True),
        "edit serving efficiency": (28 / (2 * 16), False),
        "batching gain": (2.0, True),
        "speed-up over the baseline": (4.0, True),
        "single-request overhead": (1.05, True),
        "cold start": (1.25, True),
    }
    assert {name: (pytest.approx(r.value), r.met) for name, r in ratios.items()} == expected
    results.add_load(BATCHING_ON, LoadResult(16, (1.0,) * 30, 0, 1.0))  # now 33 img/s: efficiency 0.825
    assert not next(r for r in results.ratios() if r.name.startswith("serving efficiency")).met
