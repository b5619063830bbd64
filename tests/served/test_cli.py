"""The `genserve` command run as a user runs it: a subprocess against a real server (every
generating command a job of /jobs), files decoded, progress read from stderr."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from decoding import read_image, read_video
from helpers import half_mask
from PIL import Image

from genserve.serving.processes import free_port

SAVED = re.compile(r"saved (?P<path>.+) \(seed (?P<seed>\d+)\)")


CLI = [sys.executable, "-m", "genserve.clients.cli"]


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without the developer's GENSERVE_* leaking in, plus `env`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")} | (env or {})


def genserve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a clean environment."""
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=180
    )


def followed(result: subprocess.CompletedProcess, kind: str) -> str:
    """The id of the job the CLI ran, after checking that it drew its progress up to 100 % (in a
    log, as sparse lines: one per state, stage and quarter) and then said it was done."""
    stderr = result.stderr
    job_id = re.search(rf"^{kind}: job ([0-9a-f]{{32}})$", stderr, re.MULTILINE)
    assert job_id, stderr
    bars = re.findall(rf"^{kind}: \[[#.]{{20}}\] (.*)$", stderr, re.MULTILINE)
    assert len(bars) <= 12, stderr  # sparse: not a line per poll
    assert re.fullmatch(r"completed, (image|video) (\d+)/\2 steps, 100 %", bars[-1]), stderr
    assert f"{kind}: done in" in stderr
    return job_id[1]


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
    assert "completed, image 2/2 steps, 100 %" in result.stderr
    followed(result, "txt2img")


@pytest.mark.slow
def test_img2vid_animates_an_image_into_an_mp4(server, settings, cat_png, tmp_path):
    image, _ = cat_png
    args = ["--url", server, "img2vid", str(image), "-o", "cat.mp4", "--frames", "3", "--steps", "2"]
    result = genserve(*args, "--seed", "7", cwd=tmp_path)
    assert saved(result, tmp_path) == (tmp_path / "cat.mp4", 7)
    frames, _ = read_video((tmp_path / "cat.mp4").read_bytes(), "mp4")
    assert frames.shape == (3, settings.video.preset.height, settings.video.preset.width, 3)
    assert "completed, video 2/2 steps, 100 %" in result.stderr
    followed(result, "img2vid")


@pytest.mark.slow
def test_txt2vid_runs_as_a_job_and_saves_a_gif(server, settings, tmp_path):
    args = ["--url", server, "txt2vid", "a red cat", "-o", "cat.gif"]
    result = genserve(*args, "--frames", "3", "--steps", "2", "--image-steps", "2", cwd=tmp_path)
    path, seed = saved(result, tmp_path)
    frames, _ = read_video(path.read_bytes(), "gif")
    assert frames.shape == (3, settings.video.preset.height, settings.video.preset.width, 3)
    job_id = followed(result, "txt2vid")
    job = httpx.get(f"{server}/jobs/{job_id}", timeout=10).json()
    assert (job["kind"], job["state"], job["seed"]) == ("txt2vid", "completed", seed)
    assert "completed, video 2/2 steps, 100 %" in result.stderr


def test_ctrl_c_cancels_the_job_on_the_server_and_exits_130(server, tmp_path):
    """A long job (a few seconds on the tiny preset: the most frames and steps it takes)."""
    args = ["--url", server, "txt2vid", "a red cat", "-o", "cat.gif", "--frames", "16", "--steps", "25"]
    # Ctrl-C in a terminal; a test suite started in the background may ignore SIGINT, and a child
    # would inherit that, where a user's shell gives it the default (Python's KeyboardInterrupt).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli = subprocess.Popen(
            [*CLI, *args, "--image-steps", "50"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    first = cli.stderr.readline()
    job_id = re.fullmatch(r"txt2vid: job ([0-9a-f]{32})\n", first)
    assert job_id, first + cli.communicate(timeout=60)[1]
    assert "txt2vid: [" in cli.stderr.readline()  # its first progress line: the CLI follows the job
    cli.send_signal(signal.SIGINT)
    stdout, stderr = cli.communicate(timeout=60)
    assert cli.returncode == 130, stderr
    assert f"txt2vid: cancelled job {job_id[1]} on the server" in stderr
    assert "Traceback" not in stderr and not stdout
    assert httpx.get(f"{server}/jobs/{job_id[1]}", timeout=10).json()["state"] == "cancelled"
    assert not (tmp_path / "cat.gif").exists()


def test_on_a_terminal_the_bar_is_one_line_redrawn(server, tmp_path):
    leader, follower = pty.openpty()
    args = ["--url", server, "txt2img", "a red cat", "-o", "cat.png", "--steps", "20"]
    terminal = dict(stdout=subprocess.DEVNULL, stderr=follower)
    with subprocess.Popen([*CLI, *args], cwd=tmp_path, env=clean_env(), **terminal) as cli:
        os.close(follower)
        output = b""
        while chunk := read_terminal(leader):
            output += chunk
    os.close(leader)
    assert cli.returncode == 0
    job_line, bar_line, end = output.decode().split("\r\n")  # the terminal's newlines
    assert re.fullmatch(r"txt2img: job [0-9a-f]{32}", job_line)
    *redraws, done = bar_line.split("\r\x1b[K")  # back to the line's start, erased
    assert re.fullmatch(r"txt2img: done in \d+\.\d s", done) and not end
    assert redraws[0] == "" and "completed, image 20/20 steps, 100 %" in redraws[-1]


def read_terminal(leader: int) -> bytes:
    """What the CLI wrote to its terminal since the last read; b"" once it has closed it."""
    try:
        return os.read(leader, 4096)
    except OSError:  # EIO: no process has the terminal open any more
        return b""


def edit(server: str, image: Path, command: str, output: str, *options: str, cwd: Path) -> np.ndarray:
    """Run an edit command on `image` with a fixed seed; the pixels it saved, of the image's size."""
    args = ["--url", server, command, str(image), "a blue cat", "-o", output, *options]
    result = genserve(*args, "--steps", "2", "--negative", "blur", "--seed", "5", cwd=cwd)
    assert saved(result, cwd) == (cwd / output, 5)
    followed(result, command)
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

    seen: list[tuple[str, dict, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, dict(self.headers), body))
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
    [(path, headers, body)] = Busy.seen
    assert path == "/jobs/txt2img"
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
    [(path, headers, body)] = Busy.seen
    assert path == "/jobs/inpaint"
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
