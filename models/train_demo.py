"""Train the demo image and video models on pictures and clips genserve draws itself, on the CPU.

    python models/train_demo.py --out models/demo                 # `make demo-model` (docs/demo-training.md)
    python models/train_demo.py --out models/demo --parts video   # the video model on OUT/image's VAE

Seeded end to end. Image: it draws a dataset of coloured shapes with their prompts
(`genserve.core.shapes`), trains the VAE to reconstruct them, then the MMDiT and the text encoders
together with SD3's flow-matching loss on the VAE's latents. Video: it draws clips of those shapes
moving and trains SVD's UNet on them, with SVD's EDM objective, on the image model's VAE; asked
for both, it trains the video model beside the MMDiT, in a second process. Each
pipeline is saved in the diffusers layout that `from_pretrained` (and so the model store) reads,
under OUT/image and OUT/video, and evaluated: generated, then read back by the checker.
"""

from __future__ import annotations

import argparse
import copy
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusion3Pipeline, StableVideoDiffusionPipeline
from PIL import Image
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from genserve.core.demo import (
    FRAMES,
    LATENT_CHANNELS,
    MAX_TOKENS,
    SIDE,
    TIMESTEP_SHIFT,
    build_demo_image_pipeline,
    build_demo_video_pipeline,
)
from genserve.core.directed_noise import DIRECTIONS, directed_noise, seeded_directed_noise
from genserve.core.presets import VIDEO_PRESETS
from genserve.core.shapes import (
    Scene,
    draw,
    draw_clip,
    parse,
    prompt_for,
    read_picture,
    resolve,
    sample_prompt,
    sample_scene,
    video_shares,
)

#: A share of the training prompts is empty, so classifier-free guidance has an unconditional model.
UNCONDITIONAL_SHARE = 0.1
#: The MMDiT's and the UNet's losses weigh the latents under and around the shape 1 + SHAPE_WEIGHT
#: times the rest: a plain background is most of a picture and easy, and it outweighed the shape
#: (docs/demo-training.md).
SHAPE_WEIGHT = 2.0
#: A pixel this far from the background (in [-1, 1], any channel) is part of the shape or its edge.
SHAPE_THRESHOLD = 40 / 127.5
EMA_DECAY = 0.999
#: The video UNet's forward pass runs in bfloat16 where the CPU computes it natively: its training
#: step takes 2/3 of the time (docs/demo-training.md); elsewhere bfloat16 would be slower.
BFLOAT16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
#: The terminal line of this process's progress bars: the video model's, trained alongside the
#: image model in a process of its own, draws on the second.
progress_line = 0


@dataclass(frozen=True)
class Plan:
    """How long each part trains. The defaults made the committed model (docs/demo-training.md, run 6)."""

    pictures: int = 8000
    vae_steps: int = 3000
    vae_batch: int = 8
    transformer_steps: int = 3000
    transformer_batch: int = 48
    eval_prompts: int = 48
    eval_steps: int = 12
    guidance: float = 4.0


def progress_bar(steps: int, description: str) -> tqdm:
    return tqdm(range(steps), desc=description, position=progress_line)


def as_pixels(pictures: torch.Tensor) -> torch.Tensor:
    """uint8 pictures (... x H x W x 3) as the VAE reads them: floats in [-1, 1], ... x 3 x H x W."""
    return pictures.movedim(-1, -3).float() / 127.5 - 1


def draw_dataset(count: int, rng: np.random.Generator) -> tuple[list[Scene], torch.Tensor]:
    """`count` scenes sampled from the grammar and their pictures, as floats in [-1, 1] (N×3×H×W)."""
    scenes = [sample_scene(rng) for _ in range(count)]
    pictures = np.stack([draw(scene, SIDE, rng) for scene in scenes])
    return scenes, as_pixels(torch.from_numpy(pictures))


def warm_then_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises over the first 5 % of `steps`, then falls to zero along a cosine."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )


def train_vae(
    pipe: StableDiffusion3Pipeline, pictures: torch.Tensor, plan: Plan, rng: np.random.Generator
) -> list[float]:
    """Reconstruction with a light KL term: flat colours and sharp edges are all it must keep.
    Returns the loss of every step."""
    vae = pipe.vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = warm_then_cosine(optimizer, plan.vae_steps)
    losses: list[float] = []
    progress = progress_bar(plan.vae_steps, "VAE")
    for _ in progress:
        batch = pictures[rng.integers(len(pictures), size=plan.vae_batch)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    vae.eval().requires_grad_(False)
    return losses


def shape_weights(pictures: torch.Tensor, latent_side: int) -> torch.Tensor:
    """Each latent pixel's weight in the losses (N x 1 x h x w): 1, plus SHAPE_WEIGHT times the
    largest share of the shape under it or under a neighbour (the shape's edge is in both)."""
    background = pictures[..., :1, :1]  # the margin keeps the corner pixel background
    shape = ((pictures - background).abs().amax(dim=1, keepdim=True) > SHAPE_THRESHOLD).float()
    coverage = F.adaptive_avg_pool2d(shape, latent_side)
    return 1 + SHAPE_WEIGHT * F.max_pool2d(coverage, kernel_size=3, stride=1, padding=1)


def weighted_mse(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The squared error's mean, each latent pixel counted `weight` times (broadcast over channels)."""
    return (weight * (predicted - target) ** 2).mean() / weight.mean()


@torch.no_grad()
def encode_latents(pipe: StableDiffusion3Pipeline, pictures: torch.Tensor) -> torch.Tensor:
    """The pictures' latents, normalised as SD3 does (shift, then scale): the VAE's config gets
    the shift and scale that give them zero mean and unit variance."""
    means = encoded(pipe.vae, pictures)
    shift, scale = means.mean().item(), 1 / means.std().item()
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return (means - shift) * scale


def encoded(vae: torch.nn.Module, pictures: torch.Tensor) -> torch.Tensor:
    """The VAE's latent means of `pictures` (N×3×H×W), a chunk at a time to bound memory."""
    return torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in pictures.split(256)])


def training_prompts(scenes: list[Scene], rng: np.random.Generator) -> list[str]:
    return ["" if rng.random() < UNCONDITIONAL_SHARE else prompt_for(scene, rng) for scene in scenes]


def exponential_average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """The next moving average of a weight; its decay grows to EMA_DECAY over the first updates, so
    a short run's average is not stuck at the initial weights."""
    decay = min(EMA_DECAY, (1 + updates.item()) / (10 + updates.item()))
    return decay * averaged + (1 - decay) * current


@torch.no_grad()
def adopt_average(model: torch.nn.Module, average: AveragedModel) -> None:
    """Give `model` its moving average's weights and freeze it: what the pipeline saves."""
    for trained, averaged in zip(model.parameters(), average.module.parameters(), strict=True):
        trained.copy_(averaged)
    model.eval().requires_grad_(False)


def shifted(t: torch.Tensor) -> torch.Tensor:
    """SD3's timestep shift, as its scheduler applies it at inference: more training at high noise,
    where a plain background's colour is still visible in the noisy latent (the model would read it
    there rather than from the prompt) and only the prompt can tell it."""
    return TIMESTEP_SHIFT * t / (1 + (TIMESTEP_SHIFT - 1) * t)


