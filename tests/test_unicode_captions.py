"""Captions that are not plain English ASCII (Multi30k's German, Czech and French, COCO-CN's Chinese,
STAIR's Japanese, accents in composed and decomposed form, emoji, joiners, right-to-left scripts)
through the code that splits, edits, tokenises and reads them."""
from __future__ import annotations

import random
import unicodedata

import pytest

from augment.generators import eda
from augment.words import split_chunk


@pytest.mark.parametrize("piece, chunk", [
    ("e\u0301te\u0301", ("", "e\u0301te\u0301", "")),  # decomposed "été" (macOS file names, some exports)
    ("e\u0301te\u0301.", ("", "e\u0301te\u0301", ".")),
    ("hraji\u0301!)", ("", "hraji\u0301", "!)")),
    ("\u0915\u0941\u0924\u094d\u0924\u093e\u0964", ("", "\u0915\u0941\u0924\u094d\u0924\u093e", "\u0964")),  # Hindi vowel sign, danda
    ("\u00abcr\u00e8me\u00bb", ("\u00ab", "cr\u00e8me", "\u00bb")),
    ("dog,", ("", "dog", ",")),
])
def test_a_combining_mark_belongs_to_its_word_not_to_the_punctuation_after_it(piece, chunk):
    assert tuple(split_chunk(piece)) == chunk


def test_eda_swaps_and_deletions_keep_each_accent_on_its_word():
    """A decomposed accent at a word's end was split off as trailing punctuation and stayed in its
    slot when the words were swapped: "e\u0301te\u0301 a\u0300 Paris" became "Paris\u0301 a\u0300 e\u0301te"."""
    text = "e\u0301te\u0301 a\u0300 Paris"
    words = set(text.split())
    caption = eda.parse_caption(text)
    seen = 0
    for seed in range(40):
        for op in ("rs", "rd"):
            edit = eda.apply_op(op, caption, 0.3, random.Random(seed))
            if edit is None:
                continue
            out = eda.render_caption(edit.caption)
            assert set(out.split()) <= words, out
            seen += 1
    assert seen


def test_eda_leaves_a_caption_without_spaces_alone():
    """Chinese and Japanese captions have no spaces: one word to EDA, which has nothing to swap, delete or
    look up in (English) WordNet, so such a caption gets no rows rather than made-up edits."""
    caption = eda.parse_caption("\u4e00\u53ea\u72d7\u5728\u8349\u5730\u4e0a\u5954\u8dd1\u3002")
    for op in ("rs", "rd"):
        assert eda.apply_op(op, caption, 0.5, random.Random(0)) is None
    assert eda.synonym_replacement(caption, 0.5, random.Random(0), synonyms_of=lambda word: ["x"]) is None


def test_nfc_and_nfd_captions_stay_as_given_through_eda():
    """EDA does not normalise: a caption's untouched words come back byte-equal, in the form they were given."""
    for form in ("NFC", "NFD"):
        text = unicodedata.normalize(form, "Ein Mann f\u00e4hrt Fahrrad \u00fcber die Stra\u00dfe")
        edit = eda.apply_op("rs", eda.parse_caption(text), 0.2, random.Random(1))
        assert sorted(eda.render_caption(edit.caption).split()) == sorted(text.split())


@pytest.mark.parametrize("line_break", ["\r", "\r\n", "\u2028", "\u2029", "\x0b", "\x0c", "\x85"])
def test_a_line_break_inside_a_caption_does_not_shift_the_other_captions_tokens(line_break):
    """COCO's PTBTokenizer (Java) reads one caption per line; pycocoevalcap replaces only "\\n" before
    writing them, so a reference holding a "\\r" (a CRLF in a quoted CSV field) or U+2028 ended a line in
    Java and every later caption got the tokens of the one before it: BLEU and CIDEr scored the wrong
    references, silently."""
    import shutil

    from train.caption_metrics import caption_scores, tokenize_all

    assert shutil.which("java"), "COCO's PTBTokenizer needs Java: apt-get install default-jre-headless"
    captions = {0: [f"zwei{line_break}Zeilen"], 1: ["three dogs"], 2: ["a cat"]}
    expected = {0: ["zwei zeilen"], 1: ["three dogs"], 2: ["a cat"]}
    assert tokenize_all(captions, use_java=True) == expected
    assert tokenize_all(captions, use_java=False) == expected
    scores = caption_scores([[f"a red{line_break}circle"], ["two dogs"]], ["a red circle", "two dogs"],
                            java=True, meteor=False)
    assert scores["rouge_l"] == pytest.approx(100.0)  # each caption is its reference


