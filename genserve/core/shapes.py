"""Pictures of one filled coloured shape on a plain background: a prompt grammar, a drawer and a checker.

The demo preset is a small SD3/SVD model trained on pictures genserve draws itself, so whether it
follows a prompt can be measured: the training script draws its dataset with `draw`, and tests and
the accuracy benchmark read generated pictures and videos back with `read_picture` / `read_video`.
The grammar:

    a[n] [small|large] <colour> <shape> [on a[n] <colour> background] [at the left|right|top|bottom]

Any prompt parses: words outside the grammar carry no meaning. What a prompt leaves open (shape,
colour, background) the seed chooses; no size word means medium, no place phrase the centre.
Everything random comes from an explicit numpy Generator.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Plain saturated colours as a person names them, far apart in RGB so a slightly blurred or
#: shifted colour still snaps back to its name (the closest pair, yellow/orange, is 91 apart).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (245, 215, 30),
    "orange": (245, 125, 20),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
#: The grammar, as the web UI shows it to people trying the demo preset.
GRAMMAR = "a[n] [small|large] <colour> <shape> [on a[n] <colour> background] [at the left|right|top|bottom]"
#: The shape's width and height as a fraction of the picture's side.
SIZES = {"small": 0.22, "medium": 0.36, "large": 0.54}
#: Where the shape's centre (the centre of its bounding box) goes, as (x, y) fractions of the side.
PLACES = {
    "centre": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
#: What a prompt without a size word or place phrase asks for; neither has a word of its own.
DEFAULT_SIZE = "medium"
DEFAULT_PLACE = "centre"
SIZE_WORDS = tuple(size for size in SIZES if size != DEFAULT_SIZE)
PLACE_WORDS = tuple(place for place in PLACES if place != DEFAULT_PLACE)
#: Every word of the grammar: the demo tokenizer makes each one a single token.
WORDS = ("a", "an", *SIZE_WORDS, *COLOURS, *SHAPES, "on", "background", "at", "the", *PLACE_WORDS)

#: A background the drawer picks is at least this far (RGB distance) from the shape's colour.
#: It rules out the near pairs red/orange, orange/yellow, blue/purple and green/black.
MIN_CONTRAST = 160.0

#: Jitter the seed adds within what a prompt names: size by up to ±8 %, position by up to ±3 % of
#: the side. The gaps this leaves between sizes and between places keep the checker unambiguous.
SIZE_JITTER = 0.08
PLACE_JITTER = 0.03
#: The shape keeps this fraction of the side away from the edges, so the border is background.
MARGIN = 0.05
#: Video: how far a shape moves per frame at motion_bucket_id 255, as a fraction of the side (the
#: speed is proportional to the bucket), and the directions it may move in (x, y; y down).
MAX_SPEED = 1 / 16
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))
#: Shapes are drawn this many times larger, then scaled down: area-averaged, anti-aliased edges.
SUPERSAMPLING = 4

#: The checker calls a shape centred when its centre is within this fraction of the side from the
#: picture's centre on both axes (drawn: at most 0.04 off centre, at least 0.14 when placed).
CENTRE_BAND = 0.09
#: How the checker tells shapes apart. A triangle's top third is about 1/5 as wide as its bottom
#: third, a circle's or square's as wide; a square fills its bounding box, a circle pi/4 of it.
TRIANGLE_TAPER = 0.6
SQUARE_FILL = 0.9

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
_NAMES = tuple(COLOURS)
#: A pixel this far from the background colour is not background: half the palette's closest gap.
_FAR = min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(_PALETTE, 2)) / 2
#: Width in pixels of the picture's outer ring, where the checker looks for the background.
_RING = 2
#: The checker outlines the shape in a smoothed picture: pixel noise evens out (no stray pixels along
#: the edge) and no edge moves. Weighted to the centre, it keeps a square's corner pixels.
_SMOOTHING = ImageFilter.Kernel((3, 3), (1, 2, 1, 2, 4, 2, 1, 2, 1))


def _distance(first: str, second: str) -> float:
    return float(np.linalg.norm(np.subtract(COLOURS[first], COLOURS[second])))


#: The backgrounds the drawer may pick for each shape colour.
CONTRASTING = {
    colour: tuple(other for other in COLOURS if _distance(colour, other) >= MIN_CONTRAST)
    for colour in COLOURS
}


@dataclass(frozen=True)
class Request:
    """What a prompt names. None where it names nothing; size and place always have a value,
    since a prompt without a size word or place phrase asks for medium and the centre."""

    shape: str | None = None
    colour: str | None = None
    background: str | None = None
    size: str = DEFAULT_SIZE
    place: str = DEFAULT_PLACE


@dataclass(frozen=True)
class Scene:
    """Everything one picture shows, fully resolved (the seed adds only jitter when drawing it)."""

    shape: str
    colour: str
    background: str
    size: str = DEFAULT_SIZE
    place: str = DEFAULT_PLACE


@dataclass(frozen=True)
class Reading:
    """What the checker sees in a picture; shape fields are None when no shape stands out."""

    background: str
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    place: str | None = None
    #: The centre of the shape's bounding box, (x, y) in pixels.
    centre: tuple[float, float] | None = None

    def agrees(self, request: Request) -> dict[str, bool]:
        """For each part of a prompt (shape, colour, background, size, place): whether the picture
        shows what the prompt names there; a part it leaves open may be anything."""
        return {
            part: getattr(request, part) in (None, getattr(self, part))
            for part in ("shape", "colour", "background", "size", "place")
        }

    def shows(self, request: Request) -> bool:
        """Whether the picture shows everything the prompt names."""
        return all(self.agrees(request).values())


@dataclass(frozen=True)
class VideoReading:
    """The checker's reading of every frame of a video."""

    frames: tuple[Reading, ...]
    #: The frames' shorter side in pixels, the unit of `moved`.
    side: int

    @property
    def first(self) -> Reading:
        return self.frames[0]

    @property
    def keeps_colours(self) -> bool:
        """Every frame shows the first frame's background and shape colour."""
        return self._same_in_every_frame("background", "colour")

    @property
    def keeps_shape(self) -> bool:
        """Every frame shows the first frame's kind of shape (its corners, a small generator rounds)."""
        return self._same_in_every_frame("shape")

    def _same_in_every_frame(self, *parts: str) -> bool:
        first = [getattr(self.first, part) for part in parts]
        return all([getattr(frame, part) for part in parts] == first for frame in self.frames)

    @property
    def displacement(self) -> float:
        """How far, in pixels, the shape's centre gets from where it is in the first frame."""
        if self.first.centre is None:
            return 0.0
        return max(
            (math.dist(frame.centre, self.first.centre) for frame in self.frames if frame.centre is not None),
            default=0.0,
        )

    def moved(self, fraction: float = 1 / 16) -> bool:
        """Whether the shape moves at least `fraction` of the side: visible motion, not jitter."""
        return self.displacement >= fraction * self.side

    def first_move(self, fraction: float = 1 / 32) -> int:
        """Which way the shape's centre first gets `fraction` of the side from where it starts,
        sideways (more than a generator's jitter): 1 right, -1 left, 0 never."""
        if self.first.centre is None:
            return 0
        for frame in self.frames[1:]:
            if (
                frame.centre is not None
                and abs(frame.centre[0] - self.first.centre[0]) >= fraction * self.side
            ):
                return 1 if frame.centre[0] > self.first.centre[0] else -1
        return 0


def parse(prompt: str) -> Request:
    """What `prompt` names. Case and punctuation do not matter, and unknown words mean nothing:
    "a red cat flying through space" names only the colour red. A colour right before
    "background" is the background's; otherwise the first word of each kind counts."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colours = [(word, after) for word, after in itertools.pairwise([*words, ""]) if word in COLOURS]
    return Request(
        shape=next((word for word in words if word in SHAPES), None),
        colour=next((word for word, after in colours if after != "background"), None),
        background=next((word for word, after in colours if after == "background"), None),
        size=next((word for word in words if word in SIZE_WORDS), DEFAULT_SIZE),
        place=next((word for word in words if word in PLACE_WORDS), DEFAULT_PLACE),
    )


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def resolve(prompt: str, rng: np.random.Generator) -> Scene:
    """The scene to draw for `prompt`: what it names, the rest chosen by `rng`.

    An unnamed shape is any shape. An unnamed colour is any colour, or one that contrasts with a
    named background; an unnamed background contrasts with the shape's colour. A named pair is
    kept even when it does not contrast (on a background of its own colour the shape is invisible).
    """
    request = parse(prompt)
    shape = request.shape or _pick(rng, SHAPES)
    colour = request.colour or _pick(rng, CONTRASTING[request.background] if request.background else _NAMES)
    background = request.background or _pick(rng, CONTRASTING[colour])
    return Scene(shape, colour, background, request.size, request.place)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt_for(scene: Scene, rng: np.random.Generator) -> str:
    """A grammatical prompt for `scene`, for training. The background phrase is left out half of the
    time when it may be (the background contrasts, as the drawer would pick), so the model also
    learns prompts without one; size and place words are never optional, their absence has a meaning.
    """
    words = [scene.colour, scene.shape]
    if scene.size != DEFAULT_SIZE:
        words.insert(0, scene.size)
    if scene.background not in CONTRASTING[scene.colour] or rng.random() < 0.5:
        words += ["on", _article(scene.background), scene.background, "background"]
    if scene.place != DEFAULT_PLACE:
        words += ["at", "the", scene.place]
    return " ".join([_article(words[0]), *words])


def sample_scene(rng: np.random.Generator) -> Scene:
    """A scene drawn uniformly from the grammar's choices; the background is any other colour."""
    colour = _pick(rng, _NAMES)
    background = _pick(rng, [other for other in _NAMES if other != colour])
    return Scene(_pick(rng, SHAPES), colour, background, _pick(rng, tuple(SIZES)), _pick(rng, tuple(PLACES)))


