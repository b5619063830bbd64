"""`genserve`: a command-line client for a running genserve, so nobody has to hand-write curl calls.

    genserve txt2img "a red cat" -o cat.png --seed 42
    genserve img2vid cat.png -o cat.mp4 --frames 14
    genserve img2img cat.png "a red cat in the snow" -o snow.png --strength 0.6
    genserve inpaint cat.png "a hat" --mask hat.png -o hat.png
    genserve txt2vid "a red cat" -o cat.gif
    genserve models

Only the options given are sent, so the server's preset defaults apply to the rest; the
server also checks every value, so its error (naming the field) is what a user sees.
Exit status: 0 on success, 2 when the request was refused as invalid (like a usage error),
1 for everything else (server unreachable, busy, or failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TextIO, get_args

import httpx

from genserve.clients.api import (
    CONNECT_TIMEOUT_S,
    DEFAULT_API_URL,
    JobTimeout,
    api_key,
    api_url,
    parse_error,
    wait_for_job,
)
from genserve.core.protocol import DEFAULT_TIMEOUT_S, SEED_HEADER
from genserve.core.schemas import ImageFormat, VideoFormat

IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
VIDEO_FORMATS: tuple[str, ...] = get_args(VideoFormat)
EXTENSIONS = {"image": {".jpg": "jpeg"}, "video": {}}  # beyond ".<format>" itself
CLEAR_LINE = "\r\x1b[K"  # back to the line's start and erase it, so a shorter redraw leaves no tail


class CLIError(Exception):
    """An expected failure: reported in one message and an exit status, never a traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Option(NamedTuple):
    """A command-line option that maps one-to-one onto a request field of the API."""

    flag: str
    field: str
    type: type
    help: str


NEGATIVE = Option("--negative-prompt", "negative_prompt", str, "what to steer away from")
GUIDANCE = Option("--guidance", "guidance_scale", float, "classifier-free guidance scale")
SEED = Option("--seed", "seed", int, "random seed (default: the server picks one and reports it)")
IMAGE_STEPS = Option("--steps", "num_inference_steps", int, "denoising steps")
IMAGE_OPTIONS = [
    NEGATIVE,
    Option("--width", "width", int, "image width in pixels (a multiple of 16)"),
    Option("--height", "height", int, "image height in pixels (a multiple of 16)"),
    IMAGE_STEPS,
    GUIDANCE,
    SEED,
]
#: img2img and inpaint: the result has the input's size, so no --width/--height.
EDIT_OPTIONS = [
    NEGATIVE,
    Option("--strength", "strength", float, "how much to change, above 0 up to 1 (1 redraws it all)"),
    IMAGE_STEPS,
    GUIDANCE,
    SEED,
]
VIDEO_OPTIONS = [
    Option("--frames", "num_frames", int, "number of frames"),
    Option("--fps", "fps", int, "frames per second of the video file"),
    Option("--motion", "motion_bucket_id", int, "motion bucket id, 0-255: more means more motion"),
    Option("--noise-aug", "noise_aug_strength", float, "noise added to the still, 0-1"),
    Option("--steps", "num_inference_steps", int, "denoising steps of the video model"),
    SEED,
]
TEXT_TO_VIDEO_OPTIONS = [
    NEGATIVE,
    Option("--image-steps", "image_steps", int, "denoising steps of the first-stage image"),
    GUIDANCE,
    *VIDEO_OPTIONS,
]


class Progress:
    """Elapsed time and status on stderr: generation takes seconds to minutes, and silence looks hung.

    On a terminal one line is redrawn in place; in a log (not a terminal) a line is written only
    when the status changes and every 10 s, so a long job does not flood it.
    """

    LOG_EVERY_S = 10.0

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last_status = ""
        self.next_log = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def show(self, status: str) -> None:
        elapsed = self.elapsed()
        if self.tty:
            self.stream.write(f"{CLEAR_LINE}{self.label}: {status}, {elapsed:.0f} s")
        elif status != self.last_status or elapsed >= self.next_log:
            self.stream.write(f"{self.label}: {status}, {elapsed:.0f} s\n")
            self.next_log = elapsed + self.LOG_EVERY_S
        self.last_status = status
        self.stream.flush()

    def finish(self, outcome: str) -> None:
        start_of_line = CLEAR_LINE if self.tty else ""
        self.stream.write(f"{start_of_line}{self.label}: {outcome} in {self.elapsed():.1f} s\n")
        self.stream.flush()