# Multi30k's, COCO-CN's, STAIR's and others' kinds of captions: accents composed and decomposed, a
# curly apostrophe, CJK runs and punctuation, right-to-left scripts, an Indic vowel sign, emoji, a
# soft hyphen, a zero-width space
NON_ASCII_CAPTIONS = [
    "Ein Mann fährt Fahrrad über die Straße.", "Zwei Hunde spielen im Schnee, während ein Kind zuschaut.",
    "Děti si hrají na hřišti.", "Un homme en veste rouge traverse la rue à vélo.", "L’enfant joue avec l'eau.",
    "Ça va? C'est ça!", "一只狗在草地上奔跑。", "两个人，一只猫、一条鱼！好吗？", "犬が公園で走っている",
    "赤いシャツを着た男性が、自転車に乗っている。", "Un café «crème» — naïve Zoë’s “best” dog 🐶",
    "a\u00a0dog with a | pipe and\u200d zwj", "e\u0301te\u0301 à Paris", "كلب يركض في الحديقة", "שלום עולם",
    "Αυτοκίνητο στο δρόμο.", "Собака бежит по траве.", "¿Qué hace el perro? ¡Corre!", "कुत्ता दौड़ रहा है।",
    "Ein 3,5 m langer Tisch bei 20°C heute", "x\u00adx und x\u200by", "Don’t stop; it’s the dog’s bowl",
    "Łódź Straße ŒUVRE", "（括号）中文：测试；", "Ｆｕｌｌ ｗｉｄｔｈ ２０２３", "a ‘quoted’ word…", "üblich-gute Äpfel",
]


def test_the_fallback_tokenizer_gives_what_ptb_gives_for_non_ascii_captions():
    """Without Java, the regex standing in for PTB kept only [a-z0-9]: "fährt" became "f hrt", a Chinese,
    Arabic or Greek caption no token at all (CIDEr 0, BLEU of nothing), so metrics on Multi30k or COCO-CN
    references were wrong whenever Java was missing. Checked against the real PTBTokenizer (Java)."""
    import shutil

    from train.caption_metrics import simple_tokenize, tokenize_all

    assert shutil.which("java"), "COCO's PTBTokenizer needs Java: apt-get install default-jre-headless"
    assert simple_tokenize("Ein Mann fährt über die Straße") == "ein mann fährt über die straße"
    captions = {i: [caption] for i, caption in enumerate(NON_ASCII_CAPTIONS)}
    assert tokenize_all(captions, use_java=False) == tokenize_all(captions, use_java=True)


def test_captioning_metrics_score_chinese_captions_without_java():
    from train.caption_metrics import caption_scores

    references = [["一只狗在草地上奔跑。", "狗在跑"], ["两个孩子在玩", "孩子们在公园里玩。"]]
    scores = caption_scores(references, ["一只狗在草地上奔跑。", "两个孩子在玩"], java=False, meteor=False)
    assert scores["rouge_l"] == pytest.approx(100.0)
    assert scores["cider"] > 0 and not any("no reference caption" in note for note in scores["notes"])


