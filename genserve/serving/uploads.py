"""Checking uploaded images before any model sees them.

A bad upload must be a 4xx that names the field, never a crash in a generator: so the
file's size, format and claimed pixel count are checked before it is decoded, and then it
is decoded fully once (a truncated file fails here, not mid-batch).
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from genserve.core.presets import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE, UPLOAD_FORMATS


class UploadError(ValueError):
    """An upload that cannot be used; `status` is the HTTP status it deserves."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def check_image_upload(data: bytes, field: str = "image") -> bytes:
    """Return `data` if it is a usable PNG/JPEG/WebP image, else raise `UploadError`."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(field, f"{field} is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", status=413)
    if not data:
        raise UploadError(field, f"{field} is empty")
    too_large = f"{field} has more than {MAX_UPLOAD_PIXELS} pixels"
    try:
        image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise UploadError(field, f"{field} is not a {'/'.join(UPLOAD_FORMATS)} image") from None
    except Image.DecompressionBombError:  # Pillow's own, far larger bound
        raise UploadError(field, too_large, status=413) from None
    with image:
        width, height = image.size
        if width * height > MAX_UPLOAD_PIXELS:
            raise UploadError(field, f"{too_large}: it is {width}x{height}", status=413)
        if min(width, height) < MIN_UPLOAD_SIDE:
            raise UploadError(field, f"{field} is {width}x{height}: sides must be at least {MIN_UPLOAD_SIDE}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise UploadError(field, f"{field} could not be decoded: {error}") from None
    return data
