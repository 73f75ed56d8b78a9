"""Procedural generators of the sample world, which knows each image's scene.

* `t2i-render`: for a source caption, new images rendered from the image's scene: the same
  content (so the caption stays true), other layout details (jitter, rotation, noise). The
  world's analogue of text-to-image generation, well aligned and diverse by construction.
* `i2t-scene`: new captions that are true of an image's scene, in wordings the source may lack
  (`--caption-style partial` describes one object only; `noisy` corrupts one attribute word of
  a whole-scene caption so that it is false of the image: a deliberately noisy pool; each row
  records `false_of_image`, with a note on the rare caption no swap could make false).
* `shuffle`: captions of other images, a deliberately misaligned control.

Rows depend only on (seed, image id, caption index, k), like every generator.
"""
from __future__ import annotations

import json
import random

from augment.errors import SourceError
from augment.generators.base import Generator, row_seed

METHODS = ["t2i-render", "i2t-scene", "shuffle"]
CAPTION_STYLES = ("full", "partial", "mixed", "noisy")


def corrupt_attribute(caption: str, scene, rng: random.Random, tries: int = 20) -> str:
    """`caption` with one colour, shape or size word swapped for another of its kind so that the
    world's checker calls it false (the caption unchanged if no swap makes it false)."""
    from augment.world.captions import COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, article
    from augment.world.truth import check_caption

    kinds = [tuple(w for words in table.values() for w in words) for table in (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS)]
    words = caption.split()
    slots = [(i, kind) for i, word in enumerate(words) for kind in kinds if word.lower().strip(",.") in kind]
    for _ in range(tries if slots else 0):
        i, kind = rng.choice(slots)
        original = words[i].lower().strip(",.")
        new = rng.choice([w for w in kind if w != original])
        before = words[:i]
        if before and before[-1].lower() in ("a", "an"):
            # the article agrees with the new word ("an emerald" -> "a red"): a true caption never has "an red",
            # so a left-over article would tell a model which captions are the corrupted ones
            before = before[:-1] + [article(new)]
        candidate = " ".join(before + [words[i].lower().replace(original, new)] + words[i + 1:])
        if check_caption(candidate, scene) is False:
            return candidate
    return caption


def _scene(item: dict):
    from augment.world.scene import Scene

    meta = json.loads(item.get("meta") or "{}")
    if "scene" not in meta:
        raise SourceError(
            f"image {item['image_id']!r} has no scene description: procedural methods need the "
            "sample world (augment make-sample)"
        )
    try:
        return Scene.from_dict(meta["scene"])
    except SourceError as exc:
        raise SourceError(f"image {item['image_id']!r}: {exc}") from None


def _refuse_items_without_scenes(items) -> None:
    """The SourceError `_scene` raises, for the first item without a scene, before the pool is created;
    reads the `meta` column only (no image decoded)."""
    from augment.sources import arrow_columns

    ids, metas = arrow_columns(items, ["image_id", "meta"])
    for image_id, meta in zip(ids.to_pylist(), metas.to_pylist()):
        if not meta or '"scene"' not in meta:  # the full check (and its parse) is `_scene`'s, per item
            _scene({"image_id": image_id, "meta": meta})


class RenderGenerator(Generator):
    method = "t2i-render"
    modality = "image"
    model = "sample-world-renderer"

    def __init__(self, captions_per_image: int | None = None):
        self.captions_per_image = captions_per_image

    def params(self) -> dict:
        return {"captions_per_image": self.captions_per_image}

    def prepare(self, items) -> None:
        _refuse_items_without_scenes(items)

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        from augment.world.render import rerender_variant

        rows = []
        for item in items:
            scene = _scene(item)
            for c in range(len(item["captions"][: self.captions_per_image])):
                for k in range(n):
                    rng = random.Random(row_seed(seed, item["image_id"], c, k))
                    variant, image = rerender_variant(scene, rng)
                    rows.append(self.row(item, c, k, seed, image=image, scene=variant.to_dict()))
        return rows


