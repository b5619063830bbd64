"""The request every benchmark sends: one definition, so in-process, served and baseline do the same work."""

from __future__ import annotations

from dataclasses import dataclass

PROMPTS = (
    "a red cat flying through space, in the style of an oil painting",
    "a misty castle on a mountain, a cinematic shot, highly detailed",
    "a neon city by the ocean, pixel art",
    "an ancient dragon in a golden forest, a watercolor",
)


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

    def label(self) -> str:
        return f"{self.width}×{self.height}, {self.steps} steps"
