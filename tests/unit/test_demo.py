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
from genserve.core.shapes import WORDS

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
    from train_demo import MOVES, VideoPlan, draw_clips, evaluate_video, train_unet

    plan = VideoPlan(clips=32, unet_steps=60, unet_batch=2)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pipe = build_demo_video_pipeline()
    clips = draw_clips(plan.clips, rng)
    assert clips.frames.shape == (plan.clips, len(MOVES), FRAMES, SIDE, SIDE, 3)
    losses = train_unet(pipe, clips, plan, rng)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    accuracy = evaluate_video(pipe, VideoPlan(eval_clips=2, eval_steps=1), seed=1)  # generated, read back
    assert set(accuracy) == {"starts as its picture", "keeps its look", "moves"}
    assert all(0 <= share <= 1 for share in accuracy.values())


def test_the_noise_picks_each_direction_equally_often() -> None:
    """Training pairs a clip's noise with the clip moving the way the noise picks: the seed's noise
    at sampling must then pick each direction as often, and a different noise value elsewhere
    must not change it."""
    from train_demo import MOVES, direction_of

    noise = torch.randn(4000, FRAMES, 16, 16, 16)
    picked = direction_of(noise)
    counts = torch.bincount(picked, minlength=len(MOVES))
    assert len(counts) == len(MOVES) and counts.min() > 1900, counts
    assert {MOVES[i] for i in picked[noise[:, 0, 0, 0, 0] > 0].tolist()} == {(1, 0)}  # positive: right
    noise[:, 1:] = torch.randn_like(noise[:, 1:])
    assert torch.equal(direction_of(noise), picked)


@pytest.mark.slow
def test_a_short_training_run_lowers_both_losses() -> None:
    from train_demo import Plan, draw_dataset, encode_latents, evaluate, train_transformer, train_vae

    plan = Plan(pictures=256, vae_steps=60, transformer_steps=60, transformer_batch=16)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pipe = build_demo_image_pipeline()
    scenes, pictures = draw_dataset(plan.pictures, rng)
    vae_losses = train_vae(pipe, pictures, plan, rng)
    latents = encode_latents(pipe, pictures)
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)
    transformer_losses = train_transformer(pipe, scenes, latents, plan, rng)
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
