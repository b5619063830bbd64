"""Model presets: the one source of truth for what each model is, its defaults and its limits.

Request schemas, the service's `/models` endpoint, the batching settings and the web UI all
read from here, so a limit changed here changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Pixel sizes must be multiples of this: the VAE downsamples by 8 and SD3 patches by 2.
SIZE_MULTIPLE = 16

#: Longest prompt (characters) accepted; the encoders truncate tokens long before this.
MAX_PROMPT_CHARS = 2000

#: Frames the SVD pipeline needs at least (its temporal layers fail on a single frame).
MIN_FRAMES = 2

#: Uploaded conditioning images: the formats decoded, and bounds checked before decoding
#: (a small file can claim a huge size: a decompression bomb).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Any request body: an upload plus room for its multipart framing and form fields.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
MIN_UPLOAD_SIDE = 16


def store_tag(kind: str, preset_name: str) -> str:
    """The BentoML model-store name under which `models/import_models.py` puts a preset's model."""
    return f"genserve-{kind}-{preset_name}"


@dataclass(frozen=True)
class Batching:
    """Adaptive batching defaults of one generator (overridable at deploy time)."""

    max_batch_size: int
    max_latency_ms: int


@dataclass(frozen=True)
class ImagePreset:
    """A text-to-image model (Stable Diffusion 3.x architecture) with its defaults and limits."""

    name: str
    source: str  # Hugging Face id, local directory, or "bentoml:<tag>"
    cuda_dtype: str
    default_width: int
    default_height: int
    max_width: int
    max_height: int
    default_steps: int
    max_steps: int
    default_guidance: float
    max_sequence_length: int  # T5 tokens
    batching: Batching
    max_guidance: float = 20.0
    #: Image to image and inpainting: how far a result may depart from its input (diffusers' default).
    default_strength: float = 0.6
    #: Text to image: classifier-free guidance for this share of the steps (rounded up); the rest run
    #: unguided, at half the cost a step. 1: guided throughout, as diffusers does.
    guided_share: float = 1.0
    gated: bool = False
    cpu_threads: int = 0  # torch threads per generator worker on a CPU; 0: torch's default (all cores)
    embedded: bool = False  # built or trained by genserve, small enough for a CPU


@dataclass(frozen=True)
class VideoPreset:
    """An image-to-video model (Stable Video Diffusion architecture) with its defaults and limits.

    Videos are always made at the preset's own size: SVD is trained for one resolution, so
    input images are cropped to its aspect and resized rather than distorted.
    """

    name: str
    source: str
    cuda_dtype: str
    variant: str | None  # weight file variant on the hub ("fp16"), None for full precision
    width: int
    height: int
    default_frames: int
    max_frames: int
    default_steps: int
    max_steps: int
    batching: Batching
    # SVD's own conventions, the same for every preset so far:
    default_fps: int = 7
    max_fps: int = 30
    default_motion_bucket_id: int = 127
    default_noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0  # guidance rises linearly over the frames, min to max
    max_guidance_scale: float = 3.0
    decode_chunk_size: int = 8  # frames the temporal VAE decodes at once: bounds its memory
    #: The seed's noise names the way the shape moves (`genserve.core.directed_noise`), for a model
    #: trained to read it there; SVD's own draw plain noise.
    directed_noise: bool = False
    cpu_threads: int = 0  # torch threads per generator worker on a CPU; 0: torch's default (all cores)
    embedded: bool = False  # built or trained by genserve, small enough for a CPU


# The embedded models' operations are too small to split well between cores: a second torch
# thread makes one tiny image slower (96 ms on one thread, 115 ms on two, bench/README.md) and a
# batch of demo images 1.35x faster for twice the CPU time (docs/demo-training.md). A core each
# for more workers (GENSERVE_IMAGE_WORKERS) is what scales.
EMBEDDED_CPU_THREADS = 1

_SD35_LARGE = ImagePreset(
    name="sd35-large",
    source="stabilityai/stable-diffusion-3.5-large",
    cuda_dtype="bfloat16",
    default_width=1024,
    default_height=1024,
    max_width=1536,
    max_height=1536,
    default_steps=28,
    max_steps=100,
    default_guidance=3.5,
    max_sequence_length=256,
    batching=Batching(max_batch_size=4, max_latency_ms=300_000),
    gated=True,
)
_SVD_XT = VideoPreset(
    name="svd-xt",
    source="stabilityai/stable-video-diffusion-img2vid-xt",
    cuda_dtype="float16",
    variant="fp16",
    width=1024,
    height=576,
    default_frames=25,
    max_frames=25,
    default_steps=25,
    max_steps=50,
    batching=Batching(max_batch_size=2, max_latency_ms=600_000),
)