@pytest.mark.parametrize("layout", ["karpathy", "albef", "imagefolder"])
def test_a_lone_surrogate_in_a_json_caption_is_one_line_naming_the_record(tmp_path, capsys, layout):
    """JSON can escape half of a UTF-16 pair alone ("\\ud83d": a caption cut inside an emoji by a tool counting
    UTF-16 units); Python reads it, arrow cannot hold it: every command stopped in a traceback (UnicodeEncodeError
    from pyarrow, exit status 1) instead of the one line naming the record, and --skip-bad could not skip it."""
    import json

    from augment.cli import main as augment_main
    from tests.conftest import write_image

    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "images" / "b.png")
    bad, good = "a dog \ud83d running", "a cat \U0001f431 sleeping"  # the good one: a whole pair, read as one emoji
    if layout == "karpathy":
        source = tmp_path / "dataset_x.json"
        source.write_text(json.dumps({"images": [
            {"filename": "a.png", "split": "train", "sentences": [{"raw": good}]},
            {"filename": "b.png", "split": "train", "sentences": [{"raw": "a dog"}, {"raw": bad}]}]}))
        where = "dataset_x.json: images[1] (b.png): caption 1"
    elif layout == "albef":
        source = tmp_path / "flickr30k_train.json"
        source.write_text(json.dumps([{"image": "images/a.png", "caption": good, "image_id": "a"},
                                      {"image": "images/b.png", "caption": bad, "image_id": "b"}]))
        where = "caption 0"
    else:
        source = tmp_path / "images"
        (source / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": good}) + "\n"
                                               + json.dumps({"file_name": "b.png", "caption": bad}) + "\n")
        where = "caption 0"
    assert augment_main(["inspect", "--source", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]  # after the reading progress bar
    assert "Traceback" not in err and line.startswith("error: "), err
    assert where in line and "\\ud83d" in line and "surrogate" in line, line
    report = tmp_path / "skipped.json"
    assert augment_main(["inspect", "--source", str(source), "--skip-bad", "--skip-report", str(report)]) == 0
    assert "1 images" in capsys.readouterr().out and len(json.loads(report.read_text())["skipped"]) == 1


def test_captions_come_back_byte_equal_through_a_pool_and_its_export(tmp_path):
    """What the README promises: a source's captions are kept as written (no Unicode normalisation, inner line
    breaks and joiners kept, outer whitespace stripped), and `i2t-human` rows and `augment push --to-dir` hold
    them byte for byte. (Checked while auditing non-ASCII captions: it held; pinned here.)"""
    import csv
    import glob

    import pyarrow.parquet as pq

    from augment.cli import main as augment_main
    from tests.conftest import write_image

    captions = ["Ein Mann f\u00e4hrt \u00fcber die Stra\u00dfe.", unicodedata.normalize("NFD", "\u00e9t\u00e9 \u00e0 Paris"),
                "\u4e00\u53ea\u72d7\u5728\u8349\u5730\u4e0a\u5954\u8dd1\u3002", "a family \U0001f468\u200d\U0001f469\u200d\U0001f467 | pipe",
                "zwei\r\nZeilen", "\u0643\u0644\u0628 \u064a\u0631\u0643\u0636", "\u00a0a dog\u3000"]
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name)
    source = tmp_path / "train.csv"
    with open(source, "w", encoding="utf-8-sig", newline="") as handle:  # a BOM and CRLF line ends, as Excel writes
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["image", "caption"])
        writer.writerows([("a.png" if i % 2 else "b.png", caption) for i, caption in enumerate(captions)])
    assert augment_main(["generate", "--method", "i2t-human", "--source", str(source), "--out", str(tmp_path / "pool"),
                         "--n", "9"]) == 0
    assert augment_main(["push", str(tmp_path / "pool"), "--to-dir", str(tmp_path / "hub")]) == 0
    expected = {caption.strip() for caption in captions}
    for folder in ("pool", "hub"):
        written = {row for shard in glob.glob(str(tmp_path / folder / "data" / "*.parquet"))
                   for row in pq.read_table(shard, columns=["caption"]).column(0).to_pylist()}
        assert written == expected


@pytest.mark.parametrize("text", ["\u0130stanbul has a big red tower", "\u00c4rger im B\u00fcro heute", "\u03a3\u03ae\u03bc\u03b5\u03c1\u03b1 o dog runs",
                                  "\u2126 sign on a big wall"])
