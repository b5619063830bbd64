"""The demo presets served, as a person trying genserve gets them: pictures follow their prompts and
videos move their picture's shape, when sent together, so that they batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from decoding import read_image, read_video
from helpers import DEMO, running_server

from genserve.core.directed_noise import seed_direction
from genserve.core.media import encode_image
from genserve.core.shapes import Scene, draw, parse, read_picture, starts_as
from genserve.core.shapes import read_video as read_frames
from genserve.serving.processes import batch_sizes

TIMEOUT = 300
#: Every colour, shape, size and place, with and without a background. Eight of them, so they fit
#: one batch.
PROMPTS = (
    "a red circle",
    "a large blue square at the left",
    "a small yellow triangle on a purple background",
    "a green circle on a white background at the top",
    "an orange square at the right",
    "a large white triangle on a black background",
    "a purple circle at the bottom",
    "a black square on a yellow background",
)


@pytest.fixture(scope="module")
def demo_server(demo_models, tmp_path_factory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("demo"), **DEMO) as (url, _):
        yield url


def test_demo_pictures_sent_together_follow_their_prompts(demo_server) -> None:
    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{demo_server}/txt2img", json={"prompt": prompt, "seed": seed})
                    for seed, prompt in enumerate(PROMPTS)
                )
            )

    before = batch_sizes(demo_server)
    responses = asyncio.run(together())
    assert [response.status_code for response in responses] == [200] * len(PROMPTS)
    after = batch_sizes(demo_server)
    assert after["count"] - before["count"] < len(PROMPTS)  # some batch held more than one prompt
    agreements = [
        read_picture(read_image(response.content)[1]).agrees(parse(prompt))
        for prompt, response in zip(PROMPTS, responses, strict=True)
    ]
    right = {part: sum(agreed[part] for agreed in agreements) for part in agreements[0]}
    # The measured accuracy (README, "The demo preset"): colour, background, size and place
    # 96-100 %, one miss in eight allowed; shapes about 80 % (some squares come out as circles), far
    # above the third that chance gives.
    assert all(right[part] >= len(PROMPTS) - 1 for part in ("colour", "background", "size", "place")), right
    assert right["shape"] >= len(PROMPTS) // 2, right


#: A picture as the demo draws them, to edit: a red circle on blue.
RED_CIRCLE = draw(Scene("circle", "red", "blue"), 64, np.random.default_rng(0))


def edit_together(url: str, route: str, files: dict, fields: dict, seeds: range) -> list[np.ndarray]:
    """The same edit with each seed, sent together so that they batch; the pictures decoded."""

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/{route}", files=files, data={**fields, "seed": seed}) for seed in seeds)
            )

    responses = asyncio.run(together())
    assert [response.status_code for response in responses] == [200] * len(seeds), responses[0].text
    return [read_image(response.content)[1] for response in responses]


def test_demo_img2img_recolours_a_picture_as_its_prompt_says(demo_server) -> None:
    files = {"image": ("red.png", encode_image(RED_CIRCLE, "png"), "image/png")}
    fields = {"prompt": "a blue circle", "strength": 0.8}
    readings = [
        read_picture(edited) for edited in edit_together(demo_server, "img2img", files, fields, range(8))
    ]
    # Measured: blue 14 times in 16 seeds (docs/demo.md); one miss in four allowed here.
    assert sum(reading.colour == "blue" for reading in readings) >= 6, readings


def test_demo_inpainting_changes_only_the_masked_region(demo_server) -> None:
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[12:52, 12:52] = 255  # around the circle
    files = {
        "image": ("red.png", encode_image(RED_CIRCLE, "png"), "image/png"),
        "mask": ("mask.png", encode_image(mask, "png"), "image/png"),
    }
    fields = {"prompt": "a green circle", "strength": 1.0}
    edited = edit_together(demo_server, "inpaint", files, fields, range(4))
    keep = mask[..., 0] == 0
    for pixels in edited:
        assert np.array_equal(pixels[keep], RED_CIRCLE[keep])  # outside the mask: the input, exactly
        reading = read_picture(pixels)
        assert (reading.colour, reading.background) == ("green", "blue"), reading


def videos_together(url: str, route: str, requests: list[dict]) -> list[np.ndarray]:
    """The videos for `requests` (httpx.post keyword arguments) sent together; the frames decoded."""

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(*(client.post(f"{url}/{route}", **request) for request in requests))

    responses = asyncio.run(together())
    assert [response.status_code for response in responses] == [200] * len(requests), responses[0].text
    return [read_video(response.content, "mp4")[0] for response in responses]


#: Pictures as the demo draws them, to animate: every shape, small to large, several places.
TO_ANIMATE = [
    draw(Scene("circle", "red", "blue"), 64, np.random.default_rng(1)),
    draw(Scene("square", "yellow", "purple", size="small", place="left"), 64, np.random.default_rng(2)),
    draw(Scene("triangle", "white", "black", size="large"), 64, np.random.default_rng(3)),
    draw(Scene("circle", "green", "white", place="top"), 64, np.random.default_rng(4)),
]


def test_demo_videos_start_as_their_picture_keep_its_colours_and_move(demo_server) -> None:
    requests = [
        {
            "files": {"image": ("picture.png", encode_image(picture, "png"), "image/png")},
            "data": {"seed": seed},
        }
        for seed, picture in enumerate(TO_ANIMATE)
    ]
    videos = videos_together(demo_server, "img2vid", requests)
    readings = [read_frames(video) for video in videos]
    # Measured (docs/demo.md): all start as their picture, most keep its colours on every frame
    # (94 %), half its shape (moving squares shear), and nine in ten move the shape by 1/16 of
    # the side or more, first the way their seed names (seeds 0-3: right, left, right, right). These
    # four, in process through MP4: all start as their picture, keep its colours and move their
    # seed's way; three keep its shape (not the small square).
    assert sum(starts_as(video, picture) for video, picture in zip(videos, TO_ANIMATE, strict=True)) >= 3
    assert sum(reading.keeps_colours for reading in readings) >= 3, readings
    assert sum(reading.keeps_shape for reading in readings) >= 2, readings
    ways = [seed_direction(seed) for seed in range(len(TO_ANIMATE))]
    assert set(ways) == {1, -1}  # both ways
    moved_their_way = [
        reading.moved() and reading.first_move() == way for reading, way in zip(readings, ways, strict=True)
    ]
    assert sum(moved_their_way) >= 3, [[frame.centre for frame in reading.frames] for reading in readings]


def test_demo_txt2vid_animates_the_picture_its_prompt_names(demo_server) -> None:
    """Text to video is a job: its picture comes from the image model, its frames from the video model."""
    prompt = "a red circle on a blue background"
    with httpx.Client(base_url=demo_server, timeout=TIMEOUT) as client:
        submitted = [client.post("/jobs/txt2vid", json={"prompt": prompt, "seed": seed}) for seed in range(4)]
        assert [response.status_code for response in submitted] == [202] * 4, submitted[0].text
        jobs = [response.json()["id"] for response in submitted]
        deadline = time.monotonic() + TIMEOUT
        while any(client.get(f"/jobs/{job}").json()["state"] in ("queued", "running") for job in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        videos = [read_video(client.get(f"/jobs/{job}/result").content, "mp4")[0] for job in jobs]
    firsts = [read_frames(video).first for video in videos]
    assert sum((first.colour, first.background) == ("red", "blue") for first in firsts) >= 3, firsts
