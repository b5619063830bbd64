"""The tiny preset builds deterministically, in the real architectures, and loads like a real model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

from genserve.core import tiny


def digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def built_twice(tmp_path_factory) -> list[Path]:
    directories = []
    for attempt in ("first", "second"):
        directory = tmp_path_factory.mktemp(attempt)
        tiny.save_tiny_models(directory / "image", directory / "video")
        directories.append(directory)
    return directories


def test_same_seed_gives_the_same_files(built_twice) -> None:
    first, second = built_twice
    assert digest(first) == digest(second)
    assert any(name.endswith(".safetensors") for name in digest(first))


def test_another_seed_gives_other_weights(built_twice, tmp_path) -> None:
    tiny.build_image_pipeline(seed=1).save_pretrained(tmp_path)
    reference = digest(built_twice[0] / "image")
    other = digest(tmp_path)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert other[weights] != reference[weights]
    assert other["tokenizer/tokenizer.json"] == reference["tokenizer/tokenizer.json"]


def test_image_model_is_the_sd35_architecture(built_twice) -> None:
    config = SD3Transformer2DModel.load_config(built_twice[0] / "image" / "transformer")
    assert config["in_channels"] == 16 and config["patch_size"] == 2
    assert config["qk_norm"] == "rms_norm" and list(config["dual_attention_layers"]) == [0]
    pipe = StableDiffusion3Pipeline.from_pretrained(built_twice[0] / "image")
    assert pipe.vae_scale_factor == 8
    assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"


def test_tokenizers_round_trip_prompts() -> None:
    prompt = "a golden dragon in the style of pixel art"
    clip = tiny.build_clip_tokenizer()
    ids = clip(prompt).input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id
    assert clip.unk_token_id not in ids[1:-1]
    assert clip.decode(ids, skip_special_tokens=True) == prompt
    t5 = tiny.build_t5_tokenizer()
    assert t5.decode(t5(prompt).input_ids, skip_special_tokens=True) == prompt
