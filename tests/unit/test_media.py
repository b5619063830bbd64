from collections.abc import Callable

import numpy as np
import pytest
from decoding import read_mp4
from PIL import Image

from genserve.core.media import (
    IMAGE_FORMATS,
    VIDEO_FORMATS,
    decode_image,
    encode_image,
    encode_video,
)

FPS = 8
N_FRAMES = 6


def blocky(shape: tuple[int, ...], seed: int = 0, block: int = 16) -> np.ndarray:
    """Random uint8 colours in block x block squares.

    Lossy codecs smear per-pixel noise, so blocks keep error bounds tight while every
    frame still differs (Pillow merges identical consecutive GIF frames).
    """
    *lead, h, w, c = shape
    small_shape = (*lead, -(-h // block), -(-w // block), c)
    small = np.random.default_rng(seed).integers(0, 256, small_shape, dtype=np.uint8)
    big = small.repeat(block, axis=-3).repeat(block, axis=-2)
    return np.ascontiguousarray(big[..., :h, :w, :])


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(("fmt", "max_error"), [("png", 0.0), ("jpeg", 6.0), ("webp", 6.0)])
def test_encode_image_round_trip(fmt: str, max_error: float) -> None:
    image = blocky((48, 64, 3))
    decoded = decode_image(encode_image(image, fmt))
    assert decoded.size == (64, 48)
    assert Image.MIME[decoded.format] == IMAGE_FORMATS[fmt]
    assert mean_abs_error(np.asarray(decoded.convert("RGB")), image) <= max_error


def test_png_round_trips_per_pixel_noise_exactly() -> None:
    image = np.random.default_rng(1).integers(0, 256, (47, 63, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(decode_image(encode_image(image, "png"))), image)


def test_mp4_is_h264_faststart_with_all_frames() -> None:
    frames = blocky((N_FRAMES, 48, 64, 3))
    data = encode_video(frames, FPS, "mp4")
    assert data[4:8] == b"ftyp"
    # +faststart: the index (moov) precedes the media data so playback can start early.
    assert data.index(b"moov") < data.index(b"mdat")
    meta, decoded = read_mp4(data)
    assert meta["codec"].startswith("h264")
    assert meta["fps"] == FPS
    assert meta["size"] == (64, 48)
    assert decoded.shape == frames.shape
    assert mean_abs_error(decoded, frames) < 6


def test_mp4_pads_odd_size_with_edge_pixels() -> None:
    frames = blocky((N_FRAMES, 47, 63, 3))
    meta, decoded = read_mp4(encode_video(frames, FPS, "mp4"))
    assert meta["size"] == (64, 48)
    assert len(decoded) == N_FRAMES
    assert mean_abs_error(decoded[:, :47, :63], frames) < 6
    # Edge padding repeats the last row/column instead of adding a black border.
    assert mean_abs_error(decoded[:, 47, :63], frames[:, 46]) < 10
    assert mean_abs_error(decoded[:, :47, 63], frames[:, :, 62]) < 10


@pytest.mark.parametrize(("fmt", "max_error"), [("gif", 0.0), ("webp", 6.0)])
def test_animated_round_trip(fmt: str, max_error: float) -> None:
    frames = blocky((N_FRAMES, 48, 64, 3))
    decoded = decode_image(encode_video(frames, FPS, fmt))
    assert Image.MIME[decoded.format] == VIDEO_FORMATS[fmt]
    assert decoded.size == (64, 48)
    assert decoded.n_frames == N_FRAMES
    assert decoded.info["loop"] == 0
    for i in range(N_FRAMES):
        decoded.seek(i)
        decoded.load()
        # GIF can only store whole 10 ms units: 1000 / 8 = 125 ms becomes 120 or 130.
        assert abs(decoded.info["duration"] - 1000 / FPS) <= 5
        assert mean_abs_error(np.asarray(decoded.convert("RGB")), frames[i]) <= max_error


@pytest.mark.parametrize(
    ("fmt", "fps", "expected_ms"),
    [
        ("gif", 7, [140] * N_FRAMES),  # 142.9 ms in GIF's 10 ms units
        ("gif", 6, [170] * N_FRAMES),  # 166.7 ms rounds up (Pillow alone truncates)
        ("gif", 100, [20] * N_FRAMES),  # capped: browsers slow down delays <= 10 ms
        # WebP rounds cumulative timestamps: 0, 143, 286, 429, 571, 714, 857 ms.
        ("webp", 7, [143, 143, 143, 142, 143, 143]),
    ],
)
def test_frame_durations(fmt: str, fps: int, expected_ms: list[int]) -> None:
    decoded = decode_image(encode_video(blocky((N_FRAMES, 16, 16, 3), block=4), fps, fmt))
    durations = []
    for i in range(decoded.n_frames):
        decoded.seek(i)
        decoded.load()
        durations.append(decoded.info["duration"])
    assert durations == expected_ms


@pytest.mark.parametrize(
    ("encode", "fmt"),
    [
        (lambda fmt: encode_image(blocky((8, 8, 3)), fmt), "gif"),
        (lambda fmt: encode_image(blocky((8, 8, 3)), fmt), "PNG"),
        (lambda fmt: encode_video(blocky((2, 8, 8, 3)), FPS, fmt), "avi"),
    ],
)
def test_unknown_format_is_rejected(encode: Callable[[str], bytes], fmt: str) -> None:
    with pytest.raises(ValueError, match=f"'{fmt}'"):
        encode(fmt)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((1, 8, 8, 3), np.uint8),
    ],
)
def test_encode_image_rejects_non_rgb_uint8(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_image(image, "png")


@pytest.mark.parametrize(
    ("frames", "fps"),
    [
        (np.zeros((8, 8, 3), np.uint8), FPS),
        (np.zeros((0, 8, 8, 3), np.uint8), FPS),
        (np.zeros((2, 8, 8, 3), np.uint8), 0),
    ],
)
@pytest.mark.parametrize("fmt", sorted(VIDEO_FORMATS))
def test_encode_video_rejects_bad_input(frames: np.ndarray, fps: int, fmt: str) -> None:
    with pytest.raises(ValueError, match=r"uint8 RGB|fps > 0"):
        encode_video(frames, fps, fmt)
