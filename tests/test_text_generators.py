"""Text pool generators: `eda`, `t2t-<model>` paraphrasers, `i2t-<model>` captioners.

All offline: the sample world as the source, the tiny random-weight twins as models, WordNet
from nltk's data (built from Debian's wordnet-base by `augment setup-wordnet`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from augment.errors import MissingDependencyError
from augment.generators import eda
from augment.generators.base import run_generation
from augment.pool import load_pool
from augment.schema import POOL_FEATURES
from augment.sources import load_source
from augment.wordnet import STOP_WORDS
from tests.conftest import without_model

TINY_SAMPLING = {"max_new_tokens": 6, "max_rounds": 2}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    from augment.world.writer import write_sample

    out = write_sample(tmp_path_factory.mktemp("world") / "sample", n=60, seed=0)
    return out / "dataset_sample.json"


@pytest.fixture(scope="session")
def source(world):
    dataset, _ = load_source(str(world))
    return dataset


@pytest.fixture(scope="session")
def train_items(source):
    train = source.filter(lambda split: split == "train", input_columns="split")
    return [train[i] for i in range(4)]


class CliRuns:
    """`augment generate` subprocesses started together and read when a test needs one."""

    def __init__(self, root: Path, commands: dict[str, list[str]]):
        self.root, self.processes = root, {}
        for name, args in commands.items():
            with open(root / f"{name}.out", "w") as out, open(root / f"{name}.err", "w") as err:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "augment.cli", "generate", *args, "--no-progress"],
                    stdout=out, stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def result(self, name: str) -> tuple[int, str]:
        code = self.processes[name].wait(timeout=300)
        return code, (self.root / f"{name}.err").read_text()

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny models run ~10x faster on one thread than on two busy cores (thread hand-offs
    dominate such small matrices); the setting is restored for other test modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _start_cli_runs_early(request):
    """Start the CLI runs with the module's first test (when a CLI test is selected at all), so
    they run beside the in-process tests instead of after them."""
    if any("cli_runs" in item.fixturenames for item in request.session.items
           if getattr(item, "module", None) is request.module):
        request.getfixturevalue("cli_runs")


@pytest.fixture(scope="module")
def cli_runs(world, wordnet_ready, tmp_path_factory):
    """One `augment generate` run per method, all started at once."""
    root = tmp_path_factory.mktemp("cli")
    runs = CliRuns(root, {
        "eda": ["--method", "eda", "--source", str(world), "--out", str(root / "eda"), "--n", "3",
                "--limit", "5", "--shard-size", "2", "--eda-ops", "sr,rd", "--alpha-sr", "0.2"],
        "t2t": ["--method", "t2t-tiny-paraphraser", "--source", str(world), "--out", str(root / "t2t"),
                "--n", "2", "--limit", "3", "--batch-size", "4", "--max-new-tokens", "6", "--top-p", "0.8"],
        "i2t": ["--method", "i2t-tiny-captioner", "--source", str(world), "--out", str(root / "i2t"),
                "--n", "2", "--limit", "3", "--batch-size", "2", "--max-new-tokens", "6", "--temperature", "1.2"],
    })
    yield runs
    runs.kill()


def _rows(pool_dir: Path) -> list[dict]:
    pool = load_pool(pool_dir)
    assert pool.dataset.features == POOL_FEATURES
    return sorted(pool.dataset.remove_columns("image").to_list(), key=lambda r: r["row_id"])


def _words(text: str) -> list[str]:
    return [w.strip(",.!?;:").lower() for w in text.split() if w.strip(",.!?;:")]


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(word in it for word in short)


def _by_caption(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["source_image_id"], row["source_caption_index"]), []).append(row)
    return groups


class FailOnSecondShard:
    """Wraps a generator and raises on its second shard, like a run killed half-way."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, items, n, seed):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt("killed")
        return self.inner.generate(items, n, seed)


def _check_resume(generator, source, tmp_path, **run):
    whole = run_generation(generator, source, str(tmp_path / "whole"), progress=False, **run)
    with pytest.raises(KeyboardInterrupt):
        run_generation(FailOnSecondShard(generator), source, str(tmp_path / "resumed"), progress=False, **run)
    assert json.loads((tmp_path / "resumed" / "pool.json").read_text())["status"] == "in-progress"
    with pytest.raises(Exception, match="not finished"):
        load_pool(tmp_path / "resumed")
    resumed = run_generation(generator, source, str(tmp_path / "resumed"), progress=False, **run)
    assert resumed["num_rows"] == whole["num_rows"] > 0
    first, second = _rows(tmp_path / "whole"), _rows(tmp_path / "resumed")
    ids = [r["row_id"] for r in second]
    assert len(ids) == len(set(ids))
    assert first == second


# ----------------------------------------------------------------------------- EDA operations

CAPTIONS = [
    "A large red square, a large yellow star and a small red square.",
    "a tiny green hexagon and a tiny orange square",
    "NASA photographs the big moon over London!",
    "an image of a big yellow star, a large crimson square and a small red square on a plain gray background",
]


def _edits(op: str, text: str, seeds=range(40)):
    caption = eda.parse_caption(text)
    for seed in seeds:
        edit = eda.apply_op(op, caption, 0.2, random.Random(seed))
        assert edit is not None
        yield edit, eda.render_caption(edit.caption)


@pytest.mark.parametrize("text", CAPTIONS + ["  spaced   out ,  words  ", "Dog", "(a) tricky - case?", "Is that a dog?!"])
def test_parse_and_render_round_trip(text):
    assert eda.render_caption(eda.parse_caption(text)) == " ".join(text.split())


@pytest.mark.parametrize("text", CAPTIONS)
def test_synonym_replacement_uses_wordnet_synonyms_of_non_stop_words(wordnet_ready, text):
    original = eda.parse_caption(text)
    for edit, out in _edits("sr", text):
        assert normalised_differs(out, text)
        changed = [(a.core, b.core) for a, b in zip(original.chunks, edit.caption.chunks) if a.core != b.core]
        assert len(edit.caption.chunks) == len(original.chunks) and changed
        for old, new in changed:
            assert old.lower() not in STOP_WORDS
            assert new.lower() in _lower(eda.eda_synonyms(old)) and new.lower() not in STOP_WORDS
            assert new[0].isupper() or not old[0].isupper()
        _check_shape(text, out)


