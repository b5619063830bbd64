"""The published configs of Stable Diffusion 3.5 Large and Medium and Stable Video Diffusion XT,
written out.

Copied from the `config.json` files of `stabilityai/stable-diffusion-3.5-large` and
`stabilityai/stable-video-diffusion-img2vid-xt` (no download here: both repos are large, and
SD3.5 is gated), so `bench/gpu.py` can build the real architectures with random weights.
`tests/served/test_bench.py` checks their parameter counts against the published model sizes.
"""

from __future__ import annotations

SD35_LARGE = {
    # transformer/config.json: MMDiT, 38 blocks of 38 heads × 64 (width 2432), no dual-attention
    # blocks (those are SD3.5 Medium's), qk RMS-norm.
    "transformer": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 38,
        "attention_head_dim": 64,
        "num_attention_heads": 38,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 2432,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "dual_attention_layers": (),
        "qk_norm": "rms_norm",
    },
    # vae/config.json: 16 latent channels, ×8, no quant convs.
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "force_upcast": True,
    },
    # text_encoder: CLIP ViT-L/14 text tower with projection.
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    },
    # text_encoder_2: OpenCLIP ViT-bigG/14 text tower with projection.
    "text_encoder_2": {
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "projection_dim": 1280,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
    },
    # text_encoder_3: T5 v1.1 XXL encoder.
    "text_encoder_3": {
        "vocab_size": 32128,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
    },
    # scheduler/scheduler_config.json
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
}

# stabilityai/stable-diffusion-3.5-medium: the same encoders, VAE and scheduler as Large; its
# transformer is MMDiT-X, 24 blocks of 24 heads × 64 (width 1536), dual attention in blocks 0-12.
SD35_MEDIUM = {
    **SD35_LARGE,
    "transformer": {
        **SD35_LARGE["transformer"],
        "num_layers": 24,
        "num_attention_heads": 24,
        "caption_projection_dim": 1536,
        "pos_embed_max_size": 384,
        "dual_attention_layers": tuple(range(13)),
    },
}

SVD_XT = {
    # unet/config.json
    "unet": {
        "sample_size": 96,
        "in_channels": 8,
        "out_channels": 4,
        "down_block_types": (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        "up_block_types": (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        "block_out_channels": (320, 640, 1280, 1280),
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768,
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "transformer_layers_per_block": 1,
        "num_attention_heads": (5, 10, 20, 20),
        "num_frames": 25,
    },
    # vae/config.json: temporal-decoder VAE, 4 latent channels, ×8.
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    },
    # image_encoder/config.json: OpenCLIP ViT-H/14 vision tower with projection.
    "image_encoder": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "projection_dim": 1024,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "gelu",
    },
    # scheduler/scheduler_config.json
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
        "interpolation_type": "linear",
        "timestep_spacing": "leading",
        "timestep_type": "continuous",
        "steps_offset": 1,
        "use_karras_sigmas": True,
        "sigma_min": 0.002,
        "sigma_max": 700.0,
    },
}
