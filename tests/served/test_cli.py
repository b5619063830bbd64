"""The `genserve` command run as a user runs it: a subprocess against a real server, files decoded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from decoding import read_image, read_video
from helpers import half_mask
from PIL import Image

from genserve.serving.processes import free_port

SAVED = re.compile(r"saved (?P<path>.+) \(seed (?P<seed>\d+)\)")


def genserve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a clean environment (no GENSERVE_* of the developer's leaking in)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "genserve.clients.cli", *args],
        cwd=cwd,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=180,
    )


def saved(result: subprocess.CompletedProcess, cwd: Path) -> tuple[Path, int]:
    """The file and seed the CLI reported, after checking it succeeded."""
    assert result.returncode == 0, result.stderr
    match = SAVED.search(result.stdout)
    assert match, result.stdout
    return cwd / match["path"], int(match["seed"])


@pytest.fixture(scope="module")
def cat_png(server, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One small image made through the CLI, checked by one test and animated by another."""
    cwd = tmp_path_factory.mktemp("cli")
    args = ["--url", server, "txt2img", "a red cat", "-o", "cat.png"]
    result = genserve(*args, "--width", "96", "--height", "64", "--steps", "2", "--seed", "42", cwd=cwd)
    return cwd / "cat.png", result


def test_txt2img_writes_the_requested_image_and_reports_the_seed(cat_png):
    path, result = cat_png
    assert saved(result, path.parent) == (path, 42)
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (96, 64))
    assert "txt2img: done in" in result.stderr


@pytest.mark.slow
def test_img2vid_animates_an_image_into_an_mp4(server, cat_png, tmp_path):
    image, _ = cat_png
    args = ["--url", server, "img2vid", str(image), "-o", "cat.mp4", "--frames", "3", "--steps", "2"]
    path, seed = saved(genserve(*args, "--seed", "7", cwd=tmp_path), tmp_path)
    assert (path, seed) == (tmp_path / "cat.mp4", 7)
    frames, _ = read_video(path.read_bytes(), "mp4")
    assert frames.shape[0] == 3


@pytest.mark.slow
def test_txt2vid_polls_the_task_and_downloads_a_gif(server, tmp_path):
    args = ["--url", server, "txt2vid", "a red cat", "-o", "cat.gif"]
    result = genserve(*args, "--frames", "3", "--steps", "2", "--image-steps", "2", cwd=tmp_path)
    path, _ = saved(result, tmp_path)
    frames, _ = read_video(path.read_bytes(), "gif")
    assert frames.shape[0] == 3
    assert "txt2vid: task " in result.stderr
    assert "txt2vid: completed" in result.stderr


def edit(server: str, image: Path, command: str, output: str, *options: str, cwd: Path) -> np.ndarray:
    """Run an edit command on `image` with a fixed seed; the pixels it saved, of the image's size."""
    args = ["--url", server, command, str(image), "a blue cat", "-o", output, *options]
    result = genserve(*args, "--steps", "2", "--negative", "blur", "--seed", "5", cwd=cwd)
    assert saved(result, cwd) == (cwd / output, 5)
    assert f"{command}: done in" in result.stderr
    mime, pixels = read_image((cwd / output).read_bytes())
    assert (mime, pixels.shape) == (f"image/{Path(output).suffix[1:]}", (64, 96, 3))
    return pixels


def test_img2img_writes_an_image_of_the_inputs_size(server, cat_png, tmp_path):
    edit(server, cat_png[0], "img2img", "edit.webp", "--strength", "0.6", cwd=tmp_path)


