"""genserve's web UI: text to image, image editing, image to video and text to video in one Streamlit
page.

    GENSERVE_URL=http://127.0.0.1:3000 streamlit run frontend/app.py

It talks to the API only through genserve/clients/ui.py (the BentoML client SDK; text to video is
a job of /jobs), so it runs as a process or Deployment of its own. The sidebar's limits are the
server's (`/models`), and the server checks every value: when it refuses one, its message, naming
the field, is what the user sees.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import streamlit as st

from genserve.clients.api import JOB_ACTIVE, JobProgress
from genserve.clients.ui import FAILURES, Connection, GenServe, explain
from genserve.core.presets import (
    MAX_PROMPT_CHARS,
    MAX_UPLOAD_BYTES,
    MIN_FRAMES,
    SIZE_MULTIPLE,
    UPLOAD_FORMATS,
)
from genserve.core.schemas import MAX_SEED, MIN_SIZE, ImageRequest, VideoRequest, random_seed
from genserve.core.shapes import COLOURS, GRAMMAR, SHAPES

#: A prompt the demo preset follows, and that any other model draws too.
EXAMPLE_PROMPT = "a red circle on a blue background"

#: Results a session keeps (newest first): they are held in the UI server's memory.
GALLERY_SIZE = 24
#: The names the page shows for the API's fields, in the sidebar and in the server's error messages.
LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "width": "Width",
    "height": "Height",
    "num_inference_steps": "Steps",
    "image_steps": "Image steps",
    "guidance_scale": "Guidance",
    "seed": "Seed",
    "output_format": "Format",
    "num_frames": "Frames",
    "fps": "Frames per second",
    "motion_bucket_id": "Motion",
    "noise_aug_strength": "Noise augmentation",
    "strength": "Strength",
    "image": "Image",
    "mask": "Mask",
}
#: What the file picker offers: the formats the API decodes, under their usual extensions.
UPLOAD_TYPES = [name.lower() for name in UPLOAD_FORMATS] + ["jpg"]
SOURCES = {False: "An uploaded image", True: "The latest generated image"}
#: Results that are still images (an edit's may be edited again, or animated).
STILLS = ("txt2img", "img2img", "inpaint")
#: The strength slider's step: an edit runs int(steps × strength) steps, so a finer one rarely tells.
STRENGTH_STEP = 0.05
#: How often the page looks at a running job: its progress bar's refresh.
JOB_REFRESH_S = 1.0


@dataclass(frozen=True)
class Result:
    """One generated file of this session, with what made it."""

    number: int  # unique in the session: names its widgets
    origin: str  # the endpoint that made it: "txt2img", "img2img", "inpaint", "img2vid" or "txt2vid"
    data: bytes
    fmt: str
    seed: int
    prompt: str

    @property
    def filename(self) -> str:
        return f"genserve-{self.seed}.{self.fmt}"

    @property
    def mime(self) -> str:
        return mimetypes.guess_type(self.filename)[0] or "application/octet-stream"


@dataclass(frozen=True)
class Parameters:
    """The sidebar's values, as API fields."""

    negative_prompt: str
    image: dict[str, Any]  # txt2img fields besides the prompts and seed
    video: dict[str, Any]  # img2vid fields besides the image and seed
    seed: int | None  # None: pick one here, so the seed of every result is known

    def seed_to_use(self) -> int:
        return random_seed() if self.seed is None else self.seed

    @property
    def edit(self) -> dict[str, Any]:
        """An edit's fields from here: the negative prompt and the image fields but the size, which
        is the input image's."""
        kept = {name: value for name, value in self.image.items() if name not in ("width", "height")}
        return dict(negative_prompt=self.negative_prompt, **kept)


def connect(connection: Connection) -> tuple[GenServe, dict[str, Any]]:
    """This session's client and the server's presets; when the API cannot be used, say why and stop."""
    if "api" not in st.session_state:
        try:
            api = GenServe(connection)
            models = api.models()
        except FAILURES as error:
            st.error(explain(error, connection.url, LABELS))
            st.button("Retry")  # any click reruns the page
            st.stop()
        st.session_state.api, st.session_state.models = api, models
    return st.session_state.api, st.session_state.models


