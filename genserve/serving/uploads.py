"""Checking uploaded images before any model sees them.

A bad upload must be a 4xx that names the field, never a crash in a generator: so the
file's size, format and claimed pixel count are checked before it is decoded, and then it
is decoded fully once (a truncated file fails here, not mid-batch).
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from genserve.core.presets import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    MIN_UPLOAD_SIDE,
    SIZE_MULTIPLE,
    UPLOAD_FORMATS,
    ImagePreset,
)
from genserve.core.schemas import MIN_SIZE, EditJob, EditRequest


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


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of an image that `check_image_upload` accepted."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def check_edit(image: bytes, mask: bytes | None, request: EditRequest, preset: ImagePreset) -> EditJob:
    """An edit the image generator can run, else `UploadError`: both files usable, the image at
    a size the preset makes (results keep it), the mask the image's size."""
    check_image_upload(image, "image")
    width, height = image_size(image)
    size = f"image is {width}x{height}"
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        fits = f"{width // SIZE_MULTIPLE * SIZE_MULTIPLE}x{height // SIZE_MULTIPLE * SIZE_MULTIPLE}"
        raise UploadError("image", f"{size}: its sides must be multiples of {SIZE_MULTIPLE} (e.g. {fits})")
    if not (MIN_SIZE <= width <= preset.max_width and MIN_SIZE <= height <= preset.max_height):
        limits = f"from {MIN_SIZE}x{MIN_SIZE} to {preset.max_width}x{preset.max_height}"
        raise UploadError("image", f"{size}: the {preset.name} model edits images {limits}")
    if mask is not None:
        check_image_upload(mask, "mask")
        if (mask_size := image_size(mask)) != (width, height):
            mask_width, mask_height = mask_size
            message = f"mask is {mask_width}x{mask_height} but image is {width}x{height}: they must match"
            raise UploadError("mask", message)
    return EditJob(image=image, mask=mask, request=request)