def test_eda_gives_back_a_first_word_it_did_not_move_byte_equal(text):
    """EDA lowers the first word out of sentence case and capitalises whatever word ends up first; "\u0130" (Turkish
    dotted capital I) lowers to two characters and came back as "I\\u0307": an untouched word rewritten."""
    caption = eda.parse_caption(text)
    assert eda.render_caption(caption) == text
    first = text.split()[0]
    for seed in range(20):
        edit = eda.apply_op("rd", caption, 0.2, random.Random(seed))
        out = eda.render_caption(edit.caption).split()
        if out[0].casefold() == first.casefold():  # the first word kept its place
            assert out[0] == first, out


def test_the_project_attacks_replace_words_of_every_script_written_with_spaces():
    """README's protocol table (item 8): under the project protocol a word is letters of any script written with
    spaces between words (until 2026-12-06 only A-Z: no accented word of Multi30k's German was ever attacked,
    whatever `--mlm`); a run of Chinese or Japanese, written without spaces, is a phrase and is never replaced."""
    from augment.wordnet import STOP_WORDS
    from augment.words import is_word

    for word in ("dog,", "T-shirt", "f\u00e4hrt", "Stra\u00dfe", "e\u0301te\u0301", "\u0643\u0644\u0628",
                 "\u0441\u043e\u0431\u0430\u043a\u0430", "\u0915\u0941\u0924\u094d\u0924\u093e", "l\u2019homme",
                 "\uac1c\uac00",  # Korean is written with spaces
                 # zero-width non-joiner / joiner inside a word (Persian, Devanagari's half forms)
                 "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u0915\u094d\u200d\u0937"):
        assert split_chunk(word, possessive=True).replaceable(STOP_WORDS), word
    for word in ("\u4e00\u53ea\u72d7\u5728\u8349\u5730\u4e0a\u5954\u8dd1", "\u306d\u3053", "\uff88\uff7a",
                 "\u0e2b\u0e21\u0e32", "12", "x2", "dog-", "\u0301e",  # Chinese, kana, half-width kana, Thai
                 "\u200cab\u00e9", "ab\u00e9\u200d", "\u0645\u200c\u200c\u062e"):  # a joiner joins two letters
        assert not is_word(word), word
    assert not split_chunk("\u4e00\u53ea\u72d7\u3002", possessive=True).replaceable(STOP_WORDS)


def test_a_substitute_is_written_in_the_script_of_the_word_it_replaces():
    """A multilingual masked LM's top predictions for a German word include other scripts' tokens: a substitute
    in another script than the word's is no word of the caption's language (an English word's Greek or Cyrillic
    substitutes were refused before as non-A-Z, and still are)."""
    from train.attacks.substitutes import acceptable_substitute

    assert acceptable_substitute("l\u00e4uft", "f\u00e4hrt") and acceptable_substitute("geht", "f\u00e4hrt")
    assert acceptable_substitute("caf\u00e9", "dog") and acceptable_substitute("\u043a\u043e\u0442", "\u043f\u0451\u0441")
    assert not acceptable_substitute("\u0434\u043e\u043c", "house") and not acceptable_substitute("cat", "\u043f\u0451\u0441")
    assert not acceptable_substitute("\u732b", "dog")  # no Chinese character stands in for a word
    # a substitute mixing the word's script with another is refused too (a mutation taking every substitute whose
    # scripts include the word's passed every test, audit CH): Latin "dog" with a Cyrillic "\u0435"
    assert not acceptable_substitute("dog\u0435", "f\u00e4hrt") and acceptable_substitute("f\u00e4hrt", "dog\u0435")


def test_paraphrases_and_captions_are_deduplicated_whatever_the_unicode_form():
    """A sentencepiece paraphraser gives a decomposed (NFD) source caption back composed: it counted as a new
    paraphrase of itself; a Chinese caption with and without its final "。" counted twice."""
    from augment.generators.paraphrase import DistinctCollector

    source = unicodedata.normalize("NFD", "\u00e9t\u00e9 \u00e0 Paris")
    collector = DistinctCollector(3, refuse=[source])
    collector.offer(unicodedata.normalize("NFC", source), 0)  # the source echoed, composed
    collector.offer("\u4e00\u53ea\u72d7\u5728\u8dd1\u3002", 0)
    collector.offer("\u4e00\u53ea\u72d7\u5728\u8dd1", 1)
    collector.offer("\uff21 dog", 1)  # full-width A
    collector.offer("a dog", 1)
    assert [text for text, _ in collector.kept] == ["\u4e00\u53ea\u72d7\u5728\u8dd1\u3002", "\uff21 dog"]