def format_picker(formats: list[str], request: type[ImageRequest | VideoRequest], key: str) -> str:
    """The output format, offered as the server lists them, preselected as the API's default."""
    default = request.model_fields["output_format"].default
    index = formats.index(default) if default in formats else 0
    return st.selectbox(LABELS["output_format"], formats, index=index, key=key)


def sidebar(api: GenServe, models: dict[str, Any]) -> Parameters:
    image, video = models["image"], models["video"]
    with st.sidebar:
        st.header("Image")
        negative = st.text_area(LABELS["negative_prompt"], max_chars=MAX_PROMPT_CHARS, key="negative_prompt")
        size = dict(min_value=MIN_SIZE, step=SIZE_MULTIPLE, help=f"A multiple of {SIZE_MULTIPLE}")
        width = st.number_input(
            LABELS["width"], max_value=image["max_width"], value=image["default_width"], key="width", **size
        )
        height = st.number_input(
            LABELS["height"],
            max_value=image["max_height"],
            value=image["default_height"],
            key="height",
            **size,
        )
        image_steps = st.slider(
            LABELS["num_inference_steps"], 1, image["max_steps"], image["default_steps"], key="image_steps"
        )
        guidance = st.number_input(
            LABELS["guidance_scale"],
            min_value=0.0,
            max_value=float(image["max_guidance"]),
            value=float(image["default_guidance"]),
            step=0.5,
            key="guidance_scale",
        )
        image_format = format_picker(models["image_formats"], ImageRequest, "image_format")

        st.header("Video")
        st.caption(f"Made at {video['width']}×{video['height']}, the video model's own size.")
        frames = st.slider(
            LABELS["num_frames"], MIN_FRAMES, video["max_frames"], video["default_frames"], key="num_frames"
        )
        fps = st.slider(LABELS["fps"], 1, video["max_fps"], video["default_fps"], key="fps")
        video_steps = st.slider(
            f"Video {LABELS['num_inference_steps'].lower()}",
            1,
            video["max_steps"],
            video["default_steps"],
            key="video_steps",
        )
        motion = st.slider(
            LABELS["motion_bucket_id"],
            *map(int, api.field_bounds("img2vid", "motion_bucket_id")),
            video["default_motion_bucket_id"],
            help="More means more motion",
            key="motion_bucket_id",
        )
        noise = st.slider(
            LABELS["noise_aug_strength"],
            *map(float, api.field_bounds("img2vid", "noise_aug_strength")),
            float(video["default_noise_aug_strength"]),
            step=0.01,
            help="Noise added to the still: more departs further from it",
            key="noise_aug_strength",
        )
        video_format = format_picker(models["video_formats"], VideoRequest, "video_format")

        st.header("Seed")
        seed = st.number_input(
            LABELS["seed"],
            min_value=0,
            max_value=MAX_SEED,
            value=None,
            step=1,
            placeholder="random",
            help="Empty: a random seed. The seed of each result is shown with it, to make it again.",
            key="seed",
        )
    return Parameters(
        negative_prompt=negative,
        image=dict(
            width=width,
            height=height,
            num_inference_steps=image_steps,
            guidance_scale=guidance,
            output_format=image_format,
        ),
        video=dict(
            num_frames=frames,
            fps=fps,
            num_inference_steps=video_steps,
            motion_bucket_id=motion,
            noise_aug_strength=noise,
            output_format=video_format,
        ),
        seed=seed,
    )


def results() -> list[Result]:
    return st.session_state.setdefault("results", [])


def latest(*origins: str) -> Result | None:
    return next((result for result in results() if result.origin in origins), None)


def remember(origin: str, data: bytes, fmt: str, seed: int, prompt: str) -> None:
    number = st.session_state.get("made", 0) + 1
    st.session_state.made = number
    kept = results()
    kept.insert(0, Result(number, origin, data, fmt, seed, prompt))
    del kept[GALLERY_SIZE:]


def show(result: Result, place: str) -> None:
    """The file as the browser plays it (GIF and WebP animations are images), its seed, a download.

    `st.image` would re-encode a PNG as JPEG and an animated WebP as a still JPEG: the PNG is kept
    as it is, and an animated WebP goes to the browser as a data URL, which Streamlit passes through.
    """
    if result.mime.startswith("video/"):
        st.video(result.data, format=result.mime, loop=True)
    elif result.fmt == "webp" and result.origin not in STILLS:
        st.image(f"data:{result.mime};base64,{base64.b64encode(result.data).decode()}")
    else:
        st.image(result.data, output_format="PNG" if result.fmt == "png" else "auto")
    st.caption(f"{result.prompt} · seed {result.seed}")
    st.download_button(
        f"Download {result.fmt.upper()}",
        result.data,
        file_name=result.filename,
        mime=result.mime,
        on_click="ignore",  # a download changes nothing on the page
        key=f"download-{place}-{result.number}",
    )


