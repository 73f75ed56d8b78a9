"""Captioning metrics as captioning papers report them: BLEU-4, METEOR, ROUGE-L, CIDEr.

All four come from `pycocoevalcap` (the MS-COCO caption evaluation code that BLIP and every
COCO-captioning paper report with), so numbers are comparable with published ones; writing
CIDEr's corpus-level IDF or METEOR's matcher by hand would not be. METEOR runs its Java jar and
is reported by default only when `java` is on the PATH (else None, with the reason in `notes`);
asked for explicitly (`meteor=True`, `--meteor`) without Java it is an error, not a silent None. Captions
are tokenised as COCO's evaluation does with Stanford's PTBTokenizer (also Java); without Java a
small lower-casing word tokenizer that drops the same punctuation stands in (noted in `notes`).

Scores are in percent (x100), as papers print them (BLIP base on COCO: CIDEr ~ 133).
"""
from __future__ import annotations

import functools
import re
import shutil
import tempfile
import unicodedata
from typing import Mapping, Sequence

METRICS = ("bleu4", "meteor", "rouge_l", "cider")


def java_available() -> bool:
    return shutil.which("java") is not None


def require_java_for_meteor(meteor: bool | None) -> None:
    """Refuse `meteor=True` without Java up front: asked-for METEOR must not turn into a null score."""
    if meteor and not java_available():
        from augment.errors import MissingDependencyError

        raise MissingDependencyError("METEOR needs Java (its scorer is a jar): apt-get install default-jre-headless, "
                                     "or leave out --meteor")


# PTB's splits that matter for captions, written as one regex because the tokenizer COCO's
# evaluation uses is Java's (Stanford PTBTokenizer) and no Python package gives its output:
# clitics split off ("man 's", "do n't"), hyphenated words, numbers with a decimal point or comma
# and dotted abbreviations ("p.m.") kept whole, brackets as PTB's -lrb- / -rrb- ... tokens (COCO's
# filter lists them in upper case, so it leaves them in), every other punctuation mark dropped
_CLITIC = re.compile(r"(?<=[a-z])(n't|'s|'re|'ve|'ll|'d|'m)\b")
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
# and: "cannot", "gonna", ... split in two; the titles "mr.", "dr.", ... and clock times "3:00" kept
# whole; a word with "@" (an address) kept whole
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta", "lemme": "lem me",
                "gimme": "gim me"}
_SPLIT_WORD = re.compile(r"\b(" + "|".join(_SPLIT_WORDS) + r")\b")
_PTB_TOKEN = re.compile(r"-[lr][rsc]b-|n't|'(?:s|re|ve|ll|d|m|em)\b|(?:[a-z]\.){2,}|\b(?:mrs|mr|ms|dr|st|jr|sr)\."
                        r"|[a-z0-9._]*[a-z0-9]@[a-z0-9]+(?:\.[a-z0-9]+)*"
                        r"|(?:\d+(?:[.,:]\d+)+|[a-z0-9]+)(?:[-'][a-z0-9]+)*|[&/%#$+=*<>|~^]")
# Text in any script is tokenised by the same regexes, run on a "shadow" of the caption that stands each
# character for its role, one for one, and the tokens cut from the caption itself: a letter, digit or
# combining mark of any script (Python's \w leaves marks out) is "a" ("0" for a digit), so "fährt",
# "straße", decomposed "e\u0301te\u0301" and a Chinese run without spaces are one token each, as PTB
# reads them; a non-ASCII punctuation mark or symbol PTB keeps ("。", "，", "（", "¿", "°") is "^", a
# token of its own; those it turns into quotes, dashes or an ellipsis (« » “ ” ‘ ’ — – …, CJK corner and
# angle brackets), which COCO's filter drops, emoji and invisible characters are a space.
_PTB_DROPPED = "\u2026\u300a\u300b\u3008\u3009\u3014\u3015\u3016\u3017\u3010\u3011\u300c\u300d\u300e\u300f"
_CURLY_CLITIC = re.compile(r"\u2019(?=(?:s|re|ve|ll|d|m|t)\b)")