def test_inpaint_repaints_only_the_masked_half(server, cat_png, tmp_path):
    image, _ = cat_png
    (tmp_path / "mask.png").write_bytes(half_mask(96, 64))
    pixels = edit(server, image, "inpaint", "edit.png", "--mask", "mask.png", "--strength", "1", cwd=tmp_path)
    original = read_image(image.read_bytes())[1]
    assert (pixels[:, :48] == original[:, :48]).all()  # black: kept exactly
    assert (pixels[:, 48:] != original[:, 48:]).any()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["img2img", "--strength", "0"], "strength (--strength)"),
        (["inpaint", "--mask", "small.png"], "mask"),  # not the image's size
        (["inpaint", "--mask", "notes.txt"], "mask"),  # not an image
    ],
)
def test_a_refused_edit_exits_2_naming_the_field(server, cat_png, tmp_path, options, named):
    (tmp_path / "small.png").write_bytes(half_mask(64, 64))
    (tmp_path / "notes.txt").write_text("not an image")
    command, *rest = options
    result = genserve(
        "--url", server, command, str(cat_png[0]), "a blue cat", "-o", "edit.png", *rest, cwd=tmp_path
    )
    assert result.returncode == 2
    assert re.search(rf"^  {re.escape(named)}: \S", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "edit.png").exists()


def test_inpaint_needs_a_mask_and_a_readable_one(tmp_path):
    args = ["--url", "http://127.0.0.1:1", "inpaint", "cat.png", "a hat", "-o", "hat.png"]
    result = genserve(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "--mask" in result.stderr
    (tmp_path / "cat.png").write_bytes(half_mask(96, 64))
    result = genserve(*args, "--mask", "missing.png", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot read missing.png" in result.stderr


def test_an_invalid_value_exits_2_naming_the_field(server, tmp_path):
    args = ["--url", server, "txt2img", "a red cat", "-o", "cat.png", "--width", "100"]
    result = genserve(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "width (--width): Input should be a multiple of 16" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cat.png").exists()


def test_an_unreachable_server_exits_1(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = genserve("--url", url, "models", cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot reach {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_output_extension_needs_format(tmp_path):
    result = genserve("--url", "http://127.0.0.1:1", "txt2img", "a cat", "-o", "cat.bmp", cwd=tmp_path)
    assert result.returncode == 2
    assert "--format" in result.stderr


class Busy(BaseHTTPRequestHandler):
    """A server that records each request and answers 429 like genserve's busy generators."""

    seen: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:
        self.seen.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        answer = json.dumps({"error": "generators are busy or loading; retry later"}).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "5")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[str]:
    """A Busy server with nothing seen yet; yields its URL."""
    Busy.seen.clear()
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{stub.server_port}"
    finally:
        stub.shutdown()
        stub.server_close()


def test_env_defaults_api_key_only_given_fields_and_busy(busy, tmp_path):
    """What the tiny server cannot show: the Bearer key, the env defaults, and a 429 with Retry-After."""
    env = {"GENSERVE_URL": busy, "GENSERVE_API_KEY": "s3cret"}
    result = genserve("txt2img", "a red cat", "-o", "cat.webp", "--seed", "1", cwd=tmp_path, env=env)
    [(headers, body)] = Busy.seen
    assert headers["Authorization"] == "Bearer s3cret"
    assert json.loads(body) == {"prompt": "a red cat", "seed": 1, "output_format": "webp"}
    assert result.returncode == 1  # busy is not the request's fault: retrying may work
    assert "generators are busy" in result.stderr
    assert "retry after 5 s" in result.stderr


def test_inpaint_sends_both_files_and_only_the_given_fields(busy, tmp_path):
    (tmp_path / "cat.png").write_bytes(b"the image")
    (tmp_path / "hat.png").write_bytes(b"the mask")
    args = [
        "--url",
        busy,
        "inpaint",
        "cat.png",
        "a hat",
        "--mask",
        "hat.png",
        "-o",
        "out.jpg",
        "--strength",
        "0.5",
    ]
    assert genserve(*args, cwd=tmp_path).returncode == 1
    [(headers, body)] = Busy.seen
    form = BytesParser().parsebytes(f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    parts = {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in form.get_payload()
    }
    assert parts == {
        "prompt": b"a hat",
        "strength": b"0.5",
        "output_format": b"jpeg",
        "image": b"the image",
        "mask": b"the mask",
    }
