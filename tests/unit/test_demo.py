"""The demo models: the image model reads every grammar word as one token; both load through
diffusers' own pipeline classes; short training runs lower their losses and are evaluated; the
committed weights are the presets', within their size budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableVideoDiffusionPipeline
from helpers import ROOT
from PIL import Image

from genserve.core.demo import FRAMES, MAX_TOKENS, SIDE, build_demo_image_pipeline, build_demo_video_pipeline
from genserve.core.directed_noise import directed_noise
from genserve.core.shapes import WORDS, Scene, draw, read_video

#: The committed weights, in the diffusers layout (`make demo-model` writes them).
DEMO_DIR = ROOT / "models" / "demo"


@pytest.fixture(autouse=True)
def importable_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """models/ holds scripts, run from the repository root, not a package."""
    monkeypatch.syspath_prepend(str(ROOT / "models"))


@pytest.fixture(scope="module")
def demo_pipe() -> StableDiffusion3Pipeline:
    return build_demo_image_pipeline()


@pytest.fixture(scope="module")
def demo_video_pipe() -> StableVideoDiffusionPipeline:
    return build_demo_video_pipeline()


def test_every_grammar_word_is_one_token_of_every_tokenizer(demo_pipe) -> None:
    for tokenizer in (demo_pipe.tokenizer, demo_pipe.tokenizer_2, demo_pipe.tokenizer_3):
        assert {word: tokenizer.tokenize(word) for word in WORDS if len(tokenizer.tokenize(word)) != 1} == {}
    longest = "a large orange triangle on a purple background at the bottom"
    assert len(demo_pipe.tokenizer(longest).input_ids) <= MAX_TOKENS


def test_the_demo_pipeline_loads_through_diffusers_and_makes_its_pictures(demo_pipe, tmp_path) -> None:
    demo_pipe.save_pretrained(tmp_path)
    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path)
    assert loaded.vae_scale_factor == 4
    images = loaded(
        prompt=["a red circle", "a large blue square at the left"],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
        max_sequence_length=MAX_TOKENS,
        output_type="np",
    ).images
    assert images.shape == (2, SIDE, SIDE, 3)


def test_the_demo_video_pipeline_loads_through_diffusers_and_makes_its_videos(
    demo_video_pipe, tmp_path
) -> None:
    demo_video_pipe.save_pretrained(tmp_path)
    loaded = StableVideoDiffusionPipeline.from_pretrained(tmp_path)
    assert loaded.vae_scale_factor == 4
    assert loaded.scheduler.config.timestep_type == "continuous"  # SVD-XT's scheduler
    frames = loaded(
        image=Image.new("RGB", (SIDE, SIDE), "red"),
        height=SIDE,
        width=SIDE,
        num_frames=FRAMES,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert frames.shape == (1, FRAMES, SIDE, SIDE, 3)


@pytest.mark.slow
def test_a_short_video_training_run_lowers_the_loss() -> None:
    """Measured on a fixed batch (clips, noise levels, noise) before and after: the training
    losses of single steps, a few clips at random noise levels, vary too much to compare."""
    from train_demo import (
        VideoPlan,
        clip_shape_weights,
        denoising_loss,
        draw_clips,
        evaluate_video,
        train_unet,
        video_conditions,
    )

    plan = VideoPlan(clips=32, unet_steps=60, unet_batch=2)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pipe = build_demo_video_pipeline()
    clips = draw_clips(plan.clips, rng)
    latents, conditions, embeddings = video_conditions(pipe, clips, plan)
    sigma = torch.tensor([0.3, 1.0, 3.0, 10.0] * 2)
    added = torch.stack([torch.full((8,), 7.0), clips.motion_buckets[:8], torch.full((8,), 0.02)], 1)

    @torch.no_grad()
    def fixed_batch_loss() -> float:
        torch.manual_seed(1)
        weight = clip_shape_weights(clips.frames[:8], latents.shape[-1])
        noise = directed_noise(torch.randn_like(latents[:8]), clips.directions[:8])
        return denoising_loss(
            pipe.unet, latents[:8], noise, conditions[:8], embeddings[:8], weight, sigma, added
        ).item()

    before = fixed_batch_loss()
    train_unet(pipe, clips, plan, rng)
    assert fixed_batch_loss() < 0.8 * before, before  # measured: 1.54 before, 1.04 after
    accuracy = evaluate_video(pipe, VideoPlan(eval_clips=2, eval_steps=1), seed=1)  # generated, read back
    assert set(accuracy) == {
        "starts as its picture",
        "keeps its colours",
        "keeps its shape",
        "moves",
        "the way its seed names",
    }
    assert all(0 <= share <= 1 for share in accuracy.values())


def test_the_training_clips_move_the_way_their_noise_names_at_their_motion_buckets_speed() -> None:
    """The video model learns to move a shape right or left, as its noise names (bouncing off the
    margins), at a speed that grows with the motion bucket: its clips must show exactly that."""
    from train_demo import draw_clips

    clips = draw_clips(24, np.random.default_rng(0))
    assert clips.frames.shape == (24, FRAMES, SIDE, SIDE, 3)
    assert set(clips.directions.tolist()) == {1, -1}
    steps = []
    for frames, bucket, direction in zip(
        clips.frames.numpy(), clips.motion_buckets.tolist(), clips.directions.tolist(), strict=True
    ):
        centres = [reading.centre for reading in read_video(frames).frames]
        assert max(abs(y - centres[0][1]) for _, y in centres) <= 0.5  # sideways only
        steps.append(((centres[1][0] - centres[0][0]) * direction, bucket))
    fast = [step for step, bucket in steps if bucket >= 64]
    assert sum(step > 0 for step in fast) >= 0.8 * len(fast), steps  # its way, but where it bounces
    slowest, fastest = min(steps, key=lambda s: s[1]), max(steps, key=lambda s: s[1])
    assert abs(slowest[0]) < abs(fastest[0]), steps


def test_the_loss_weighs_the_latents_around_the_shape_more() -> None:
    """A large square in the centre: the latent pixels under it and a ring of one around them
    weigh more than 1 (1 + SHAPE_WEIGHT in the middle), the rest 1; a plain picture weighs 1."""
    from train_demo import SHAPE_WEIGHT, as_pixels, shape_weights

    square = draw(Scene("square", "red", "blue", "large", "centre"), SIDE, np.random.default_rng(0))
    plain = np.full_like(square, 200)
    weights = shape_weights(as_pixels(torch.from_numpy(np.stack([square, plain]))), SIDE // 4)
    assert weights.shape == (2, 1, SIDE // 4, SIDE // 4)
    shape_rows, shape_cols = np.nonzero((square != square[0, 0]).any(axis=-1))  # pixels
    heavy_rows, heavy_cols = np.nonzero(weights[0, 0].numpy() > 1)  # latent pixels, 4 x 4 pixels each
    for pixels, latents in ((shape_rows, heavy_rows), (shape_cols, heavy_cols)):
        assert (latents.min(), latents.max()) == (pixels.min() // 4 - 1, pixels.max() // 4 + 1)
    assert weights[0, 0, SIDE // 8, SIDE // 8] == 1 + SHAPE_WEIGHT
    assert weights[0, 0, 0, 0] == 1 and torch.all(weights[1] == 1)


@pytest.mark.slow
def test_a_short_training_run_lowers_both_losses() -> None:
    from train_demo import (
        Plan,
        draw_dataset,
        encode_latents,
        evaluate,
        shape_weights,
        train_transformer,
        train_vae,
    )

    plan = Plan(pictures=256, vae_steps=60, transformer_steps=60, transformer_batch=16)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pipe = build_demo_image_pipeline()
    scenes, pictures = draw_dataset(plan.pictures, rng)
    vae_losses = train_vae(pipe, pictures, plan, rng)
    latents = encode_latents(pipe, pictures)
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)
    weights = shape_weights(pictures, latents.shape[-1])
    transformer_losses = train_transformer(pipe, scenes, latents, weights, plan, rng)
    for losses in (vae_losses, transformer_losses):
        assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    accuracy = evaluate(pipe, Plan(eval_prompts=4, eval_steps=1), seed=1)  # generated, read back
    assert set(accuracy) == {"shape", "colour", "background", "size", "place"}
    assert all(0 <= share <= 1 for share in accuracy.values())


def shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def test_the_committed_demo_weights_are_the_presets_and_fit_the_budget(demo_pipe, demo_video_pipe) -> None:
    for built, loaded in (
        (demo_pipe, StableDiffusion3Pipeline.from_pretrained(DEMO_DIR / "image")),
        (demo_video_pipe, StableVideoDiffusionPipeline.from_pretrained(DEMO_DIR / "video")),
    ):
        for name, module in built.components.items():
            if isinstance(module, torch.nn.Module):  # the same architecture, other weights
                assert shapes(module) == shapes(getattr(loaded, name)), name
    total = sum(path.stat().st_size for path in DEMO_DIR.rglob("*") if path.is_file())
    assert total <= 30 * 1024 * 1024
