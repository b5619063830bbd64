"""Train the demo image model on pictures genserve draws itself, on the CPU.

    python models/train_demo.py --out models/demo    # `make demo-model`: ~23 minutes on 2 idle cores

Seeded end to end. It draws a dataset of coloured shapes with their prompts (`genserve.core.shapes`),
trains the VAE to reconstruct them, then the MMDiT and the text encoders together with SD3's
flow-matching loss on the VAE's latents, and saves the pipeline in the diffusers layout that
`from_pretrained` (and so the model store) reads, under OUT/image. At the end it generates
pictures for prompts sampled from the grammar and reports how many the checker reads as asked.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from genserve.core.demo import MAX_TOKENS, SIDE, TIMESTEP_SHIFT, build_demo_image_pipeline
from genserve.core.shapes import Scene, draw, parse, prompt_for, read_picture, sample_prompt, sample_scene

#: A share of the training prompts is empty, so classifier-free guidance has an unconditional model.
UNCONDITIONAL_SHARE = 0.1
EMA_DECAY = 0.999


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


def draw_dataset(count: int, rng: np.random.Generator) -> tuple[list[Scene], torch.Tensor]:
    """`count` scenes sampled from the grammar and their pictures, as floats in [-1, 1] (N×3×H×W)."""
    scenes = [sample_scene(rng) for _ in range(count)]
    pictures = np.stack([draw(scene, SIDE, rng) for scene in scenes])
    return scenes, torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1


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
    progress = tqdm(range(plan.vae_steps), desc="VAE")
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


def shifted(t: torch.Tensor) -> torch.Tensor:
    """SD3's timestep shift, as its scheduler applies it at inference: more training at high noise,
    where a plain background's colour is still visible in the noisy latent (the model would read it
    there rather than from the prompt) and only the prompt can tell it."""
    return TIMESTEP_SHIFT * t / (1 + (TIMESTEP_SHIFT - 1) * t)


def train_transformer(
    pipe: StableDiffusion3Pipeline,
    scenes: list[Scene],
    latents: torch.Tensor,
    plan: Plan,
    rng: np.random.Generator,
) -> list[float]:
    """SD3's rectified-flow objective: from x_t = (1 - t) x0 + t noise, predict noise - x0, with
    t logit-normal; the text encoders learn with the transformer. The pipeline keeps the
    weights' exponential moving average, from which samples come out far cleaner than from the
    last step's weights. Returns the loss of every step."""
    modules = torch.nn.ModuleList(
        [pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    )
    parameters = list(modules.parameters())
    modules.train().requires_grad_(True)
    average = AveragedModel(modules, avg_fn=exponential_average)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    schedule = warm_then_cosine(optimizer, plan.transformer_steps)
    losses: list[float] = []
    progress = tqdm(range(plan.transformer_steps), desc="MMDiT")
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
        loss = F.mse_loss(predicted, noise - clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        average.update_parameters(modules)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    with torch.no_grad():
        for trained, averaged in zip(modules.parameters(), average.module.parameters(), strict=True):
            trained.copy_(averaged)
    modules.eval().requires_grad_(False)
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
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    pipe, shares = train_image_model(Plan(), rng, args.seed)
    print(f"image model trained in {(time.perf_counter() - started) / 60:.1f} min")
    print("accuracy:", {name: f"{share:.0%}" for name, share in shares.items()})
    pipe.save_pretrained(args.out / "image")


def train_image_model(
    plan: Plan, rng: np.random.Generator, seed: int
) -> tuple[StableDiffusion3Pipeline, dict[str, float]]:
    """The demo image pipeline trained from scratch, and its accuracy (`evaluate`)."""
    pipe = build_demo_image_pipeline(seed)
    scenes, pictures = draw_dataset(plan.pictures, rng)
    train_vae(pipe, pictures, plan, rng)
    train_transformer(pipe, scenes, encode_latents(pipe, pictures), plan, rng)
    return pipe, evaluate(pipe, plan, seed + 1)


if __name__ == "__main__":
    main()
