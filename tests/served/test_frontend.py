"""The web UI, driven by Streamlit's own test API against a real `bentoml serve` of the tiny preset."""

from __future__ import annotations

import base64
import importlib
import re
import time
from http import HTTPStatus
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException
from decoding import read_image, read_video
from helpers import ROOT
from streamlit.testing.v1 import AppTest

from genserve.core.media import encode_image
from genserve.serving.processes import free_port

APP = ROOT / "frontend" / "app.py"
TIMEOUT = 120


def open_page(url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("GENSERVE_URL", url)
    monkeypatch.delenv("GENSERVE_API_KEY", raising=False)
    page = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    return page.run()


@pytest.fixture
def page(server: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    page = open_page(server, monkeypatch)
    assert not page.exception and not page.error, [e.value for e in page.error]
    return page


@pytest.fixture
def client() -> ModuleType:
    """The web UI's client module (`genserve.clients.ui`)."""
    return importlib.import_module("genserve.clients.ui")


def errors(page: AppTest) -> list[str]:
    return [element.value for element in page.error]


def generate_image(page: AppTest, prompt: str) -> None:
    page.text_area(key="t2i_prompt").input(prompt)
    page.button(key="t2i_go").click().run()
    assert not errors(page), errors(page)


def png(width: int, height: int, box: tuple[slice, slice] | None = None) -> bytes:
    """A grey PNG, or with `box`, a mask: black, the box white."""
    pixels = np.full((height, width, 3), 0 if box else 90, np.uint8)
    if box:
        pixels[box] = 255
    return encode_image(pixels, "png")


def upload_for_edit(page: AppTest, image: bytes, mask: bytes) -> None:
    page.file_uploader(key="edit_upload").set_value(("photo.png", image, "image/png"))
    page.file_uploader(key="edit_mask").set_value(("mask.png", mask, "image/png")).run()
    page.text_area(key="edit_prompt").input("a green square")


def test_sidebar_offers_the_servers_limits_and_formats(page, server) -> None:
    models = httpx.get(f"{server}/models").json()
    image, video = models["image"], models["video"]
    width = page.number_input(key="width")
    assert (width.max, width.value) == (image["max_width"], image["default_width"])
    assert page.slider(key="image_steps").max == image["max_steps"]
    assert page.slider(key="num_frames").max == video["max_frames"]
    assert page.slider(key="fps").value == video["default_fps"]
    assert page.selectbox(key="image_format").options == models["image_formats"]
    assert page.selectbox(key="video_format").options == models["video_formats"]
    assert page.number_input(key="seed").value is None  # random unless set


def test_text_to_image_shows_the_image_and_the_seed_that_made_it(page, server) -> None:
    generate_image(page, "a red cat")
    [result] = page.session_state["results"]
    mime, pixels = read_image(result.data)
    assert (mime, pixels.shape) == ("image/png", (64, 64, 3))
    assert len(page.image) == 2  # in its tab and in the gallery
    assert f"a red cat · seed {result.seed}" in [caption.value for caption in page.caption]
    assert page.get("download_button")
    # The seed shown is the one used: the API makes the same file from it.
    again = httpx.post(
        f"{server}/txt2img", json={"prompt": "a red cat", "seed": result.seed}, timeout=TIMEOUT
    )
    assert again.content == result.data


@pytest.mark.slow
def test_a_generated_image_becomes_a_video(page, settings) -> None:
    generate_image(page, "a blue boat")
    page.radio(key="i2v_source").set_value(True).run()  # the latest generated image
    page.slider(key="num_frames").set_value(3)
    page.slider(key="video_steps").set_value(1)
    page.button(key="i2v_go").click().run()
    assert not errors(page), errors(page)
    video = page.session_state["results"][0]
    assert (video.origin, video.fmt) == ("img2vid", "mp4")
    frames, _ = read_video(video.data, "mp4")
    assert frames.shape == (3, settings.video.preset.height, settings.video.preset.width, 3)
    assert page.get("video")


def start_video_job(page: AppTest, frames: int, steps: int, **sliders: int) -> str:
    """Start a text-to-video job from its tab; its id on the server."""
    page.text_area(key="t2v_prompt").input("a misty forest")
    page.slider(key="num_frames").set_value(frames)
    page.slider(key="video_steps").set_value(steps)
    for key, value in sliders.items():
        page.slider(key=key).set_value(value)
    page.button(key="t2v_go").click().run()
    assert not errors(page), errors(page)
    assert page.button(key="t2v_go").disabled  # one job at a time
    return page.session_state["job"]


def progress_shown(page: AppTest, job_id: str, until: str) -> list[str]:
    """Run the page again, as the job's panel refreshes itself in a browser (every JOB_REFRESH_S),
    until a progress text matches `until` or the job has ended; the texts the bar showed."""
    shown: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while page.session_state["job"] == job_id and time.monotonic() < deadline:
        texts = [bar.text for bar in page.progress]
        shown += texts
        if any(re.search(until, text) for text in texts):
            break
        time.sleep(0.3)
        page.run()
    assert all(text.startswith(f"Text to video job {job_id}: ") for text in shown), shown
    return shown


@pytest.mark.slow
def test_text_to_video_job_shows_its_progress_then_the_video(page, server, settings) -> None:
    page.selectbox(key="video_format").set_value("webp")
    page.number_input(key="seed").set_value(7)
    job_id = start_video_job(page, frames=2, steps=10)
    shown = progress_shown(page, job_id, until="completed")  # never shown: the page moves on
    assert shown and re.search(r"(queued|running), .*\d+ %", shown[0]), shown
    assert not errors(page), errors(page)
    assert page.session_state["job"] is None  # finished, not left waiting
    assert not page.progress and not page.button(key="t2v_go").disabled
    [video] = page.session_state["results"]
    assert (video.origin, video.seed, video.mime) == ("txt2vid", 7, "image/webp")
    assert "a misty forest · seed 7" in [caption.value for caption in page.caption]
    # The page shows the animation itself, not a still that Streamlit re-encoded.
    prefix = "data:image/webp;base64,"
    [shown_url, *_] = [url for image in page.image for url in image.value if url.startswith(prefix)]
    frames, _ = read_video(base64.b64decode(shown_url.removeprefix(prefix)), "webp")
    assert frames.shape == (2, settings.video.preset.height, settings.video.preset.width, 3)
    job = httpx.get(f"{server}/jobs/{job_id}", timeout=10).json()
    assert (job["kind"], job["state"], job["seed"]) == ("txt2vid", "completed", 7)


def test_cancel_stops_the_job_on_the_server_and_keeps_nothing(page, server) -> None:
    """A long job (a few seconds on the tiny preset: the most frames and steps it takes), cancelled
    once its bar shows the steps of a stage under way."""
    job_id = start_video_job(page, frames=16, steps=25, image_steps=50)
    shown = progress_shown(page, job_id, until=r"running, (image|video) \d+/\d+ steps, \d+ %")
    assert page.session_state["job"] == job_id, f"the job ended before it could be cancelled: {shown}"
    [bar] = page.progress
    assert 0 <= bar.value < 100
    page.button(key="t2v_cancel").click().run()
    assert httpx.get(f"{server}/jobs/{job_id}", timeout=10).json()["state"] == "cancelled"
    assert [warning.value for warning in page.warning] == [
        f"Text to video job {job_id} was cancelled; nothing was kept."
    ]
    assert page.session_state["job"] is None and not page.session_state["results"]
    assert not page.progress and not page.button(key="t2v_go").disabled
    assert httpx.get(f"{server}/jobs/{job_id}/result", timeout=10).status_code == 409


def test_a_refused_job_shows_the_servers_message(client, server) -> None:
    """A job's refusal comes from /jobs (not the SDK), and is explained the same way."""
    api = client.GenServe(client.Connection(server, None))
    with pytest.raises(httpx.HTTPStatusError) as refused:
        api.submit_job("txt2vid", prompt="a misty forest", num_frames=999)
    [detail] = refused.value.response.json()["detail"]
    expected = f"The API refused the request (400): Frames (num_frames): {detail['msg']}"
    assert client.explain(refused.value, server, {"num_frames": "Frames"}) == expected


def test_the_edit_tab_edits_the_latest_generated_image(page, server) -> None:
    page.number_input(key="width").set_value(96)
    generate_image(page, "a red circle")
    page.radio(key="edit_source").set_value(True).run()  # the latest generated image
    strength = page.slider(key="strength")
    assert strength.value == httpx.get(f"{server}/models").json()["image"]["default_strength"]
    assert strength.min > 0 and strength.max == 1  # only values the server takes (0 < strength <= 1)
    page.text_area(key="edit_prompt").input("a blue circle")
    page.button(key="edit_go").click().run()
    assert not errors(page), errors(page)
    edited, generated = page.session_state["results"]
    assert (edited.origin, edited.prompt) == ("img2img", "a blue circle")
    mime, pixels = read_image(edited.data)
    assert (mime, pixels.shape) == ("image/png", (64, 96, 3))  # the input's size, not the sidebar's
    assert f"a blue circle · seed {edited.seed}" in [caption.value for caption in page.caption]
    # The seed shown is the one used: the API makes the same edit from it.
    again = httpx.post(
        f"{server}/img2img",
        files={"image": (generated.filename, generated.data, "image/png")},
        data={"prompt": "a blue circle", "strength": strength.value, "seed": edited.seed},
        timeout=TIMEOUT,
    )
    assert again.content == edited.data


def test_with_a_mask_the_edit_tab_inpaints(page) -> None:
    box = (slice(16, 48), slice(16, 48))
    upload_for_edit(page, png(64, 80), png(64, 80, box=box))
    assert page.button(key="edit_go").label == "Inpaint"
    page.button(key="edit_go").click().run()
    assert not errors(page), errors(page)
    [result] = page.session_state["results"]
    assert (result.origin, result.prompt) == ("inpaint", "a green square")
    _, pixels = read_image(result.data)
    assert pixels.shape == (80, 64, 3)
    kept = np.ones((80, 64), bool)
    kept[box] = False
    assert (pixels[kept] == 90).all()  # the mask's black part is the input's, exactly
    assert len(page.image) == 2  # in its tab and in the gallery


def test_a_refused_mask_shows_the_servers_message(page, server) -> None:
    image, mask = png(64, 64), png(32, 32, box=(slice(8, 24), slice(8, 24)))
    upload_for_edit(page, image, mask)
    page.button(key="edit_go").click().run()
    files = {"image": ("photo.png", image, "image/png"), "mask": ("mask.png", mask, "image/png")}
    refused = httpx.post(f"{server}/inpaint", files=files, data={"prompt": "a green square"}, timeout=TIMEOUT)
    [detail] = refused.json()["detail"]
    assert detail["loc"] == ["mask"]
    expected = f"The API refused the request ({refused.status_code}): Mask (mask): {detail['msg']}"
    assert errors(page) == [expected]
    assert not page.session_state["results"]


def test_a_refused_value_shows_the_servers_message(page, server) -> None:
    page.number_input(key="width").set_value(100)
    page.text_area(key="t2i_prompt").input("a red cat")
    page.button(key="t2i_go").click().run()
    refused = httpx.post(f"{server}/txt2img", json={"prompt": "a red cat", "width": 100})
    [detail] = refused.json()["detail"]
    assert errors(page) == [f"The API refused the request (400): Width (width): {detail['msg']}"]
    assert "results" not in page.session_state or not page.session_state["results"]


def test_a_refused_upload_shows_the_servers_message(page, server) -> None:
    page.file_uploader(key="i2v_upload").set_value(("notes.png", b"not an image", "image/png")).run()
    page.button(key="i2v_go").click().run()
    refused = httpx.post(f"{server}/img2vid", files={"image": ("notes.png", b"not an image", "image/png")})
    message = refused.json()["detail"][0]["msg"]
    assert errors(page) == [f"The API refused the request ({refused.status_code}): Image (image): {message}"]


def test_server_down_is_explained(monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    page = open_page(url, monkeypatch)
    [message] = errors(page)
    assert message.startswith(f"Cannot reach the genserve API at {url}: is it running?")
    assert page.button[0].label == "Retry"
    assert not page.tabs  # nothing else is offered until the API answers


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            '{"error": "invalid API key: send \'Authorization: Bearer <key>\'"}',
            "The API needs a valid key (401: invalid API key: send 'Authorization: Bearer <key>'). "
            "Set GENSERVE_API_KEY for the UI.",
        ),
        (
            429,
            '{"error": "generators are busy or loading; retry later"}',
            "The API is busy (429: generators are busy or loading; retry later). Try again in a few seconds.",
        ),
        (
            400,  # the SDK's task submission puts words before the body
            'Error making request: 400: {"detail": [{"loc": ["num_frames"], "msg": "too many"}]}',
            "The API refused the request (400): Frames (num_frames): too many",
        ),
        (500, "Internal Server Error", "The API failed (500): Internal Server Error"),
    ],
)
def test_error_answers_are_explained(client, status, body, expected) -> None:
    error = BentoMLException(body, error_code=HTTPStatus(status))  # what the SDK raises for the answer
    assert client.explain(error, "http://api", {"num_frames": "Frames"}) == expected


def test_connection_settings_come_from_the_environment(client) -> None:
    connection = client.Connection.from_env({"GENSERVE_URL": "http://api:3000/", "GENSERVE_API_KEY": "k1"})
    assert (connection.url, connection.api_key) == ("http://api:3000", "k1")
    assert client.Connection.from_env({}).url == "http://127.0.0.1:3000"
    assert client.Connection.from_env({"GENSERVE_API_KEY": ""}).api_key is None
    assert connection.sdk_options()["token"] == "k1"


def test_frontend_pins_agree_with_the_service_pins() -> None:
    """The UI image installs requirements/frontend.txt alone, so shared packages must match."""

    def pins(path: Path) -> dict[str, str]:
        lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
        return dict(line.split("==") for line in lines if "==" in line)

    service, frontend = (pins(ROOT / "requirements" / name) for name in ("runtime.txt", "frontend.txt"))
    shared = service.keys() & frontend.keys()
    assert shared and {name: frontend[name] for name in shared} == {name: service[name] for name in shared}