def sample_prompt(rng: np.random.Generator) -> str:
    """A prompt drawn from the grammar, e.g. for evaluation."""
    return prompt_for(sample_scene(rng), rng)


def draw(scene: Scene, side: int, rng: np.random.Generator) -> np.ndarray:
    """A `side` x `side` RGB uint8 picture of `scene`; `rng` jitters the shape's size and position."""
    extent = _jittered_extent(scene, rng)
    half = extent / 2
    x, y = (
        float(np.clip(target + rng.uniform(-PLACE_JITTER, PLACE_JITTER), half + MARGIN, 1 - half - MARGIN))
        for target in PLACES[scene.place]
    )
    return _render(scene, side, extent, (x, y))


def draw_clip(
    scene: Scene,
    side: int,
    frames: int,
    motion_bucket_id: int,
    rng: np.random.Generator,
    direction: tuple[int, int] | None = None,
) -> np.ndarray:
    """`frames` pictures (frames x side x side x 3, uint8) of `scene`'s shape moving: what the demo
    video model learns. The shape starts anywhere (a picture a user drew may put it anywhere), moves
    in `direction` (one of DIRECTIONS; by default `rng` picks), at a speed that grows with
    `motion_bucket_id` (0-255, as SVD's), and bounces off the margins so that it keeps moving. The
    first frame is a picture like `draw`'s."""
    extent = _jittered_extent(scene, rng)
    low, high = extent / 2 + MARGIN, 1 - extent / 2 - MARGIN
    start = rng.uniform(low, high, size=2)
    direction = direction or DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    step = np.array(direction) * MAX_SPEED * motion_bucket_id / 255
    return np.stack(
        [_render(scene, side, extent, _bounce(start + frame * step, low, high)) for frame in range(frames)]
    )


