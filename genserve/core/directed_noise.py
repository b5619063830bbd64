"""Video noise that names the way a video's shape moves, so that the seed picks it.

A model trained to make clips that move several ways, from noise that does not say which, predicts
their average (a blur that stays put) until late in sampling, and the small demo video model never
left it; nor did it learn to read a way from anywhere that noise names it only once or on average
(docs/demo-training.md). So the demo's noise names it at every latent pixel of every frame:
channels 0 and 1 are drawn as usual, then put in order, the larger first for right, second for
left. The seed draws the way, then the noise.
"""

from __future__ import annotations

import torch

#: The ways a shape moves: right, left (as x steps).
DIRECTIONS = (1, -1)


def directed_noise(noise: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """`noise` (n x ... x C x h x w) with channels 0 and 1 in order at every pixel: channel 0 the
    larger where `directions` (n: 1 right, -1 left) is right, the smaller where left."""
    first, second = noise[..., 0, :, :], noise[..., 1, :, :]
    right = (directions > 0).reshape(-1, *[1] * (first.dim() - 1))
    larger, smaller = torch.maximum(first, second), torch.minimum(first, second)
    ordered = noise.clone()
    ordered[..., 0, :, :] = torch.where(right, larger, smaller)
    ordered[..., 1, :, :] = torch.where(right, smaller, larger)
    return ordered


def seeded_directed_noise(generator: torch.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    """`directed_noise` shaped `shape` (... x C x h x w) and its way, both drawn from `generator`,
    the way first."""
    direction = DIRECTIONS[int(torch.randint(len(DIRECTIONS), (), generator=generator))]
    noise = torch.randn(shape, generator=generator)
    return directed_noise(noise[None], torch.tensor([direction]))[0], direction


def seed_direction(seed: int) -> int:
    """The way (1: right, -1: left) the noise of a video generated with `seed` names."""
    return seeded_directed_noise(torch.Generator().manual_seed(seed), (2, 1, 1))[1]