@pytest.mark.parametrize("text", CAPTIONS)
def test_random_insertion_inserts_synonyms_of_caption_words(wordnet_ready, text):
    words = _words(text)
    for edit, out in _edits("ri", text):
        assert _is_subsequence(words, _words(out)) and len(_words(out)) > len(words)
        for op, source_word, inserted in edit.changes:
            assert op == "ri" and source_word.lower() in words and source_word.lower() not in STOP_WORDS
            assert inserted.lower() in _lower(eda.eda_synonyms(source_word))
        _check_shape(text, out)


@pytest.mark.parametrize("text", CAPTIONS)
def test_random_swap_keeps_the_words(text):
    for _edit, out in _edits("rs", text):
        # (two swaps may undo each other: the generator draws again then, see the augment test)
        assert Counter(_words(out)) == Counter(_words(text))
        assert [c for c in out if c in ",.!?"] == [c for c in text if c in ",.!?"]  # punctuation stays put
        _check_shape(text, out)


@pytest.mark.parametrize("text", CAPTIONS)
def test_random_deletion_only_removes_words(text):
    for _edit, out in _edits("rd", text):
        assert _is_subsequence(_words(out), _words(text)) and 0 < len(_words(out)) < len(_words(text))
        _check_shape(text, out)


# ten words with a synonym each ("Xs"), between ten stop words: alpha * w counts all twenty words
GUARD_CAPTION = " ".join(f"the {word}" for word in ("apple", "bear", "cake", "door", "egg", "fern", "goat", "hill",
                                                    "iris", "jug"))


def _one_synonym(word: str) -> list[str]:
    return [] if word.lower() in STOP_WORDS else [word + "s"]


def test_sr_and_ri_edit_alpha_times_the_words_of_the_caption():
    """Guards EDA's count, max(1, int(alpha * w)) with w every word of the caption: at alpha 0.2 four of the
    twenty (a count of 1, or alpha times the ten words with synonyms, 2, survived the tests above)."""
    caption = eda.parse_caption(GUARD_CAPTION)
    for seed in range(5):
        replaced = eda.synonym_replacement(caption, 0.2, random.Random(seed), _one_synonym)
        inserted = eda.random_insertion(caption, 0.2, random.Random(seed), _one_synonym)
        assert len(replaced.changes) == len(inserted.changes) == 4
        assert len(eda.render_caption(inserted.caption).split()) == 24


def test_sr_replaces_each_word_with_synonyms_when_the_count_exceeds_them():
    """Guards synonym replacement's cap, the words with synonyms: at alpha 1 a caption of five words, two of them
    with synonyms, gets both replaced (one fewer than the candidates survived every test)."""
    two_with_synonyms = eda.parse_caption("the apple and the bear")
    for seed in range(3):
        edit = eda.synonym_replacement(two_with_synonyms, 1.0, random.Random(seed), _one_synonym)
        assert eda.render_caption(edit.caption) == "the apples and the bears"


def test_an_all_caps_first_word_keeps_its_case_when_moved():
    """Guards sentence case only for a first word that is not all caps: "NASA" lowered to "nASA" out of sentence
    case came back as "nASA" wherever a swap moved it (the shape check looked for "nasa" and "Nasa" only)."""
    caption = eda.parse_caption("NASA photographs the moon")
    moved = 0
    for seed in range(10):
        words = eda.render_caption(eda.random_swap(caption, 0.3, random.Random(seed)).caption).split()
        assert "NASA" in words
        moved += words[0] != "NASA"
    assert moved


def test_ri_may_insert_at_every_position_the_end_included():
    """Guards random insertion's position, drawn from [0, len(chunks)]: a draw from [0, len - 1] never
    put the synonym after the caption's last word."""
    caption = eda.parse_caption("apple bear")
    positions = set()
    for seed in range(60):
        edit = eda.random_insertion(caption, 0.1, random.Random(seed), _one_synonym)
        positions.add([chunk.core for chunk in edit.caption.chunks].index(edit.changes[0][2]))
    assert positions == {0, 1, 2}


def test_rd_deletes_each_word_with_probability_alpha():
    """Guards the deletion test `random() < alpha`: the inverted test deleted nine words in ten at alpha 0.1."""
    caption = eda.parse_caption(GUARD_CAPTION)
    deleted = [len(eda.random_deletion(caption, 0.1, random.Random(seed)).changes) for seed in range(50)]
    assert 1 <= sum(deleted) / len(deleted) <= 4  # 2 of 20 expected (at least 1 each time)


def test_rd_at_alpha_one_half_deletes_half_the_words():
    """Guards the deletion probability, alpha itself: at alpha 0.1 the floor of one deleted word hid alpha / 2 (the
    test above), at 0.5 ten of twenty words go on average, five with alpha / 2."""
    caption = eda.parse_caption(GUARD_CAPTION)
    deleted = [len(eda.random_deletion(caption, 0.5, random.Random(seed)).changes) for seed in range(50)]
    assert 8 <= sum(deleted) / len(deleted) <= 12


def test_eda_draws_each_caption_of_an_image_with_its_own_row_seeds():
    """Guards the row seeds' caption index: drawn with caption 0's seeds, every caption of an image got the
    same edits (two equal captions, the same rows), not the rows their recorded seeds name."""
    generator = eda.EdaGenerator(ops=("rs",))
    rows = generator.generate([{"image_id": "x", "captions": [GUARD_CAPTION, GUARD_CAPTION]}], 3, seed=0)
    by_caption = [[row["caption"] for row in rows if row["source_caption_index"] == c] for c in (0, 1)]
    assert len(by_caption[0]) == len(by_caption[1]) == 3 and by_caption[0] != by_caption[1]


def test_each_eda_row_is_the_edit_its_recorded_seed_draws():
    """Guards each slot's own seed, the one its row records (so a row can be redrawn alone): drawn with slot 0's
    seed, the later slots repeated slot 0's edit, were drawn again and kept the second draw."""
    rows = eda.EdaGenerator(ops=("rs",)).generate([{"image_id": "x", "captions": [GUARD_CAPTION]}], 3, seed=5)
    caption = eda.parse_caption(GUARD_CAPTION)
    assert len(rows) == 3
    for row in rows:
        assert row["caption"] == eda.render_caption(eda.random_swap(caption, 0.1, eda.RowRandom(row["seed"])).caption)


def test_each_eda_op_draws_and_records_its_own_alpha():
    """Guards each op's --alpha-<op>, read, drawn with and recorded: every op reading --alpha-sr, every op drawn
    with the first op's alpha, and a row recording its slot's own op's alpha when the next op made it (a caption
    of one spelling has nothing to swap) each passed every test."""
    from augment.cli import build_parser

    args = build_parser().parse_args(["generate", "--method", "eda", "--source", "s", "--out", "o", "--eda-ops", "rs,rd",
                                      "--alpha-sr", "0.5", "--alpha-rs", "0.3", "--alpha-rd", "1"])
    generator = eda.build("eda", args)
    assert generator.params() == {"ops": ["rs", "rd"], "alpha_rs": 0.3, "alpha_rd": 1.0}
    rows = generator.generate([{"image_id": "x", "captions": ["a red circle beside a blue square", "dog dog"]}], 2, seed=0)
    made = {(row["source_caption_index"], row["row_id"][-1]): (row["caption"], json.loads(row["provenance"])) for row in rows}
    assert sorted(made) == [(0, "0"), (0, "1"), (1, "0")]
    swapped, deleted, fell_back = made[(0, "0")], made[(0, "1")], made[(1, "0")]
    assert swapped[1]["op"] == "rs" and swapped[1]["alpha"] == 0.3 and len(swapped[1]["edits"]) == 2
    assert deleted[1]["op"] == "rd" and deleted[1]["alpha"] == 1.0 and len(deleted[0].split()) == 1
    assert fell_back == ("dog", {"op": "rd", "alpha": 1.0, "edits": [["rd", "dog"]]})


