"""How well the served demo models follow their prompts: `make demo-accuracy` (python -m bench.demo).

One `bentoml serve` of the demo presets. Prompts sampled from the grammar (genserve/core/shapes.py) go
to /txt2img 16 at a time, so that they batch, and the checker reads each picture back. Then pictures
drawn from the grammar are edited, their shape given another colour, by /img2img and by /inpaint
with a mask around the shape, and turned into videos by /img2vid, whose frames are read back. It
writes demo.md (the share right, per part of a prompt, of the edits and of the videos) and two
figures (the README's docs/demo.png and docs/demo-video.png): the first pictures under their
prompts, and the first videos frame by frame.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageSequence

from bench.servers import ROOT, start
from genserve.core.directed_noise import seed_direction
from genserve.core.media import encode_image
from genserve.core.shapes import (
    COLOURS,
    CONTRASTING,
    Reading,
    draw,
    parse,
    read_picture,
    resolve,
    sample_prompt,
    sample_scene,
    video_shares,
)
from genserve.serving.processes import batch_sizes, demo_import_command, serve_command, tiny_import_command

TIMEOUT = 600
PARTS = ("colour", "background", "shape", "place", "size")


async def _post_all(url: str, requests: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        return await asyncio.gather(*(client.post(**request) for request in requests))


def pictures_for(url: str, prompts: list[str], together: int) -> list[np.ndarray]:
    """The served pictures for `prompts` (seed = index), sent `together` at a time."""
    pictures: list[np.ndarray] = []
    for start_index in range(0, len(prompts), together):
        group = prompts[start_index : start_index + together]
        requests = [
            {"url": "/txt2img", "json": {"prompt": prompt, "seed": start_index + i}}
            for i, prompt in enumerate(group)
        ]
        for response in asyncio.run(_post_all(url, requests)):
            response.raise_for_status()
            pictures.append(np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")))
    return pictures


def _png(pixels: np.ndarray) -> bytes:
    return encode_image(pixels, "png")


def _around_the_shape(picture: np.ndarray, background: str, margin: int = 3) -> np.ndarray:
    """A mask (bool) of the pixels that are not the background, grown by `margin` on every side."""
    shape = np.abs(picture.astype(int) - COLOURS[background]).sum(axis=2) > 60
    grown = np.pad(shape, margin)
    side = 2 * margin + 1
    rows, columns = shape.shape
    return np.any([grown[i : i + rows, j : j + columns] for i in range(side) for j in range(side)], axis=0)


def edits_right(url: str, count: int, together: int, rng: np.random.Generator) -> dict[str, float]:
    """The share of `count` drawn pictures whose shape a served edit gave the colour asked for:
    /img2img at the preset's default strength, and /inpaint (strength 1) inside a mask around the
    shape, which must also leave every pixel outside the mask as it was."""
    right = {"img2img": [], "inpaint": [], "kept outside the mask": []}
    for first in range(0, count, together):
        scenes = [sample_scene(rng) for _ in range(min(together, count - first))]
        pictures = [draw(scene, 64, rng) for scene in scenes]
        colours = [str(rng.choice([c for c in CONTRASTING[s.background] if c != s.colour])) for s in scenes]
        masks = [_around_the_shape(p, scene.background) for p, scene in zip(pictures, scenes, strict=True)]
        prompts = [
            f"a {c} {s.shape} on a {s.background} background" for c, s in zip(colours, scenes, strict=True)
        ]
        for route, strength in (("img2img", None), ("inpaint", 1.0)):
            requests = []
            for i, (picture, mask, prompt) in enumerate(zip(pictures, masks, prompts, strict=True)):
                files = {"image": ("picture.png", _png(picture), "image/png")}
                if route == "inpaint":
                    files["mask"] = (
                        "mask.png",
                        _png(np.repeat(mask[..., None] * np.uint8(255), 3, 2)),
                        "image/png",
                    )
                data = {"prompt": prompt, "seed": first + i} | ({"strength": strength} if strength else {})
                requests.append({"url": f"/{route}", "files": files, "data": data})
            for i, response in enumerate(asyncio.run(_post_all(url, requests))):
                response.raise_for_status()
                edited = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
                right[route].append(read_picture(edited).colour == colours[i])
                if route == "inpaint":
                    keep = ~masks[i]
                    right["kept outside the mask"].append(np.array_equal(edited[keep], pictures[i][keep]))
    return {name: float(np.mean(values)) for name, values in right.items()}


def _gif_frames(data: bytes) -> np.ndarray:
    animation = Image.open(io.BytesIO(data))
    return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(animation)])


def videos_for(url: str, pictures: list[np.ndarray], together: int) -> list[np.ndarray]:
    """/img2vid of each picture (seed = index) at the preset's defaults, sent `together` at a time; the
    frames of each, as an animated GIF brings them (flat colours survive its palette)."""
    videos: list[np.ndarray] = []
    for first in range(0, len(pictures), together):
        requests = [
            {
                "url": "/img2vid",
                "files": {"image": ("picture.png", _png(picture), "image/png")},
                "data": {"seed": first + i, "output_format": "gif"},
            }
            for i, picture in enumerate(pictures[first : first + together])
        ]
        for response in asyncio.run(_post_all(url, requests)):
            response.raise_for_status()
            videos.append(_gif_frames(response.content))
    return videos


def mean_batch_size(url: str) -> float:
    """Requests per batch the image generator has run, from BentoML's adaptive-batching histogram."""
    totals = batch_sizes(url)
    return totals["sum"] / max(totals["count"], 1)