def train_transformer(
    pipe: StableDiffusion3Pipeline,
    scenes: list[Scene],
    latents: torch.Tensor,
    weights: torch.Tensor,
    plan: Plan,
    rng: np.random.Generator,
) -> list[float]:
    """SD3's rectified-flow objective: from x_t = (1 - t) x0 + t noise, predict noise - x0, with
    t logit-normal, the squared error weighted by `weights` (`shape_weights`); the text encoders
    learn with the transformer. The pipeline keeps the weights' exponential moving average, from
    which samples come out far cleaner than from the last step's weights. Returns the loss of
    every step."""
    modules = torch.nn.ModuleList(
        [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    )
    parameters = list(modules.parameters())
    modules.train().requires_grad_(True)
    average = AveragedModel(modules, avg_fn=exponential_average)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    schedule = warm_then_cosine(optimizer, plan.transformer_steps)
    losses: list[float] = []
    progress = progress_bar(plan.transformer_steps, "MMDiT")
    for _ in progress:
        indices = rng.integers(len(scenes), size=plan.transformer_batch)
        prompts = training_prompts([scenes[i] for i in indices], rng)
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=MAX_TOKENS
        )
        clean = latents[indices]
        noise = torch.randn_like(clean)
        t = shifted(torch.sigmoid(torch.randn(len(indices))))
        noisy = (1 - t[:, None, None, None]) * clean + t[:, None, None, None] * noise
        predicted = pipe.transformer(
            hidden_states=noisy, timestep=t * 1000, encoder_hidden_states=embeds, pooled_projections=pooled
        ).sample
        loss = weighted_mse(predicted, noise - clean, weights[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        average.update_parameters(modules)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    adopt_average(modules, average)
    return losses


@torch.no_grad()
def evaluate(pipe: StableDiffusion3Pipeline, plan: Plan, seed: int) -> dict[str, float]:
    """Pictures for prompts sampled from the grammar, read back: the share right for each part."""
    rng = np.random.default_rng(seed)
    prompts = [sample_prompt(rng) for _ in range(plan.eval_prompts)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = pipe(
        prompt=prompts,
        height=SIDE,
        width=SIDE,
        num_inference_steps=plan.eval_steps,
        guidance_scale=plan.guidance,
        generator=generators,
        max_sequence_length=MAX_TOKENS,
        output_type="np",
    ).images
    agreements = [
        read_picture((image * 255).round().astype(np.uint8)).agrees(parse(prompt))
        for prompt, image in zip(prompts, images, strict=True)
    ]
    return {part: float(np.mean([agreed[part] for agreed in agreements])) for part in agreements[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="where to save the pipeline (in its image/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("image", "video"),
        default=["image", "video"],
        help="which models to train; the video model alone uses OUT/image's VAE",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--progress-line", type=int, default=0, help="the terminal line of the progress bars")
    args = parser.parse_args(argv)
    global progress_line
    progress_line = args.progress_line
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if "image" in args.parts:
        train_image_then_video(args.out, args.seed, video="video" in args.parts)
    else:
        vae = AutoencoderKL.from_pretrained(args.out / "image" / "vae")
        pipe, _ = train_part(
            "video", lambda rng: train_video_model(VideoPlan(), rng, args.seed, vae), args.seed
        )
        pipe.save_pretrained(args.out / "video")
    print(f"all trained in {(time.perf_counter() - started) / 60:.1f} min")


def train_image_then_video(out: Path, seed: int, video: bool) -> None:
    """Train the image model and, once its VAE is final, the video model beside it in a process of
    its own (this script with `--parts video`), each on half of the cores: neither training uses a
    second core well (docs/demo-training.md), so side by side they take less time than in turn."""
    video_training: subprocess.Popen | None = None

    def start_video(vae: AutoencoderKL) -> None:
        nonlocal video_training
        vae.save_pretrained(out / "image" / "vae")
        threads = max(1, torch.get_num_threads() // 2)
        torch.set_num_threads(threads)
        command = [sys.executable, __file__, "--out", str(out), "--seed", str(seed), "--parts", "video"]
        video_training = subprocess.Popen([*command, "--threads", str(threads), "--progress-line", "1"])

    try:
        pipe, _ = train_part(
            "image",
            lambda rng: train_image_model(Plan(), rng, seed, start_video if video else lambda vae: None),
            seed,
        )
        pipe.save_pretrained(out / "image")
    except BaseException:
        if video_training is not None:
            video_training.terminate()
        raise
    if video_training is not None and video_training.wait() != 0:
        raise SystemExit("the video model's training failed")


def train_part(
    part: str, train: Callable[[np.random.Generator], tuple[DiffusionPipeline, dict[str, float]]], seed: int
) -> tuple[DiffusionPipeline, dict[str, float]]:
    """Seed, train and time one model; print how long it took and how accurate it is."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    pipe, shares = train(np.random.default_rng(seed))
    print(f"{part} model trained in {(time.perf_counter() - started) / 60:.1f} min")
    print("accuracy:", {name: f"{share:.0%}" for name, share in shares.items()})
    return pipe, shares


def train_image_model(
    plan: Plan,
    rng: np.random.Generator,
    seed: int,
    vae_trained: Callable[[AutoencoderKL], None] = lambda vae: None,
) -> tuple[StableDiffusion3Pipeline, dict[str, float]]:
    """The demo image pipeline trained from scratch, and its accuracy (`evaluate`). `vae_trained`
    gets the VAE as soon as it is final, before the MMDiT trains."""
    pipe = build_demo_image_pipeline(seed)
    scenes, pictures = draw_dataset(plan.pictures, rng)
    train_vae(pipe, pictures, plan, rng)
    latents = encode_latents(pipe, pictures)
    vae_trained(pipe.vae)
    train_transformer(pipe, scenes, latents, shape_weights(pictures, latents.shape[-1]), plan, rng)
    return pipe, evaluate(pipe, plan, seed + 1)


@dataclass(frozen=True)
class VideoPlan:
    """How long each part of the video model trains."""

    clips: int = 1000
    #: About as long as the MMDiT beside it trains, so that the whole run stays within 30 minutes
    #: (docs/demo-training.md, run 13: 23.9).
    unet_steps: int = 1550
    unet_batch: int = 4
    #: Log-normal noise levels (EDM's): log sigma ~ N(mean, std).
    sigma_log_mean: float = 0.5
    sigma_log_std: float = 1.5
    eval_clips: int = 20
    eval_steps: int = 10
    #: The pipeline's noise augmentation of the conditioning picture: the demo preset's default.
    noise_aug_strength: float = VIDEO_PRESETS["demo"].default_noise_aug_strength


@dataclass(frozen=True)
class Clips:
    """Drawn clips of shapes moving."""

    frames: torch.Tensor  # N x F x H x W x 3, uint8
    motion_buckets: torch.Tensor  # N
    directions: torch.Tensor  # N: 1 right, -1 left (DIRECTIONS), as the clip's noise names


def draw_clips(count: int, rng: np.random.Generator) -> Clips:
    """`count` scenes from the grammar, each drawn as a clip moving right or left (bouncing off the
    margins) at a motion bucket drawn from SVD's 0-255."""
    buckets = rng.integers(0, 256, size=count)
    directions = rng.choice(DIRECTIONS, size=count)
    clips = [
        draw_clip(sample_scene(rng), SIDE, FRAMES, int(bucket), rng, (int(direction), 0))
        for bucket, direction in zip(buckets, directions, strict=True)
    ]
    return Clips(
        torch.from_numpy(np.stack(clips)), torch.from_numpy(buckets).float(), torch.from_numpy(directions)
    )


@torch.no_grad()
def video_conditions(
    pipe: StableVideoDiffusionPipeline, clips: Clips, plan: VideoPlan
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the UNet sees of each clip, as the pipeline prepares it: the clip's latents, scaled to
    unit variance (the VAE's config gets the scale), the first frame's latents after the pipeline's
    noise augmentation (unscaled, as SVD conditions), and the first frame's CLIP embedding."""
    frames = clips.frames.flatten(0, 1)  # clip, frame
    means = torch.cat([encoded(pipe.vae, as_pixels(chunk)) for chunk in frames.split(1024)])
    scale = 1 / means.std().item()
    pipe.vae.register_to_config(scaling_factor=scale)
    latents = (means * scale).unflatten(0, (len(clips.frames), FRAMES))
    first = as_pixels(clips.frames[:, 0])
    conditions = encoded(pipe.vae, first + plan.noise_aug_strength * torch.randn_like(first))
    pictures = [Image.fromarray(picture) for picture in clips.frames[:, 0].numpy()]
    # The pipeline's own preprocessing (resize to 224 with antialiasing, CLIP's normalisation).
    embeddings = torch.cat(
        [pipe._encode_image(pictures[i : i + 256], "cpu", 1, False) for i in range(0, len(pictures), 256)]
    )
    return latents, conditions, embeddings


def clip_shape_weights(frames: torch.Tensor, latent_side: int) -> torch.Tensor:
    """`shape_weights` of every frame of clips (N x F x H x W x 3, uint8): N x F x 1 x h x w."""
    chunks = frames.flatten(0, 1).split(1024)  # clip, frame
    weights = torch.cat([shape_weights(as_pixels(chunk), latent_side) for chunk in chunks])
    return weights.unflatten(0, frames.shape[:2])


def train_unet(
    pipe: StableVideoDiffusionPipeline, clips: Clips, plan: VideoPlan, rng: np.random.Generator
) -> list[float]:
    """SVD's objective (`denoising_loss`) with log-normal sigma, on noise that names the way the
    clip moves (`directed_noise`). A share of the clips lose both conditions (the pipeline's
    unconditional half for guidance); fps varies so that the model ignores it; the error is
    weighted around the shape, as the MMDiT's. Returns the loss of every step."""
    latents, conditions, embeddings = video_conditions(pipe, clips, plan)
    weights = clip_shape_weights(clips.frames, latents.shape[-1])
    unet = pipe.unet.train().requires_grad_(True)
    average = AveragedModel(unet, avg_fn=exponential_average)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = warm_then_cosine(optimizer, plan.unet_steps)
    losses: list[float] = []
    progress = progress_bar(plan.unet_steps, "UNet")
    for _ in progress:
        indices = torch.from_numpy(rng.integers(len(latents), size=plan.unet_batch))
        kept = (torch.rand(len(indices)) >= UNCONDITIONAL_SHARE).float()
        fps = torch.from_numpy(rng.integers(3, 30, size=len(indices))).float()
        noise = directed_noise(torch.randn_like(latents[indices]), clips.directions[indices])
        loss = denoising_loss(
            unet,
            latents[indices],
            noise,
            conditions[indices] * kept[:, None, None, None],
            embeddings[indices] * kept[:, None, None],
            weights[indices],
            torch.exp(plan.sigma_log_mean + plan.sigma_log_std * torch.randn(len(indices))),
            torch.stack(
                [fps, clips.motion_buckets[indices], torch.full_like(fps, plan.noise_aug_strength)], 1
            ),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        average.update_parameters(unet)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    adopt_average(unet, average)
    return losses


def denoising_loss(
    unet: torch.nn.Module,
    clean: torch.Tensor,
    noise: torch.Tensor,
    condition: torch.Tensor,
    embedding: torch.Tensor,
    weight: torch.Tensor,
    sigma: torch.Tensor,
    added_time_ids: torch.Tensor,
) -> torch.Tensor:
    """SVD's objective in EDM's form on clips' latents (n x F x C x h x w): x = x0 + sigma noise; the
    UNet reads x / sqrt(sigma^2 + 1) beside the conditioning latents, at timestep log(sigma) / 4,
    and predicts v, from which the scheduler's step recovers x0; each frame's error is weighted by
    `weight` (n x F x 1 x h x w, `shape_weights`)."""
    s = sigma[:, None, None, None, None]
    noisy = clean + s * noise
    inputs = torch.cat([noisy / (s**2 + 1).sqrt(), condition[:, None].expand_as(clean)], dim=2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BFLOAT16):
        predicted = unet(
            inputs, 0.25 * sigma.log(), encoder_hidden_states=embedding, added_time_ids=added_time_ids
        ).sample.float()
    target = (noisy / (s**2 + 1) - clean) * (s**2 + 1).sqrt() / s
    return weighted_mse(predicted, target, weight)


@torch.no_grad()
def evaluate_video(pipe: StableVideoDiffusionPipeline, plan: VideoPlan, seed: int) -> dict[str, float]:
    """Videos of pictures drawn for prompts sampled from the grammar, at the pipeline's defaults,
    read back: the share that start as their picture, keep its colours and its shape on every
    frame, and move it by 1/16 of the side, the way their seed's noise does (`video_shares`)."""
    rng = np.random.default_rng(seed)
    pictures = [draw(resolve(sample_prompt(rng), rng), SIDE, rng) for _ in range(plan.eval_clips)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(pictures))]
    shape = (FRAMES, LATENT_CHANNELS, SIDE // 4, SIDE // 4)
    noises, directions = zip(*[seeded_directed_noise(g, shape) for g in generators], strict=True)
    videos = pipe(
        image=[Image.fromarray(picture) for picture in pictures],
        height=SIDE,
        width=SIDE,
        num_frames=FRAMES,
        num_inference_steps=plan.eval_steps,
        noise_aug_strength=plan.noise_aug_strength,
        generator=generators,
        latents=torch.stack(noises),
        output_type="np",
    ).frames
    return video_shares(pictures, [(video * 255).round().astype(np.uint8) for video in videos], directions)


def train_video_model(
    plan: VideoPlan, rng: np.random.Generator, seed: int, vae: AutoencoderKL
) -> tuple[StableVideoDiffusionPipeline, dict[str, float]]:
    """The demo video pipeline trained from scratch on the image model's VAE (a copy: the video
    model's latents get their own scale), and its accuracy (`evaluate_video`)."""
    pipe = build_demo_video_pipeline(seed)
    pipe.vae = copy.deepcopy(vae).eval().requires_grad_(False)
    clips = draw_clips(plan.clips, rng)
    train_unet(pipe, clips, plan, rng)
    return pipe, evaluate_video(pipe, plan, seed + 1)


if __name__ == "__main__":
    main()