def _jittered_extent(scene: Scene, rng: np.random.Generator) -> float:
    return SIZES[scene.size] * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)


def _bounce(position: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """`position` folded back into [low, high] on each axis, as a ball bounces between two walls."""
    span = high - low
    folded = np.abs((position - low) % (2 * span) - span)  # distance from the far wall
    return tuple(float(value) for value in high - folded)


def _render(scene: Scene, side: int, extent: float, centre: tuple[float, float]) -> np.ndarray:
    """The picture of `scene`'s shape, `extent` of the side wide, centred on `centre` (fractions)."""
    # The bounding box lies on whole pixels: a square's edges are crisp, never a row of half-covered
    # pixels that blur and noise could tip either way.
    span = round(extent * side)
    left, top = (round(position * side - span / 2) * SUPERSAMPLING for position in centre)
    # Pillow's boxes include their right and bottom edges.
    right, bottom = (start + span * SUPERSAMPLING - 1 for start in (left, top))
    image = Image.new("RGB", (side * SUPERSAMPLING, side * SUPERSAMPLING), COLOURS[scene.background])
    pen = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((left, top, right, bottom), fill=fill)
    else:  # an upright isosceles triangle, as wide as it is high
        pen.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return np.asarray(image.resize((side, side), Image.Resampling.BOX))


def _nearest_colours(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette of the colour nearest each pixel (pixels: ... x 3)."""
    return np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1).argmin(axis=-1)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of `mask`: drops stray pixels and specks apart from the shape.

    Every pixel takes the smallest label among itself and its neighbours until nothing changes, so
    each region ends up labelled by its first pixel's index.
    """
    unlabelled = mask.size
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), unlabelled)
    while True:
        padded = np.pad(labels, 1, constant_values=unlabelled)
        neighbours = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
        spread = np.where(mask, np.minimum.reduce([labels, *neighbours]), unlabelled)
        if np.array_equal(spread, labels):
            return labels == np.bincount(labels[mask]).argmax()
        # A pixel's label names a pixel of its region, which may already hold a smaller label.
        spread[mask] = spread.flat[spread[mask]]
        labels = spread


def read_picture(pixels: np.ndarray) -> Reading:
    """What an H x W x 3 uint8 picture shows, tolerant of what a small generator gets slightly wrong:
    shifted colours, blurred edges, noise, stray pixels.

    The background is the palette colour most of the outer ring snaps to. The shape is the largest
    region of pixels nearer the shape's colour than the background's; its bounding box gives its
    kind, size and place.
    """
    image = np.asarray(pixels)[..., :3].astype(np.float64)
    height, width = image.shape[:2]
    background, background_rgb = _background(image)
    found = _shape(image, background_rgb)
    if found is None:
        return Reading(background)
    shape_rgb, mask = found
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    extent = max(box.shape[1] / width, box.shape[0] / height)
    x, y = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2
    return Reading(
        background=background,
        colour=_NAMES[int(_nearest_colours(shape_rgb))],
        shape=_kind(box),
        size=min(SIZES, key=lambda size: abs(math.log(SIZES[size] / extent))),
        place=_place(x / width - 0.5, y / height - 0.5),
        centre=(float(x), float(y)),
    )


def _background(image: np.ndarray) -> tuple[str, np.ndarray]:
    """The background's name and actual colour: what most of the picture's outer ring is."""
    edges = (image[:_RING], image[-_RING:], image[:, :_RING], image[:, -_RING:])
    ring = np.concatenate([edge.reshape(-1, 3) for edge in edges])
    ring_colours = _nearest_colours(ring)
    index = int(np.bincount(ring_colours).argmax())
    return _NAMES[index], np.median(ring[ring_colours == index], axis=0)