@functools.lru_cache(maxsize=1)
def _shadow_table() -> dict[int, str]:
    """`str.translate`'s table from non-ASCII characters to their roles (see above), built on first use:
    a few tenths of a second, spent only where Java is absent and a caption is not ASCII."""
    table = {code: chr(code) for code in range(0x80)}  # found in the table, ASCII translates fast
    for code in range(0x80, 0x40000):
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Nd":
            table[code] = "0"
        elif category[0] == "M" or char.isalnum():
            table[code] = "a"
        elif (category[0] == "S" or category in ("Po", "Ps", "Pe")) and code <= 0xFFFF and char not in _PTB_DROPPED:
            table[code] = "^"
        else:
            table[code] = " "
    table[0x2019] = "'"  # a curly apostrophe inside a word ("l’homme") joins it, as PTB keeps it
    return table


def _with_spaces_at(text: str, positions: list[int]) -> str:
    pieces, last = [], 0
    for position in positions:
        pieces += [text[last:position], " "]
        last = position
    return "".join(pieces) + text[last:]


def simple_tokenize(text: str) -> str:
    """Lower-case tokens as PTBTokenizer + COCO's punctuation filter give them for captions
    (tested equal on possessives, contractions, hyphens, decimals, clock times, titles and
    abbreviations, "cannot"/"gonna", and on German, Czech, French, Chinese, Japanese, Arabic, Hebrew,
    Greek, Russian and Hindi captions): the fallback when Java is absent. Rarer constructions may
    still differ; the report says when the fallback was used."""
    text = _SPLIT_WORD.sub(lambda word: _SPLIT_WORDS[word.group(1)], text.lower())
    if text.isascii():
        text = _CLITIC.sub(r" \1", text).translate(str.maketrans(_BRACKETS))
        return " ".join(_PTB_TOKEN.findall(text))
    # a soft hyphen is invisible (PTB drops it); a curly apostrophe before a clitic is PTB's "'" ("zoë’s")
    text = _CURLY_CLITIC.sub("'", text.replace("\u00ad", ""))
    shadow = text.translate(_shadow_table())
    spaces = [match.start() for match in _CLITIC.finditer(shadow)]
    brackets = str.maketrans(_BRACKETS)
    text = _with_spaces_at(text, spaces).translate(brackets)
    shadow = _with_spaces_at(shadow, spaces).translate(brackets)
    return " ".join(text[match.start():match.end()] for match in _PTB_TOKEN.finditer(shadow))


