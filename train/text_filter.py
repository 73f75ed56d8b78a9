"""Meaning-preserving inner text attack for MAT / MAT+: keep only substitutions a checker accepts.

MAT's inner BERT-Attack (or WordNet) proposes substitute words; with a masked LM that proposes
in-distribution words ("red" -> "blue") most substitutions make the caption false of its image,
and MAT then trains on false pairs. A caption filter is any callable `(caption, row) -> bool`
(True: the caption is still true of the row's image); the trainer's `--text-attack-filter NAME`
picks one from `CAPTION_FILTERS` and drops every candidate substitution it rejects *before* the
attack's greedy choice, so MAT only ever makes accepted substitutions.

`row` is the training source row of the caption's image without its pixels: `image_id`,
`captions` (the image's reference captions) and `meta`. Built in: `truth`, the sample world's
checker (`augment.world.truth.check_caption_of_row`, exact on the world). On real data
register your own, e.g. an entailment model that accepts a candidate when one of the row's
reference captions entails it:

    from train.text_filter import CAPTION_FILTERS
    CAPTION_FILTERS["nli"] = lambda caption, row: my_nli_entails(row["captions"], caption)

then train with `text_attack_filter="nli"` (Python API; the CLI knows only the built-in ones).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

CaptionFilter = Callable[[str, dict], Any]


def _world_truth(caption: str, row: dict) -> bool:
    from augment.world.truth import check_caption_of_row

    return check_caption_of_row(caption, row) is True  # None (no scene, unparseable) is not accepted


# name -> caption filter (diffusers-style table; register more at run time)
CAPTION_FILTERS: dict[str, CaptionFilter] = {"truth": _world_truth}


def refuse_rows_it_cannot_judge(name: str, train: Any, source: str | None) -> None:
    """One line when the built-in `truth` filter meets training rows without a sample-world scene: it
    rejects every substitution of those (`check_caption_of_row` is None there), so on a source with
    none MAT trained without its text attack while config.yaml recorded the filter."""
    if name != "truth":
        return
    from augment.world.truth import has_scenes
    from train.config import ConfigError

    if "meta" not in getattr(train, "column_names", ()) or not has_scenes(train):
        raise ConfigError(f"--text-attack-filter truth judges substitutions against the sample world's scenes, and "
                          f"--train-data {source} has rows without one (each of their substitutions would be rejected: "
                          "MAT without its text attack there): leave it out, or register a filter for this data "
                          "(train/text_filter.py)")


def get_caption_filter(name: str) -> CaptionFilter:
    if name not in CAPTION_FILTERS:
        raise KeyError(f"unknown text attack filter {name!r}; expected one of {sorted(CAPTION_FILTERS)}")
    return CAPTION_FILTERS[name]


class FilteredSubstitutes:
    """A word-substitution attack's substitute source, minus the substitutions `accept` rejects.

    Wraps the attack's `SubstituteSource` (every other method is delegated). `set_batch(texts,
    rows)` names the captions about to be attacked and their rows; `substitutes` then keeps a
    word only if the caption with that one word replaced is accepted. With a word budget of 1
    every substitution the attack can make is checked; with more words, `accepted_prefix` checks
    the combination afterwards.
    """

    def __init__(self, inner: Any, accept: CaptionFilter, name: str = "filter"):
        self.inner, self.accept, self.filter_name = inner, accept, name
        self._texts: list[str] | None = None
        self._rows: list[dict] | None = None
        self.proposed = self.kept = 0  # candidate counts, for logging and tests

    def __getattr__(self, attribute: str) -> Any:  # split, chunk, replaceable, replacement, masked, ...
        return getattr(self.inner, attribute)

    def params(self) -> dict:
        return {**self.inner.params(), "filter": self.filter_name}

    def set_batch(self, texts: Sequence[str], rows: Sequence[dict]) -> None:
        if len(texts) != len(rows):
            raise ValueError(f"{len(texts)} captions but {len(rows)} rows")
        self._texts, self._rows = list(texts), list(rows)

    def substitutes(self, captions: list[list]) -> list[dict[int, list[str]]]:
        proposed = self.inner.substitutes(captions)
        if self._texts is None or len(self._texts) != len(captions):
            raise RuntimeError("FilteredSubstitutes: set_batch(texts, rows) must name the captions before an attack")
        kept_all = []
        for text, row, chunks, by_position in zip(self._texts, self._rows, captions, proposed):
            words = self.inner.split(text)
            kept: dict[int, list[str]] = {}
            for position, candidates in by_position.items():
                good = [w for w in candidates
                        if self.accept(" ".join(words[:position] + [self.inner.replacement(chunks[position], w)]
                                                + words[position + 1:]), row)]
                self.proposed += len(candidates)
                self.kept += len(good)
                if good:
                    kept[position] = good
            kept_all.append(kept)
        return kept_all


def accepted_prefix(original: str, changes: list[dict], row: dict, accept: CaptionFilter,
                    split: Callable[[str], list[str]] = str.split) -> str:
    """The original caption with the longest prefix of the attack's `changes` ({position, to})
    that `accept` still accepts (the first change alone always was: it passed the filter)."""
    words = split(original)
    best = original
    for change in changes:
        words = words[:change["position"]] + [change["to"]] + words[change["position"] + 1:]
        candidate = " ".join(words)
        if not accept(candidate, row):
            break
        best = candidate
    return best
