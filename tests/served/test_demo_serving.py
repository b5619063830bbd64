"""The demo preset served, as a person trying genserve gets it: its pictures follow their prompts
when sent together, so that they batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from decoding import read_image
from helpers import DEMO, running_server

from genserve.core.shapes import parse, read_picture
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
