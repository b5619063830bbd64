"""Decode what genserve returns, the way a client would, so tests check real files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from genserve.core.media import decode_image


def read_mp4(data: bytes) -> tuple[dict, np.ndarray]:
    """ffmpeg's metadata (fps, size, codec) and the frames as (F, H, W, 3) uint8."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        path.write_bytes(data)
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        frames = np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])
    return meta, frames


def read_video(data: bytes, fmt: str) -> tuple[np.ndarray, float]:
    """Frames (F, H, W, 3) uint8 and frames per second of an mp4, gif or webp video."""
    if fmt == "mp4":
        meta, frames = read_mp4(data)
        return frames, meta["fps"]
    animation = decode_image(data)
    frames, durations = [], []
    for index in range(animation.n_frames):
        animation.seek(index)
        animation.load()
        frames.append(np.asarray(animation.convert("RGB")))
        durations.append(animation.info["duration"])
    return np.stack(frames), 1000 / float(np.mean(durations))


def read_image(data: bytes) -> tuple[str, np.ndarray]:
    """The MIME type Pillow recognises and the pixels as (H, W, 3) uint8."""
    image = decode_image(data)
    return Image.MIME[image.format], np.asarray(image.convert("RGB"))