def test_row_random_gives_splitmix64s_published_outputs_and_floats_in_0_1():
    """Guards RowRandom, the generator every EDA row is drawn with, against SplitMix64's published outputs (seed
    1234567, and a seed past 32 bits): a changed shift, a seed cut to 32 bits or a 64-bit draw taking two words
    made other rows than the recipe's and passed every test; and its floats' scale, 1/2^52 put half of them
    above 1 (random deletion then deleted half as often)."""
    rng = eda.RowRandom(1234567)
    assert [rng.getrandbits(64) for _ in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    assert eda.RowRandom(1477776061723855037).getrandbits(64) == 1985237415132408290
    floats = [eda.RowRandom(seed).random() for seed in range(1000)]
    assert 0.0 <= min(floats) and max(floats) < 1.0 and 0.45 < sum(floats) / len(floats) < 0.55


def test_a_swap_exchanges_two_different_slots_and_two_different_words():
    """Guards random swap's draws: `_two_slots` gives every ordered pair of different slots (`second > first`
    drew a slot with itself and never (i, i + 1)), and each swap exchanges two different words, drawn again
    until they differ (with a single redraw, most swaps in a caption of nine "a" and one "b" exchanged "a" and "a")."""
    pairs = {eda._two_slots([0, 1, 2], random.Random(seed)) for seed in range(200)}
    assert pairs == {(a, b) for a in range(3) for b in range(3) if a != b}
    caption = eda.parse_caption("a a a a a a a a a b")
    for seed in range(20):
        changes = eda.random_swap(caption, 0.3, random.Random(seed)).changes
        assert len(changes) == 3 and all(first != second for _op, first, second in changes)


def test_a_swap_moves_words_and_leaves_punctuation_in_its_slot():
    """Guards swapping words between slots, not whole chunks: "square, a star" becomes "star, a square"; swapped
    with its comma, "star a square," passed the punctuation test above (one comma, in the same order)."""
    caption = eda.parse_caption("square, a star")
    outs = {eda.render_caption(eda.random_swap(caption, 0.1, random.Random(seed)).caption) for seed in range(30)}
    assert outs == {"a, square star", "star, a square", "square, star a"}


@pytest.mark.timeout(60)  # the mutation this guards loops forever
def test_a_caption_of_one_spelling_has_nothing_to_swap():
    """Guards random swap's precondition, two different spellings (not two word slots): "Dog dog" counted as
    swappable, and the draw for two different words never ended."""
    for text in ("Dog dog", "the the."):
        assert eda.random_swap(eda.parse_caption(text), 0.5, random.Random(0)) is None
    assert eda.EdaGenerator(ops=("rs",)).augment("dog Dog", 2, [1, 2]) == []


def test_rd_at_alpha_one_keeps_one_word():
    """Guards random deletion's "at least one stays": at --alpha-rd 1 every word is drawn for deletion, and the
    caption came out empty (only its final ".") without it."""
    caption = eda.parse_caption("A red circle beside a blue square.")
    for seed in range(5):
        out = eda.render_caption(eda.random_deletion(caption, 1.0, random.Random(seed)).caption)
        assert len(out.split()) == 1 and out.endswith(".") and out[0].isupper()


def _lower(words: list[str]) -> list[str]:
    return [w.lower() for w in words]


def normalised_differs(out: str, text: str) -> bool:
    return eda.normalised(out) != eda.normalised(text)


def _check_shape(text: str, out: str) -> None:
    """Final punctuation kept; a capitalised caption stays capitalised; other capitals kept."""
    assert out[-1] in ".!?" if text[-1] in ".!?" else out[-1] not in ".!?"
    assert out[0].isupper() == text[0].isupper() or not out[0].isalpha()
    if "NASA" in text and "NASA" in out:
        assert "nasa" not in out and "Nasa" not in out
    if "London" in _words_raw(out):
        assert "london" not in _words_raw(out)


def _words_raw(text: str) -> list[str]:
    return [w.strip(",.!?") for w in text.split()]


def test_moved_first_word_loses_its_sentence_capital():
    caption = eda.parse_caption("The red circle.")
    moved = eda.Caption((caption.chunks[1], caption.chunks[0], caption.chunks[2]), caption.end, caption.capitalised)
    assert eda.render_caption(moved) == "Red the circle."


def test_augment_never_returns_the_input_and_skips_captions_too_short(wordnet_ready):
    generator = eda.EdaGenerator()
    for text in CAPTIONS:
        results = generator.augment(text, 6, list(range(6)))
        texts = [eda.normalised(t) for _k, _op, t, _e in results]
        assert len(results) == 6 and len(set(texts)) == 6 and eda.normalised(text) not in texts
        assert [op for _k, op, _t, _e in results] == ["sr", "ri", "rs", "rd", "sr", "ri"]
    no_wordnet_ops = eda.EdaGenerator(ops=("rs", "rd"))
    assert no_wordnet_ops.augment("dog", 4, list(range(4))) == []  # one word: nothing to swap or delete
    assert generator.augment("a", 4, list(range(4))) == []  # a stop word without synonyms
    assert generator.augment("...", 4, list(range(4))) == []
    # "dog" has synonyms: the rs/rd slots fall back to the WordNet ops
    assert {op for _k, op, _t, _e in generator.augment("dog", 4, list(range(4)))} <= {"sr", "ri"}


def test_augment_never_keeps_an_edit_that_gives_the_source_back():
    """Guards the source caption in the seen set: two swaps of a two-word caption (--alpha-rs 1) always undo each
    other, and with the source left out of the set its copy became the caption's rows."""
    swaps_twice = eda.EdaGenerator(ops=("rs",), alphas={"rs": 1.0})
    assert swaps_twice.augment("Red dog.", 3, [1, 2, 3]) == []


def test_augment_never_keeps_a_copy_of_an_earlier_slots_caption():
    """Guards the kept rows in the seen set: one swap in a three-word caption has three outcomes, and with the
    kept rows left out of the set six slots returned six rows, copies among them."""
    texts = [found.text for found in eda.EdaGenerator(ops=("rs",)).augment("red dog runs", 6, list(range(6)))]
    assert 2 <= len(texts) <= 3 and len({eda.normalised(text) for text in texts}) == len(texts)


def test_augment_compares_captions_in_lower_case():
    """Guards the seen set's form, lower case: swaps of "x y X Y" give captions that differ only in case ("y x Y X"
    and "Y X y x"), which compared as written were all kept as different rows."""
    texts = [found.text for found in eda.EdaGenerator(ops=("rs",), alphas={"rs": 0.5}).augment("x y X Y", 8, list(range(8)))]
    assert texts and len({text.lower() for text in texts}) == len(texts)


def test_eda_ops_are_read_once_each_in_the_order_given():
    """Guards --eda-ops' list: "rs, RS,rd" is rs then rd (a repeated op kept, "rs,rs" cycled rs twice as often
    and recorded ops ["rs", "rs"]); an unknown op is refused."""
    assert eda._ops_list("rs, RS,rd") == ("rs", "rd")
    with pytest.raises(argparse.ArgumentTypeError, match="EDA ops must be a comma list of sr,ri,rs,rd"):
        eda._ops_list("rs,swap")


def test_a_slot_whose_draw_repeats_an_earlier_one_draws_again():
    """Guards the redraws (MAX_ATTEMPTS): one swap in a five-word caption has ten outcomes, and eight slots get eight
    different rows; drawn once, the slots whose draw repeated an earlier slot's got none (five rows of eight)."""
    assert len(eda.EdaGenerator(ops=("rs",)).augment("the big red dog runs", 8, list(range(8)))) == 8


def test_eda_without_wordnet_fails_with_one_line_unless_only_rs_rd(monkeypatch):
    monkeypatch.setattr(eda, "require_wordnet", _raise_missing)
    with pytest.raises(MissingDependencyError, match="augment setup-wordnet"):
        eda.EdaGenerator()
    assert eda.EdaGenerator(ops=("rs", "rd")).params() == {"ops": ["rs", "rd"], "alpha_rs": 0.1, "alpha_rd": 0.1}


def _raise_missing():
    raise MissingDependencyError("WordNet for nltk is not installed: run `augment setup-wordnet`")


# ----------------------------------------------------------------------------- EDA pools


def test_eda_rows_are_distinct_and_seeded(wordnet_ready, source, train_items):
    generator = eda.EdaGenerator()
    rows = generator.generate(train_items, 4, seed=0)
    assert rows == generator.generate(train_items, 4, seed=0)
    assert [r["caption"] for r in rows] != [r["caption"] for r in generator.generate(train_items, 4, seed=1)]
    for (image_id, c), group in _by_caption(rows).items():
        item = next(i for i in train_items if i["image_id"] == image_id)
        texts = [eda.normalised(r["caption"]) for r in group]
        assert len(texts) == len(set(texts)) == 4 and eda.normalised(item["captions"][c]) not in texts


def test_eda_pool_resumes_after_a_kill(wordnet_ready, source, tmp_path):
    _check_resume(eda.EdaGenerator(), source, tmp_path, n=2, seed=3, limit=6, shard_size=2)


# ----------------------------------------------------------------------------- paraphrases


@pytest.fixture(scope="module")
def paraphraser():
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    return ParaphraseGenerator("t2t-tiny-paraphraser", "tiny-paraphraser", batch_size=4,
                               sampling=Sampling(**TINY_SAMPLING))


def test_paraphrases_are_distinct_from_each_other_and_the_input(paraphraser, train_items):
    from augment.generators.paraphrase import normalised

    rows = paraphraser.generate(train_items[:2], 3, seed=0)
    assert rows
    for (image_id, c), group in _by_caption(rows).items():
        item = next(i for i in train_items if i["image_id"] == image_id)
        texts = [normalised(r["caption"]) for r in group]
        assert len(texts) == len(set(texts)) and normalised(item["captions"][c]) not in texts
        assert all(r["caption"].strip() for r in group)
        assert [r["row_id"].rsplit(":", 1)[1] for r in group] == [str(k) for k in range(len(group))]


def test_paraphrases_are_seeded(paraphraser, train_items):
    items = train_items[:1]
    first = paraphraser.generate(items, 2, seed=0)
    assert first == paraphraser.generate(items, 2, seed=0)
    assert [r["caption"] for r in first] != [r["caption"] for r in paraphraser.generate(items, 2, seed=1)]


def test_paraphrase_shortfall_is_noted_and_inputs_refused(paraphraser, train_items, monkeypatch):
    item = train_items[0]

    def stuck(captions, per_caption):  # a model that only repeats itself and the input
        return [["A Copy.", "a copy", captions[i], ""] for i in range(len(captions))]

    monkeypatch.setattr(paraphraser, "sample", stuck)
    rows = paraphraser.generate([item], 3, seed=0)
    assert [r["caption"] for r in rows] == ["A Copy."] * len(item["captions"])
    note = json.loads(rows[0]["provenance"])["note"]
    assert note == "only 1 of 3 distinct paraphrases after 2 sampling rounds"


def test_paraphrase_pool_resumes_after_a_kill(paraphraser, source, tmp_path):
    _check_resume(paraphraser, source, tmp_path, n=2, seed=0, limit=2, shard_size=1)


def _without_model(rows: list[dict]) -> list[dict]:
    """Rows less the model name in their provenance (a copy of a model in another folder)."""
    return [{**row, "provenance": {k: v for k, v in json.loads(row["provenance"]).items() if k != "model"}}
            for row in rows]


# what facebook/bart-* (num_beams 4, no_repeat_ngram_size 3, length_penalty 2...) or
# tuner007/pegasus_paraphrase (num_beams 8) save: --n 5 was a ValueError with 4 beams (5 > 4) and
# silently beam sampling with 8
SAVED_DECODING = {"no_repeat_ngram_size": 2, "repetition_penalty": 1.5, "length_penalty": 2.0, "min_length": 5}


@pytest.mark.parametrize("saved_in, beams", [("generation_config.json", 4), ("config.json", 8)])
def test_paraphrases_ignore_the_decoding_settings_a_model_saves(paraphraser, train_items, tmp_path, saved_in, beams):
    """Pools record plain nucleus sampling: a model that saves beam search and penalties (in its
    generation_config.json, or a legacy config.json without one) samples as the plain model."""
    from augment import tiny
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    folder = tmp_path / "saved"
    shutil.copytree(tiny.tiny_dir("tiny-paraphraser"), folder)
    if saved_in == "config.json":
        (folder / "generation_config.json").unlink()
    path = folder / saved_in
    path.write_text(json.dumps({**json.loads(path.read_text()), **SAVED_DECODING, "num_beams": beams}))
    generator = ParaphraseGenerator("t2t-tiny-paraphraser", str(folder), batch_size=4,
                                    sampling=Sampling(**TINY_SAMPLING))
    assert generator.lm.generation_config.num_beams == beams  # loaded, and overridden
    rows = generator.generate(train_items[:1], 5, seed=0)
    assert rows and _without_model(rows) == _without_model(paraphraser.generate(train_items[:1], 5, seed=0))
    assert generator.params() == paraphraser.params()


def test_causal_prompt_is_an_instruction_and_only_new_text_is_kept():
    from augment.generators.paraphrase import ParaphraseGenerator, clean_output

    plain = type("Plain", (), {"chat_template": None})()
    generator = without_model(ParaphraseGenerator, kind="causal", tokenizer=plain,
                              prompt_template="Rewrite: {caption} {not a field}")
    assert generator.prompt("a red square") == "Rewrite: a red square {not a field}\nNew caption:"
    assert clean_output('\n  "a square  that is red"\nCaption: more') == "a square that is red"


@pytest.mark.parametrize("output, cleaned", [
    ("‘A dog runs on the grass.’", "A dog runs on the grass."),  # British
    ("«A dog runs on the grass.»", "A dog runs on the grass."),  # French
    ("„Ein Hund rennt.“", "Ein Hund rennt."),  # German: its closing mark is an English opening one
    ("「一只狗在跑。」", "一只狗在跑。"),
    ('"«A dog runs.»"', "A dog runs."),  # nested, mixed
    ("The dogs’", "The dogs’"),  # a final apostrophe is the caption's, not half of a pair
    ("‘Tis a dog", "‘Tis a dog"),
    ("«A dog» and a cat", "«A dog» and a cat"),  # quotes inside: kept
])
def test_paired_quotes_of_other_typographies_are_unwrapped(output, cleaned):
    """was: only ASCII quotes, “ ” and backticks were stripped, so a model echoing the source caption in ‘…’,
    «…», „…“ or 「…」 gave it back as a new paraphrase or caption (audit CP found it)."""
    from augment.generators.paraphrase import DistinctCollector, clean_output

    assert clean_output(output) == cleaned
    collector = DistinctCollector(2, refuse=["A dog runs on the grass."])
    for echoed in ("‘A dog runs on the grass.’", "«A dog runs on the grass.»", "「A dog runs on the grass.」"):
        collector.offer(clean_output(echoed), 0)
    assert collector.kept == []


@pytest.mark.parametrize("output, answer", [
    ("<think>\nThe caption has a dog.\n</think>\n\nA dog runs.", "A dog runs."),  # Qwen3 / R1 reasoning as text
    ('Here is the new caption:\n\n"A dog runs on grass."', "A dog runs on grass."),  # a lead-in line
    ("New caption: A dog runs", "A dog runs"),  # the cue repeated
    ("<think> reasoning cut off by max_new_tokens", ""),  # no answer: dropped as empty
    ("A man: a story", "A man: a story"),  # a colon inside the one line is the caption's
    ("A dog runs.\nExplanation: the words changed.", "A dog runs."),
    # DeepSeek-R1-style templates open the block in the prompt: the output holds only its end
    ("Okay, the user wants a rewrite.\nLet me think.\n</think>\n\nA dog runs on grass.", "A dog runs on grass."),
    ("Here is a new caption:", ""),  # a lead-in alone is no answer
    ("**Here is the new caption:**\n\nA dog runs.", "A dog runs."),  # markdown emphasis
    ("**New caption:** A dog runs", "A dog runs"),
    ('A sign that reads:\n"Stop"', "A sign that reads:"),  # ends in a colon, but no lead-in: the caption's own
    ("A snake_case word", "A snake_case word"),
])
def test_an_instruction_models_answer_is_the_caption_it_gives(output, answer):
    """The first line of an instruction model's output was kept as the paraphrase: its reasoning
    block's "<think>" or its "Here is the new caption:" lead-in became pool rows."""
    from augment.generators.paraphrase import answer_of

    assert answer_of(output) == answer


def test_reasoning_opened_by_the_prompt_and_never_closed_is_no_answer():
    from augment.generators.paraphrase import answer_of, opens_thinking

    prompt = "<|user|>Rewrite: a dog<|assistant|><think>\n"  # the template opened the block
    assert opens_thinking(prompt) and not opens_thinking("<think>x</think> Rewrite: a dog")
    assert answer_of("Okay, the user wants a rewrite of", thinking_open=True) == ""
    assert answer_of("Okay, the user wants a rewrite of") == "Okay, the user wants a rewrite of"


def test_a_paraphraser_whose_template_opens_reasoning_keeps_only_answers():
    """A DeepSeek-R1-style template ends the prompt with `<think>`: the generator reads each output
    as the answer to its own prompt with the block open (reasoning cut off is no answer), and a
    template without it as before."""
    import torch

    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    def generator_with(template_end: str, outputs: list[str]):
        class Tokenizer:
            chat_template, pad_token_id = "template", 0

            def apply_chat_template(self, messages, add_generation_prompt, tokenize, **variables):
                return messages[0]["content"] + template_end

            def __call__(self, prompts, **kwargs):
                return {"input_ids": torch.ones(len(prompts), 3, dtype=torch.long),
                        "attention_mask": torch.ones(len(prompts), 3, dtype=torch.long)}

            def batch_decode(self, ids, skip_special_tokens):
                assert len(ids) == len(outputs)
                return outputs

        class Model:
            device = torch.device("cpu")

            def generate(self, input_ids, num_return_sequences, **kwargs):
                return torch.ones(len(input_ids) * num_return_sequences, 5, dtype=torch.long)

        return without_model(ParaphraseGenerator, kind="causal", tokenizer=Tokenizer(), lm=Model(),
                             prompt_template="Rewrite: {caption}", sampling=Sampling())

    outputs = ["Okay, the user wants a rewrite of", "The words.\n</think>\nA dog runs.",
               "Let me see", "Fine.\n</think>\nA cat sits."]
    assert generator_with("<think>\n", outputs).sample(["a dog", "a cat"], 2) == [["", "A dog runs."], ["", "A cat sits."]]
    assert generator_with("", outputs).sample(["a dog", "a cat"], 2) == [
        ["Okay, the user wants a rewrite of", "A dog runs."], ["Let me see", "A cat sits."]]


def test_chat_templates_are_asked_not_to_reason_first():
    from augment.generators.paraphrase import ParaphraseGenerator

    class Templated:
        chat_template = "template"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize, **variables):
            thinking = variables.get("enable_thinking", True)
            return ("<think>\n" if thinking else "") + messages[0]["content"]

    generator = without_model(ParaphraseGenerator, kind="causal", tokenizer=Templated(),
                              prompt_template="Rewrite: {caption}")
    assert generator.prompt("a red square") == "Rewrite: a red square"


