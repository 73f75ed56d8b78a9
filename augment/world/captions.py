"""True captions of a scene in several styles, from a lexicon of true synonyms only."""
from __future__ import annotations

import random
import re
from typing import Iterable

from augment.world.scene import Scene, SceneObject, relation_holds

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


def article(phrase: str) -> str:
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
        determiner = "another" if phrase in seen else article(phrase)
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


def holding_relations(a: SceneObject, b: SceneObject) -> list[str]:
    return [name for name in RELATION_PHRASES if relation_holds(name, a.position, b.position)]


def _relation(scene: Scene, rng: random.Random) -> str:
    objects = list(scene.objects)
    if len(objects) == 1:
        obj = objects[0]
        return f"{_with_articles([_noun_phrase(obj, rng, size=False)])[0]} {_position_phrase(obj, rng)}"
    first, second = rng.sample(objects, 2)
    others = [obj for obj in objects if obj is not first and obj is not second]
    relation = rng.choice(holding_relations(first, second))
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
    caption = f"{article(phrase)} {phrase}"
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
