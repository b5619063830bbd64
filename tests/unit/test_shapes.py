"""The demo preset's prompt grammar, drawer and checker agree, and the checker survives a small VAE's blur."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter

from genserve.core.shapes import (
    COLOURS,
    CONTRASTING,
    DIRECTIONS,
    PLACE_WORDS,
    SHAPES,
    WORDS,
    Reading,
    Request,
    Scene,
    draw,
    draw_clip,
    parse,
    prompt_for,
    read_picture,
    read_video,
    resolve,
    sample_prompt,
    sample_scene,
    starts_as,
    video_shares,
)

SIDE = 64
Spoiler = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def what_is_read(reading: Reading) -> tuple:
    return (reading.shape, reading.colour, reading.background, reading.size, reading.place)


def what_is_drawn(scene: Scene) -> tuple:
    return (scene.shape, scene.colour, scene.background, scene.size, scene.place)


def degrade(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Roughly what a small VAE does to a picture: a blur, noise and slightly shifted colours."""
    blurred = np.asarray(Image.fromarray(picture).filter(ImageFilter.GaussianBlur(1)), dtype=np.float64)
    shifted = blurred + rng.normal(0, 8, picture.shape) + rng.uniform(-15, 15, 3)
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


def misread(scenes: int, side: int, seed: int, spoil: Spoiler = lambda picture, rng: picture) -> list[tuple]:
    """(drawn, read) for each of `scenes` sampled scenes the checker gets wrong."""
    rng = np.random.default_rng(seed)
    wrong = []
    for _ in range(scenes):
        scene = sample_scene(rng)
        reading = read_picture(spoil(draw(scene, side, rng), rng))
        if what_is_read(reading) != what_is_drawn(scene):
            wrong.append((scene, reading))
    return wrong


@pytest.mark.parametrize(("side", "scenes"), [(32, 50), (SIDE, 200), (128, 50), (256, 20)])
def test_the_checker_reads_every_clean_picture_as_drawn(side: int, scenes: int) -> None:
    assert misread(scenes, side, seed=side) == []


def test_the_checker_reads_pictures_blurred_noisy_and_shifted_as_a_vae_would_leave_them() -> None:
    wrong = misread(200, SIDE, seed=1, spoil=degrade)
    assert len(wrong) <= 0.03 * 200, wrong


def test_stray_pixels_do_not_change_the_reading() -> None:
    def speckle(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        speckled = picture.copy()
        speckled[rng.integers(0, SIDE, 10), rng.integers(0, SIDE, 10)] = rng.integers(0, 256, (10, 3))
        return speckled

    assert misread(200, SIDE, seed=2, spoil=speckle) == []


def test_a_plain_picture_or_a_speck_has_no_shape() -> None:
    plain = np.full((SIDE, SIDE, 3), COLOURS["blue"], dtype=np.uint8)
    assert read_picture(plain) == Reading("blue")
    plain[20, 30] = COLOURS["white"]
    assert read_picture(plain) == Reading("blue")


def test_noise_does_not_crash_the_checker() -> None:
    noise = np.random.default_rng(3).integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8)
    assert isinstance(read_picture(noise[0]), Reading)
    assert len(read_video(noise).frames) == 4


@pytest.mark.parametrize(
    ("prompt", "request_"),
    [
        *((f"a {colour} circle", Request("circle", colour)) for colour in COLOURS),
        *((f"a green {shape}", Request(shape, "green")) for shape in SHAPES),
        ("a small red square", Request("square", "red", size="small")),
        ("a large blue triangle", Request("triangle", "blue", size="large")),
        ("an orange circle", Request("circle", "orange")),
        ("a large orange square", Request("square", "orange", size="large")),
        ("a white circle on a black background", Request("circle", "white", "black")),
        ("a black square on an orange background", Request("square", "black", "orange")),
        *((f"a red circle at the {place}", Request("circle", "red", place=place)) for place in PLACE_WORDS),
        (
            "a small purple triangle on a yellow background at the bottom",
            Request("triangle", "purple", "yellow", "small", "bottom"),
        ),
        (
            "A Large, RED circle on a Blue background... at the TOP!",
            Request("circle", "red", "blue", "large", "top"),
        ),
        ("a red cat flying through space", Request(colour="red")),
        ("a red background", Request(background="red")),
        ("a medium square at the centre", Request("square")),
        ("", Request()),
    ],
)
def test_parse_reads_what_a_prompt_names(prompt: str, request_: Request) -> None:
    assert parse(prompt) == request_