def tokenize_all(captions: dict[int, list[str]], use_java: bool) -> dict[int, list[str]]:
    if use_java:
        # PTBTokenizer reads one caption per line and its output lines are paired with the captions in
        # order; pycocoevalcap replaced only "\n" first: a "\r" (a CRLF inside a quoted CSV field), "\v",
        # "\f", U+2028 or U+2029 in a caption ended a line in Java too, and every later caption got the
        # tokens of the one before it (the last ones none); `splitlines` knows all of them
        return _ptb_tokenize({k: [" ".join(c.splitlines()) for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def _ptb_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """pycocoevalcap's `PTBTokenizer.tokenize` (1.2): its jar, flags and punctuation filter, the captions
    one per line, with the input file in the temporary folder. pycocoevalcap writes that file beside its
    jar, inside the installed package, so wherever the environment is read-only (a shared cluster
    environment, a container image) every captioning evaluation with Java failed at its end with
    "Read-only file system"."""
    import subprocess
    from pathlib import Path

    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).resolve().parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    image_ids = [k for k, v in captions.items() for _ in v]
    sentences = "\n".join(c.replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.TemporaryDirectory() as folder:
        lines_file = Path(folder) / "captions.txt"
        lines_file.write_bytes(sentences.encode())
        command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
                   str(lines_file)]
        # Java's stderr (a "tokenized N tokens" line per call, which would swamp logs) is read, and said on failure
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = done.stdout.decode().split("\n")
    # a java that does not run (macOS's stub without a JDK, a broken JRE) printed its reason to the captured
    # stderr and no line: the captions got no tokens, and BLEU stopped with a bare AssertionError
    if done.returncode != 0 or len(lines) < len(image_ids):
        said = done.stderr.decode(errors="replace").strip().splitlines()
        from augment.errors import MatPlusError

        raise MatPlusError(f"COCO's PTB tokenizer (java -cp {jar.name}) failed with exit status {done.returncode}"
                           f"{': ' + said[-1] if said else ''} ({len(lines) - 1} of {len(image_ids)} captions "
                           "tokenised); fix the Java installation, or take java off the PATH for the stand-in tokenizer")
    tokenized: dict[int, list[str]] = {}
    for image_id, line in zip(image_ids, lines):
        words = [word for word in line.rstrip().split(" ") if word not in ptbtokenizer.PUNCTUATIONS]
        tokenized.setdefault(image_id, []).append(" ".join(words))
    return tokenized


# CIDEr weighs an n-gram by its IDF over the evaluated images' references: with one image every
# n-gram's weight is 0, so is the score, whatever the caption (pycocoevalcap's Cider, as published)
ONE_IMAGE_CIDER = ("CIDEr is 0 for a single image, whatever its caption: its n-gram weights (IDF) come from the "
                   "evaluated images' references; evaluate two images or more")
# pycocoevalcap's Cider asserts on a corpus whose references hold no word at all (punctuation only,
# gone after tokenisation): no n-gram has a weight, so every image's CIDEr is 0, said in the notes
# Chinese and Japanese are written without spaces: PTB (and the fallback, as PTB) keeps a run of them as
# one token, so n-grams are whole phrases, and a captioner whose tokenizer decodes with a space around
# every ideograph (BERT's, BLIP's) matches no such reference token: numbers near 0, said in the notes
# kana, CJK ideographs (extension A, unified, compatibility): the characters written without spaces
CJK_CHARACTERS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNSEGMENTED = re.compile(f"[{CJK_CHARACTERS}]{{2}}")
UNSEGMENTED_CJK = ("captions hold Chinese or Japanese text without spaces: each run of it is one token, as COCO's PTB "
                   "tokenizer reads it, so BLEU/METEOR/ROUGE/CIDEr compare whole phrases; --segment-cjk chars|jieba cuts "
                   "references and generated captions alike for comparable numbers")
NO_REFERENCE_WORDS_CIDER = ("CIDEr is 0: no reference caption of the evaluated images holds a word after "
                            "tokenisation (punctuation only)")
# how Chinese and Japanese runs are cut into tokens before PTB reads them (`segment_cjk`, `--segment-cjk`)
CJK_SEGMENTATIONS = ("none", "chars", "jieba")
# a run of CJK characters, with the single spaces a BERT tokenizer's decoding writes between them (BLIP's `一 只 狗`)
_CJK_RUN = re.compile(f"[{CJK_CHARACTERS}]+(?: [{CJK_CHARACTERS}]+)*")
SEGMENTED_CJK = {
    "chars": "Chinese and Japanese text cut into one token per character before tokenisation (--segment-cjk chars, "
             "sacrebleu's rule for Chinese BLEU), references and generated captions alike",
    "jieba": "Chinese text cut into words by jieba {version} before tokenisation (--segment-cjk jieba, as COCO-CN's "
             "evaluation), references and generated captions alike",
}


JIEBA_MISSING = "{flag} jieba needs jieba: pip install jieba (or pip install 'mat-plus[cjk]')"


@functools.lru_cache(maxsize=1)
def _jieba():
    try:
        import jieba
    except ImportError:
        from augment.errors import MissingDependencyError

        raise MissingDependencyError(JIEBA_MISSING.format(flag="--segment-cjk")) from None
    import logging

    jieba.setLogLevel(logging.WARNING)  # its dictionary's load is two INFO lines on stderr per process
    return jieba


def require_segmenter(segment_cjk: str, flag: str = "--segment-cjk") -> None:
    """Before anything loads: an unknown segmentation is a ValueError, jieba missing one install line naming
    `flag`, the option that asked for it (`train`'s --val-segment-cjk, `train eval`'s --segment-cjk)."""
    if segment_cjk not in CJK_SEGMENTATIONS:
        raise ValueError(f"unknown CJK segmentation {segment_cjk!r}; expected one of {', '.join(CJK_SEGMENTATIONS)}")
    if segment_cjk == "jieba":
        from augment.errors import MissingDependencyError

        try:
            _jieba()
        except MissingDependencyError:
            raise MissingDependencyError(JIEBA_MISSING.format(flag=flag)) from None


# fullwidth and halfwidth forms (U+FF00-FFEF: ３, ，, ！, halfwidth katakana) to their plain characters by NFKC,
# and the ideographic full stop, comma and space to ASCII's: COCO-CN and STAIR references write "３只狗，在跑。"
# where a tokenizer's decoder writes "3"; PTB drops ASCII punctuation as it does in English captions, while the
# CJK forms were tokens of their own, and a caption without the final "。" lost n-gram matches for it
_FULLWIDTH = re.compile("[\uff00-\uffef]+")
# what segmented text is folded by, recorded with a captioning run's validation settings: lines segmented before the
# fold (2026-12-06) scored other CIDEr, and a resume must not rank them with later ones (train.validation.check_resume)
CJK_FORMS = "nfkc-fullwidth"
_IDEOGRAPHIC_PUNCTUATION = str.maketrans({"\u3002": ".", "\u3001": ",", "\u3000": " "})


def _fold_cjk_forms(text: str) -> str:
    return _FULLWIDTH.sub(lambda run: unicodedata.normalize("NFKC", run.group()), text).translate(_IDEOGRAPHIC_PUNCTUATION)


def segment_cjk(text: str, how: str) -> str:
    """`text` with its Chinese and Japanese runs cut into tokens the metrics can match (PTB, like the fallback,
    keeps a run written without spaces as one token): "chars" a token per character, "jieba" jieba's words
    (Chinese), each after the spaces a BERT decoder writes between ideographs are removed, so `一 只 狗` and
    `一只狗` give the same tokens; "none" leaves it as it is. In a caption with such a run, fullwidth forms and
    the ideographic full stop, comma and space are folded first (`_fold_cjk_forms`: `３只狗，在跑。` reads as
    `3只狗,在跑.`, whose punctuation the tokenizers drop). Other scripts are untouched."""
    if how == "none":
        return text
    folded = _fold_cjk_forms(text)
    # the run looked for once folded: a caption in halfwidth katakana (ｲﾇｶﾞﾊｼﾙ) has none before (U+FF65-FF9F)
    if not _CJK_RUN.search(folded):
        return text
    text = folded
    if how == "chars":
        return _CJK_RUN.sub(lambda run: " " + " ".join(run.group().replace(" ", "")) + " ", text)
    cut = _jieba().lcut
    return _CJK_RUN.sub(lambda run: " " + " ".join(cut(run.group().replace(" ", ""))) + " ", text)


def caption_scores(references: Sequence[Sequence[str]], candidates: Sequence[str], *, meteor: bool | None = None,
                   java: bool | None = None, segment: str = "none") -> dict:
    """Corpus scores of `candidates[i]` against `references[i]` (several per image).

    `meteor`: None = when Java is present. `java`: None = use the PTB tokenizer when Java is
    present. `segment`: how Chinese and Japanese runs are cut first (`segment_cjk`).
    Returns {"bleu4", "meteor", "rouge_l", "cider", "per_image_cider", "notes"}.
    """
    return caption_scores_of_sets(references, {"": candidates}, meteor=meteor, java=java, segment=segment)[""]


def caption_scores_of_sets(references: Sequence[Sequence[str]], candidate_sets: Mapping[str, Sequence[str]], *,
                           meteor: bool | None = None, java: bool | None = None, segment: str = "none") -> dict[str, dict]:
    """`caption_scores` of each set of candidates (an evaluation's attacks) against the same references:
    the references tokenised once, every caption in one PTB tokenizer call and one METEOR process for all
    sets. METEOR's jar takes 10-60 s to start (its paraphrase table); started per attack, it was most of a
    captioning evaluation's scoring time."""
    for name, candidates in candidate_sets.items():
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} reference sets for {len(candidates)} captions"
                             + (f" ({name})" if name else ""))
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        from augment.errors import MissingDependencyError

        raise MissingDependencyError("captioning metrics need pycocoevalcap: pip install pycocoevalcap") from None
    require_java_for_meteor(meteor)
    require_segmenter(segment)
    has_java = java_available()
    use_java = has_java if java is None else bool(java) and has_java
    run_meteor = has_java if meteor is None else bool(meteor)
    names = list(candidate_sets)
    # one tokenizer call: keys (None, i) are image i's references, (k, i) set k's caption of it
    everything = {(None, i): list(refs) for i, refs in enumerate(references)}
    everything.update({(k, i): [c] for k, name in enumerate(names) for i, c in enumerate(candidate_sets[name])})
    segmented_note = None
    if segment != "none":
        has_cjk = any(_CJK_RUN.search(c) for captions in everything.values() for c in captions)
        everything = {key: [segment_cjk(c, segment) for c in captions] for key, captions in everything.items()}
        if has_cjk:
            segmented_note = SEGMENTED_CJK[segment].format(version=getattr(_jieba(), "__version__", "")
                                                           if segment == "jieba" else "")
    tokenized = tokenize_all(everything, use_java)
    gts = {i: tokenized[(None, i)] for i in range(len(references))}
    reference_words = any(reference.split() for refs in gts.values() for reference in refs)
    reference_unsegmented = any(_UNSEGMENTED.search(c) for captions in gts.values() for c in captions)
    results: dict[str, dict] = {}
    scorer = None
    try:
        for k, name in enumerate(names):
            res = {i: tokenized[(k, i)] for i in range(len(references))}
            notes = []
            if not use_java:
                notes.append("captions tokenised by a lower-casing word tokenizer (no Java for COCO's PTBTokenizer)")
            if len(references) == 1:
                notes.append(ONE_IMAGE_CIDER)
            if segmented_note:
                notes.append(segmented_note)
            elif segment == "none" and (reference_unsegmented or any(_UNSEGMENTED.search(c[0]) for c in res.values())):
                notes.append(UNSEGMENTED_CJK)
            # an empty caption breaks BLEU/METEOR's parsers; score it as a caption with no matching word
            res = {i: [v[0] if v[0].strip() else "<empty>"] for i, v in res.items()}
            scores: dict = {}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            scores["bleu4"] = 100.0 * float(bleu[3])
            scores["rouge_l"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
            if reference_words:
                cider, per_image = Cider().compute_score(gts, res)
            else:
                cider, per_image = 0.0, [0.0] * len(res)
                notes.append(NO_REFERENCE_WORDS_CIDER)
            scores["cider"] = 100.0 * float(cider)
            scores["meteor"] = None
            if meteor is None and not has_java:
                notes.append("METEOR not computed: it needs Java (its scorer is a jar); install a JRE")
            elif run_meteor:
                if scorer is None:
                    from pycocoevalcap.meteor.meteor import Meteor

                    scorer = Meteor()
                scores["meteor"] = 100.0 * float(scorer.compute_score(gts, res)[0])
            elif meteor is False:
                notes.append("METEOR not computed (switched off)")
            scores["per_image_cider"] = [100.0 * float(v) for v in per_image]
            scores["notes"] = notes
            results[name] = scores
    finally:
        if scorer is not None:
            _end_meteor(scorer)
    return results


def _end_meteor(scorer) -> None:
    """End METEOR's Java process as its `__del__` does (stdin closed, killed, waited for), which pycocoevalcap
    offers no other way to call, and close the stdout and stderr pipes it leaves open (each scoring left two
    ResourceWarnings, tracebacks in the log under PYTHONWARNINGS=error or -X dev). Its `__del__` later finds
    the process ended, which is harmless."""
    process = scorer.meteor_p
    with scorer.lock:
        process.stdin.close()
        process.kill()
        process.wait()
        for pipe in (process.stdout, process.stderr):
            pipe.close()
