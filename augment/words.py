"""The one caption word splitter: whitespace chunks, each punctuation + a core word + punctuation.

EDA (`augment.generators.eda`) and the word-substitution attacks (`train.attacks.text`) both
edit captions word by word and must leave punctuation where it was (`"dog,"` -> prefix `""`,
core `"dog"`, suffix `","`); both split with `split_chunk` and write replacements back in the
replaced word's case with `match_case`.

`pre_caption` is the caption preprocessing of the attack papers' public code (ALBEF's, reused by
Co-Attack and SGA): lower case, punctuation removed, at most `max_words` words. The project keeps
captions as given unless asked (`train eval --caption-preprocess pre_caption`, or a reference
protocol). `blip_pre_caption` is BLIP's own (salesforce/BLIP `data/utils.py`), which turns less
punctuation into spaces and keeps the rest (`--caption-preprocess blip_pre_caption`).
"""
from __future__ import annotations

import re
import unicodedata
from typing import AbstractSet, NamedTuple

# leading punctuation, the core (anything), trailing punctuation
_CHUNK = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)
# a word WordNet or a masked LM may replace: letters, with inner hyphens or apostrophes (ASCII text;
# any other goes through `word_scripts`)
_WORD = re.compile(r"^[A-Za-z]+(?:['-][A-Za-z]+)*$")
_LATIN = frozenset({"LATIN"})
_INNER = "'-\u2019"  # inner apostrophes (also the curly one, French "l\u2019homme") and hyphens
# zero-width non-joiner and joiner: inside Persian ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") and Indic
# words they choose a letter's joined form; they follow a letter or its marks and belong to the word
_ZERO_WIDTH_JOINERS = "\u200c\u200d"
# scripts written without spaces between words: a whitespace chunk of them is a phrase or a sentence,
# not a word, so no attack or EDA operation replaces it (the first word of a Unicode character's name)
_UNSPACED = frozenset({"CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "IDEOGRAPHIC", "THAI", "LAO", "KHMER",
                       "MYANMAR", "TIBETAN", "YI", "JAVANESE", "BALINESE"})
# what pre_caption deletes (replaced by nothing) and what it turns into a space
_PRE_CAPTION_DROP = re.compile(r"[,.'!?\"()*#:;~]")
# what BLIP's pre_caption turns into a space (it keeps , ' ? - /)
_BLIP_PRE_CAPTION_SPACE = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


class Chunk(NamedTuple):
    """A whitespace-separated piece of a caption: punctuation, a core word, punctuation.

    (NamedTuples, not dataclasses: EDA builds millions of them and tuples are several times
    cheaper to create.)
    """

    prefix: str
    core: str
    suffix: str

    def with_core(self, core: str) -> "Chunk":
        return Chunk(self.prefix, core, self.suffix)

    def text(self) -> str:
        return f"{self.prefix}{self.core}{self.suffix}"

    def replaceable(self, stop_words: AbstractSet[str]) -> bool:
        """An alphabetic word (`is_word`: letters of any script written with spaces) that is not a stop word."""
        return is_word(self.core) and self.core.lower() not in stop_words

    def replaced_by(self, substitute: str) -> str:
        """The chunk's text with its core replaced (case matched, punctuation kept)."""
        return f"{self.prefix}{match_case(substitute, self.core)}{self.suffix}"


def split_chunk(piece: str, possessive: bool = False) -> Chunk:
    """Split one whitespace token; `possessive=True` keeps a trailing "'s" out of the core
    (`"man's"` -> core `"man"`, suffix `"'s"`), so a substitute keeps the possessive."""
    if piece.isalnum():
        return Chunk("", piece, "")
    prefix, core, suffix = _CHUNK.match(piece).groups()
    if core and suffix and unicodedata.category(suffix[0])[0] == "M":
        # combining marks (an accent of decomposed text, "e\u0301"; an Indic vowel sign) are not
        # punctuation, though `\W` matches them: they belong to the word they follow
        marks = 1
        while marks < len(suffix) and unicodedata.category(suffix[marks])[0] == "M":
            marks += 1
        core, suffix = core + suffix[:marks], suffix[marks:]
    if possessive and len(core) > 2 and core[-2:].lower() in ("'s", "\u2019s"):  # curly too: "dog\u2019s" is a word
        core, suffix = core[:-2], core[-2:] + suffix
    return Chunk(prefix, core, suffix)


def is_word(text: str) -> bool:
    """Whether `text` is one word WordNet or a masked LM may replace (`word_scripts`)."""
    if text.isascii():  # nearly every caption's words: one regex
        return bool(_WORD.match(text))
    return word_scripts(text) is not None


