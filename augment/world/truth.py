"""Whether a caption, or a referring expression, is true of a scene.

`check_caption` understands the caption generators' lexicon plus extra synonyms and out-of-world
words (other colours, shapes, sizes), so it can judge captions that an attack or an augmenter
changed. Its rules for words it does not know:

* a caption with no word about the world at all ("hello", "a banana") -> ``None``;
* negation, disjunction and universal quantifiers ("not", "or", "every") -> ``None``
  (they cannot be checked by matching claims against objects);
* otherwise an unknown word is a claim this closed world cannot contain -> ``False``
  ("a red banana" is False; so is "a boastful red circle").
"""
from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Iterable

from augment.world.captions import (
    BACKGROUND_KIND_WORDS, BACKGROUND_NOUNS, COLOUR_WORDS, GREY_WORDS, SHAPE_WORDS, SIZE_WORDS,
)
from augment.world.scene import Scene, SceneObject, relation_holds


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
        # objects are solid fills: a background texture word on one ("a speckled circle") is false of it
        return (self.background_kinds <= {"plain"} and self.colours <= {obj.colour} and self.shapes <= {obj.shape}
                and self.sizes <= {obj.size} and self.positions <= {obj.position})


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
            start()
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
            if next_kind in _NOUN_PHRASE_OPENERS and (current is None or not current.has_content()):
                # before its noun ("a centre black diamond", "and the left circle"): this phrase's
                if current is not None:
                    current.positions.add(value)
                else:
                    pending_positions.add(value)
            elif current is not None and current.has_content():
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
        right, in_frame = None, None
        for k in range(index + 1, len(items)):
            if items[k][0] == "position":
                right = items[k]
                break
            if items[k][0] == "phrase" and items[k][1].head == "frame":
                # "on the left of the picture": a position in the frame, not a relation to an object
                in_frame = _FRAME_RELATION_POSITIONS[value]
                break
            if items[k][0] == "phrase" and items[k][1].is_object():
                right = k
                break
        if in_frame is not None and left is not None:
            items[left][1].positions.add(in_frame)
        elif left is not None and right is not None:
            found.append((left, value, right))
    return found


# a relation to the frame itself names where in it: "on the left of the picture" is "on the left"
_FRAME_RELATION_POSITIONS = {"left_of": "left", "right_of": "right", "above": "top", "below": "bottom"}


@dataclass(frozen=True)
class _Reading:
    """What a text says, read once: its items (`_parse`), whether a word was unknown, the indices of
    its singular object phrases and its relations (`_relations`). Shared by every check of the text:
    treat as read-only."""

    items: tuple
    unknown: bool
    individuals: tuple[int, ...]
    relations: tuple[tuple[int, str, object], ...]


@functools.lru_cache(maxsize=1 << 13)  # ~3.7 KB a reading: at most ~30 MB
def _read(text: str) -> _Reading | None:
    """The reading of `text`, None when the checker cannot judge it (negation, disjunction or
    universal quantifiers; no word about the world). Cached: grounding's training labels check
    every expression of a batch against every scene of it, and its counterfactual edits one
    expression against a dozen edited scenes, so a text is read once instead of thousands of times
    (the 2,000-scene grounding world of the tests has 2,270 distinct expressions)."""
    units = _tag(_caption_words(text))
    if any(kind == "logic" for kind, _ in units):
        return None
    if not any(kind in _CLAIM_KINDS or (kind == "noun" and value[0] != "frame") for kind, value in units):
        return None
    items, unknown = _parse(units)
    individuals = tuple(k for k, (kind, value) in enumerate(items) if kind == "phrase" and value.is_individual())
    return _Reading(tuple(items), unknown, individuals, tuple(_relations(items)))


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
    reading = _read(caption)
    if reading is None:
        return None
    if reading.unknown:
        return False
    items = reading.items
    phrases = [value for kind, value in items if kind == "phrase"]
    for phrase in phrases:
        if phrase.head == "background" and not _background_true(phrase, scene):
            return False
        if phrase.is_object() and not _counts_true(phrase, scene):
            return False
    return _assignment_exists(reading, scene)


def _assignments(reading: "_Reading", scene: Scene):
    """Each way distinct objects of `scene` can stand for the reading's singular phrases, every one
    matching its phrase and every relation holding: (object indices in phrase order, {phrase index:
    object}). One empty assignment when there are no singular phrases."""
    items, individuals = reading.items, reading.individuals
    # the objects each singular phrase can stand for; an assignment is one of each, all distinct
    matching = [[c for c, obj in enumerate(scene.objects) if items[k][1].matches(obj)] for k in individuals]
    for chosen in itertools.product(*matching):
        if len(set(chosen)) < len(chosen):
            continue
        assigned = {k: scene.objects[c] for k, c in zip(individuals, chosen)}
        if all(_relation_true(items, assigned, scene, rel) for rel in reading.relations):
            yield chosen, assigned


def _assignment_exists(reading: "_Reading", scene: Scene) -> bool:
    """Whether distinct objects can stand for the singular phrases with every relation holding."""
    return next(_assignments(reading, scene), None) is not None


def _relation_true(items: list, assigned: dict, scene: Scene, relation: tuple) -> bool:
    left, name, right = relation

    def positions_of(side) -> list[str]:
        if isinstance(side, tuple):  # ("position", name)
            return [side[1]]
        if side in assigned:
            return [assigned[side].position]
        return [obj.position for obj in scene.objects if items[side][1].matches(obj)]

    return all(relation_holds(name, a, b) for a in positions_of(left) for b in positions_of(right))


def referents(expression: str, scene: Scene) -> list[int] | None:
    """Indices of the objects `expression` can refer to (its first object phrase, with every
    relation and landmark holding); None when the checker cannot read it (see `check_caption`)."""
    reading = _read(expression)
    if reading is None:
        return None
    if reading.unknown:
        return []  # a claim this closed world cannot contain: it refers to nothing here
    if not reading.individuals:
        return None
    return sorted({chosen[0] for chosen, _ in _assignments(reading, scene)})


def check_expression(expression: str, scene: Scene, target: int) -> bool | None:
    """True if `expression` singles out object `target` of `scene` (it can refer to that object
    and to no other), False if it refers to another object, to several or to none, None if the
    checker cannot read it (no word about the world; negation, 'or', 'every')."""
    found = referents(expression, scene)
    return None if found is None else found == [target]


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