def show_latest(*origins: str) -> None:
    """A tab's latest result, at most half the page wide (a video player stretches to its column)."""
    if result := latest(*origins):
        with st.columns(2)[0]:
            show(result, result.origin)


def generate(api: GenServe, label: str, call: Callable[[], bytes]) -> bytes | None:
    """Run one generation call under a spinner; a failure is shown, not raised."""
    try:
        with st.spinner(label, show_time=True):
            return call()
    except FAILURES as error:
        st.error(explain(error, api.connection.url, LABELS))
        return None


def prompt_input(key: str) -> str:
    return st.text_area(LABELS["prompt"], max_chars=MAX_PROMPT_CHARS, key=key, placeholder=EXAMPLE_PROMPT)


def text_to_image(api: GenServe, params: Parameters) -> None:
    prompt = prompt_input("t2i_prompt")
    if st.button("Generate image", type="primary", key="t2i_go"):
        if not prompt.strip():
            st.warning("Write a prompt first.")
        else:
            seed = params.seed_to_use()
            fields = dict(prompt=prompt, negative_prompt=params.negative_prompt, seed=seed, **params.image)
            data = generate(api, "Generating the image…", lambda: api.txt2img(**fields))
            if data is not None:
                remember("txt2img", data, params.image["output_format"], seed, prompt)
    show_latest("txt2img")