def test_a_csv_key_typed_in_another_unicode_form_than_the_header_names_that_column(tmp_path, capsys):
    """A header written decomposed ("le\\u0301gende", macOS) and a key typed composed print alike: the refusal
    "CSV needs a header with 'légende' ... got ['image', 'légende']" could not be acted on."""
    from augment.cli import main as augment_main
    from tests.conftest import write_image

    write_image(tmp_path / "a.png")
    source = tmp_path / "train.tsv"
    decomposed = unicodedata.normalize("NFD", "l\u00e9gende")
    source.write_text("image\t" + decomposed + "\na.png\tun chien\n", encoding="utf-8")
    assert augment_main(["inspect", "--source", str(source), "--csv-caption-key", "l\u00e9gende"]) == 0
    assert "1 images, 1 captions" in capsys.readouterr().out
    assert augment_main(["inspect", "--source", str(source), "--csv-caption-key", "titre"]) == 2


def test_a_targeted_attacks_hit_is_counted_as_an_uncased_bert_tokenizer_writes_the_target():
    """BLIP decodes through an uncased BERT tokenizer: accents stripped, a space around every CJK ideograph.
    A `pgd-targeted` target "un chien à la plage" or "一只狗在跑" could never count as reached."""
    from train.evaluate_captioning import _normalised

    assert _normalised("un chien a la plage") == _normalised("Un chien \u00e0 la plage.")
    assert _normalised("\u4e00 \u53ea \u72d7 \u5728 \u8dd1") == _normalised("\u4e00\u53ea\u72d7\u5728\u8dd1")
    assert _normalised("a black triangle") == _normalised("A black triangle.")
    assert _normalised("a black triangle") != _normalised("a black circle")
    assert _normalised("\u4e00 \u53ea \u732b") != _normalised("\u4e00\u53ea\u72d7")


def test_captioning_metrics_say_when_chinese_or_japanese_captions_are_not_segmented():
    """A run of CJK characters is one PTB token: whole phrases compared, near-0 numbers against a BERT-decoded
    "一 只 狗"; the notes (eval.json, eval.md) say so instead of leaving the numbers to be read as a result."""
    from train.caption_metrics import UNSEGMENTED_CJK, caption_scores

    chinese = caption_scores([["\u4e00\u53ea\u72d7\u5728\u8dd1"], ["\u4e24\u4e2a\u5b69\u5b50"]],
                             ["\u4e00 \u53ea \u72d7 \u5728 \u8dd1", "\u4e24 \u4e2a \u5b69 \u5b50"], java=False, meteor=False)
    assert UNSEGMENTED_CJK in chinese["notes"]
    segmented = caption_scores([["\u4e00 \u53ea \u72d7 \u5728 \u8dd1"], ["\u4e24 \u4e2a \u5b69 \u5b50"]],
                               ["\u4e00 \u53ea \u72d7 \u5728 \u8dd1", "\u4e24 \u4e2a \u5b69 \u5b50"], java=False, meteor=False)
    english = caption_scores([["a dog runs"], ["two kids"]], ["a dog runs", "two kids"], java=False, meteor=False)
    assert UNSEGMENTED_CJK not in segmented["notes"] and UNSEGMENTED_CJK not in english["notes"]


