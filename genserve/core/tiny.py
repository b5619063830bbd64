"""The tiny preset: real SD3.5 and SVD architectures, shrunk, with seeded random weights.

No weights can be downloaded where genserve is developed and tested, so the tiny models
are built locally. They are not stand-ins: the same diffusers pipeline classes run the
same code paths as Stable Diffusion 3.5 and Stable Video Diffusion, only with small
configs. Tokenizers are trained on a small built-in corpus. Everything is seeded, so the
same seed gives the same files, the same weights and the same images.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

DEFAULT_SEED = 0
CLIP_MAX_TOKENS = 77  # as in the real CLIP encoders of SD3
VOCAB_SIZE = 1024  # embedding rows; at least as many as either tokenizer's pieces


def _corpus() -> list[str]:
    """Prompt-like sentences to train the tiny tokenizers on (fixed, so training is deterministic)."""
    adjectives = ["red", "blue", "golden", "misty", "tiny", "giant", "ancient", "neon", "calm", "stormy"]
    subjects = ["cat", "rocket", "castle", "forest", "city", "ocean", "dragon", "robot", "flower", "mountain"]
    styles = ["an oil painting", "a photo", "a watercolor", "pixel art", "a cinematic shot"]
    return [
        f"a {adjective} {subject} flying through space, in the style of {style}, highly detailed"
        for adjective, subject, style in itertools.product(adjectives, subjects, styles)
    ]


def _words(extra: Iterable[str] = ()) -> list[str]:
    """The corpus's distinct words and punctuation, and `extra` words, sorted: the tokenizers'
    learned pieces."""
    return sorted(set(re.findall(r"[a-z]+|[^\sa-z]", " ".join(_corpus()))) | set(extra))


def build_clip_tokenizer(extra_words: Iterable[str] = (), max_tokens: int = CLIP_MAX_TOKENS) -> CLIPTokenizer:
    """A byte-level BPE tokenizer in CLIP's format: the 256 byte symbols (alone and word-final),
    plus merges that spell each corpus word left to right. Built by rule rather than trained,
    because the `tokenizers` trainers break ties differently from run to run.

    `extra_words` are each one token: their merges come first, longest words first, so no
    merge of another word splits them (BPE applies the first-ranked merge anywhere in a word).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [f"{s}</w>" for s in alphabet])}
    merges: list[tuple[str, str]] = []
    for word in [*sorted(set(extra_words), key=lambda word: (-len(word), word)), *_words()]:
        *head, last = word
        pieces = [*head, f"{last}</w>"]
        while len(pieces) > 1:
            merge = (pieces[0], pieces[1])
            pieces = [merge[0] + merge[1], *pieces[2:]]
            if pieces[0] not in vocab:
                vocab[pieces[0]] = len(vocab)
                merges.append(merge)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)


def build_t5_tokenizer(extra_words: Iterable[str] = ()) -> T5Tokenizer:
    """A Unigram tokenizer in T5's format (pad=0, eos=1, unk=2): whole corpus words (and
    `extra_words`) score above single characters, so known words are one token and other ASCII
    text is spelled out."""
    words = _words(extra_words)
    characters = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -3.0) for word in words]
    pieces += [(character, -8.0) for character in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config)


def _t5_text_encoder(tokenizer: T5Tokenizer, width: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=VOCAB_SIZE,
        d_model=width,
        d_kv=16,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        is_gated_act=True,
        dense_act_fn="gelu_new",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def sd3_pipeline(
    transformer: SD3Transformer2DModel,
    vae: AutoencoderKL,
    clip: tuple[CLIPTokenizer, tuple[int, int]],
    t5: tuple[T5Tokenizer, int],
    shift: float,
) -> StableDiffusion3Pipeline:
    """SD3's pipeline around `transformer` and `vae`, with new text encoders: two CLIPs sharing one
    tokenizer (`clip`: it and their widths) and a T5 (`t5`: its tokenizer and width). The T5 is
    built first, so a seed gives the same weights as it always has."""
    (clip_tokenizer, (clip_width, clip_2_width)), (t5_tokenizer, t5_width) = clip, t5
    t5_encoder = _t5_text_encoder(t5_tokenizer, t5_width)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=vae,
        text_encoder=_clip_text_encoder(clip_tokenizer, clip_width),
        tokenizer=clip_tokenizer,
        text_encoder_2=_clip_text_encoder(clip_tokenizer, clip_2_width),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5_encoder,
        tokenizer_3=t5_tokenizer,
    )


def build_image_pipeline(seed: int = DEFAULT_SEED) -> StableDiffusion3Pipeline:
    """Stable Diffusion 3.5: MMDiT with qk RMS-norm and a dual-attention layer, 16-channel VAE (x8),
    two CLIP text encoders and a T5 encoder, flow-matching Euler scheduler."""
    torch.manual_seed(seed)
    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    clip_dims = (32, 32)
    t5_dim = 64  # SD3 zero-pads the CLIP features (32 + 32) to the T5 width
    transformer = SD3Transformer2DModel(
        sample_size=8,  # latent size of the default 64x64 image
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_dim,
        caption_projection_dim=32,
        pooled_projection_dim=sum(clip_dims),
        pos_embed_max_size=32,  # latent 64 / patch 2: images up to 512x512
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),  # four levels: x8 downsampling, as in SD3
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5305,
    )
    return sd3_pipeline(transformer, vae, (clip_tokenizer, clip_dims), (t5_tokenizer, t5_dim), shift=3.0)


def build_video_pipeline(seed: int = DEFAULT_SEED) -> StableVideoDiffusionPipeline:
    """Stable Video Diffusion: spatio-temporal UNet, temporal-decoder VAE (x8), CLIP vision encoder."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,  # noisy latents + the conditioning image's latents
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=3 * 16,  # fps, motion bucket, noise augmentation
    )
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        scaling_factor=0.18215,
    )
    image_encoder = svd_image_encoder()
    scheduler = svd_scheduler()
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )


def svd_image_encoder() -> CLIPVisionModelWithProjection:
    """A small CLIP vision encoder, seeded by the caller, that reads what SVD's pipeline feeds it."""
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,  # the pipeline resizes the conditioning image to 224, as for ViT-H/14
            patch_size=32,
        )
    )


def svd_scheduler(**overrides: object) -> EulerDiscreteScheduler:
    """SVD's Euler scheduler (v-prediction, Karras sigmas), with `overrides` of its configuration."""
    return EulerDiscreteScheduler(
        **{
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction",
            "interpolation_type": "linear",
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "use_karras_sigmas": True,
            **overrides,
        }
    )


def save_tiny_models(image_dir: Path, video_dir: Path, seed: int = DEFAULT_SEED) -> None:
    """Build both tiny pipelines and write them in the diffusers layout that `from_pretrained` reads."""
    build_image_pipeline(seed).save_pretrained(image_dir)
    build_video_pipeline(seed).save_pretrained(video_dir)