@contextmanager
def ticking(progress: Progress, status: str) -> Iterator[None]:
    """Redraw `progress` every second from a thread while the main thread blocks on one request."""
    stop = threading.Event()

    def tick() -> None:
        while True:
            progress.show(status)
            if stop.wait(1.0):
                return

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def error_message(response: httpx.Response) -> CLIError:
    """The server's error and the fields it names; 2 when the request itself was refused.

    429 (busy) is a 4xx but not the user's mistake: the same request may succeed later, so it
    gets 1, like 503, and the Retry-After hint is passed on.
    """
    message, fields = parse_error(response.text)
    lines = [f"{response.status_code} {response.reason_phrase}: {message[:500]}"]
    lines += [f"  {field}{option_hint(field)}: {text}" for field, text in fields]
    if retry_after := response.headers.get("Retry-After"):
        lines.append(f"  retry after {retry_after} s")
    refused = 400 <= response.status_code < 500 and response.status_code != 429
    return CLIError("\n".join(lines), code=2 if refused else 1)


def option_hint(field: str) -> str:
    """The command-line flag that sets an API field, since error `loc`s use the API's names."""
    flags = {o.flag for o in IMAGE_OPTIONS + EDIT_OPTIONS + TEXT_TO_VIDEO_OPTIONS if o.field == field}
    return f" ({', '.join(sorted(flags))})" if flags else ""


class Client:
    """The HTTP calls, with transport failures turned into one-line errors."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
        )
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as error:
            raise CLIError(f"cannot reach {self.url}: {error}") from None
        except httpx.TimeoutException:
            message = f"no answer from {self.url}{path} within {self.timeout:g} s (see --timeout)"
            raise CLIError(message) from None
        except httpx.HTTPError as error:
            raise CLIError(f"request to {self.url}{path} failed: {error}") from None
        if response.status_code >= 400:
            raise error_message(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A JSON answer; anything else (a proxy's HTML page, say) is an error, not a traceback."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CLIError(f"{self.url}{path} did not answer JSON: {response.text[:200]!r}") from None


def output_format(args: argparse.Namespace, kind: str, formats: tuple[str, ...]) -> str:
    """--format, else the output file's extension, so `-o cat.gif` gets a GIF, not an MP4 named .gif."""
    if not args.output.parent.is_dir():  # found now, not after minutes of generation
        raise CLIError(f"cannot write {args.output}: {args.output.parent} is not a directory", code=2)
    if args.format:
        return args.format
    extension = args.output.suffix.lower()
    known = {f".{name}": name for name in formats} | EXTENSIONS[kind]
    if extension not in known:
        raise CLIError(
            f"cannot tell the {kind} format from {args.output.name!r}: "
            f"use a {'/'.join(sorted(known))} file name or --format",
            code=2,
        )
    return known[extension]


def request_fields(args: argparse.Namespace, options: list[Option]) -> dict[str, Any]:
    """The fields the user set; the rest are left out so the server's preset defaults apply."""
    values = vars(args)
    return {o.field: values[o.field] for o in options if values.get(o.field) is not None}


def save(response: httpx.Response, path: Path) -> None:
    try:
        path.write_bytes(response.content)
    except OSError as error:
        raise CLIError(f"cannot write {path}: {error.strerror}") from None
    print(f"saved {path} (seed {response.headers.get(SEED_HEADER, 'unknown')})")