def test_sampled_prompts_use_only_grammar_words_and_parse_back_to_their_scene() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        scene = sample_scene(rng)
        prompt = prompt_for(scene, rng)
        assert set(prompt.split()) <= set(WORDS), prompt
        named = parse(prompt)
        assert (named.shape, named.colour, named.size, named.place) == (
            scene.shape,
            scene.colour,
            scene.size,
            scene.place,
        )
        # Left out only where the drawer would pick it.
        assert named.background in (scene.background, None)
        assert named.background or scene.background in CONTRASTING[scene.colour], prompt
    assert len(set(WORDS)) == len(WORDS)


def test_prompts_leave_out_the_background_phrase_only_when_the_drawer_would_pick_that_background() -> None:
    rng = np.random.default_rng(5)
    contrasting = {prompt_for(Scene("circle", "red", "blue"), rng) for _ in range(40)}
    assert contrasting == {"a red circle", "a red circle on a blue background"}
    near = {prompt_for(Scene("square", "red", "orange", "large", "left"), rng) for _ in range(40)}
    assert near == {"a large red square on an orange background at the left"}


def test_evaluation_prompts_are_varied_and_name_a_shape_and_colour() -> None:
    rng = np.random.default_rng(6)
    prompts = [sample_prompt(rng) for _ in range(40)]
    assert len(set(prompts)) >= 35
    assert all(parse(prompt).shape and parse(prompt).colour for prompt in prompts)


def test_the_seed_chooses_what_the_prompt_leaves_open_and_nothing_it_names() -> None:
    scenes = [resolve("a red circle", np.random.default_rng(seed)) for seed in range(50)]
    assert {(scene.shape, scene.colour, scene.size, scene.place) for scene in scenes} == {
        ("circle", "red", "medium", "centre")
    }
    backgrounds = {scene.background for scene in scenes}
    assert len(backgrounds) > 1 and backgrounds <= set(CONTRASTING["red"]) and "red" not in backgrounds

    scenes = [resolve("a cat on a blue background", np.random.default_rng(seed)) for seed in range(50)]
    assert len({scene.shape for scene in scenes}) == len(SHAPES)
    assert {scene.colour for scene in scenes} == set(CONTRASTING["blue"])

    named = "a small yellow triangle on an orange background at the right"
    assert {resolve(named, np.random.default_rng(seed)) for seed in range(20)} == {
        Scene("triangle", "yellow", "orange", "small", "right")
    }


