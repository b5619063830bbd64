"""The request every benchmark sends: one definition, so in-process, served and baseline do the same work."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from genserve.core.media import encode_image

PROMPTS = (
    "a red cat flying through space, in the style of an oil painting",
    "a misty castle on a mountain, a cinematic shot, highly detailed",
    "a neon city by the ocean, pixel art",
    "an ancient dragon in a golden forest, a watercolor",
)


#: Image to image at full strength runs as many denoising steps as text to image (fewer otherwise).
EDIT_STRENGTH = 1.0


@dataclass(frozen=True)
class Workload:
    """One text-to-image request's size and steps; the prompt and seed vary with the request's index."""

    width: int
    height: int
    steps: int

    def body(self, index: int) -> dict:
        """The JSON body of request `index`: every request differs, as real traffic does."""
        return {
            "prompt": PROMPTS[index % len(PROMPTS)],
            "seed": index,
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.steps,
        }

    @cached_property
    def picture(self) -> bytes:
        """The picture every image-to-image request edits: a PNG at the workload's size."""
        pixels = np.random.default_rng(0).integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
        return encode_image(pixels, "png")

    def edit(self, index: int) -> dict:
        """The form of image-to-image request `index`: the same work as text to image, the picture
        encoded and re-made from noise (strength 1: as many denoising steps) at the same size."""
        text = self.body(index)
        return {
            "image": self.picture,
            "prompt": text["prompt"],
            "seed": text["seed"],
            "num_inference_steps": self.steps,
            "strength": EDIT_STRENGTH,
        }

    def label(self) -> str:
        return f"{self.width}×{self.height}, {self.steps} steps"