def word_scripts(text: str) -> frozenset[str] | None:
    """The scripts of a word's letters (`LATIN`, `CYRILLIC`, `GREEK`, `ARABIC`, ...), or None when `text`
    is not a word: letters of any script written with spaces between words, each optionally followed by
    combining marks (decomposed accents, Indic vowel signs), with inner hyphens, apostrophes or zero-width
    (non-)joiners. So "fährt", "Straße", "собака", "कुत्ता" and Persian "می‌خواهم" are words; a run of
    Chinese or Japanese (no spaces: a phrase, not a word), digits and punctuation are not. Until 2026-12-06 only A-Z letters were: no word
    of Multi30k's German with an accent was ever attacked, whatever `--mlm`."""
    if text.isascii():
        return _LATIN if _WORD.match(text) else None
    scripts: set[str] = set()
    after_joiner = True  # a word starts with a letter
    for char in text:
        if char in _INNER or char in _ZERO_WIDTH_JOINERS:
            if after_joiner:
                return None
            after_joiner = True
            continue
        category = unicodedata.category(char)
        if category[0] == "L":
            script = _script(char)
            if script in _UNSPACED:
                return None
            scripts.add(script)
            after_joiner = False
        elif category[0] != "M" or after_joiner:  # a mark belongs to the letter before it
            return None
    return frozenset(scripts) if scripts and not after_joiner else None


def _script(letter: str) -> str:
    """A letter's script: the first word of its Unicode name (`LATIN SMALL LETTER A WITH DIAERESIS`),
    past a width prefix (`FULLWIDTH LATIN ...`, `HALFWIDTH KATAKANA ...`)."""
    if letter.isascii():
        return "LATIN"
    words = unicodedata.name(letter, "UNKNOWN").split()
    return words[1] if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1 else words[0]


def same_script(substitute: str, original: str) -> bool:
    """Whether `substitute` is written in the scripts of the word it would replace: a multilingual
    masked LM's top predictions for a German word may be Cyrillic or Chinese tokens, and an English
    word's Greek letters; a substitute in another script is no word of the caption's language."""
    found, wanted = word_scripts(substitute), word_scripts(original)
    return found is not None and wanted is not None and (found is wanted or found <= wanted)


def keeps_case(word: str) -> bool:
    """Words whose capitals are not sentence case: "I", acronyms like "NASA"."""
    return word == "I" or (len(word) > 1 and word.isupper())


def match_case(replacement: str, original: str) -> str:
    """`replacement` in the case of the word it replaces (acronyms stay upper case)."""
    if keeps_case(original) and original != "I":
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def pre_caption(caption: str, max_words: int = 30) -> str:
    """The reference code's caption preprocessing: lower case; , . ' ! ? " ( ) * # : ; ~ removed;
    - and / become spaces; "<person>" becomes "person"; spaces collapsed; first `max_words` words."""
    text = _PRE_CAPTION_DROP.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    return _collapsed_first_words(text, max_words)


def blip_pre_caption(caption: str, max_words: int = 30) -> str:
    """BLIP's caption preprocessing (salesforce/BLIP `data/utils.py` `pre_caption`): lower case;
    . ! " ( ) * # : ; ~ each become a space (, ' ? - / and "<person>" are kept); runs of whitespace
    collapsed to one space; trailing newline and outer spaces stripped; first `max_words` words.
    BLIP's function defaults to 50 words; its retrieval datasets (COCO Karpathy, Flickr30k) call it
    with 30, hence the default here."""
    return _collapsed_first_words(_BLIP_PRE_CAPTION_SPACE.sub(" ", caption.lower()), max_words)


def _collapsed_first_words(text: str, max_words: int) -> str:
    """The ending both reference preprocessings share: runs of whitespace made one space, a
    trailing newline and outer spaces stripped, the first `max_words` words."""
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


# "pre_caption": ALBEF's (the SGA and Co-Attack codes'); "blip_pre_caption": BLIP's reference evaluation's
CAPTION_PREPROCESSING = ("none", "pre_caption", "blip_pre_caption")


def preprocess_caption(caption: str, how: str | None) -> str:
    """`how`: None or "none" (as given), "pre_caption" (ALBEF's) or "blip_pre_caption" (BLIP's)."""
    if how in (None, "none"):
        return caption
    if how == "pre_caption":
        return pre_caption(caption)
    if how == "blip_pre_caption":
        return blip_pre_caption(caption)
    raise ValueError(f"unknown caption preprocessing {how!r}; expected one of {CAPTION_PREPROCESSING}")