def costs_per_image(presets: Sequence[str], batch: int, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """In this process, as a generator worker runs it: the wall and CPU seconds per image of a batch
    of `batch` at each image preset's defaults (its default size and torch threads), the fastest of
    `repeats`. The presets take turns, a batch each, so that a change in the machine's load touches
    them all alike."""
    import torch

    from genserve.core.generation import generate_images
    from genserve.core.loading import load_image_pipeline
    from genserve.core.schemas import image_request_model
    from genserve.core.settings import Settings

    default_threads = torch.get_num_threads()
    runs = {}
    for preset in presets:
        settings = Settings.from_env({"GENSERVE_IMAGE_PRESET": preset, "GENSERVE_DEVICE": "cpu"})
        pipe = load_image_pipeline(settings)
        request = image_request_model(settings.image.preset)
        requests = [request(prompt=sample_prompt(np.random.default_rng(i)), seed=i) for i in range(batch)]
        threads = settings.image.cpu_threads or default_threads
        runs[preset] = partial(generate_images, pipe, settings.image.preset, requests), threads
    costs: dict[str, list[tuple[float, float]]] = {preset: [] for preset in presets}
    for repeat in range(repeats + 1):  # the first round warms up
        for preset, (generate, threads) in runs.items():
            torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            generate()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if repeat:
                costs[preset].append((wall / batch, cpu / batch))
    return {preset: min(measured) for preset, measured in costs.items()}


def report(
    prompts: list[str],
    readings: list[Reading],
    together: int,
    batch: float,
    costs: dict[str, tuple[float, float]],
    edits: dict[str, float],
    edited: int,
    videos: dict[str, float],
    animated: int,
    started: str,
    figures: tuple[str, str],
) -> str:
    """The report: the share of pictures right, per part of a prompt and whole."""
    agreements = [reading.agrees(parse(prompt)) for prompt, reading in zip(prompts, readings, strict=True)]
    ratio = [demo / tiny for demo, tiny in zip(costs["demo"], costs["tiny"], strict=True)]
    share = {part: np.mean([agreed[part] for agreed in agreements]) for part in PARTS}
    lines = [
        f"# The demo preset: does it follow its prompts? ({started})",
        "",
        f"{len(prompts)} prompts sampled from the grammar, sent to `/txt2img` {together} at a time "
        f"(mean batch: {batch:.1f}) with the preset's defaults; each picture read back by "
        "`genserve.core.shapes`. A part the prompt leaves open counts as right.",
        "",
        "| part | right |",
        "|---|---|",
        *[f"| {part} | {share[part]:.0%} |" for part in PARTS],
        f"| all of a prompt | {np.mean([all(agreed.values()) for agreed in agreements]):.0%} |",
        "",
        f"Cost per image at the default size (64×64), in process, a batch of {together}, each preset's "
        "defaults and torch threads:",
        "",
        "| preset | wall ms | CPU ms |",
        "|---|---|---|",
        *[f"| {name} | {wall * 1000:.0f} | {cpu * 1000:.0f} |" for name, (wall, cpu) in costs.items()],
        f"| demo / tiny | {ratio[0]:.1f}× | {ratio[1]:.1f}× |",
        "",
        f"Editing: {edited} pictures drawn from the grammar, their shape asked for in another colour "
        '("a <new colour> <shape> on a <background> background"), sent '
        f"{together} at a time; `/img2img` at the preset's default strength, `/inpaint` at strength 1 "
        "with a mask around the shape:",
        "",
        "| edit | right |",
        "|---|---|",
        *[f"| {name} | {share:.0%} |" for name, share in edits.items()],
        "",
        f"Videos: {animated} pictures drawn for prompts sampled from the grammar, sent to `/img2vid` "
        f"{together} at a time with the preset's defaults (motion bucket 127); each frame read back:",
        "",
        "| the video | share |",
        "|---|---|",
        *[f"| {name} | {share:.0%} |" for name, share in videos.items()],
        "",
        f"![The first prompts and their pictures]({figures[0]})",
        "",
        f"![The first videos, frame by frame]({figures[1]})",
        "",
    ]
    return "\n".join(lines)


def plot(prompts: list[str], pictures: list[np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    columns, rows = 6, 3
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.1))
    for prompt, picture, axis in zip(prompts, pictures, axes.flat, strict=False):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(_wrapped(prompt), fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_videos(pictures: list[np.ndarray], videos: list[np.ndarray], path: Path, rows: int = 4) -> None:
    """The first `rows` pictures, each followed by its video's frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + len(videos[0])
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.25))
    for row, picture, video in zip(axes, pictures, videos, strict=False):
        for column, (axis, pixels) in enumerate(zip(row, [picture, *video], strict=True)):
            axis.imshow(pixels, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title("picture" if column == 0 else f"frame {column - 1}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _wrapped(prompt: str, width: int = 26) -> str:
    lines, line = [], ""
    for word in prompt.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=384, help="prompts sampled from the grammar")
    parser.add_argument("--together", type=int, default=16, help="prompts sent at once")
    parser.add_argument("--edits", type=int, default=32, help="pictures edited, by each kind of edit")
    parser.add_argument("--videos", type=int, default=64, help="pictures turned into videos")
    parser.add_argument("--seed", type=int, default=2026, help="seeds the sampling of the prompts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where to write demo.md")
    parser.add_argument("--figure", type=Path, help="the figure's path (default: demo.png beside demo.md)")
    args = parser.parse_args(argv)
    os.environ.update(GENSERVE_IMAGE_PRESET="demo", GENSERVE_VIDEO_PRESET="demo")  # what it measures
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.figure or args.out / "demo.png"
    video_figure = figure.with_name("demo-video.png")
    for command in (demo_import_command(), tiny_import_command()):
        subprocess.run(command, cwd=ROOT, check=True)
    rng = np.random.default_rng(args.seed)
    prompts = [sample_prompt(rng) for _ in range(args.prompts)]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    server = start("demo", serve_command, {}, args.out)
    try:
        pictures = pictures_for(server.url, prompts, args.together)
        batch = mean_batch_size(server.url)
        edits = edits_right(server.url, args.edits, args.together, rng)
        animated = [draw(resolve(sample_prompt(rng), rng), 64, rng) for _ in range(args.videos)]
        videos = videos_for(server.url, animated, args.together)
    finally:
        server.stop()
    costs = costs_per_image(("demo", "tiny"), args.together)
    readings = [read_picture(picture) for picture in pictures]
    relative = tuple(os.path.relpath(path, args.out) for path in (figure, video_figure))
    shares = video_shares(animated, videos, [seed_direction(seed) for seed in range(len(videos))])
    text = report(
        prompts,
        readings,
        args.together,
        batch,
        costs,
        edits,
        args.edits,
        shares,
        args.videos,
        started,
        relative,
    )
    plot(prompts, pictures, figure)
    plot_videos(animated, videos, video_figure)
    (args.out / "demo.md").write_text(text)
    print(text)
    print(f"written: {args.out / 'demo.md'}, {figure}, {video_figure}")


if __name__ == "__main__":
    main()
