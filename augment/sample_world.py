"""The bundled sample world: procedural 64x64 scenes of simple shapes, with captions that are true.

A scene holds 1-3 objects. Each object has *content* (shape, colour, size, named position) and
*render-only details* (pixel jitter, rotation); the background is plain or noisy grey. Captions are
generated from the content only, so a re-rendered variant of a scene (`rerender_variant`) is still
described correctly by every caption of the original.

Everything is seeded with `random.Random` (stable across platforms and Python versions), so
`write_sample` with the same arguments writes byte-identical files.

`check_caption` decides whether a caption is true of a scene. It understands the generators'
lexicon plus extra synonyms and out-of-world words (other colours, shapes, sizes), so it can judge
captions that an attack or an augmenter changed. Its rules for words it does not know:

* a caption with no word about the world at all ("hello", "a banana") -> ``None``;
* negation, disjunction and universal quantifiers ("not", "or", "every") -> ``None``
  (they cannot be checked by matching claims against objects);
* otherwise an unknown word is a claim this closed world cannot contain -> ``False``
  ("a red banana" is False; so is "a boastful red circle").
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageDraw

from augment.errors import SourceError

IMAGE_SIZE = 64
GREY = (128, 128, 128)
NOISE_AMPLITUDE = 24  # noisy backgrounds vary by up to +-24 grey levels per pixel

# ----------------------------------------------------------------------------- the world's content

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
BACKGROUNDS = ("plain", "noisy")

# coarse grid coordinates of the named positions (x grows rightwards, y grows downwards);
# relations ("to the left of", "above") are decided on these, never on the jittered pixels
POSITION_GRID = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "centre": (0, 0)}
# centre of each named position in pixels; far enough apart that large objects barely touch
POSITION_PIXELS = {"left": (13, 32), "right": (51, 32), "top": (32, 13), "bottom": (32, 51), "centre": (32, 32)}
SIZE_RADIUS = {"small": 5.0, "large": 9.0}
MAX_JITTER = 2  # pixels
MAX_ROTATION = 15  # degrees; more would turn a square into a diamond

# object counts 1, 2, 3 with these probabilities
OBJECT_COUNT_WEIGHTS = (0.25, 0.40, 0.35)

# ----------------------------------------------------------------------------- generator lexicon
# Only true synonyms: every word here describes the rendered pixels correctly. The first entry is
# the canonical word.

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "cobalt"),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
    "white": ("white",),
    "black": ("black",),
}
SHAPE_WORDS = {
    "circle": ("circle", "disk", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
}
GENERIC_NOUN = "shape"
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the center", "in the middle"),
}
RELATION_PHRASES = {
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "beneath"),
}
BACKGROUND_KIND_WORDS = {"plain": ("plain", "flat", "uniform"), "noisy": ("noisy", "grainy", "speckled")}
GREY_WORDS = ("grey", "gray")
BACKGROUND_NOUNS = ("background", "backdrop")
BACKGROUND_PREPOSITIONS = ("on", "against")
FRAME_PREFIXES = ("a picture of", "an image of", "a drawing of")
COUNT_WORDS = {1: ("one", "a single"), 2: ("two",), 3: ("three",)}
# every other word a generator can emit
TEMPLATE_WORDS = ("a", "an", "another", "and", "shapes")

STYLES = ("canonical", "synonyms", "relation", "low_detail", "picture", "positions", "count", "background")
# the first captions of every image, in this order; more come from random styles
FIRST_STYLES = ("canonical", "synonyms", "relation", "low_detail", "picture")


# ----------------------------------------------------------------------------- scene model


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    # render-only details: they change pixels, never what a caption may say
    dx: int = 0
    dy: int = 0
    rotation: int = 0

    def content(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.size, self.position)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str = "plain"
    # render-only: seeds the grey noise of a noisy background
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "noise_seed": self.noise_seed,
            "objects": [asdict(obj) for obj in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        try:
            objects = tuple(SceneObject(**obj) for obj in data["objects"])
            scene = cls(objects, str(data.get("background", "plain")), int(data.get("noise_seed", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(f"malformed sample-world scene {data!r}: {exc}") from exc
        problem = _scene_problem(scene)
        if problem:
            raise SourceError(f"malformed sample-world scene: {problem}")
        return scene

    def content(self) -> tuple:
        """What captions describe: objects without render details, and the background kind."""
        return (tuple(obj.content() for obj in self.objects), self.background)


def _scene_problem(scene: Scene) -> str | None:
    if not 1 <= len(scene.objects) <= len(POSITIONS):
        return f"{len(scene.objects)} objects"
    if scene.background not in BACKGROUNDS:
        return f"unknown background {scene.background!r}"
    allowed = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
    for obj in scene.objects:
        for name, values in allowed.items():
            if getattr(obj, name) not in values:
                return f"unknown {name} {getattr(obj, name)!r}"
    positions = [obj.position for obj in scene.objects]
    if len(set(positions)) != len(positions):
        return f"two objects share a position in {positions}"
    return None


def _render_details(rng: random.Random) -> tuple[int, int, int]:
    return (
        rng.randint(-MAX_JITTER, MAX_JITTER),
        rng.randint(-MAX_JITTER, MAX_JITTER),
        rng.randint(-MAX_ROTATION, MAX_ROTATION),
    )


def _object_count(rng: random.Random) -> int:
    draw = rng.random()
    total = 0.0
    for count, weight in enumerate(OBJECT_COUNT_WEIGHTS, start=1):
        total += weight
        if draw < total:
            return count
    return len(OBJECT_COUNT_WEIGHTS)


def sample_scene(rng: random.Random) -> Scene:
    """A random scene; the same `rng` state always gives the same scene."""
    count = _object_count(rng)
    positions = rng.sample(POSITIONS, count)
    objects = []
    for position in positions:
        shape = rng.choice(SHAPES)
        colour = rng.choice(sorted(COLOURS))
        size = rng.choice(SIZES)
        dx, dy, rotation = _render_details(rng)
        objects.append(SceneObject(shape, colour, size, position, dx, dy, rotation))
    background = rng.choice(BACKGROUNDS)
    return Scene(tuple(objects), background, rng.getrandbits(32))


# ----------------------------------------------------------------------------- rendering


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon of `shape` around (0, 0) with radius about 1 (y downwards)."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "diamond":
        # taller than wide, so it never looks like a rotated square
        return [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    if shape == "triangle":
        return _regular_polygon(3, 1.1, -90.0)
    if shape == "hexagon":
        return _regular_polygon(6, 1.0, 0.0)
    if shape == "star":
        outer = _regular_polygon(5, 1.1, -90.0)
        inner = _regular_polygon(5, 0.45, -54.0)
        return [point for pair in zip(outer, inner) for point in pair]
    raise ValueError(f"no outline for {shape!r}")


def _regular_polygon(corners: int, radius: float, start_degrees: float) -> list[tuple[float, float]]:
    step = 360.0 / corners
    return [
        (radius * _cos(start_degrees + k * step), radius * _sin(start_degrees + k * step))
        for k in range(corners)
    ]


def _cos(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def _sin(degrees: float) -> float:
    return math.sin(math.radians(degrees))


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    cx, cy = POSITION_PIXELS[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    radius = SIZE_RADIUS[obj.size]
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([round(cx - radius), round(cy - radius), round(cx + radius), round(cy + radius)], fill=fill)
        return
    cos_r, sin_r = _cos(obj.rotation), _sin(obj.rotation)
    points = [
        (round(cx + radius * (x * cos_r - y * sin_r)), round(cy + radius * (x * sin_r + y * cos_r)))
        for x, y in _unit_outline(obj.shape)
    ]
    draw.polygon(points, fill=fill)


def _background(kind: str, noise_seed: int) -> Image.Image:
    if kind == "plain":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), GREY)
    # randbytes is part of random's stable stream, and one call is fast enough for 4,096 pixels
    noise = random.Random(noise_seed).randbytes(IMAGE_SIZE * IMAGE_SIZE)
    span = 2 * NOISE_AMPLITUDE + 1
    levels = bytes(GREY[0] - NOISE_AMPLITUDE + b % span for b in noise)
    return Image.frombytes("L", (IMAGE_SIZE, IMAGE_SIZE), levels).convert("RGB")


def render_scene(scene: Scene, rng: random.Random | None = None) -> Image.Image:
    """The scene as a 64x64 RGB image.

    Without `rng` the image is fully determined by the scene. With `rng`, a noisy background
    gets fresh noise drawn from it (objects and their layout are unchanged).
    """
    noise_seed = scene.noise_seed if rng is None else rng.getrandbits(32)
    image = _background(scene.background, noise_seed)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


def rerender_variant(scene: Scene, rng: random.Random) -> tuple[Scene, Image.Image]:
    """Same content (objects, colours, sizes, named positions, background kind), new layout details.

    At least one object moves by a pixel or more, so the image always differs from the original.
    """
    while True:
        objects = []
        for obj in scene.objects:
            dx, dy, rotation = _render_details(rng)
            objects.append(SceneObject(obj.shape, obj.colour, obj.size, obj.position, dx, dy, rotation))
        if any((new.dx, new.dy) != (old.dx, old.dy) for new, old in zip(objects, scene.objects)):
            break
    variant = Scene(tuple(objects), scene.background, rng.getrandbits(32))
    return variant, render_scene(variant)


# ----------------------------------------------------------------------------- captions


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def _noun_phrase(obj: SceneObject, rng: random.Random | None, *, size=True, colour=True, shape=True) -> str:
    """'large red circle' (no article); with `rng`, each word is a random synonym."""
    def word(options: tuple[str, ...]) -> str:
        return options[0] if rng is None else rng.choice(options)

    words = []
    if size:
        words.append(word(SIZE_WORDS[obj.size]))
    if colour:
        words.append(word(COLOUR_WORDS[obj.colour]))
    words.append(word(SHAPE_WORDS[obj.shape]) if shape else GENERIC_NOUN)
    return " ".join(words)


def _with_articles(phrases: list[str]) -> list[str]:
    """'a red circle', then 'another red circle' when the same phrase comes again."""
    seen: set[str] = set()
    out = []
    for phrase in phrases:
        determiner = "another" if phrase in seen else _article(phrase)
        seen.add(phrase)
        out.append(f"{determiner} {phrase}")
    return out


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _position_phrase(obj: SceneObject, rng: random.Random) -> str:
    return rng.choice(POSITION_PHRASES[obj.position])


def _background_phrase(scene: Scene, rng: random.Random) -> str:
    kind = rng.choice(BACKGROUND_KIND_WORDS[scene.background])
    return f"{rng.choice(BACKGROUND_PREPOSITIONS)} a {kind} {rng.choice(GREY_WORDS)} {rng.choice(BACKGROUND_NOUNS)}"


def _shuffled(items: list, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


def _reordered(objects: Iterable[SceneObject], rng: random.Random) -> list[SceneObject]:
    """A permutation that differs from the scene order whenever there are two or more objects."""
    objects = list(objects)
    if len(objects) < 2:
        return objects
    while True:
        order = _shuffled(objects, rng)
        if order != objects:
            return order


def _list_caption(objects: list[SceneObject], rng: random.Random | None, **parts) -> str:
    return _join(_with_articles([_noun_phrase(obj, rng, **parts) for obj in objects]))


def _canonical(scene: Scene, rng: random.Random) -> str:
    return _list_caption(list(scene.objects), None)


def _synonyms(scene: Scene, rng: random.Random) -> str:
    # the size word is always a non-canonical synonym, so this never repeats the canonical caption
    phrases = []
    for obj in _reordered(scene.objects, rng):
        size = rng.choice(SIZE_WORDS[obj.size][1:])
        phrases.append(f"{size} {_noun_phrase(obj, rng, size=False)}")
    return _join(_with_articles(phrases))


def _holding_relations(a: SceneObject, b: SceneObject) -> list[str]:
    return [name for name in RELATION_PHRASES if relation_holds(name, a.position, b.position)]


def _relation(scene: Scene, rng: random.Random) -> str:
    objects = list(scene.objects)
    if len(objects) == 1:
        obj = objects[0]
        return f"{_with_articles([_noun_phrase(obj, rng, size=False)])[0]} {_position_phrase(obj, rng)}"
    first, second = rng.sample(objects, 2)
    others = [obj for obj in objects if obj is not first and obj is not second]
    relation = rng.choice(_holding_relations(first, second))
    phrases = _with_articles([_noun_phrase(obj, rng, size=False) for obj in [first, second] + others])
    caption = f"{phrases[0]} {rng.choice(RELATION_PHRASES[relation])} {phrases[1]}"
    for phrase, other in zip(phrases[2:], others):
        # its own position phrase keeps the relation from reading as if it covered this one too
        caption += f", and {phrase} {_position_phrase(other, rng)}"
    return caption


def _count_phrase(count: int, rng: random.Random) -> str:
    word = rng.choice(COUNT_WORDS[count])
    return f"{word} {GENERIC_NOUN}" if count == 1 else f"{word} {GENERIC_NOUN}s"


def _low_detail(scene: Scene, rng: random.Random) -> str:
    objects = _shuffled(scene.objects, rng)
    kind = rng.choice(("colours", "shapes", "count"))
    if kind == "colours":
        return _list_caption(objects, rng, size=False, shape=False)
    if kind == "shapes":
        return _list_caption(objects, rng, size=False, colour=False)
    return f"{_count_phrase(len(objects), rng)} {_background_phrase(scene, rng)}"


def _picture(scene: Scene, rng: random.Random) -> str:
    listing = _list_caption(_shuffled(scene.objects, rng), rng)
    return f"{rng.choice(FRAME_PREFIXES)} {listing} {_background_phrase(scene, rng)}"


def _positions(scene: Scene, rng: random.Random) -> str:
    objects = _shuffled(scene.objects, rng)
    phrases = _with_articles([_noun_phrase(obj, rng) for obj in objects])
    return _join([f"{phrase} {_position_phrase(obj, rng)}" for phrase, obj in zip(phrases, objects)])


def _count(scene: Scene, rng: random.Random) -> str:
    listing = _list_caption(_shuffled(scene.objects, rng), rng, size=False)
    return f"{_count_phrase(len(scene.objects), rng)}: {listing}"


def _background_caption(scene: Scene, rng: random.Random) -> str:
    listing = _list_caption(_shuffled(scene.objects, rng), rng, size=rng.random() < 0.5)
    return f"{listing} {_background_phrase(scene, rng)}"


_STYLE_FUNCTIONS = {
    "canonical": _canonical,
    "synonyms": _synonyms,
    "relation": _relation,
    "low_detail": _low_detail,
    "picture": _picture,
    "positions": _positions,
    "count": _count,
    "background": _background_caption,
}


def describe(scene: Scene, rng: random.Random, style: str) -> str:
    """One caption of `scene` in `style` (one of `STYLES`); true of the scene by construction."""
    if style not in _STYLE_FUNCTIONS:
        raise ValueError(f"unknown caption style {style!r}; choose from {', '.join(STYLES)}")
    return _STYLE_FUNCTIONS[style](scene, rng)


def captions_for_scene(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """`n` different true captions: the five `FIRST_STYLES` in order, then random styles.

    The first five are different by construction (each style has a form the others lack). The
    canonical caption does not depend on `rng`; all the others do, so another `rng` gives new
    wordings. Raises ValueError when the scene has fewer than `n` distinct captions to offer.
    """
    captions: list[str] = []
    for style in FIRST_STYLES[:n]:
        captions.append(describe(scene, rng, style))
    extra_styles = [style for style in STYLES if style != "canonical"]
    attempts = 0
    while len(captions) < n:
        caption = describe(scene, rng, rng.choice(extra_styles))
        if caption not in captions:
            captions.append(caption)
            continue
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"could not find {n} distinct captions for this scene")
    return captions


def partial_caption(scene: Scene, rng: random.Random) -> str:
    """A true caption that describes only one (random) object of the scene."""
    obj = rng.choice(scene.objects)
    form = rng.choice(("plain", "position", "picture", "colour_shape"))
    if form == "colour_shape":
        phrase = _noun_phrase(obj, rng, size=False)
    else:
        phrase = _noun_phrase(obj, rng)
    caption = f"{_article(phrase)} {phrase}"
    if form == "position":
        caption += f" {_position_phrase(obj, rng)}"
    if form == "picture":
        caption = f"{rng.choice(FRAME_PREFIXES)} {caption}"
    return caption


def caption_tokens(caption: str) -> list[str]:
    """Lower-case words of a caption, punctuation dropped (the Karpathy 'tokens' field)."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def world_vocabulary() -> list[str]:
    """Every word any caption generator of this module can emit, sorted."""
    texts: list[str] = list(TEMPLATE_WORDS) + list(GREY_WORDS) + list(BACKGROUND_NOUNS) + [GENERIC_NOUN]
    texts += list(BACKGROUND_PREPOSITIONS) + list(FRAME_PREFIXES)
    for table in (SIZE_WORDS, COLOUR_WORDS, SHAPE_WORDS, POSITION_PHRASES, RELATION_PHRASES,
                  BACKGROUND_KIND_WORDS, COUNT_WORDS):
        for options in table.values():
            texts += list(options)
    return sorted({word for text in texts for word in caption_tokens(text)})