def image_upload(label: str, key: str) -> tuple[str, bytes] | None:
    """An uploaded file's name and content, offered in the formats the API decodes."""
    upload = st.file_uploader(label, type=UPLOAD_TYPES, max_upload_size=MAX_UPLOAD_BYTES // 2**20, key=key)
    return (upload.name, upload.getvalue()) if upload else None


def still_input(key: str) -> tuple[str, bytes] | None:
    """The image a tab starts from, named: an upload, or the session's latest still image."""
    generated = latest(*STILLS)
    if generated is not None and st.radio(
        "Start from", [False, True], format_func=SOURCES.get, horizontal=True, key=f"{key}_source"
    ):
        st.image(generated.data, width=160)
        return generated.filename, generated.data
    return image_upload("A PNG, JPEG or WebP image", f"{key}_upload")


def edit_image(api: GenServe, params: Parameters, image_preset: dict[str, Any]) -> None:
    """Image to image, or with a mask, inpainting; the result has the input image's size."""
    still = still_input("edit")
    mask = image_upload("A mask, optional: white is repainted, black kept (the image's size)", "edit_mask")
    prompt = prompt_input("edit_prompt")
    strength = st.slider(
        LABELS["strength"],
        *map(float, api.field_bounds("img2img", "strength", STRENGTH_STEP)),
        float(image_preset["default_strength"]),
        step=STRENGTH_STEP,
        help="How much of the image (with a mask, of its white part) is redrawn: 1 redraws it all",
        key="strength",
    )
    label = "Inpaint" if mask else "Edit image"
    if st.button(label, type="primary", key="edit_go", disabled=still is None):
        if not prompt.strip():
            st.warning("Write a prompt first.")
        else:
            name, image = still
            seed = params.seed_to_use()
            fields = dict(prompt=prompt, strength=strength, seed=seed, **params.edit)
            if mask:
                mask_name, mask_data = mask
                origin, call = "inpaint", lambda: api.inpaint(image, name, mask_data, mask_name, **fields)
            else:
                origin, call = "img2img", lambda: api.img2img(image, name, **fields)
            data = generate(api, "Editing the image…", call)
            if data is not None:
                remember(origin, data, params.image["output_format"], seed, prompt)
    show_latest("img2img", "inpaint")


def image_to_video(api: GenServe, params: Parameters) -> None:
    still = still_input("i2v")
    if st.button("Generate video", type="primary", key="i2v_go", disabled=still is None):
        name, image = still
        seed = params.seed_to_use()
        fields = dict(seed=seed, **params.video)
        data = generate(api, "Generating the video…", lambda: api.img2vid(image, name, **fields))
        if data is not None:
            remember("img2vid", data, params.video["output_format"], seed, f"animated {name}")
    show_latest("img2vid")


def text_to_video(api: GenServe, params: Parameters) -> None:
    """A job of /jobs on the server: the session keeps its id, so it survives reruns of the page; its
    progress is shown while it runs, and it may be cancelled."""
    job_id: str | None = st.session_state.get("job")
    prompt = prompt_input("t2v_prompt")
    if st.button("Start video job", type="primary", key="t2v_go", disabled=job_id is not None):
        if not prompt.strip():
            st.warning("Write a prompt first.")
        else:
            fields = dict(
                prompt=prompt,
                negative_prompt=params.negative_prompt,
                image_steps=params.image["num_inference_steps"],
                guidance_scale=params.image["guidance_scale"],
                seed=params.seed_to_use(),
                **params.video,
            )
            st.session_state.job_outcome = None
            try:
                st.session_state.job = api.submit_job("txt2vid", **fields)["id"]
            except FAILURES as error:
                st.error(explain(error, api.connection.url, LABELS))
            else:
                st.rerun()  # the page again, its Start button off while the job runs
    if job_id is not None:
        job_panel(api)
        return
    if outcome := st.session_state.get("job_outcome"):
        level, message = outcome
        (st.error if level == "error" else st.warning)(message)
    show_latest("txt2vid")


@st.fragment(run_every=JOB_REFRESH_S)
def job_panel(api: GenServe) -> None:
    """The job's progress bar and a Cancel button, redrawn every JOB_REFRESH_S on their own (a
    fragment), so the rest of the page stays usable meanwhile. Once the job has ended, the whole page
    runs again: a completed job's video in the tab and the gallery, another's end said."""
    job_id = st.session_state.job
    if job_id is None:  # ended in a run of the whole page after this fragment's timer was set
        return
    bar = st.empty()
    cancel = st.button("Cancel", key="t2v_cancel")
    try:
        if cancel:
            api.cancel_job(job_id)
        job = api.job(job_id)
        data = api.job_result(job_id) if job["state"] == "completed" else None
    except FAILURES as error:
        end_job(("error", explain(error, api.connection.url, LABELS)))
    progress = JobProgress.of(job)
    if progress.state in JOB_ACTIVE:
        bar.progress(progress.fraction, text=f"Text to video job {job_id}: {progress.summary()}")
    elif data is not None:
        fields = job["fields"]
        remember("txt2vid", data, fields["output_format"], job["seed"], fields["prompt"])
        end_job(None)
    elif progress.state == "cancelled":
        end_job(("warning", f"Text to video job {job_id} was cancelled; nothing was kept."))
    else:
        end_job(("error", f"Text to video job {job_id} failed: {job['error']}"))


def end_job(outcome: tuple[Literal["error", "warning"], str] | None) -> NoReturn:
    """Forget the ended job, keep what to say about it (until the next job), and run the page again."""
    st.session_state.job, st.session_state.job_outcome = None, outcome
    st.rerun()


def gallery() -> None:
    kept = results()
    st.subheader(f"This session ({len(kept)})")
    if not kept:
        st.caption("What you make appears here, newest first.")
    columns = st.columns(4)
    for index, result in enumerate(kept):
        with columns[index % len(columns)]:
            show(result, "gallery")


def main() -> None:
    st.set_page_config(page_title="genserve", layout="wide")
    st.title("genserve")
    connection = Connection.from_env()
    api, models = connect(connection)
    presets = f"image model {models['image']['name']} · video model {models['video']['name']}"
    st.caption(f"API {connection.url} · {presets}")
    if models["image"]["name"] == "demo":
        st.info(
            f"The demo model draws one coloured shape on a plain background. Prompts: `{GRAMMAR}`; "
            f"colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}."
        )
    params = sidebar(api, models)
    t2i, edit, i2v, t2v = st.tabs(["Text → image", "Edit", "Image → video", "Text → video"])
    with t2i:
        text_to_image(api, params)
    with edit:
        edit_image(api, params, models["image"])
    with i2v:
        image_to_video(api, params)
    with t2v:
        text_to_video(api, params)
    st.divider()
    gallery()


main()
