"""A demo video's noise names the way its shape moves at every latent pixel, and the seed picks it."""

from __future__ import annotations

import torch

from genserve.core.directed_noise import DIRECTIONS, directed_noise, seed_direction, seeded_directed_noise


def test_channels_0_and_1_are_put_in_the_order_the_direction_names() -> None:
    noise = torch.randn(2, 8, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    ordered = directed_noise(noise, torch.tensor([1, -1]))
    right, left = ordered
    assert torch.all(right[:, 0] >= right[:, 1]) and torch.all(left[:, 0] <= left[:, 1])
    # the same values, only reordered; the other channels untouched
    pairs = torch.sort(noise[:, :, :2], dim=2).values
    assert torch.equal(torch.sort(ordered[:, :, :2], dim=2).values, pairs)
    assert torch.equal(ordered[:, :, 2:], noise[:, :, 2:])


def test_the_seed_picks_the_direction_and_the_noise() -> None:
    def drawn(seed: int) -> tuple[torch.Tensor, int]:
        return seeded_directed_noise(torch.Generator().manual_seed(seed), (8, 16, 16, 16))

    noise, direction = drawn(5)
    again, same = drawn(5)
    assert torch.equal(noise, again) and direction == same == seed_direction(5)
    assert torch.all((noise[:, 0] - noise[:, 1]) * direction >= 0)
    assert not torch.equal(noise, drawn(6)[0])
    directions = [seed_direction(seed) for seed in range(64)]
    assert set(directions) == set(DIRECTIONS) and 16 <= directions.count(1) <= 48
    # the channels the direction leaves alone stay standard normal noise
    rest = noise[:, 2:]
    assert abs(rest.mean().item()) < 0.05 and abs(rest.std().item() - 1) < 0.05
