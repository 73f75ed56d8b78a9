"""`eda`: Easy Data Augmentation (Wei & Zou, 2019) on captions, word-level and pure Python.

The four operations, each with its strength `alpha` (default 0.1, as in the EDA paper), where
`w` is the number of words in the caption:

* `sr` synonym replacement: replace max(1, int(alpha * w)) distinct non-stop words by a random
  WordNet synonym (`augment.wordnet.synonyms`, stop words left out of the synonyms too);
* `ri` random insertion: insert max(1, int(alpha * w)) times a random WordNet synonym of a random
  non-stop word at a random position;
* `rs` random swap: swap two words with different spellings, max(1, int(alpha * w)) times;
* `rd` random deletion: delete each word with probability alpha; at least one word goes (so the
  caption changes) and at least one stays.

Captions keep their shape: a caption is split into whitespace chunks, each chunk into leading
punctuation, a core word and trailing punctuation; operations act on the core words and keep
punctuation where it was (a swap exchanges words between slots, so "square, a star" becomes
"star, a square"); the caption's final ".", "!" or "?" is kept; a capitalised first word is
written in lower case when an operation moves it away from the front, and whatever word ends up
first is capitalised (all-caps words and "I" keep their case, and so does a first letter that lower
case and back would not give back, Turkish "İ"). Replacements take the case of
the word they replace.

Rows: for each source caption, output slot k (0..N-1) applies op `ops[k % len(ops)]` with a
random generator seeded by the row seed, so rows are deterministic per (seed, image, caption,
k). A result equal to the source caption or to an earlier slot's (compared in lower case with
whitespace normalised) is drawn again, up to `MAX_ATTEMPTS` times; an op that cannot apply
(`sr`/`ri` with no word that has synonyms, `rs` with fewer than two different words, `rd` with
a single word) hands the slot to the next op in the list. A slot that still yields nothing new
is left out: captions too short to change (e.g. one word without synonyms) get fewer than N rows,
possibly none, so the pool never holds a copy of its source caption. Provenance of each row:
the op, its alpha, and the edits made (e.g. `["sr", "square", "foursquare"]`).

Written here, not with nlpaug's word augmenters (the benchmark's baseline): those draw from the
global random generator and record no edits, and rows here must be reproducible per row seed
with their provenance; this is also faster (`bench text_generators`: swap 1.8x, delete 1.5x).
"""
from __future__ import annotations

import argparse
import random
from functools import lru_cache
from typing import Callable, NamedTuple

from augment.arguments import positive_fraction
from augment.generators.base import Generator, row_seed
from augment.wordnet import STOP_WORDS, require_wordnet, synonyms
from augment.words import Chunk, is_word, keeps_case, match_case, split_chunk

METHODS = ["eda"]
OPS = ("sr", "ri", "rs", "rd")
WORDNET_OPS = ("sr", "ri")
DEFAULT_ALPHA = 0.1
MAX_ATTEMPTS = 10


# ----------------------------------------------------------------------------- caption form


class Caption(NamedTuple):
    chunks: tuple[Chunk, ...]
    end: str  # the caption's final punctuation ("." "!" "?"), or ""
    capitalised: bool  # whether the first word started with a capital letter

    def word_slots(self) -> list[int]:
        """Indices of chunks that hold a word (punctuation-only chunks are left alone)."""
        return [i for i, chunk in enumerate(self.chunks) if chunk[1]]

    def with_chunks(self, chunks) -> "Caption":
        return Caption(tuple(chunks), self.end, self.capitalised)