def run_sync(client: Client, label: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    progress = Progress(label)
    try:
        with ticking(progress, "generating"):
            response = client.request(method, path, **kwargs)
    except CLIError:
        progress.finish("failed")
        raise
    progress.finish("done")
    return response


def txt2img(client: Client, args: argparse.Namespace) -> None:
    body = request_fields(args, IMAGE_OPTIONS)
    body |= {"prompt": args.prompt, "output_format": output_format(args, "image", IMAGE_FORMATS)}
    save(run_sync(client, "txt2img", "POST", "/txt2img", json=body), args.output)


def post_form(client: Client, args: argparse.Namespace, files: dict[str, Path], form: dict[str, Any]) -> None:
    """POST `files` and `form` as multipart to the endpoint named like the command, and save the result."""
    uploads = {}
    for name, path in files.items():
        try:
            uploads[name] = (path.name, path.read_bytes(), "application/octet-stream")
        except OSError as error:
            raise CLIError(f"cannot read {path}: {error.strerror}", code=2) from None
    data = {name: str(value) for name, value in form.items()}
    response = run_sync(client, args.command, "POST", f"/{args.command}", data=data, files=uploads)
    save(response, args.output)


def img2vid(client: Client, args: argparse.Namespace) -> None:
    form = request_fields(args, VIDEO_OPTIONS)
    form["output_format"] = output_format(args, "video", VIDEO_FORMATS)
    post_form(client, args, {"image": args.image}, form)


def edit_image(client: Client, args: argparse.Namespace) -> None:
    """img2img, or inpaint: the same form, with the mask as one more file."""
    form = {"prompt": args.prompt, **request_fields(args, EDIT_OPTIONS)}
    form["output_format"] = output_format(args, "image", IMAGE_FORMATS)
    files = {"image": args.image} | ({"mask": args.mask} if args.command == "inpaint" else {})
    post_form(client, args, files, form)


def txt2vid(client: Client, args: argparse.Namespace) -> None:
    """Submit a task, poll its status, then download: a video can take longer than a connection lives."""
    body = request_fields(args, TEXT_TO_VIDEO_OPTIONS)
    body |= {"prompt": args.prompt, "output_format": output_format(args, "video", VIDEO_FORMATS)}
    task_id = client.json("POST", "/txt2vid/submit", json=body)["task_id"]
    print(f"txt2vid: task {task_id}", file=sys.stderr)
    progress = Progress("txt2vid")

    async def status() -> str:
        """One status request, off the event loop (this client is synchronous)."""
        reply = await asyncio.to_thread(client.json, "GET", "/txt2vid/status", params={"task_id": task_id})
        return reply["status"]

    def show(now: str, _elapsed_s: float) -> None:
        progress.show(now)

    try:
        status = asyncio.run(wait_for_job(status, client.timeout, on_status=show))
        progress.show(status)
        if status not in ("completed", "failed"):  # canceled: there is no result to get
            raise CLIError(f"task {task_id} ended as {status!r}")
        # A failed task's result is the server's error response, which `request` reports.
        response = client.request("GET", "/txt2vid/get", params={"task_id": task_id})
    except JobTimeout:
        progress.finish("failed")
        raise CLIError(f"task {task_id} did not finish within {client.timeout:g} s (see --timeout)") from None
    except CLIError:
        progress.finish("failed")
        raise
    except KeyboardInterrupt:
        progress.finish("interrupted")
        print(f"txt2vid: task {task_id} keeps running on the server", file=sys.stderr)
        raise
    if status != "completed":  # failed, yet its result was not an error response
        progress.finish("failed")
        raise CLIError(f"task {task_id} failed; see the server log")
    progress.finish("done")
    save(response, args.output)


def models(client: Client, args: argparse.Namespace) -> None:
    print(json.dumps(client.json("GET", "/models"), indent=2))


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    for option in options:
        metavar = option.flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(
            option.flag, dest=option.field, type=option.type, metavar=metavar, help=option.help
        )


def positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description="A command-line client for genserve.")
    parser.add_argument(
        "--url",
        default=api_url(),
        help=f"the server (default: $GENSERVE_URL or {DEFAULT_API_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=api_key(),
        help="sent as 'Authorization: Bearer KEY' (default: $GENSERVE_API_KEY)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for a result (default: %(default)s; a video takes minutes)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Any, help: str, formats: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        if formats:
            sub.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
            sub.add_argument(
                "--format", choices=formats, help="file format (default: from the output file's extension)"
            )
        return sub

    sub = command("txt2img", txt2img, "generate an image from a prompt", IMAGE_FORMATS)
    sub.add_argument("prompt", help="what to generate")
    add_options(sub, IMAGE_OPTIONS)

    sub = command("img2vid", img2vid, "animate a PNG/JPEG/WebP image", VIDEO_FORMATS)
    sub.add_argument("image", type=Path, help="the image to animate")
    add_options(sub, VIDEO_OPTIONS)

    edits = {"img2img": "change an image as a prompt says", "inpaint": "repaint the masked part of an image"}
    for name, help in edits.items():
        sub = command(name, edit_image, help, IMAGE_FORMATS)
        sub.add_argument("image", type=Path, help="the PNG/JPEG/WebP image to start from")
        sub.add_argument("prompt", help="what the result should show")
        if name == "inpaint":
            mask_help = "an image of the same size: white is repainted, black kept"
            sub.add_argument("--mask", type=Path, required=True, help=mask_help)
        add_options(sub, EDIT_OPTIONS)

    sub = command("txt2vid", txt2vid, "generate a video from a prompt (a background job)", VIDEO_FORMATS)
    sub.add_argument("prompt", help="what to generate")
    add_options(sub, TEXT_TO_VIDEO_OPTIONS)

    command("models", models, "show the server's models with their defaults and limits")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.url, args.api_key, args.timeout)
    try:
        args.run(client, args)
    except CLIError as error:
        print(f"genserve: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130
    finally:
        client.http.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