def _shape(image: np.ndarray, background_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The shape's actual colour and its mask, or None when nothing stands out from the background.

    The colour is the median of the pixels farthest from the background, not of all that differ:
    a blurred edge blends into other palette colours (red on yellow looks orange).
    """
    from_background = np.linalg.norm(image - background_rgb, axis=-1)
    standing_out = from_background > _FAR
    if not standing_out.any():
        return None
    farthest = standing_out & (from_background >= np.median(from_background[standing_out]))
    shape_rgb = np.median(image[farthest], axis=0)
    smoothed = np.asarray(Image.fromarray(image.astype(np.uint8)).filter(_SMOOTHING), np.float64)
    to_shape = np.linalg.norm(smoothed - shape_rgb, axis=-1)
    nearer_shape = to_shape < np.linalg.norm(smoothed - background_rgb, axis=-1)
    if not nearer_shape.any():  # a speck or two, evened out
        return None
    return shape_rgb, _largest_region(nearer_shape)


def _kind(box: np.ndarray) -> str:
    """Which shape a mask cropped to its bounding box is: a triangle narrows towards the top, a
    square fills its box and a circle about pi/4 of it."""
    widths = box.sum(axis=1)
    third = max(1, len(widths) // 3)
    if widths[:third].mean() < TRIANGLE_TAPER * widths[-third:].mean():
        return "triangle"
    return "square" if box.mean() > SQUARE_FILL else "circle"


def _place(right: float, down: float) -> str:
    """The place word for a shape whose centre is `right` and `down` of the picture's centre (fractions)."""
    if max(abs(right), abs(down)) < CENTRE_BAND:
        return DEFAULT_PLACE
    if abs(right) >= abs(down):
        return "right" if right > 0 else "left"
    return "bottom" if down > 0 else "top"


def read_video(frames: Sequence[np.ndarray] | np.ndarray) -> VideoReading:
    """The reading of every frame (H x W x 3 uint8 each) of a video."""
    readings = tuple(read_picture(frame) for frame in frames)
    height, width = np.shape(frames[0])[:2]
    return VideoReading(readings, side=min(height, width))


def video_shares(
    pictures: Sequence[np.ndarray], videos: Sequence[np.ndarray], directions: Sequence[int]
) -> dict[str, float]:
    """How many of `videos` (frames x H x W x 3 uint8 each) made from `pictures` do what image to
    video promises, as shares: start as their picture, keep its colours and its shape on every
    frame, move it by at least 1/16 of the side, and first move it the way their seed names
    (`directions`: 1 right, -1 left, `genserve.core.directed_noise.seed_direction`)."""
    readings = [read_video(video) for video in videos]
    return {
        "starts as its picture": float(
            np.mean([starts_as(video, picture) for video, picture in zip(videos, pictures, strict=True)])
        ),
        "keeps its colours": float(np.mean([reading.keeps_colours for reading in readings])),
        "keeps its shape": float(np.mean([reading.keeps_shape for reading in readings])),
        "moves": float(np.mean([reading.moved() for reading in readings])),
        "the way its seed names": float(
            np.mean(
                [
                    reading.moved() and reading.first_move() == direction
                    for reading, direction in zip(readings, directions, strict=True)
                ]
            )
        ),
    }


def starts_as(
    frames: Sequence[np.ndarray] | np.ndarray, picture: np.ndarray, tolerance: float = 12.0
) -> bool:
    """Whether a video's first frame is `picture` (resized to the frame's size), as image-to-video
    promises: the mean absolute difference per channel is at most `tolerance` (of 255)."""
    first = np.asarray(frames[0])[..., :3]
    height, width = first.shape[:2]
    resized = Image.fromarray(np.asarray(picture)[..., :3]).resize((width, height), Image.Resampling.BILINEAR)
    return float(np.abs(first.astype(np.float64) - np.asarray(resized)).mean()) <= tolerance