def test_causal_paraphraser_reads_only_the_generated_tokens(tmp_path, train_items):
    """A decoder-only LM (a tiny GPT-2 on the tiny word vocabulary) through a local folder."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from augment import tiny
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    tokenizer = AutoTokenizer.from_pretrained(tiny.tiny_dir("tiny-paraphraser"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                       eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path / "causal")
    tokenizer.save_pretrained(tmp_path / "causal")
    generator = ParaphraseGenerator("t2t-causal", str(tmp_path / "causal"), batch_size=3,
                                    prompt_template="a picture of {caption}",
                                    sampling=Sampling(max_new_tokens=5, max_rounds=1))
    assert generator.kind == "causal" and generator.tokenizer.padding_side == "left"
    item = {**train_items[0], "captions": ["a red square", "a big blue circle on the left", "a star"]}
    rows = generator.generate([item], 2, seed=0)
    assert rows
    for row in rows:  # the prompt (left-padded, of several lengths) is never part of the output
        assert not row["caption"].startswith("a picture of") and "new caption" not in row["caption"]


# ----------------------------------------------------------------------------- captioners


@pytest.fixture(scope="module")
def captioner():
    from augment.generators.captioner import CaptionerGenerator
    from augment.generators.paraphrase import Sampling

    return CaptionerGenerator("i2t-tiny-captioner", "tiny-captioner", batch_size=2, prompt="a picture of",
                              sampling=Sampling(**TINY_SAMPLING))


@pytest.fixture
def loaded_captioner(captioner):
    """`captioner` with its model, for tests that reach into it (a pool run releases it at its end)."""
    if captioner.captioner is None:
        captioner._load()
    return captioner


def test_captions_are_distinct_per_image_and_keep_the_prompt(captioner, train_items):
    rows = captioner.generate(train_items[:2], 3, seed=0)
    groups = _by_caption(rows)
    assert {image_id for image_id, _c in groups} == {i["image_id"] for i in train_items[:2]}
    for (_image_id, c), group in groups.items():
        assert c == -1
        texts = [r["caption"].lower() for r in group]
        assert len(set(texts)) == len(texts) and all(t.startswith("a picture of") for t in texts)
    assert rows == captioner.generate(train_items[:2], 3, seed=0)
    assert rows != captioner.generate(train_items[:2], 3, seed=1)


def test_captioner_pool_resumes_after_a_kill(captioner, source, tmp_path):
    _check_resume(captioner, source, tmp_path, n=2, seed=0, limit=2, shard_size=1)


def test_captions_ignore_beam_settings_of_the_text_decoder(loaded_captioner, train_items, monkeypatch):
    """The captioner samples through the same arguments as the paraphraser: a decoder's saved
    beam search (BLIP's decoder takes its config.json's text_config under transformers 4.x; other
    captioners' generation_config.json) changes nothing."""
    import torch

    images = [item["image"] for item in train_items[:2]]
    torch.manual_seed(0)
    plain = loaded_captioner.sample(images, 5)
    monkeypatch.setattr(loaded_captioner.captioner.text_decoder.generation_config, "num_beams", 4)
    torch.manual_seed(0)
    assert loaded_captioner.sample(images, 5) == plain


def _model_returns(monkeypatch, captioner, texts: list[str]) -> None:
    """The captioner's model made to return `texts` (encoded by its tokenizer) for every image."""
    encoded = captioner.processor.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]

    def generate(pixel_values, num_return_sequences, **kwargs):
        assert num_return_sequences == len(texts)
        return encoded.repeat(pixel_values.shape[0], 1)

    monkeypatch.setattr(captioner.captioner, "generate", generate)