@pytest.mark.parametrize("segment", ["chars", "jieba"])
def test_segment_cjk_makes_a_bert_decoded_chinese_caption_match_its_unspaced_reference(segment):
    """`--segment-cjk`: a BLIP decoder's "一 只 狗 在 海 滩 上" and the reference "一只狗在海滩上" scored ~0 (one
    PTB token per run), and the notes only said so; cut the same way on both sides they are the same tokens."""
    from train.caption_metrics import SEGMENTED_CJK, UNSEGMENTED_CJK, caption_scores, segment_cjk

    reference, decoded = "\u4e00\u53ea\u72d7\u5728\u6d77\u6ee9\u4e0a\u5954\u8dd1", \
        "\u4e00 \u53ea \u72d7 \u5728 \u6d77 \u6ee9 \u4e0a \u5954 \u8dd1"
    assert segment_cjk(reference, segment).split() == segment_cjk(decoded, segment).split()
    words = segment_cjk(reference, segment).split()
    if segment == "chars":
        assert words == list(reference)
    else:  # words, not characters: 海滩 (beach) and 奔跑 (run) whole
        assert "\u6d77\u6ee9" in words and "\u5954\u8dd1" in words and len(words) < len(reference)
    assert segment_cjk("a dog, \u4e00\u53ea\u72d7.", segment).split()[:2] == ["a", "dog,"]  # other scripts untouched
    assert segment_cjk(reference, "none") == reference
    references = [[reference, "\u72d7\u5728\u8dd1"], ["\u4e24\u4e2a\u5b69\u5b50\u5728\u73a9"]]
    candidates = [decoded, "\u4e24 \u4e2a \u5b69 \u5b50 \u5728 \u73a9"]
    plain = caption_scores(references, candidates, java=False, meteor=False)
    cut = caption_scores(references, candidates, java=False, meteor=False, segment=segment)
    assert plain["bleu4"] < 1 and UNSEGMENTED_CJK in plain["notes"]
    assert cut["bleu4"] > 99 and cut["cider"] > plain["cider"] + 100
    assert UNSEGMENTED_CJK not in cut["notes"] and any(n.startswith(SEGMENTED_CJK[segment][:25]) for n in cut["notes"])
    english = caption_scores([["a dog runs"]] * 2, ["a dog runs"] * 2, java=False, meteor=False, segment=segment)
    assert english["notes"] == caption_scores([["a dog runs"]] * 2, ["a dog runs"] * 2, java=False, meteor=False)["notes"]


@pytest.mark.parametrize("java", [False, True])
@pytest.mark.parametrize("segment", ["chars", "jieba"])
def test_segment_cjk_folds_fullwidth_forms_and_ideographic_punctuation_as_english_punctuation_is_dropped(segment, java):
    """COCO-CN-style references write "３只狗在跑！" and "两个孩子、一只猫。"; a decoder writes "3 只 狗 在 跑". The
    fullwidth ３ was another token than 3, and ！/、/。 were tokens of their own (PTB drops "!", "," and "." in
    English captions): BLEU-4 of the same captions was under 60. Folded first, they score as the same."""
    import shutil

    from train.caption_metrics import caption_scores, segment_cjk

    if java and shutil.which("java") is None:
        pytest.skip("no java on the PATH: COCO's PTB tokenizer is not run (the stand-in tokenizer is, java=False)")
    # (no comma inside the first: jieba cuts a run by its context, and a comma ends a run)
    reference, decoded = "\uff13\u53ea\u72d7\u5728\u8dd1\uff01", "3 \u53ea \u72d7 \u5728 \u8dd1"
    assert segment_cjk(reference, segment).split()[0] == "3" and "\uff01" not in segment_cjk(reference, segment)
    assert segment_cjk("\uff13 dogs\uff0c", segment) == "\uff13 dogs\uff0c"  # no CJK run: untouched, as other scripts
    references = [[reference], ["\u4e24\u4e2a\u5b69\u5b50\u3001\u4e00\u53ea\u732b\u3002"]]
    candidates = [decoded, "\u4e24 \u4e2a \u5b69 \u5b50 \u4e00 \u53ea \u732b"]
    scores = caption_scores(references, candidates, java=java, meteor=False, segment=segment)
    assert scores["bleu4"] > 99 and scores["rouge_l"] > 99


