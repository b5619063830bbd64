"""`genserve`: a command-line client for a running genserve, so nobody has to hand-write curl calls.

    genserve txt2img "a red cat" -o cat.png --seed 42
    genserve img2vid cat.png -o cat.mp4 --frames 14
    genserve img2img cat.png "a red cat in the snow" -o snow.png --strength 0.6
    genserve inpaint cat.png "a hat" --mask hat.png -o hat.png
    genserve txt2vid "a red cat" -o cat.gif
    genserve models

Every generating command runs as a job of the jobs API (/jobs): submitted, its progress drawn
on stderr until it ends, its result saved. Ctrl-C cancels the job on the server.

Only the options given are sent, so the server's preset defaults apply to the rest; the
server also checks every value, so its error (naming the field) is what a user sees.
Exit status: 0 on success, 2 when the request was refused as invalid (like a usage error),
130 when interrupted (the job cancelled), 1 for everything else (server unreachable, busy, or
the job failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, TextIO, get_args

import httpx

from genserve.clients.api import (
    CONNECT_TIMEOUT_S,
    DEFAULT_API_URL,
    JobProgress,
    JobTimeout,
    api_key,
    api_url,
    follow_job,
    parse_error,
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


class ProgressBar:
    """A job's progress on stderr (its stage, steps done of total, %, ETA): generation takes seconds
    to minutes, and silence looks hung.

    On a terminal one line is redrawn in place; in a log (not a terminal) a line is written only
    when the state or the stage changes, at every quarter of the job and every 10 s, so a long job
    does not flood it.
    """

    WIDTH = 20
    LOG_EVERY_S = 10.0

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.logged: tuple[str, str, int] | None = None
        self.next_log = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def show(self, job: dict[str, Any]) -> None:
        progress = JobProgress.of(job)
        filled = int(progress.fraction * self.WIDTH)
        line = f"{self.label}: [{'#' * filled}{'.' * (self.WIDTH - filled)}] {progress.summary()}"
        if self.tty:
            columns = shutil.get_terminal_size().columns
            self.stream.write(f"{CLEAR_LINE}{line[: columns - 1]}")  # a wrapped line would not be redrawn
        else:
            milestone = (progress.state, progress.stage, int(progress.fraction * 4))
            if milestone == self.logged and self.elapsed() < self.next_log:
                return
            self.stream.write(f"{line}\n")
            self.logged, self.next_log = milestone, self.elapsed() + self.LOG_EVERY_S
        self.stream.flush()

    def finish(self, outcome: str) -> None:
        start_of_line = CLEAR_LINE if self.tty else ""
        self.stream.write(f"{start_of_line}{self.label}: {outcome} in {self.elapsed():.1f} s\n")
        self.stream.flush()


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


def run_job(client: Client, kind: str, **body: Any) -> httpx.Response:
    """Submit a job of `kind` (its endpoint's body: `json`, or `data` and `files`), draw its progress
    until it ends, and return its result. Ctrl-C cancels it on the server: nobody would fetch it."""
    job_id = client.json("POST", f"/jobs/{kind}", **body)["id"]
    print(f"{kind}: job {job_id}", file=sys.stderr)
    bar = ProgressBar(kind)

    async def show() -> dict[str, Any]:
        """The job's document, off the event loop (this client is synchronous)."""
        return await asyncio.to_thread(client.json, "GET", f"/jobs/{job_id}")

    try:
        job = asyncio.run(follow_job(show, client.timeout, bar.show))
    except KeyboardInterrupt:
        bar.finish("interrupted")
        cancel(client, kind, job_id)
        raise
    except JobTimeout as timeout:
        bar.finish("gave up")
        raise CLIError(f"job {job_id} is {timeout} (see --timeout); it goes on on the server") from None
    except CLIError:
        bar.finish("failed")
        raise
    if job["state"] != "completed":
        bar.finish(job["state"])
        reason = f": {job['error']}" if job.get("error") else ""
        raise CLIError(f"job {job_id} {job['state']}{reason}")
    bar.finish("done")
    return client.request("GET", f"/jobs/{job_id}/result")


def cancel(client: Client, kind: str, job_id: str) -> None:
    """Cancel an interrupted job on the server, and say what became of it."""
    try:
        client.request("DELETE", f"/jobs/{job_id}")
    except CLIError as error:  # it ended meanwhile (409), or the server is gone
        print(f"{kind}: job {job_id} was not cancelled: {error}", file=sys.stderr)
    else:
        print(f"{kind}: cancelled job {job_id} on the server", file=sys.stderr)


def post_json(
    client: Client, args: argparse.Namespace, options: list[Option], kind: str, formats: tuple[str, ...]
) -> None:
    """txt2img and txt2vid: the prompt and the options given, as JSON."""
    body = request_fields(args, options)
    body |= {"prompt": args.prompt, "output_format": output_format(args, kind, formats)}
    save(run_job(client, args.command, json=body), args.output)


def txt2img(client: Client, args: argparse.Namespace) -> None:
    post_json(client, args, IMAGE_OPTIONS, "image", IMAGE_FORMATS)


def txt2vid(client: Client, args: argparse.Namespace) -> None:
    post_json(client, args, TEXT_TO_VIDEO_OPTIONS, "video", VIDEO_FORMATS)


def post_form(client: Client, args: argparse.Namespace, files: dict[str, Path], form: dict[str, Any]) -> None:
    """Submit `files` and `form` as multipart, as a job of the kind named like the command; save
    the result."""
    uploads = {}
    for name, path in files.items():
        try:
            uploads[name] = (path.name, path.read_bytes(), "application/octet-stream")
        except OSError as error:
            raise CLIError(f"cannot read {path}: {error.strerror}", code=2) from None
    data = {name: str(value) for name, value in form.items()}
    save(run_job(client, args.command, data=data, files=uploads), args.output)


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

    sub = command("txt2vid", txt2vid, "generate a video from a prompt", VIDEO_FORMATS)
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