IMAGE_PRESETS: dict[str, ImagePreset] = {
    preset.name: preset
    for preset in (
        ImagePreset(
            name="tiny",
            source=f"bentoml:{store_tag('image', 'tiny')}",
            cuda_dtype="float32",
            default_width=64,
            default_height=64,
            max_width=256,
            max_height=256,
            default_steps=8,
            max_steps=50,
            default_guidance=5.0,
            max_sequence_length=64,
            batching=Batching(max_batch_size=8, max_latency_ms=60_000),
            cpu_threads=EMBEDDED_CPU_THREADS,
            embedded=True,
        ),
        ImagePreset(
            name="demo",  # trained on the CPU to draw coloured shapes (genserve/core/shapes.py)
            source=f"bentoml:{store_tag('image', 'demo')}",
            cuda_dtype="float32",
            default_width=64,  # the size it was trained at, the only one it draws well
            default_height=64,
            max_width=64,
            max_height=64,
            default_steps=8,  # 12 gain a point for 1.5x the work (docs/demo-training.md)
            max_steps=50,
            default_guidance=4.0,
            guided_share=0.5,  # more accurate than guided throughout, 3/4 of the work (docs/demo-training.md)
            default_strength=0.8,  # recolours 100 % of edits (docs/demo.md); 0.6 under half (earlier model)
            max_sequence_length=16,  # a grammar prompt is at most 13 tokens
            batching=Batching(max_batch_size=16, max_latency_ms=60_000),
            cpu_threads=EMBEDDED_CPU_THREADS,
            embedded=True,
        ),
        _SD35_LARGE,
        replace(
            _SD35_LARGE,
            name="sd35-large-turbo",  # distilled: few steps, no classifier-free guidance
            source="stabilityai/stable-diffusion-3.5-large-turbo",
            default_steps=4,
            max_steps=16,
            default_guidance=0.0,
            batching=Batching(max_batch_size=8, max_latency_ms=120_000),
        ),
        replace(
            _SD35_LARGE,
            name="sd35-medium",
            source="stabilityai/stable-diffusion-3.5-medium",
            max_width=1440,
            max_height=1440,
            default_steps=40,
            default_guidance=4.5,
            batching=Batching(max_batch_size=8, max_latency_ms=300_000),
        ),
    )
}

VIDEO_PRESETS: dict[str, VideoPreset] = {
    preset.name: preset
    for preset in (
        VideoPreset(
            name="tiny",
            source=f"bentoml:{store_tag('video', 'tiny')}",
            cuda_dtype="float32",
            variant=None,
            width=64,
            height=64,
            default_frames=8,
            max_frames=16,
            default_steps=4,
            max_steps=25,
            batching=Batching(max_batch_size=4, max_latency_ms=120_000),
            cpu_threads=EMBEDDED_CPU_THREADS,
            embedded=True,
        ),
        VideoPreset(
            name="demo",  # trained on the CPU to move the demo's shapes (genserve/core/shapes.py)
            source=f"bentoml:{store_tag('video', 'demo')}",
            cuda_dtype="float32",
            variant=None,
            width=64,  # the size and length it was trained at
            height=64,
            default_frames=8,
            max_frames=8,
            default_steps=10,
            max_steps=50,
            batching=Batching(max_batch_size=8, max_latency_ms=120_000),
            directed_noise=True,
            embedded=True,
        ),
        _SVD_XT,
        replace(
            _SVD_XT,
            name="svd",  # the 14-frame original
            source="stabilityai/stable-video-diffusion-img2vid",
            default_frames=14,
            max_frames=14,
        ),
    )
}


def image_preset(name: str) -> ImagePreset:
    """Look up an image preset, naming the valid ones when the name is unknown."""
    try:
        return IMAGE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown image preset {name!r}; choose one of {sorted(IMAGE_PRESETS)}") from None


def video_preset(name: str) -> VideoPreset:
    """Look up a video preset, naming the valid ones when the name is unknown."""
    try:
        return VIDEO_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown video preset {name!r}; choose one of {sorted(VIDEO_PRESETS)}") from None