def parse_caption(text: str) -> Caption:
    """Split a caption; the first word is lowered out of sentence case (see `render_caption`)."""
    pieces = text.split()
    end = ""
    if pieces and pieces[-1][-1] in ".!?":  # the caption's final punctuation, kept apart
        last = pieces[-1].rstrip(".!?")
        end = pieces[-1][len(last):]
        if last:
            pieces[-1] = last
        else:
            pieces.pop()
    chunks = [split_chunk(piece) for piece in pieces]
    first = next((i for i, chunk in enumerate(chunks) if chunk.core), None)
    # sentence case only where lowering the letter and capitalising it again gives it back: "İ" lowers to
    # two characters ("i" + a combining dot) and came back as "I\u0307", another byte string than the word's
    capitalised = first is not None and chunks[first].core[0].isupper() and _case_round_trips(chunks[first].core[0])
    if capitalised and not keeps_case(chunks[first].core):
        core = chunks[first].core
        chunks[first] = chunks[first].with_core(core[0].lower() + core[1:])
    return Caption(tuple(chunks), end, capitalised)


def _case_round_trips(letter: str) -> bool:
    lowered = letter.lower()
    return len(lowered) == 1 and lowered.upper() == letter


def render_caption(caption: Caption) -> str:
    chunks = list(caption.chunks)
    if caption.capitalised:
        first = next((i for i, chunk in enumerate(chunks) if chunk.core), None)
        if first is not None:
            core = chunks[first].core
            chunks[first] = chunks[first].with_core(core[0].upper() + core[1:])
    return " ".join([p + c + s for p, c, s in chunks]) + caption.end


def normalised(text: str) -> str:
    """The form captions are deduplicated in: lower case, single spaces."""
    return " ".join(text.lower().split())


# ----------------------------------------------------------------------------- the operations


class RowRandom(random.Random):
    """`random.Random` API on SplitMix64 (Steele et al., 2014), which costs nothing to seed.

    Every EDA output slot gets its own generator from its row seed; seeding Python's Mersenne
    Twister takes ~10 us, as long as a whole EDA operation, while an EDA op draws only a few
    numbers, so a light 64-bit generator halves EDA's cost.
    """

    _MASK = (1 << 64) - 1

    def seed(self, a=None, version=2) -> None:  # noqa: ARG002 (the signature random.Random calls)
        self._state = int(a or 0) & self._MASK

    def _next64(self) -> int:
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & self._MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self._MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self._MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self._next64() >> 11) * (1.0 / (1 << 53))

    def getrandbits(self, k: int) -> int:
        bits, have = 0, 0
        while have < k:
            bits, have = (bits << 64) | self._next64(), have + 64
        return bits >> (have - k)

    def getstate(self):
        return self._state

    def setstate(self, state) -> None:
        self._state = state


class Edit(NamedTuple):
    caption: Caption
    # e.g. (("sr", "dog", "hound"), ("rd", "big")); tuples of strings, not lists: the garbage
    # collector stops tracking them, which keeps long runs (WordNet loaded) fast
    changes: tuple[tuple[str, ...], ...]


class Augmentation(NamedTuple):
    k: int  # the output slot
    op: str  # the op that made it (a slot's own op, or the next one that could change the caption)
    text: str
    changes: tuple[tuple[str, ...], ...]


