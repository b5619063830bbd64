"""The demo presets' architectures: SD3 and SVD, shrunk, for weights genserve trains itself.

The demo model draws what `genserve.core.shapes` describes (a coloured shape on a plain background),
so it must read its prompt: every grammar word is one token of the tokenizers, and the text
encoders are trained with the transformer. The pictures are 64×64 with a VAE that downsamples
by 4 (three levels instead of SD3's four), so a shape covers a 16×16 latent well enough to keep
its kind. The video model is SVD's spatio-temporal UNet and CLIP vision encoder, on the image model's own
VAE: SVD's temporal decoder normalises in groups of 32 channels, which at the widths a CPU can
train is one channel a group, and that normalises a flat picture's colours away
(docs/demo-training.md); SVD's pipeline decodes with a plain VAE, a frame at a time. The pipelines
are diffusers' own classes: the same `from_pretrained` path loads them. `models/train_demo.py`
trains them.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor

from genserve.core.shapes import WORDS
from genserve.core.tiny import (
    build_clip_tokenizer,
    build_t5_tokenizer,
    sd3_pipeline,
    svd_image_encoder,
    svd_scheduler,
)

SIDE = 64  # the pictures' side, pixels
#: Prompt tokens each text encoder reads: a grammar prompt is at most 11 words (13 CLIP tokens).
MAX_TOKENS = 16
CLIP_WIDTH = 32
T5_WIDTH = 64  # SD3 zero-pads the two CLIP features (32 + 32) to the T5 width
HEADS, HEAD_WIDTH = 3, 32
#: The flow-matching timestep shift, in training and in the scheduler: more than SD3.5's 3, for
#: more training at high noise, where a shape's kind is decided (docs/demo-training.md).
TIMESTEP_SHIFT = 5.0
#: Frames of a demo video: the length it is trained at.
FRAMES = 8
LATENT_CHANNELS = 16


def build_demo_vae() -> AutoencoderKL:
    """The demo models' VAE: 16 latent channels, three levels (x4), norms in groups of 8."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),  # three levels: x4 downsampling
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,  # training sets both from its latents (models/train_demo.py)
        scaling_factor=1.0,
    )


def build_demo_image_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """The untrained demo image pipeline: MMDiT (qk RMS-norm, a dual-attention layer), a
    16-channel VAE, two CLIP text encoders and a T5 encoder, flow-matching Euler scheduler."""
    torch.manual_seed(seed)
    clip_tokenizer = build_clip_tokenizer(WORDS, max_tokens=MAX_TOKENS)
    t5_tokenizer = build_t5_tokenizer(WORDS)
    transformer = SD3Transformer2DModel(
        sample_size=SIDE // 4,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=4,
        attention_head_dim=HEAD_WIDTH,
        num_attention_heads=HEADS,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=HEADS * HEAD_WIDTH,
        pooled_projection_dim=2 * CLIP_WIDTH,
        # The positional grid's unit is one patch only when it is sample_size / patch_size wide:
        # wider, SD3 squeezes its positions and neighbouring patches look alike (the model did not
        # learn where to put a shape). So 64×64 is the largest picture, the one it is trained at.
        pos_embed_max_size=SIDE // 4 // 2,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = build_demo_vae()
    clip = (clip_tokenizer, (CLIP_WIDTH, CLIP_WIDTH))
    return sd3_pipeline(transformer, vae, clip, (t5_tokenizer, T5_WIDTH), TIMESTEP_SHIFT)


def build_demo_video_pipeline(seed: int = 0) -> StableVideoDiffusionPipeline:
    """The untrained demo video pipeline: SVD's spatio-temporal UNet (attention on both levels on
    the way down), the demo VAE (training puts the image model's in), a CLIP vision encoder, and
    SVD's own scheduler (EDM sigmas from 700 to 0.002, v-prediction, continuous timesteps)."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=SIDE // 4,
        in_channels=2 * LATENT_CHANNELS,  # noisy latents + the conditioning picture's latents
        out_channels=LATENT_CHANNELS,
        # Attention at 16×16 lets a frame take a small shape's colours from where the conditioning
        # picture shows it; at 8×8 alone small shapes blurred as they moved (docs/demo-training.md).
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
        # SVD's UNet normalises in groups of 32 channels (its last norm is hard-coded to 32 groups):
        # at 32 channels a group is one channel, whose mean, the level that carries a flat colour,
        # every norm removes. 96 channels are groups of 3 (docs/demo-training.md).
        block_out_channels=(96, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(3, 2),
        addition_time_embed_dim=16,
        projection_class_embeddings_input_dim=3 * 16,  # fps, motion bucket, noise augmentation
    )
    image_encoder = svd_image_encoder()
    return StableVideoDiffusionPipeline(
        vae=build_demo_vae(),
        image_encoder=image_encoder,
        unet=unet,
        # SVD-XT's own: EDM sigmas from 700 to 0.002, continuous timesteps log(sigma) / 4.
        scheduler=svd_scheduler(timestep_type="continuous", sigma_min=0.002, sigma_max=700.0),
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )
