"""A corpus of bad requests: each gets a 4xx whose JSON names the problem, and the service stays healthy.

Each case is one line: the request, the status it deserves, and the field its error must name
in `detail[].loc` (or, where no single field is to blame, words its message must contain).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from decoding import read_image
from PIL import Image

from genserve.core.media import encode_image
from genserve.core.presets import MAX_BODY_BYTES, MAX_PROMPT_CHARS

TIMEOUT = 120
TOO_LONG = "x" * (MAX_PROMPT_CHARS + 1)
OVERSIZED = b"x" * (MAX_BODY_BYTES + 1)


def png(width: int = 80, height: int = 64) -> bytes:
    return encode_image(np.full((height, width, 3), 90, np.uint8), "png")


def png_claiming(width: int, height: int) -> bytes:
    """A valid, tiny PNG file whose header claims `width`x`height` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def gif() -> bytes:
    with Image.new("RGB", (64, 64)) as image, io.BytesIO() as out:
        image.save(out, "GIF")
        return out.getvalue()


def body(value: object) -> dict:
    return {"json": value}


def raw(data: bytes, content_type: str = "application/json") -> dict:
    return {"content": data, "headers": {"content-type": content_type}}


class OverLimit:
    """`prefix`, then filler to one byte over the body limit, sent in 1 MiB chunks without a
    Content-Length: the size is known only once it has arrived."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def __iter__(self) -> Iterator[bytes]:
        yield self.prefix
        left = MAX_BODY_BYTES + 1 - len(self.prefix)
        while left > 0:
            yield b"x" * min(2**20, left)
            left -= 2**20


def streamed(prefix: bytes, content_type: str = "application/json") -> dict:
    return {"content": OverLimit(prefix), "headers": {"content-type": content_type}}


def upload(image: bytes, mime: str = "image/png", **fields: str) -> dict:
    return {"files": {"image": ("upload", image, mime)}, "data": fields}


def edit(image: bytes, mask: bytes | None = None, **fields: str) -> dict:
    """An /inpaint (or, without mask, /img2img) upload."""
    files = {"image": ("upload", image, "image/png")}
    if mask is not None:
        files["mask"] = ("mask", mask, "image/png")
    return {"files": files, "data": {"prompt": "a cat", **fields}}


def form(**fields: str) -> dict:
    return {"data": fields}


MULTIPART = "multipart/form-data; boundary=XyZ"


def binary_part(name: str) -> dict:
    """A multipart body whose one part, `name`, holds bytes that are not UTF-8 text."""
    part = f'--XyZ\r\nContent-Disposition: form-data; name="{name}"; filename="f"\r\n\r\n'.encode()
    return raw(part + b"\x89PNG\xff\xfe\x00\r\n--XyZ--\r\n", MULTIPART)


#: Per endpoint: (case, request, status, the field named, or words in the message).
CORPUS = {
    "POST /txt2img": [
        ("width text", body({"prompt": "cat", "width": "wide"}), 400, "width", None),
        ("width not x16", body({"prompt": "cat", "width": 100}), 400, "width", None),
        ("height too big", body({"prompt": "cat", "height": 4096}), 400, "height", None),
        ("width too small", body({"prompt": "cat", "width": 32}), 400, "width", None),
        ("width null", body({"prompt": "cat", "width": None}), 400, "width", None),
        ("width object", body({"prompt": "cat", "width": {"px": 64}}), 400, "width", None),
        ("steps 0", body({"prompt": "cat", "num_inference_steps": 0}), 400, "num_inference_steps", None),
        ("steps 2.5", body({"prompt": "cat", "num_inference_steps": 2.5}), 400, "num_inference_steps", None),
        ("guidance text", body({"prompt": "cat", "guidance_scale": "lots"}), 400, "guidance_scale", None),
        ("guidance NaN", raw(b'{"prompt": "cat", "guidance_scale": NaN}'), 400, "guidance_scale", None),
        ("seed negative", body({"prompt": "cat", "seed": -1}), 400, "seed", None),
        ("seed 2**64", body({"prompt": "cat", "seed": 2**64}), 400, "seed", None),
        ("format bmp", body({"prompt": "cat", "output_format": "bmp"}), 400, "output_format", None),
        ("prompt empty", body({"prompt": ""}), 400, "prompt", None),
        ("prompt blank", body({"prompt": " \t\n"}), 400, "prompt", None),
        ("prompt too long", body({"prompt": TOO_LONG}), 400, "prompt", None),
        ("prompt 1 MiB", body({"prompt": "x" * 2**20}), 400, "prompt", None),
        ("negative long", body({"prompt": "cat", "negative_prompt": TOO_LONG}), 400, "negative_prompt", None),
        ("prompt number", body({"prompt": 42}), 400, "prompt", None),
        ("prompt null", body({"prompt": None}), 400, "prompt", None),
        ("prompt array", body({"prompt": ["cat"]}), 400, "prompt", None),
        ("prompt missing", body({}), 400, "prompt", None),
        ("unknown field", body({"prompt": "cat", "colour": "red"}), 400, "colour", None),
        ("array body", body(["cat"]), 400, None, "object"),
        ("string body", body("cat"), 400, None, "object"),
        ("invalid JSON", raw(b'{"prompt": "cat"'), 400, None, "json"),
        ("JSON too deep", raw(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400, None, "json"),
        ("empty body", raw(b""), 400, "prompt", None),
        ("image body", raw(png(), "image/png"), 400, None, "json"),
        ("body too large", raw(OVERSIZED), 413, None, "larger than"),
        ("streamed too large", streamed(b'{"prompt": "'), 413, None, "larger than"),
        ("multipart no boundary", raw(b"prompt=cat", "multipart/form-data"), 400, None, "multipart"),
        ("binary form field", binary_part("prompt"), 400, "prompt", None),
    ],
    "POST /img2vid": [
        ("text file", upload(b"just some text", "text/plain"), 400, "image", None),
        ("truncated PNG", upload(png()[:60]), 400, "image", None),
        ("claims 20000x20000", upload(png_claiming(20000, 20000)), 413, "image", None),
        ("1x1 image", upload(png(1, 1)), 400, "image", None),
        ("empty file", upload(b""), 400, "image", None),
        ("GIF", upload(gif(), "image/gif"), 400, "image", None),
        ("image missing", form(num_frames="4"), 400, "image", None),
        ("JSON body", body({"image": "aGVsbG8=", "num_frames": 4}), 400, "image", None),
        ("frames 1", upload(png(), num_frames="1"), 400, "num_frames", None),
        ("frames text", upload(png(), num_frames="many"), 400, "num_frames", None),
        ("fps 0", upload(png(), fps="0"), 400, "fps", None),
        ("motion 256", upload(png(), motion_bucket_id="256"), 400, "motion_bucket_id", None),
        ("noise 2", upload(png(), noise_aug_strength="2"), 400, "noise_aug_strength", None),
        ("format avi", upload(png(), output_format="avi"), 400, "output_format", None),
        ("unknown field", upload(png(), speed="fast"), 400, "speed", None),
        ("image as URL", form(image="http://127.0.0.1:9/cat.png"), 400, "image", None),
        ("binary form field", binary_part("num_frames"), 400, "num_frames", None),
        ("part without headers", raw(b"--XyZ\r\nTrue--XyZ--\r\n", MULTIPART), 400, None, "multipart"),
        ("streamed too large", streamed(b"--XyZ\r\n", MULTIPART), 413, None, "larger than"),
    ],
    "POST /img2img": [
        ("strength 0", edit(png(64), strength="0"), 400, "strength", None),
        ("strength 1.5", edit(png(64), strength="1.5"), 400, "strength", None),
        ("strength text", edit(png(64), strength="half"), 400, "strength", None),
        ("prompt missing", upload(png(64)), 400, "prompt", None),
        ("steps 0", edit(png(64), num_inference_steps="0"), 400, "num_inference_steps", None),
        ("image missing", form(prompt="a cat"), 400, "image", None),
        ("image not x16", edit(png(72, 64)), 400, "image", "multiples of 16"),
        ("image too large", edit(png(512, 512)), 400, "image", "256x256"),
        ("image too small", edit(png(32, 32)), 400, "image", "64x64"),
        ("truncated PNG", edit(png(64)[:60]), 400, "image", None),
        ("claims 20000x20000", edit(png_claiming(20000, 20000)), 413, "image", None),
        ("unknown field", edit(png(64), denoise="0.5"), 400, "denoise", None),
    ],
    "POST /inpaint": [
        ("mask missing", edit(png(64)), 400, "mask", None),
        ("mask size", edit(png(64), png(80)), 400, "mask", "80x64"),
        ("mask text", edit(png(64), b"white here"), 400, "mask", None),
        ("mask empty", edit(png(64), b""), 400, "mask", None),
        ("image not x16", edit(png(80, 50), png(80, 50)), 400, "image", None),
        ("strength 0", edit(png(64), png(64), strength="0"), 400, "strength", None),
    ],
    "POST /txt2vid/submit": [
        ("frames 1000", body({"prompt": "cat", "num_frames": 1000}), 400, "num_frames", None),
        ("image steps 0", body({"prompt": "cat", "image_steps": 0}), 400, "image_steps", None),
        ("guidance text", body({"prompt": "cat", "guidance_scale": "x"}), 400, "guidance_scale", None),
        ("seed 2**32", body({"prompt": "cat", "seed": 2**32}), 400, "seed", None),
        ("prompt null", body({"prompt": None}), 400, "prompt", None),
        ("prompt missing", body({}), 400, "prompt", None),
        ("unknown field", body({"prompt": "cat", "style": "noir"}), 400, "style", None),
        ("array body", body([1, 2]), 400, None, "object"),
        ("invalid JSON", raw(b"{not json"), 400, None, "json"),
        ("form body", form(prompt="cat"), 400, None, "json"),
        ("body too large", raw(OVERSIZED), 413, None, "larger than"),
    ],
    "GET /txt2vid/status": [
        ("task_id missing", {}, 400, "task_id", None),
        ("malformed task", {"params": {"task_id": "no-such-job"}}, 400, "task_id", None),
        ("unknown task", {"params": {"task_id": "0" * 32}}, 404, "task_id", None),
    ],
    "GET /txt2vid/get": [
        ("unknown task", {"params": {"task_id": "0" * 32}}, 404, "task_id", None),
    ],
    "PUT /txt2vid/cancel": [
        ("unknown task", {"params": {"task_id": "0" * 32}}, 404, "task_id", None),
    ],
    "POST /txt2vid/retry": [
        ("task_id missing", {}, 400, "task_id", None),
    ],
    "GET /no-such-path": [("unknown path", {}, 404, None, "/no-such-path")],
    "POST /no-such-path": [
        ("unknown path, JSON", body({"prompt": "cat"}), 404, None, "/no-such-path"),
        ("unknown path, upload", upload(png()), 404, None, "/no-such-path"),
    ],
}
CASES = [
    pytest.param(target, *case, id=f"{target} {name}")
    for target, cases in CORPUS.items()
    for name, *case in cases
]


def problem(response: httpx.Response) -> tuple[list[str], str]:
    """The fields an error names (`detail[].loc`) and all its message text, lower-cased."""
    error = response.json()
    details = error.get("detail", [])
    fields = [".".join(str(part) for part in item["loc"]) for item in details]
    text = " ".join([error["error"], *(item["msg"] for item in details)]).lower()
    return fields, text


@pytest.mark.parametrize(("target", "request_", "status", "field", "words"), CASES)
def test_bad_request_is_a_4xx_naming_the_problem(server, target, request_, status, field, words) -> None:
    method, path = target.split()
    response = httpx.request(method, f"{server}{path}", timeout=TIMEOUT, **request_)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json", response.text[:500]
    fields, text = problem(response)
    assert field is None or field in fields, response.text[:500]
    assert words is None or words in text, response.text[:500]


def test_service_is_healthy_and_serves_after_the_corpus(server) -> None:
    assert httpx.get(f"{server}/readyz", timeout=TIMEOUT).status_code == 200
    response = httpx.post(f"{server}/txt2img", json={"prompt": "a calm lake", "seed": 3}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert read_image(response.content)[0] == "image/png"