def test_captions_are_decoded_as_the_captioning_model_decodes(loaded_captioner, train_items, monkeypatch):
    """BLIP's WordPiece output reads "man's", not "man ' s" (transformers 5 no longer cleans it up
    by default), as `models.captioner` reads its captions."""
    _model_returns(monkeypatch, loaded_captioner, ["a picture of a man's hat", "a picture of two dogs, one cat."])
    rows = loaded_captioner.generate(train_items[:1], 2, seed=0)
    assert [r["caption"] for r in rows] == ["a picture of a man's hat", "a picture of two dogs, one cat."]


def test_a_caption_that_is_only_the_kept_prompt_is_dropped(loaded_captioner, train_items, monkeypatch):
    _model_returns(monkeypatch, loaded_captioner, ["a picture of", "A picture of.", "a picture of a red square"])
    rows = loaded_captioner.generate(train_items[:1], 3, seed=0)
    assert [r["caption"] for r in rows] == ["a picture of a red square"]
    assert json.loads(rows[0]["provenance"])["note"] == "only 1 of 3 distinct captions after 2 sampling rounds"


# ----------------------------------------------------------------------------- the command line


def test_eda_pool_through_the_cli(cli_runs):
    code, err = cli_runs.result("eda")
    assert code == 0, err
    out = cli_runs.root / "eda"
    rows = _rows(out)
    meta = json.loads((out / "pool.json").read_text())
    assert meta["params"] == {"ops": ["sr", "rd"], "alpha_sr": 0.2, "alpha_rd": 0.1} and meta["num_shards"] == 3
    assert len(rows) == 5 * 5 * 3  # every sample-world caption is long enough for 3
    for row in rows:
        provenance = json.loads(row["provenance"])
        assert provenance["op"] in ("sr", "rd") and provenance["edits"]
        assert row["modality"] == "text" and row["method"] == "eda"