class SceneCaptionGenerator(Generator):
    method = "i2t-scene"
    modality = "text"
    model = "sample-world-describer"
    max_tries = 50  # per row: wordings are drawn until one is new

    def __init__(self, caption_style: str = "full"):
        if caption_style not in CAPTION_STYLES:
            raise SourceError(f"--caption-style must be one of {', '.join(CAPTION_STYLES)}, not {caption_style!r}")
        self.caption_style = caption_style
        # noisy rows changed on 2026-12-07 (the article before a swapped word agrees with it), the other styles'
        # did not: only a half-made noisy pool is refused. No recipe_since: the code that writes the new rows
        # records recipe 2, so a noisy pool recording 1 (or nothing) holds old rows
        self.recipe = 2 if caption_style == "noisy" else 1

    def params(self) -> dict:
        return {"caption_style": self.caption_style}

    def prepare(self, items) -> None:
        _refuse_items_without_scenes(items)

    def _draw(self, scene, rng: random.Random) -> str:
        from augment.world.captions import STYLES, describe, partial_caption

        partial = self.caption_style == "partial" or (self.caption_style == "mixed" and rng.random() < 0.5)
        caption = partial_caption(scene, rng) if partial else describe(scene, rng, rng.choice(STYLES))
        return corrupt_attribute(caption, scene, rng) if self.caption_style == "noisy" else caption

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        rows = []
        for item in items:
            scene = _scene(item)
            seen = {caption.lower() for caption in item["captions"]}
            for k in range(n):
                rng = random.Random(row_seed(seed, item["image_id"], -1, k))
                for _ in range(self.max_tries):
                    caption = self._draw(scene, rng)
                    if caption.lower() not in seen:
                        break
                else:
                    continue  # this scene has no further wording; fewer than n rows
                seen.add(caption.lower())
                rows.append(self.row(item, -1, k, seed, caption=caption, style=self.caption_style,
                                     **self._noise_record(caption, scene)))
        return rows

    def _noise_record(self, caption: str, scene) -> dict:
        """For a noisy caption, whether it is false of its image (the world's checker): a caption
        with no colour, shape or size word that a swap makes false stays true, and its row says so
        rather than pass for noise."""
        if self.caption_style != "noisy":
            return {}
        from augment.world.truth import check_caption

        if check_caption(caption, scene) is False:
            return {"false_of_image": True}
        return {"false_of_image": False, "note": "no attribute swap made this caption false: kept as drawn"}


class ShuffleGenerator(Generator):
    """Captions drawn from other images of the run: a deliberately misaligned control."""

    method = "shuffle"
    modality = "text"
    model = "none"
    reads_other_items = True  # its bank: every item's captions

    def prepare(self, items) -> None:
        self.bank = list(zip(items["image_id"], items["captions"]))
        if len(self.bank) < 2:
            raise SourceError("shuffle needs at least two source images")

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        rows = []
        for item in items:
            for k in range(n):
                rng = random.Random(row_seed(seed, item["image_id"], -1, k))
                other_id, captions = self.bank[rng.randrange(len(self.bank))]
                while other_id == item["image_id"]:
                    other_id, captions = self.bank[rng.randrange(len(self.bank))]
                rows.append(self.row(item, -1, k, seed, caption=rng.choice(captions), from_image_id=other_id))
        return rows


def add_arguments(parser) -> None:
    parser.add_argument("--caption-style", default="full", choices=list(CAPTION_STYLES),
                        help="i2t-scene: whole-scene captions, one-object captions, both, or whole-scene "
                             "captions with one attribute word corrupted (false: a noisy pool)")


OPTIONS_READ = {"t2i-render": {"captions_per_image"}, "i2t-scene": {"caption_style"}, "shuffle": set()}


def options_read(method: str, args) -> set[str]:
    return set(OPTIONS_READ[method])


def build(method: str, args) -> Generator:
    if method == "t2i-render":
        return RenderGenerator(getattr(args, "captions_per_image", None))
    if method == "i2t-scene":
        return SceneCaptionGenerator(args.caption_style)
    return ShuffleGenerator()