# ----------------------------------------------------------------------------- truth checker


def relation_holds(relation: str, first: str, second: str) -> bool:
    """Whether the object at named position `first` is `relation` the one at `second`."""
    (x1, y1), (x2, y2) = POSITION_GRID[first], POSITION_GRID[second]
    return {"left_of": x1 < x2, "right_of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[relation]


def _words(*groups: Iterable[str]) -> list[str]:
    return [word for group in groups for word in group]


# The checker understands more than the generators emit: extra synonyms and plurals, so that
# paraphrased or attacked captions can still be judged, and out-of-world words that are plainly
# false (a pink object, an oval, a medium size).
_CHECK_SIZES = {
    "small": _words(SIZE_WORDS["small"], ("smaller", "mini", "miniature", "petite", "wee")),
    "large": _words(SIZE_WORDS["large"], ("larger", "bigger", "huge", "giant", "great", "sizable",
                                          "sizeable", "enormous")),
    "medium": ("medium", "mid", "midsize", "average", "moderate"),
}
_CHECK_COLOURS = {
    "red": _words(COLOUR_WORDS["red"], ("reddish", "ruby", "cherry", "carmine")),
    "green": _words(COLOUR_WORDS["green"], ("greenish",)),
    "blue": _words(COLOUR_WORDS["blue"], ("bluish", "blueish")),
    "yellow": _words(COLOUR_WORDS["yellow"], ("yellowish", "golden", "gold", "lemon")),
    "purple": _words(COLOUR_WORDS["purple"], ("purplish",)),
    "orange": _words(COLOUR_WORDS["orange"], ("orangey", "orangish")),
    "white": _words(COLOUR_WORDS["white"], ("snowy",)),
    "black": _words(COLOUR_WORDS["black"], ("ebony",)),
    # grey is only ever the background's colour
    "grey": _words(GREY_WORDS, ("greyish", "grayish", "silver")),
    "other": ("pink", "brown", "cyan", "magenta", "teal", "turquoise", "navy", "maroon", "beige",
              "tan", "lime", "indigo", "lavender", "olive", "aqua"),
}
_CHECK_SHAPES = {
    "circle": _words(SHAPE_WORDS["circle"], ("circles", "disks", "discs")),
    "square": ("square", "squares"),
    "triangle": ("triangle", "triangles", "trigon", "trilateral"),
    "star": ("star", "stars"),
    "diamond": _words(SHAPE_WORDS["diamond"], ("diamonds", "rhombuses", "rhombi", "rhomb", "lozenge",
                                               "lozenges")),
    "hexagon": ("hexagon", "hexagons"),
    "other": ("rectangle", "rectangles", "oval", "ovals", "ellipse", "ellipses", "pentagon",
              "pentagons", "octagon", "octagons", "cross", "crosses", "heart", "hearts", "crescent",
              "moon", "ring", "rings", "arrow", "arrows", "cube", "cubes", "sphere", "spheres", "ball",
              "balls", "cylinder", "cone", "pyramid", "trapezoid", "parallelogram", "line", "lines"),
}
_SHAPE_ADJECTIVES = {"circle": ("circular", "round"), "triangle": ("triangular",), "hexagon": ("hexagonal",)}
_GENERIC_NOUNS = ("shape", "object", "thing", "item", "figure", "form", "element", "symbol", "icon")
_FRAME_NOUNS = ("picture", "image", "photo", "photograph", "drawing", "illustration", "rendering",
                "render", "scene", "view", "sketch", "graphic", "painting", "depiction", "diagram",
                "artwork", "snapshot", "pic", "composition")
_DETERMINERS = ("a", "an", "the", "another")
_NUMBERS = {"one": 1, "single": 1, "two": 2, "pair": 2, "couple": 2, "three": 3, "four": 4, "five": 5,
            "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_BACKGROUND_KINDS = {"plain": _words(BACKGROUND_KIND_WORDS["plain"], ("solid", "smooth", "clean", "blank")),
                     "noisy": _words(BACKGROUND_KIND_WORDS["noisy"], ("textured", "grained", "mottled",
                                                                      "dotted"))}
# words that end the noun phrase being read ("a red circle and ...")
_CONNECTIVES = (
    "and", "with", "plus", "beside", "besides", "alongside", "near", "next", "along", "together",
    "while", "including", "includes", "featuring", "features", "containing", "contains", "showing",
    "shows", "show", "depicting", "depicts", "has", "have", "having", "is", "are", "sits", "sit",
    "sitting", "lies", "lie", "lying", "placed", "located", "positioned", "drawn", "shown", "painted",
    "appears", "appear", "there", "here", "we", "see", "you", "can", "it", "its", "this", "that",
    "these", "those", "which", "of", "on", "in", "at", "against", "by", "to", "as", "well", "also",
    "both", "then", "set", "from", "inside", "within", "over", "across", "some",
)
# words that say nothing checkable about an object ("a bright red circle")
_MODIFIERS = ("very", "quite", "rather", "really", "just", "simply", "slightly", "bright", "dark",
              "light", "pale", "deep", "vivid", "filled", "coloured", "colored", "colour", "color",
              "shaped", "sized", "simple", "nice", "pretty")
# claims that matching objects against phrases cannot decide
_LOGIC = ("not", "no", "none", "nor", "or", "without", "except", "every", "each", "all", "neither",
          "never", "only")

_RELATION_PATTERNS = {
    ("to", "the", "left", "of"): "left_of", ("on", "the", "left", "of"): "left_of", ("left", "of"): "left_of",
    ("to", "the", "right", "of"): "right_of", ("on", "the", "right", "of"): "right_of",
    ("right", "of"): "right_of",
    ("on", "top", "of"): "above", ("above",): "above",
    ("below",): "below", ("beneath",): "below", ("under",): "below", ("underneath",): "below",
}


def _position_patterns() -> dict[tuple[str, ...], str]:
    """Word sequences naming a position: 'the left side', 'the middle', 'top', 'centred' ..."""
    forms = {"left": ("left",), "right": ("right",), "top": ("top",), "bottom": ("bottom",),
             "centre": ("centre", "center", "middle")}
    patterns = {}
    for name, words in forms.items():
        for word in words:
            for pattern in (("the", word, "hand", "side"), ("the", word, "side"), ("the", word),
                            (word, "side"), (word,)):
                patterns[pattern] = name
    patterns[("centred",)] = patterns[("centered",)] = "centre"
    return patterns


_POSITION_PATTERNS = _position_patterns()


def _build_lexicon() -> dict[str, tuple[str, object]]:
    lexicon: dict[str, tuple[str, object]] = {}

    def add(words: Iterable[str], kind: str, value: object) -> None:
        for word in words:
            lexicon.setdefault(word, (kind, value))

    add(_LOGIC, "logic", None)
    add(_DETERMINERS, "det", None)
    add(["one"], "one", None)  # a number, or a pronoun in "a blue one"
    for table, kind in ((_CHECK_SIZES, "size"), (_CHECK_COLOURS, "colour")):
        for value, words in table.items():
            add(words, kind, value)
    for value, words in _CHECK_SHAPES.items():
        add([w for w in words if not _is_plural(w)], "shape", (value, False))
        add([w for w in words if _is_plural(w)], "shape", (value, True))
    for value, words in _SHAPE_ADJECTIVES.items():
        add(words, "shape_adj", value)
    for value, words in _BACKGROUND_KINDS.items():
        add(words, "background_kind", value)
    for head, nouns in (("object", _GENERIC_NOUNS), ("background", BACKGROUND_NOUNS), ("frame", _FRAME_NOUNS)):
        add(nouns, "noun", (head, False))
        add([_plural(n) for n in nouns], "noun", (head, True))
    add(["ones"], "noun", ("object", True))
    add(_MODIFIERS, "modifier", None)
    add(_CONNECTIVES, "connective", None)
    return lexicon


def _is_plural(word: str) -> bool:
    return word.endswith("s") and word not in ("cross", "rhombus") or word in ("rhombi",)


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


_LEXICON = _build_lexicon()
_CLAIM_KINDS = {"size", "colour", "shape", "shape_adj", "background_kind", "position", "relation"}


@dataclass
class _Phrase:
    """One noun phrase of a caption and the claims it makes."""

    quantity: int | None = None  # a number word: exactly this many matching objects
    has_determiner: bool = False
    plural: bool = False
    head: str | None = None  # "object", "background", "frame"; None until a noun arrives
    colours: set = field(default_factory=set)
    shapes: set = field(default_factory=set)
    sizes: set = field(default_factory=set)
    positions: set = field(default_factory=set)
    background_kinds: set = field(default_factory=set)

    def has_content(self) -> bool:
        return bool(self.head or self.colours or self.shapes or self.sizes or self.positions
                    or self.background_kinds)

    def slots(self) -> dict[str, set]:
        return {"colour": self.colours, "size": self.sizes, "shape_adj": self.shapes,
                "background_kind": self.background_kinds}

    def is_object(self) -> bool:
        return self.head in (None, "object") and self.has_content()

    def is_individual(self) -> bool:
        # number phrases are counts over all matching objects ("one shape: a red circle" is two
        # claims about the same object), so only plain singular phrases need objects of their own
        return self.is_object() and not self.plural and self.quantity is None

    def matches(self, obj: SceneObject) -> bool:
        return (self.colours <= {obj.colour} and self.shapes <= {obj.shape} and self.sizes <= {obj.size}
                and self.positions <= {obj.position})


def _caption_words(caption: str) -> list[str]:
    text = caption.lower().replace("-", " ").replace("'", "")
    return re.findall(r"[a-z0-9]+", text)


def _tag(words: list[str]) -> list[tuple[str, object]]:
    """(kind, value) units; multi-word relations and positions become one unit each."""
    units: list[tuple[str, object]] = []
    k = 0
    while k < len(words):
        for length in (4, 3, 2, 1):
            piece = tuple(words[k:k + length])
            if len(piece) == length and piece in _RELATION_PATTERNS:
                units.append(("relation", _RELATION_PATTERNS[piece]))
                break
            if len(piece) == length and piece in _POSITION_PATTERNS:
                units.append(("position", _POSITION_PATTERNS[piece]))
                break
        else:
            word = words[k]
            if word == "shaped" and units and units[-1][0] == "shape":
                # "star-shaped": the shape word is an adjective, the noun comes after it
                units[-1] = ("shape_adj", units[-1][1][0])
            elif word.isdigit():
                units.append(("num", int(word)))
            elif word in _NUMBERS and word != "one":
                units.append(("num", _NUMBERS[word]))
            else:
                units.append(_LEXICON.get(word, ("unknown", word)))
            length = 1
        k += length
    return units


_NOUN_PHRASE_OPENERS = {"size", "colour", "shape", "shape_adj", "noun", "one"}


def _parse(units: list[tuple[str, object]]) -> tuple[list, bool]:
    """Items ('phrase', _Phrase) / ('relation', name) / ('position', name), and whether a word was unknown."""
    items: list[tuple[str, object]] = []
    current: _Phrase | None = None
    pending_positions: set = set()
    unknown = False

    def finish() -> None:
        nonlocal current
        if current is not None and current.has_content():
            items.append(("phrase", current))
        current = None

    def start(**values) -> _Phrase:
        nonlocal current, pending_positions
        finish()
        current = _Phrase(**values)
        current.positions |= pending_positions
        pending_positions = set()
        return current

    for index, (kind, value) in enumerate(units):
        next_kind = units[index + 1][0] if index + 1 < len(units) else None
        if kind == "det":
            start(has_determiner=True)
        elif kind == "num" or (kind == "one" and (current is None or not current.has_content())):
            number = value if kind == "num" else 1
            if current is not None and not current.has_content() and current.quantity is None:
                current.quantity = number
            else:
                start(quantity=number)
        elif kind == "one":  # "a blue one": a pronoun standing for an object
            current.head = current.head or "object"
        elif kind in ("size", "colour", "shape_adj", "background_kind"):
            if current is not None and current.head:
                slot = current.slots()[kind]
                # "a circle, red": an attribute after its noun, when no new noun follows it
                if not slot and next_kind not in _NOUN_PHRASE_OPENERS:
                    slot.add(value)
                    continue
                start()
            if current is None:
                start()
            current.slots()[kind].add(value)
        elif kind == "shape":
            shape, plural = value
            if current is None or current.head:
                start()
            current.shapes.add(shape)
            current.head = "object"
            current.plural = current.plural or plural
        elif kind == "noun":
            head, plural = value
            # "a circle shape", "a star-shaped object": the generic noun keeps the shape
            if current is not None and current.head == "object" and head == "object" and current.shapes:
                current.plural = current.plural or plural
                continue
            if current is None or current.head:
                start()
            current.head = head
            current.plural = current.plural or plural
        elif kind == "position":
            if current is not None and current.has_content():
                current.positions.add(value)
            elif items and items[-1][0] == "relation":
                finish()
                items.append(("position", value))
            elif items and items[-1][0] == "phrase" and items[-1][1].is_object():
                items[-1][1].positions.add(value)
            else:
                pending_positions.add(value)
        elif kind == "relation":
            finish()
            items.append(("relation", value))
        elif kind == "connective":
            finish()
        elif kind == "unknown":
            unknown = True
        # modifiers are ignored
    finish()
    return items, unknown


def _relations(items: list) -> list[tuple[int, str, object]]:
    """(index of left phrase, relation, right side): right is a phrase index or ('position', name)."""
    found = []
    for index, (kind, value) in enumerate(items):
        if kind != "relation":
            continue
        left = next((k for k in range(index - 1, -1, -1)
                     if items[k][0] == "phrase" and items[k][1].is_object()), None)
        right = None
        for k in range(index + 1, len(items)):
            if items[k][0] == "position":
                right = items[k]
                break
            if items[k][0] == "phrase" and items[k][1].is_object():
                right = k
                break
        if left is not None and right is not None:
            found.append((left, value, right))
    return found


def _background_true(phrase: _Phrase, scene: Scene) -> bool:
    return (phrase.background_kinds <= {scene.background} and phrase.colours <= {"grey"}
            and not phrase.shapes and not phrase.sizes and not phrase.positions)


def _counts_true(phrase: _Phrase, scene: Scene) -> bool:
    matching = sum(phrase.matches(obj) for obj in scene.objects)
    if phrase.quantity is not None:
        return matching == phrase.quantity
    return matching >= (2 if phrase.plural else 1)


def check_caption(caption: str, scene: Scene) -> bool | None:
    """True if every claim of `caption` holds in `scene`, False if one does not, None if unparseable.

    Claims: each noun phrase names an object that exists (distinct phrases, distinct objects) with
    the stated size, colour, shape and named position; number words are exact counts ("two
    shapes" = exactly two objects; "a single red circle" = exactly one); plurals mean two or
    more; relations ("to the left of", "above", ...) hold between the named objects; a background
    phrase matches the background kind and is grey. Captions need not mention every object.
    Unknown words: see the module docstring (False, or None when nothing is about the world).
    """
    units = _tag(_caption_words(caption))
    if any(kind == "logic" for kind, _ in units):
        return None
    has_claim = any(kind in _CLAIM_KINDS or (kind == "noun" and value[0] != "frame")
                    for kind, value in units)
    if not has_claim:
        return None
    items, unknown = _parse(units)
    if unknown:
        return False
    phrases = [value for kind, value in items if kind == "phrase"]
    for phrase in phrases:
        if phrase.head == "background" and not _background_true(phrase, scene):
            return False
        if phrase.is_object() and not _counts_true(phrase, scene):
            return False
    return _assignment_exists(items, scene)


def _assignment_exists(items: list, scene: Scene) -> bool:
    """Whether distinct objects can stand for the singular phrases with every relation holding."""
    individuals = [k for k, (kind, value) in enumerate(items) if kind == "phrase" and value.is_individual()]
    relations = _relations(items)
    if len(individuals) > len(scene.objects):
        return False
    for chosen in itertools.permutations(scene.objects, len(individuals)):
        assigned = dict(zip(individuals, chosen))
        if not all(items[k][1].matches(obj) for k, obj in assigned.items()):
            continue
        if all(_relation_true(items, assigned, scene, rel) for rel in relations):
            return True
    return False


def _relation_true(items: list, assigned: dict, scene: Scene, relation: tuple) -> bool:
    left, name, right = relation

    def positions_of(side) -> list[str]:
        if isinstance(side, tuple):  # ("position", name)
            return [side[1]]
        if side in assigned:
            return [assigned[side].position]
        return [obj.position for obj in scene.objects if items[side][1].matches(obj)]

    return all(relation_holds(name, a, b) for a in positions_of(left) for b in positions_of(right))


# ----------------------------------------------------------------------------- writer


def _item_rng(seed: int, index: int, purpose: str) -> random.Random:
    # a string seed is hashed with SHA-512: stable everywhere, and each image can be rebuilt alone
    return random.Random(f"sample-world/{purpose}/{seed}/{index}")


def split_sizes(n: int, val_frac: float, test_frac: float) -> dict[str, int]:
    val, test = round(n * val_frac), round(n * test_frac)
    return {"train": n - val - test, "val": val, "test": test}


def _check_arguments(n: int, val_frac: float, test_frac: float, n_captions: int) -> None:
    if n < 1:
        raise SourceError(f"the sample world needs at least 1 image, not {n}")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise SourceError(f"val and test fractions must be in [0, 1) and sum below 1, not {val_frac} and {test_frac}")
    if split_sizes(n, val_frac, test_frac)["train"] < 1:
        raise SourceError(f"{n} images leave no training images with val {val_frac} and test {test_frac}")
    if not 1 <= n_captions <= 10:
        raise SourceError(f"captions per image must be between 1 and 10, not {n_captions}")


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SourceError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SourceError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace it")


def _move_into_place(built: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        built.rename(out_dir)
        return
    # rename cannot replace a non-empty folder: move the old one aside first, drop it after
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    built.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _progress(iterable: Iterable, total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc="sample world", unit="image",
                disable=total < 500 or not sys.stderr.isatty())


def _image_record(index: int, filename: str, split: str, scene: Scene, captions: list[str],
                  n_captions: int) -> dict:
    sentids = [index * n_captions + j for j in range(len(captions))]
    sentences = [
        {"raw": caption, "tokens": caption_tokens(caption), "imgid": index, "sentid": sentid}
        for caption, sentid in zip(captions, sentids)
    ]
    return {"filename": filename, "imgid": index, "split": split, "sentids": sentids,
            "sentences": sentences, "scene": scene.to_dict()}


def build_item(seed: int, index: int, n_captions: int = 5) -> tuple[Scene, Image.Image, list[str]]:
    """Scene, image and captions of image `index` of the world with `seed` (independent of n)."""
    scene = sample_scene(_item_rng(seed, index, "scene"))
    captions = captions_for_scene(scene, _item_rng(seed, index, "captions"), n_captions)
    return scene, render_scene(scene), captions


def write_sample(out_dir, n: int = 4000, seed: int = 0, val_frac: float = 0.125, test_frac: float = 0.125,
                 n_captions: int = 5, overwrite: bool = False, expressions: int = 0) -> Path:
    """Write the sample world in the Karpathy layout and return `out_dir`.

    `out_dir/dataset_sample.json` lists the images (train first, then val, then test, each with
    its scene) and `out_dir/images/` holds the PNGs. The same arguments give byte-identical
    files. The folder is built as a hidden sibling and renamed into place at the end, so an
    interrupted run leaves `out_dir` untouched.

    `expressions` > 0 (grounding): each image's captions are instead its objects' referring
    expressions, that many per object, and its record lists them per object with the true box
    (`objects`), as `build_grounding_item` makes them.
    """
    out_dir = Path(out_dir)
    _check_arguments(n, val_frac, test_frac, n_captions)
    _refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(n, val_frac, test_frac)
    splits = ["train"] * sizes["train"] + ["val"] * sizes["val"] + ["test"] * sizes["test"]
    digits = max(6, len(str(n - 1)))
    building = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        (building / "images").mkdir(parents=True)
        records = []
        for index in _progress(range(n), n):
            if expressions > 0:
                scene, image, objects = build_grounding_item(seed, index, expressions)
                captions = [text for obj in objects for text in obj["expressions"]]
            else:
                scene, image, captions = build_item(seed, index, n_captions)
            filename = f"{index:0{digits}d}.png"
            image.save(building / "images" / filename, format="PNG", optimize=False, compress_level=6)
            per_image = n_captions if expressions <= 0 else expressions * len(POSITIONS)
            records.append(_image_record(index, filename, splits[index], scene, captions, per_image))
            if expressions > 0:
                records[-1]["objects"] = objects
        document = {"dataset": "sample", "images": records}
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        (building / "dataset_sample.json").write_text(text + "\n", encoding="utf-8")
        _move_into_place(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def check_caption_of_row(caption: str, row: dict) -> bool | None:
    """`check_caption` against a source row's scene (kept in its `meta`); None without a scene.

    The signature evaluation's `caption_checker` takes: it judges whether an attacked caption is
    still true of its image.
    """
    scene = json.loads(row.get("meta") or "{}").get("scene")
    return None if scene is None else check_caption(caption, Scene.from_dict(scene))


def has_scenes(dataset) -> bool:
    """True when every row of a source dataset carries a sample-world scene."""
    return all("scene" in json.loads(meta or "{}") for meta in dataset["meta"])


# ----------------------------------------------------------------------------- referring expressions
# Visual grounding (issue 15): each object of a scene gets expressions that single it out ("the red
# circle", "the large square on the left"), its true box, and every object of the scene as a
# candidate box. `check_expression` judges an (attacked) expression: does it still single out the
# same object?

# which content words an expression names, in the order the canonical expression tries them:
# the first that singles the object out is its canonical (shortest) expression
EXPRESSION_FORMS = (
    ("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"),
    ("colour",), ("size",), ("position",), ("shape", "position"), ("colour", "shape", "position"),
    ("size", "colour", "shape", "position"),
)


def object_box(obj: SceneObject) -> tuple[int, int, int, int]:
    """The object's box [x, y, w, h] in pixels of the 64x64 image (inclusive pixel extents, as
    COCO/RefCOCO boxes are read by ALBEF's IoU), from the same geometry `_draw_object` draws."""
    cx, cy = POSITION_PIXELS[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    radius = SIZE_RADIUS[obj.size]
    if obj.shape == "circle":
        xs = [round(cx - radius), round(cx + radius)]
        ys = [round(cy - radius), round(cy + radius)]
    else:
        cos_r, sin_r = _cos(obj.rotation), _sin(obj.rotation)
        points = [(round(cx + radius * (x * cos_r - y * sin_r)), round(cy + radius * (x * sin_r + y * cos_r)))
                  for x, y in _unit_outline(obj.shape)]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = max(0, min(xs)), max(0, min(ys))
    x1, y1 = min(IMAGE_SIZE - 1, max(xs)), min(IMAGE_SIZE - 1, max(ys))
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def _form_matches(form: tuple[str, ...], obj: SceneObject, other: SceneObject) -> bool:
    return all(getattr(obj, name) == getattr(other, name) for name in form)


def singles_out(form: tuple[str, ...], scene: Scene, target: int) -> bool:
    """Whether naming `form`'s attributes of object `target` matches no other object."""
    obj = scene.objects[target]
    return not any(_form_matches(form, obj, other) for k, other in enumerate(scene.objects) if k != target)


def _expression_text(obj: SceneObject, form: tuple[str, ...], rng: random.Random | None) -> str:
    def word(options: tuple[str, ...]) -> str:
        return options[0] if rng is None else rng.choice(options)

    words = ["the"]
    if "size" in form:
        words.append(word(SIZE_WORDS[obj.size]))
    if "colour" in form:
        words.append(word(COLOUR_WORDS[obj.colour]))
    words.append(word(SHAPE_WORDS[obj.shape]) if "shape" in form else GENERIC_NOUN)
    if "position" in form:
        words.append(word(POSITION_PHRASES[obj.position]))
    return " ".join(words)


def _relation_expression(scene: Scene, target: int, rng: random.Random) -> str | None:
    """'the red circle to the left of the blue square', when the landmark singles itself out."""
    obj = scene.objects[target]
    landmarks = [k for k in range(len(scene.objects)) if k != target]
    if not landmarks:
        return None
    landmark = rng.choice(landmarks)
    relation = rng.choice(_holding_relations(obj, scene.objects[landmark]))
    own = _expression_text(obj, ("colour", "shape"), rng)
    forms = [f for f in EXPRESSION_FORMS if "position" not in f and singles_out(f, scene, landmark)]
    other = _expression_text(scene.objects[landmark], rng.choice(forms) if forms else ("colour", "shape"), rng)
    return f"{own} {rng.choice(RELATION_PHRASES[relation])} {other}"


def canonical_expression(scene: Scene, target: int) -> str:
    """The shortest expression (first of `EXPRESSION_FORMS`) that singles out object `target`."""
    form = next(f for f in EXPRESSION_FORMS if singles_out(f, scene, target))
    return _expression_text(scene.objects[target], form, None)


def referring_expressions(scene: Scene, target: int, rng: random.Random, n: int = 3) -> list[str]:
    """Up to `n` distinct expressions that single out object `target` (each checked by
    `check_expression`): the canonical one first, then random forms and synonyms, and a relation to
    another object. Fewer than `n` only when the scene offers no more distinct wordings."""
    expressions = [canonical_expression(scene, target)]
    forms = [f for f in EXPRESSION_FORMS if singles_out(f, scene, target)]
    attempts = 0
    while len(expressions) < n and attempts < 50 * n:
        attempts += 1
        if len(scene.objects) > 1 and rng.random() < 0.25:
            text = _relation_expression(scene, target, rng)
        else:
            text = _expression_text(scene.objects[target], rng.choice(forms), rng)
        if text and text not in expressions and check_expression(text, scene, target):
            expressions.append(text)
    return expressions


def expressions_for_scene(scene: Scene, rng: random.Random, n: int = 3) -> list[dict]:
    """Every object's referring expressions with its true box: [{object, box, expressions}]."""
    return [{"object": k, "box": list(object_box(obj)), "expressions": referring_expressions(scene, k, rng, n)}
            for k, obj in enumerate(scene.objects)]


def build_grounding_item(seed: int, index: int, n_expressions: int = 3) -> tuple[Scene, Image.Image, list[dict]]:
    """Scene, image and per-object expressions of image `index` of the world with `seed`
    (the same scene and image as `build_item`; expressions from their own random stream)."""
    scene = sample_scene(_item_rng(seed, index, "scene"))
    return scene, render_scene(scene), expressions_for_scene(scene, _item_rng(seed, index, "expressions"), n_expressions)


def referents(expression: str, scene: Scene) -> list[int] | None:
    """Indices of the objects `expression` can refer to (its first object phrase, with every
    relation and landmark holding); None when the checker cannot read it (see `check_caption`)."""
    units = _tag(_caption_words(expression))
    if any(kind == "logic" for kind, _ in units):
        return None
    has_claim = any(kind in _CLAIM_KINDS or (kind == "noun" and value[0] != "frame") for kind, value in units)
    if not has_claim:
        return None
    items, unknown = _parse(units)
    if unknown:
        return []  # a claim this closed world cannot contain: it refers to nothing here
    individuals = [k for k, (kind, value) in enumerate(items) if kind == "phrase" and value.is_individual()]
    if not individuals:
        return None
    relations = _relations(items)
    found = set()
    for chosen in itertools.permutations(range(len(scene.objects)), len(individuals)):
        assigned = {k: scene.objects[c] for k, c in zip(individuals, chosen)}
        if chosen[0] in found or not all(items[k][1].matches(obj) for k, obj in assigned.items()):
            continue
        if all(_relation_true(items, assigned, scene, rel) for rel in relations):
            found.add(chosen[0])
    return sorted(found)


def check_expression(expression: str, scene: Scene, target: int) -> bool | None:
    """True if `expression` singles out object `target` of `scene` (it can refer to that object
    and to no other), False if it refers to another object, to several or to none, None if the
    checker cannot read it (no word about the world; negation, 'or', 'every')."""
    found = referents(expression, scene)
    return None if found is None else found == [target]