@pytest.mark.parametrize("segment", ["chars", "jieba"])
def test_segment_cjk_reads_a_caption_in_halfwidth_katakana_as_the_same_caption_in_katakana(segment):
    """Halfwidth katakana (U+FF65-FF9F) is not among the CJK characters a run is made of, and the run was looked for
    before the fold: "ｲﾇｶﾞﾊｼﾙ" was left whole, one token, where "イヌガハシル" is six. NFKC makes ｶﾞ (two code points)
    one ガ; a caption without CJK text once folded is still left as it is."""
    from train.caption_metrics import segment_cjk

    halfwidth, katakana = "\uff72\uff87\uff76\uff9e\uff8a\uff7c\uff99", "\u30a4\u30cc\u30ac\u30cf\u30b7\u30eb"
    assert segment_cjk(halfwidth, segment) == segment_cjk(katakana, segment)
    assert segment_cjk(halfwidth, segment).split() == list(katakana)
    assert segment_cjk("\uff44\uff4f\uff47 \uff13\u3002", segment) == "\uff44\uff4f\uff47 \uff13\u3002"


def test_compare_says_which_captioning_evaluation_segmented_its_cjk_text():
    """`analysis compare` put a segmented evaluation's CIDEr beside an unsegmented one's as if comparable."""
    from analysis.cli import compare_table

    def report(segment_cjk):
        settings = {} if segment_cjk is None else {"segment_cjk": segment_cjk}
        return {"task": "captioning", "attacks": {"clean": {"cider": 9.0}}, "settings": settings}

    lines = compare_table([("a", report(None)), ("b", report("none")), ("c", report("jieba"))]).splitlines()
    assert lines[0] == "| evaluation | CJK segmented | clean CIDEr |"
    assert lines[2:] == ["| a | none | 9.0 |", "| b | none | 9.0 |", "| c | jieba | 9.0 |"]
    assert "CJK" not in compare_table([("a", report(None)), ("b", report("none"))])


def test_segment_cjk_jieba_missing_or_an_unknown_segmentation_is_one_line(monkeypatch):
    import sys

    from augment.errors import MissingDependencyError
    from train import caption_metrics

    caption_metrics._jieba.cache_clear()
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba raises ImportError
    try:
        with pytest.raises(MissingDependencyError, match=r"^--segment-cjk jieba needs jieba: pip install jieba"):
            caption_metrics.require_segmenter("jieba")
    finally:
        caption_metrics._jieba.cache_clear()
    with pytest.raises(ValueError, match="unknown CJK segmentation 'words'"):
        caption_metrics.caption_scores([["a"]], ["a"], java=False, meteor=False, segment="words")


def test_val_segment_cjk_jieba_missing_names_the_flag_given(monkeypatch):
    """`train ... --val-segment-cjk jieba` without jieba said "--segment-cjk jieba needs jieba", a flag of `train eval`
    the user had not given."""
    import sys

    from augment.errors import MissingDependencyError
    from train import caption_metrics
    from train.config import resolve_config
    from train.validation import validation_settings

    config = resolve_config({"method": "tecoa", "task": "captioning", "model": "tiny-captioner", "train_data": "s.json",
                             "out": "o", "val_frequency": 1, "val_segment_cjk": "jieba"})
    caption_metrics._jieba.cache_clear()
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba raises ImportError
    try:
        with pytest.raises(MissingDependencyError, match=r"^--val-segment-cjk jieba needs jieba: pip install jieba"):
            validation_settings(config, 1)
    finally:
        caption_metrics._jieba.cache_clear()


def test_a_folder_name_holding_a_pipe_stays_one_cell_of_the_comparison_tables():
    """`augment score --table` and `analysis compare` name pools and evaluations by their folders: a "|" in
    one split its row into one more cell than the header, shifting every number after it (audit AL)."""
    from analysis.cli import compare_table
    from augment.scoring.report import TABLE_COLUMNS, comparison_table

    entry = {"pool": {"name": "eda|n8", "method": "eda", "num_rows": 3}, "settings": {"confidence": 0.95},
             "scorer": {"name": "tiny-clip"}, "alignment": {}, "clipscore": {}}
    row = comparison_table([entry]).splitlines()[2]
    assert row.startswith("| eda\\|n8 | eda | 3 |") and row.count(" | ") == len(TABLE_COLUMNS) - 1
    report = {"attacks": {"clean": {"tr@1": 80.0, "ir@1": 70.0, "rsum": 400.0}}}
    assert compare_table([("runs|a", report)]).splitlines()[2].startswith("| runs\\|a | ")