def test_the_seed_jitters_the_drawing_and_the_same_seed_draws_the_same_picture() -> None:
    scene = Scene("triangle", "green", "white")
    same = [draw(scene, SIDE, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    assert same[0].shape == (SIDE, SIDE, 3) and same[0].dtype == np.uint8
    assert len({draw(scene, SIDE, np.random.default_rng(seed)).tobytes() for seed in range(10)}) > 1


def test_a_reading_shows_what_its_prompt_names() -> None:
    rng = np.random.default_rng(8)
    for prompt in ("a large blue square at the left", "a triangle on a white background", "a red cat"):
        reading = read_picture(draw(resolve(prompt, rng), SIDE, rng))
        assert reading.shows(parse(prompt)), (prompt, reading)
    assert not reading.shows(parse("a green cat"))
    assert reading.agrees(parse("a green cat"))["colour"] is False


def shape_moving_right(step: int, frames: int = 8) -> np.ndarray:
    picture = draw(Scene("circle", "yellow", "purple"), SIDE, np.random.default_rng(9))
    return np.stack([np.roll(picture, step * index, axis=1) for index in range(frames)])


def test_read_video_sees_a_shape_move_and_keep_its_look() -> None:
    video = read_video(shape_moving_right(step=2))
    assert video.first.shape == "circle"
    assert video.keeps_colours and video.keeps_shape
    assert video.displacement == pytest.approx(14)
    assert video.moved()
    assert video.first_move() == 1 and read_video(shape_moving_right(step=-2)).first_move() == -1


def test_video_shares_count_the_videos_that_move_the_way_their_seed_names() -> None:
    right, still = shape_moving_right(step=2), shape_moving_right(step=0)
    shares = video_shares([right[0]] * 3, [right, right, still], directions=[1, -1, 1])
    assert shares["starts as its picture"] == 1 and shares["moves"] == pytest.approx(2 / 3)
    assert shares["the way its seed names"] == pytest.approx(1 / 3)


def test_read_video_sees_no_motion_in_a_still_video_and_a_change_of_look() -> None:
    still = read_video(list(shape_moving_right(step=0)))
    assert still.keeps_colours and still.keeps_shape and still.displacement == 0 and not still.moved()
    assert still.first_move() == 0

    frames = list(shape_moving_right(step=0, frames=2))
    frames[1] = draw(Scene("square", "yellow", "purple"), SIDE, np.random.default_rng(9))
    squared = read_video(frames)
    assert squared.keeps_colours and not squared.keeps_shape
    frames[1] = draw(Scene("circle", "yellow", "blue"), SIDE, np.random.default_rng(9))
    recoloured = read_video(frames)
    assert not recoloured.keeps_colours and recoloured.keeps_shape


def test_starts_as_compares_the_first_frame_with_a_picture_of_any_size() -> None:
    frames = shape_moving_right(step=2)
    larger = np.asarray(Image.fromarray(frames[0]).resize((2 * SIDE, 2 * SIDE), Image.Resampling.BILINEAR))
    assert starts_as(frames, larger)
    assert not starts_as(frames, frames[-1])
    assert not starts_as(frames, draw(Scene("circle", "black", "white"), SIDE, np.random.default_rng(9)))


def test_a_drawn_clip_moves_its_shape_faster_with_the_motion_bucket_and_keeps_its_look() -> None:
    scene = Scene("triangle", "orange", "blue", size="small")
    displacements = []
    for bucket in (0, 127, 255):
        clip = draw_clip(scene, SIDE, frames=8, motion_bucket_id=bucket, rng=np.random.default_rng(3))
        assert clip.shape == (8, SIDE, SIDE, 3) and clip.dtype == np.uint8
        video = read_video(clip)
        first = video.first
        assert (first.shape, first.colour, first.background) == ("triangle", "orange", "blue")
        assert video.keeps_colours and video.keeps_shape
        displacements.append(video.displacement)
    assert displacements[0] == 0 and 0 < displacements[1] < displacements[2]
    assert read_video(draw_clip(scene, SIDE, 8, 127, np.random.default_rng(3))).moved()


def test_a_clip_bounces_off_the_margins_and_the_seed_picks_the_direction() -> None:
    scene = Scene("square", "white", "black", size="large")
    starts, directions = set(), set()
    for seed in range(12):
        clip = draw_clip(scene, SIDE, frames=40, motion_bucket_id=255, rng=np.random.default_rng(seed))
        centres = np.array([read_picture(frame).centre for frame in clip])
        assert (clip[:, :2].reshape(-1, 3) == COLOURS["black"]).all()  # the top rows stay background
        starts.add(tuple(centres[0].round()))
        directions.add(tuple(np.sign(centres[1] - centres[0])))
    assert len(starts) > 6 and len(directions) == 4


def test_a_clip_drawn_in_a_given_direction_moves_along_it_from_the_same_start() -> None:
    scene = Scene("circle", "red", "white")
    clips = [draw_clip(scene, SIDE, 8, 255, np.random.default_rng(4), direction) for direction in DIRECTIONS]
    for direction, clip in zip(DIRECTIONS, clips, strict=True):
        centres = np.array([read_picture(frame).centre for frame in clip])
        along = int(np.flatnonzero(direction)[0])
        assert np.ptp(centres[:, along]) > 0 and np.ptp(centres[:, 1 - along]) == 0  # bouncing, maybe
        assert np.array_equal(clip[0], clips[0][0])
    assert len({clip.tobytes() for clip in clips}) == len(DIRECTIONS)