@lru_cache(maxsize=None)
def _eda_synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms that are not stop words ("one" has "i" among its WordNet synonyms)."""
    return tuple(s for s in synonyms(word) if s.lower() not in STOP_WORDS)


def eda_synonyms(word: str) -> list[str]:
    return list(_eda_synonyms(word.lower()))


def _count(alpha: float, words: int) -> int:
    return max(1, int(alpha * words))


def _synonym_candidates(caption: Caption, synonyms_of: Callable[[str], list[str]]) -> list[int]:
    """Word slots EDA may draw synonyms for: real words, not stop words, with synonyms."""
    slots = []
    for i in caption.word_slots():
        core = caption.chunks[i].core
        if is_word(core) and core.lower() not in STOP_WORDS and synonyms_of(core.lower()):
            slots.append(i)
    return slots


def synonym_replacement(caption: Caption, alpha: float, rng: random.Random,
                        synonyms_of: Callable[[str], list[str]] = eda_synonyms) -> Edit | None:
    candidates = _synonym_candidates(caption, synonyms_of)
    if not candidates:
        return None
    chunks = list(caption.chunks)
    changes = []
    for i in rng.sample(candidates, min(_count(alpha, len(caption.word_slots())), len(candidates))):
        original = chunks[i].core
        new = match_case(rng.choice(synonyms_of(original.lower())), original)
        chunks[i] = chunks[i].with_core(new)
        changes.append(("sr", original, new))
    return Edit(caption.with_chunks(chunks), tuple(changes))


def random_insertion(caption: Caption, alpha: float, rng: random.Random,
                     synonyms_of: Callable[[str], list[str]] = eda_synonyms) -> Edit | None:
    candidates = _synonym_candidates(caption, synonyms_of)
    if not candidates:
        return None
    chunks = list(caption.chunks)
    changes = []
    for _ in range(_count(alpha, len(caption.word_slots()))):
        source_word = caption.chunks[rng.choice(candidates)].core
        inserted = match_case(rng.choice(synonyms_of(source_word.lower())), source_word)
        chunks.insert(rng.randint(0, len(chunks)), Chunk("", inserted, ""))
        changes.append(("ri", source_word, inserted))
    return Edit(caption.with_chunks(chunks), tuple(changes))


def _two_slots(slots: list[int], rng: random.Random) -> tuple[int, int]:
    """Two different slots at random (rng.sample's cost without its generality)."""
    first = rng.randrange(len(slots))
    second = rng.randrange(len(slots) - 1)
    return slots[first], slots[second + (second >= first)]


def random_swap(caption: Caption, alpha: float, rng: random.Random) -> Edit | None:
    slots = caption.word_slots()
    if len({caption.chunks[i].core.lower() for i in slots}) < 2:
        return None
    chunks = list(caption.chunks)
    changes = []
    for _ in range(_count(alpha, len(slots))):
        a, b = _two_slots(slots, rng)
        while chunks[a].core.lower() == chunks[b].core.lower():  # a no-op swap; ends: 2+ spellings
            a, b = _two_slots(slots, rng)
        # words move, punctuation stays in its slot
        chunks[a], chunks[b] = chunks[a].with_core(chunks[b].core), chunks[b].with_core(chunks[a].core)
        changes.append(("rs", chunks[b].core, chunks[a].core))
    return Edit(caption.with_chunks(chunks), tuple(changes))


def random_deletion(caption: Caption, alpha: float, rng: random.Random) -> Edit | None:
    slots = caption.word_slots()
    if len(slots) < 2:
        return None
    deleted = {i for i in slots if rng.random() < alpha}
    if not deleted:  # at least one word goes, so the caption changes
        deleted = {rng.choice(slots)}
    if len(deleted) == len(slots):  # and at least one stays
        deleted.discard(rng.choice(slots))
    chunks = [chunk for i, chunk in enumerate(caption.chunks) if i not in deleted]
    changes = tuple(("rd", caption.chunks[i].core) for i in sorted(deleted))
    return Edit(caption.with_chunks(chunks), tuple(changes))


def apply_op(op: str, caption: Caption, alpha: float, rng: random.Random) -> Edit | None:
    """One EDA operation; None when it cannot apply to this caption."""
    if op == "sr":
        return synonym_replacement(caption, alpha, rng)
    if op == "ri":
        return random_insertion(caption, alpha, rng)
    if op == "rs":
        return random_swap(caption, alpha, rng)
    if op == "rd":
        return random_deletion(caption, alpha, rng)
    raise ValueError(f"unknown EDA op {op!r}")


# ----------------------------------------------------------------------------- the generator


class EdaGenerator(Generator):
    method = "eda"
    modality = "text"
    # 2 (2026-12-06): a combining accent after a word's last letter moves with its word (a swap left it behind),
    # a first word whose capital does not survive lower-casing and back (Turkish İ) keeps its case, and words
    # are split as the word attacks split them: other rows for such captions than an earlier mat-plus wrote
    recipe, recipe_since = 2, "2026-12-06T10:51:16+00:00"  # a9acf87, b64ee01, cfb07db; its last change 84f1dd6

    def __init__(self, ops: tuple[str, ...] = OPS, alphas: dict[str, float] | None = None):
        self.ops = tuple(ops)
        # slot k tries its own op first, then the others in list order (for captions it cannot change)
        self._op_orders = [self.ops[k:] + self.ops[:k] for k in range(len(self.ops))]
        self.alphas = {op: DEFAULT_ALPHA for op in OPS}
        self.alphas.update(alphas or {})
        if any(op in WORDNET_OPS for op in self.ops):
            require_wordnet()  # fail before any work when WordNet is missing
            self.model = "wordnet"

    def params(self) -> dict:
        return {"ops": list(self.ops), **{f"alpha_{op}": self.alphas[op] for op in self.ops}}

    def augment(self, text: str, n: int, seeds: list[int]) -> list[Augmentation]:
        """Up to `n` distinct augmentations of `text`, slot k drawn with `seeds[k]`."""
        caption = parse_caption(text)
        seen = {normalised(text)}
        results = []
        for k in range(n):
            found = self._augment_slot(caption, k, RowRandom(seeds[k]), seen)
            if found is not None:
                op, new_text, edit = found
                seen.add(normalised(new_text))
                results.append(Augmentation(k, op, new_text, edit.changes))
        return results

    def _augment_slot(self, caption: Caption, k: int, rng: random.Random, seen: set[str]):
        for op in self._op_orders[k % len(self.ops)]:
            for _ in range(MAX_ATTEMPTS):
                edit = apply_op(op, caption, self.alphas[op], rng)
                if edit is None:
                    break
                new_text = render_caption(edit.caption)
                if normalised(new_text) not in seen:
                    return op, new_text, edit
        return None

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        rows = []
        for item in items:
            for c, text in enumerate(item["captions"]):
                seeds = [row_seed(seed, item["image_id"], c, k) for k in range(n)]
                for found in self.augment(text, n, seeds):
                    rows.append(self.row(item, c, found.k, seed, caption=found.text, op=found.op,
                                         alpha=self.alphas[found.op], edits=found.changes))
        return rows


# ----------------------------------------------------------------------------- command line


def _ops_list(text: str) -> tuple[str, ...]:
    ops = tuple(dict.fromkeys(op.strip().lower() for op in text.split(",") if op.strip()))
    unknown = [op for op in ops if op not in OPS]
    if not ops or unknown:
        raise argparse.ArgumentTypeError(f"EDA ops must be a comma list of {','.join(OPS)}; got {text!r}")
    return ops


def add_arguments(group) -> None:
    group.add_argument("--eda-ops", type=_ops_list, default=OPS, metavar="OPS",
                       help="EDA operations to cycle through, comma list of sr,ri,rs,rd (default all)")
    for op, what in (("sr", "synonym replacement: share of words replaced"),
                     ("ri", "random insertion: synonyms inserted per word"),
                     ("rs", "random swap: swaps per word"),
                     ("rd", "random deletion: probability each word is deleted")):
        group.add_argument(f"--alpha-{op}", type=positive_fraction, default=DEFAULT_ALPHA,
                           help=f"EDA {what} (default {DEFAULT_ALPHA})")


def options_read(method: str, args) -> set[str]:
    """The operations chosen and their strengths (an op left out reads no --alpha)."""
    return {"eda_ops"} | {f"alpha_{op}" for op in getattr(args, "eda_ops", OPS)}


def options_context(args) -> str:
    """Which --alpha options are read depends on the ops chosen: the refusal names them."""
    ops = tuple(getattr(args, "eda_ops", OPS))
    return "" if ops == OPS else f" --eda-ops {','.join(ops)}"


def build(method: str, args) -> Generator:
    ops = getattr(args, "eda_ops", OPS)
    alphas = {op: getattr(args, f"alpha_{op}", DEFAULT_ALPHA) for op in OPS}
    return EdaGenerator(ops=ops, alphas=alphas)