def test_paraphrase_pool_through_the_cli(cli_runs):
    code, err = cli_runs.result("t2t")
    assert code == 0, err
    out = cli_runs.root / "t2t"
    rows = _rows(out)
    meta = json.loads((out / "pool.json").read_text())
    assert meta["model"] == "tiny-paraphraser" and meta["params"]["kind"] == "seq2seq"
    assert meta["params"]["top_p"] == 0.8 and meta["params"]["prompt_template"] == "paraphrase: {caption}"
    assert rows and len(rows) <= 3 * 5 * 2
    assert all(json.loads(r["provenance"])["model"] == "tiny-paraphraser" for r in rows)


def test_captioner_pool_through_the_cli(cli_runs):
    code, err = cli_runs.result("i2t")
    assert code == 0, err
    out = cli_runs.root / "i2t"
    rows = _rows(out)
    assert rows and all(r["source_caption_index"] == -1 for r in rows)
    assert len({r["source_image_id"] for r in rows}) == 3
    assert json.loads((out / "pool.json").read_text())["params"]["temperature"] == 1.2


def test_unknown_models_fail_before_writing(world, tmp_path, capsys):
    from augment.cli import main as augment_main

    code = augment_main(["generate", "--method", "i2t-no-such/model-here", "--source", str(world),
                         "--out", str(tmp_path / "x"), "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: cannot load captioner 'no-such/model-here'")
    assert not (tmp_path / "x").exists()


def test_a_kept_prompt_with_punctuation_alone_is_dropped(loaded_captioner, train_items, monkeypatch):
    """BLIP's tokenizer splits the prompt's punctuation, and the decode does not join it again:
    "a picture of:" alone comes back "a picture of :", still the prompt alone."""
    monkeypatch.setattr(loaded_captioner, "prompt", "a picture of:")
    _model_returns(monkeypatch, loaded_captioner, ["a picture of:", "a picture of: a red square"])
    rows = loaded_captioner.generate(train_items[:1], 2, seed=0)
    assert [r["caption"] for r in rows] == ["a picture of : a red square"]  # as BLIP returns it


def test_a_shards_model_calls_show_on_the_bar(paraphraser, source, train_items, tmp_path, capsys, monkeypatch):
    """was: the bar moved a shard at a time (256 source images by default): at real size minutes of a GPU and
    hours of a CPU with nothing moving on the screen (audit AF). A model method now reports its progress within
    the shard, shown as the bar's postfix; nothing is left listening after the run."""
    from augment import progress

    # the bar on a terminal, redrawn at each postfix (off one, a line every LOG_INTERVAL_S: test_log_output.py)
    monkeypatch.setattr(progress, "writes_to_terminal", lambda stream: True)
    run_generation(paraphraser, source, str(tmp_path / "pool"), n=1, seed=0, limit=3, shard_size=2, progress=True)
    shown = capsys.readouterr().err
    captions = sum(len(item["captions"]) for item in train_items[:2])  # the first shard's (split train)
    assert f"shard 1/2: {captions}/{captions} captions" in shown, shown[-600:]
    assert re.search(r"shard 2/2: (\d+)/\1 captions", shown), shown[-600:]
    assert paraphraser.on_shard_progress is None
    reports = []
    paraphraser.on_shard_progress = lambda *report: reports.append(report)
    try:
        paraphraser.generate(train_items[:2], 1, 0)
    finally:
        paraphraser.on_shard_progress = None
    assert [done for done, _, _ in reports] == sorted({done for done, _, _ in reports}) and reports[-1] == (
        captions, captions, "captions")


def _b_short_in_the_first_round():
    """A generator's `sample` stand-in: input "A" gets distinct outputs in every round, any other input one output
    repeated in the first round (short of n) and distinct ones after."""
    rounds = iter(range(2))

    def sample(inputs, per_input):
        round_index = next(rounds)
        return [[f"{text} {k}" if text == "A" or round_index else f"{text} same" for k in range(per_input)]
                for text in inputs]

    return sample


def test_a_captioners_later_rounds_sample_the_images_still_short_of_captions():
    """Round 2 samples only the images round 1 left short of n distinct captions: each with its own pixels, never
    the batch's first images' (their captions would be kept as the short image's)."""
    from augment.generators.captioner import CaptionerGenerator
    from augment.generators.paraphrase import Sampling

    generator = without_model(CaptionerGenerator, sampling=Sampling(max_rounds=2), prompt=None, keeps_prompt=False,
                              sample=_b_short_in_the_first_round())
    items = [{"image_id": "a", "image": "A"}, {"image_id": "b", "image": "B"}]
    kept = [[text for text, _ in collector.kept] for collector in generator.caption_batch(items, 2, seed=0)]
    assert kept == [["A 0", "A 1"], ["B same", "B 0"]]


def _seeds_of_rounds(seeds: list[int]):
    """A `sample` stand-in that records each round's torch seed and stays one distinct output short of n."""
    import torch

    def sample(inputs, per_input):
        seeds.append(torch.initial_seed())
        return [[f"{text} same"] * per_input for text in inputs]

    return sample


def test_each_sampling_round_is_seeded_from_the_batchs_first_element_and_its_round():
    """Guards BW's M23 and M25: a batch's seed taken from its last element, or the captioner's from round 0 in
    every round (its later rounds repeating the first one's samples), passed every test."""
    from augment.generators.captioner import NO_CAPTION, CaptionerGenerator
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling, batch_seed

    captioner = without_model(CaptionerGenerator, sampling=Sampling(max_rounds=3), prompt=None, keeps_prompt=False,
                              sample=_seeds_of_rounds(captioned := []))
    captioner.caption_batch([{"image_id": "a", "image": "A"}, {"image_id": "b", "image": "B"}], 2, seed=4)
    paraphraser = without_model(ParaphraseGenerator, sampling=Sampling(max_rounds=3),
                                sample=_seeds_of_rounds(paraphrased := []))
    paraphraser.paraphrase_batch([({"image_id": "a"}, 1, "A"), ({"image_id": "b"}, 0, "B")], 2, seed=4)
    assert captioned == [batch_seed(4, "a", NO_CAPTION, r) for r in range(3)] and len(set(captioned)) == 3
    assert paraphrased == [batch_seed(4, "a", 1, r) for r in range(3)] and len(set(paraphrased)) == 3


def test_a_paraphrasers_later_rounds_sample_the_captions_still_short_of_paraphrases():
    """Round 2 samples only the captions round 1 left short of n distinct paraphrases, each from its own caption;
    found by a mutation audit: sampling the batch's first captions in their place (the todo indices lost) passed
    every test, as the captioner's did."""
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    generator = without_model(ParaphraseGenerator, sampling=Sampling(max_rounds=2),
                              sample=_b_short_in_the_first_round())
    batch = [({"image_id": "a"}, 0, "A"), ({"image_id": "b"}, 0, "B")]
    kept = [[text for text, _ in collector.kept] for collector in generator.paraphrase_batch(batch, 2, seed=0)]
    assert kept == [["A 0", "A 1"], ["B same", "B 0"]]


@pytest.mark.parametrize("n, keys", [
    (2, [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 0), (3, 1)]),
    (9, [(c, j) for c in range(4) for j in range(4) if j != c]),  # n beyond the others: all of them
])
def test_i2t_human_keys_each_caption_to_the_images_other_captions_in_the_datas_order(n, keys):
    """Each caption c gets the image's other captions (never itself), the first `n` of them, as rows keyed (c, j);
    found by a mutation audit: taking n - 1 of them, keeping c's own caption, swapping c and j or writing c's text
    passed every test (audit CJ)."""
    from augment.generators.human import HumanCaptionsGenerator
    from augment.generators.base import row_seed

    captions = ["a", "b", "c", "d"]
    rows = HumanCaptionsGenerator().generate([{"image_id": "i0", "captions": captions, "split": "train"}], n, seed=5)
    assert [(row["source_caption_index"], row["caption"]) for row in rows] == [(c, captions[j]) for c, j in keys]
    assert [row["row_id"] for row in rows] == [f"i2t-human:i0:{c}:{j}" for c, j in keys]
    assert [json.loads(row["provenance"])["human_caption_index"] for row in rows] == [j for _, j in keys]
    assert [row["seed"] for row in rows] == [row_seed(5, "i0", c, j) for c, j in keys]
