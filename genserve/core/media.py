"""Encode generated images and videos to bytes that services can return as files."""

import io
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, PngImagePlugin

from genserve.core.protocol import IMAGE_FORMATS, VIDEO_FORMATS

# PNG is lossless at every level; higher levels only shrink the file a little while
# costing several times the CPU, and encoding sits on the serving hot path.
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 95
WEBP_IMAGE_QUALITY = 95
WEBP_VIDEO_QUALITY = 90
# x264 constant rate factor (lower is better, default 23); 18 is near visually lossless.
MP4_CRF = 18

_IMAGE_SAVE_ARGS: dict[str, dict[str, object]] = {
    "png": {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL},
    "jpeg": {"format": "JPEG", "quality": JPEG_QUALITY},
    "webp": {"format": "WEBP", "quality": WEBP_IMAGE_QUALITY},
}


def _check_format(fmt: str, allowed: dict[str, str]) -> None:
    if fmt not in allowed:
        raise ValueError(f"unsupported format {fmt!r}; expected one of {sorted(allowed)}")


def _check_rgb(array: np.ndarray, ndim: int) -> None:
    """Fail clearly rather than encode another mode or feed ffmpeg misshaped bytes."""
    if array.dtype != np.uint8 or array.ndim != ndim or array.shape[-1] != 3:
        shape = f"{array.dtype} {array.shape}"
        raise ValueError(f"expected uint8 RGB array with {ndim} dims, got {shape}")


#: The PNG text chunk that says how an image was made, as AUTOMATIC1111 writes it: the tools that
#: show or reuse "PNG info" read it.
PARAMETERS_CHUNK = "parameters"


def encode_image(image: np.ndarray, fmt: str, parameters: str | None = None) -> bytes:
    """Encode a (H, W, 3) uint8 RGB array as png, jpeg or webp; a PNG gets `parameters` as its
    PARAMETERS_CHUNK text, when given."""
    _check_format(fmt, IMAGE_FORMATS)
    _check_rgb(image, ndim=3)
    extra: dict[str, object] = {}
    if parameters is not None and fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text(PARAMETERS_CHUNK, parameters)  # iTXt when it is not Latin-1
        extra["pnginfo"] = info
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, **_IMAGE_SAVE_ARGS[fmt], **extra)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Open encoded bytes lazily, so animated files can be walked with seek()."""
    return Image.open(io.BytesIO(data))


def encode_video(frames: np.ndarray, fps: int, fmt: str) -> bytes:
    """Encode (F, H, W, 3) uint8 RGB frames as mp4 (H.264), animated gif or webp."""
    _check_format(fmt, VIDEO_FORMATS)
    _check_rgb(frames, ndim=4)
    if len(frames) == 0 or fps <= 0:
        raise ValueError(f"need frames and fps > 0, got {len(frames)} at {fps} fps")
    if fmt == "mp4":
        return _encode_mp4(frames, fps)
    images = [Image.fromarray(frame) for frame in frames]
    if fmt == "gif":
        # GIF stores delays in 10 ms units, so e.g. 7 fps (142.9 ms) becomes 140 ms;
        # round here because Pillow truncates. Browsers play delays <= 10 ms at 100 ms,
        # so cap the rate at 50 fps rather than let fast clips play slowly.
        duration: float = max(2, round(100 / fps)) * 10
        extra: dict[str, object] = {}
    else:
        # WebP keeps ms timestamps; Pillow accumulates this float and rounds each
        # timestamp, so total length stays exact even when 1000 / fps is not whole.
        duration = 1000 / fps
        extra = {"lossless": False, "quality": WEBP_VIDEO_QUALITY}
    buf = io.BytesIO()
    images[0].save(
        buf,
        format=fmt.upper(),
        save_all=True,
        append_images=images[1:],
        duration=duration,
        loop=0,
        **extra,
    )
    return buf.getvalue()


def _encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """Pipe raw frames through imageio-ffmpeg's bundled ffmpeg into a temporary mp4.

    A file, not a pipe, because +faststart rewrites the finished file to move the index
    to the front (so browsers can start playing before the download ends), which needs
    seekable output. ffmpeg is run directly rather than via imageio_ffmpeg.write_frames
    because that ignores ffmpeg's exit status and would hand back a broken file.
    """
    _, height, width, _ = frames.shape
    # yuv420p subsamples chroma 2x2, so H.264 needs even sizes: repeat the last
    # row/column rather than fail or rescale.
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v", "error",
            "-f", "rawvideo",
            "-pix_fmt", "rgb24",
            "-s", f"{frames.shape[2]}x{frames.shape[1]}",
            "-r", str(fps),
            "-i", "-",
            "-an",
            "-c:v", "libx264",
            "-pix_fmt", "yuv420p",
            "-crf", str(MP4_CRF),
            "-movflags", "+faststart",
            str(path),
        ]  # fmt: skip
        result = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {result.stderr.decode(errors='replace').strip()}")
        return path.read_bytes()
