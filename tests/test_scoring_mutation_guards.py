"""Guards from mutation audit CN of the scoring's embedding cache (augment/scoring/embeddings.py) and
score store (augment/scoring/store.py): each test fails under a plausible bug that every earlier test let
pass (named in its docstring), on small numpy arrays and fake scorers, never a model."""
from __future__ import annotations

import numpy as np
import torch


class ExactTextScorer:
    """Encodes a caption from its exact characters (whitespace and case included), counting the texts encoded."""

    def __init__(self):
        self.encoded: list[str] = []

    def encode_texts(self, texts):
        self.encoded.extend(texts)
        return torch.tensor([[float(sum(map(ord, t))), float(len(t)), float(t.count(" "))] for t in texts])


def test_captions_differing_only_in_whitespace_or_case_are_cached_apart(tmp_path):
    """Mutation E01 (text_key hashing the stripped caption) passed: captions that differ in spaces or case
    are other inputs to a scorer whose tokenizer keeps them, and one must never get the other's embedding."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    captions = ["a cat", "a cat ", " a cat", "A cat", "a  cat"]
    scorer = ExactTextScorer()
    first = Embedder(scorer, EmbeddingCache(tmp_path, "scorer")).texts(captions)
    assert scorer.encoded == captions  # five contents, five encodings
    np.testing.assert_array_equal(first, scorer.encode_texts(captions).numpy())
    reopened = Embedder(ExactTextScorer(), EmbeddingCache(tmp_path, "scorer"))
    np.testing.assert_array_equal(reopened.texts(captions[::-1]), first[::-1])
    assert reopened.reused["text"] == 5 and reopened.encoded["text"] == 0


def test_cached_embeddings_go_to_their_own_captions_when_a_miss_comes_first(tmp_path):
    """Mutation E22 (the cached embeddings paired with every asked key, not only the found ones) passed: every
    test's misses came after its hits, where both pairings agree; a miss first gave each caption after it the
    next caption's embedding."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    captions = ["a new caption", "a red cube", "a blue cone"]
    Embedder(ExactTextScorer(), EmbeddingCache(tmp_path, "scorer")).texts(captions[1:])
    scorer = ExactTextScorer()
    embedder = Embedder(scorer, EmbeddingCache(tmp_path, "scorer"))
    np.testing.assert_array_equal(embedder.texts(captions), ExactTextScorer().encode_texts(captions).numpy())
    assert scorer.encoded == captions[:1] and embedder.reused["text"] == 2


def test_a_cache_file_of_an_unknown_kind_is_named_and_the_cache_still_opens(tmp_path, caplog):
    """Mutation E29 (no check of a file's "kind" when the index is read) passed: a file of this scorer whose
    kind is neither text nor image stopped every run sharing the folder with a KeyError traceback."""
    from safetensors.numpy import save_file

    from augment.scoring.embeddings import CACHE_VERSION, EmbeddingCache, text_key

    keys = np.frombuffer(text_key("a red cube"), dtype=np.uint8)[None, :]
    save_file({"keys": keys, "embeddings": np.ones((1, 3), dtype=np.float32)}, str(tmp_path / "video-1.safetensors"),
              metadata={"scorer_id": "scorer", "kind": "video", "cache_version": CACHE_VERSION})
    EmbeddingCache(tmp_path, "scorer").put("text", keys, np.full((1, 3), 2, dtype=np.float32))
    with caplog.at_level("WARNING", logger="augment.scoring.embeddings"):
        cache = EmbeddingCache(tmp_path, "scorer")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"embedding cache file {tmp_path / 'video-1.safetensors'} is unreadable"]
    found, embeddings = cache.lookup("text", keys)
    assert found.tolist() == [True] and embeddings.tolist() == [[2, 2, 2]]


def test_a_cache_file_of_another_cache_version_is_ignored_and_kept(tmp_path):
    """Mutation E05 (no check of a file's cache_version) passed: embeddings a cache format of another version
    wrote were read as this one's."""
    from safetensors.numpy import save_file

    from augment.scoring.embeddings import EmbeddingCache, text_key

    keys = np.frombuffer(text_key("a red cube"), dtype=np.uint8)[None, :]
    other_version = tmp_path / "text-1.safetensors"
    save_file({"keys": keys, "embeddings": np.ones((1, 3), dtype=np.float32)}, str(other_version),
              metadata={"scorer_id": "scorer", "kind": "text", "cache_version": "0"})
    cache = EmbeddingCache(tmp_path, "scorer")
    found, embeddings = cache.lookup("text", keys)
    assert found.tolist() == [False] and embeddings is None and len(cache) == 0
    assert other_version.exists()  # another version's reader may share the folder


def test_a_cache_file_of_keys_of_another_width_is_named_and_the_cache_still_opens(tmp_path, caplog):
    """Mutation E07 (no check of the keys' width when the index is read) passed: a file of 8-byte keys
    (another tool's, in a shared folder) stopped the cache from opening with a numpy traceback."""
    from safetensors.numpy import save_file

    from augment.scoring.embeddings import CACHE_VERSION, EmbeddingCache

    narrow = tmp_path / "text-1.safetensors"
    save_file({"keys": np.zeros((2, 8), dtype=np.uint8), "embeddings": np.ones((2, 3), dtype=np.float32)}, str(narrow),
              metadata={"scorer_id": "scorer", "kind": "text", "cache_version": CACHE_VERSION})
    with caplog.at_level("WARNING", logger="augment.scoring.embeddings"):
        cache = EmbeddingCache(tmp_path, "scorer")
    assert len(cache) == 0 and not narrow.exists()
    assert f"embedding cache file {narrow} is unreadable (keys of shape (2, 8)" in caplog.text


def test_the_key_index_finds_nothing_after_its_only_file_is_dropped(tmp_path):
    """Mutation E24 (drop keeping the runs it emptied) passed: the look-up after the only cache file turned
    unreadable failed with an IndexError instead of a miss."""
    from augment.scoring.embeddings import _KeyIndex

    keys = np.random.default_rng(0).integers(0, 256, size=(3, 16), dtype=np.uint8)
    index = _KeyIndex()
    index.add(keys, 0)
    index.drop(0)
    file_ids, _ = index.find(keys)
    assert file_ids.tolist() == [-1, -1, -1] and len(index) == 0


def test_a_caption_asked_twice_counts_as_reused_twice(tmp_path):
    """Mutation E21 (reuse counted per distinct key, not per caption asked) passed: the re-score's "encoding"
    summary said fewer embeddings were taken from the cache than the rows took from it."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    captions = ["a red cube", "a red cube", "a blue cone", "a red cube"]
    first = Embedder(ExactTextScorer(), EmbeddingCache(tmp_path, "scorer"))
    first.texts(captions[:2])
    assert first.encoded["text"] == 1 and first.reused["text"] == 1  # the second copy: the first's embedding
    again = Embedder(ExactTextScorer(), EmbeddingCache(tmp_path, "scorer"))
    again.texts(captions)
    assert again.encoded["text"] == 1 and again.reused["text"] == 3


class MeanColourScorer:
    """Encodes an image as its mean colour: an image rewritten in another colour has another embedding."""

    batch_size = 8

    def image_preparer(self):
        return _mean_colours

    def encode_prepared(self, pixels):
        return pixels


def _mean_colours(images):
    return torch.tensor(np.stack([np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) for image in images]))


def _write_png(path, colour):
    from PIL import Image

    Image.new("RGB", (4, 4), colour).save(path, format="PNG")
    return {"path": str(path), "bytes": None}


def test_an_image_file_rewritten_between_runs_is_encoded_again(tmp_path):
    """Mutation E02 (an image keyed by its path instead of its bytes) passed: a source image replaced under
    the same file name must not get the old picture's cached embedding in the next run."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    image = _write_png(tmp_path / "0001.png", (255, 0, 0))
    first = Embedder(MeanColourScorer(), EmbeddingCache(tmp_path / "cache", "scorer")).images([image])
    np.testing.assert_array_equal(first, [[255, 0, 0]])
    _write_png(tmp_path / "0001.png", (0, 0, 255))
    again = Embedder(MeanColourScorer(), EmbeddingCache(tmp_path / "cache", "scorer"))
    np.testing.assert_array_equal(again.images([image]), [[0, 0, 255]])
    assert again.encoded["image"] == 1


def test_an_image_path_key_is_remembered_for_the_next_call_only(tmp_path):
    """Mutation E03 (the keys of image files read by every earlier call kept, not only the previous call's)
    passed: a file the run read long ago and rewritten since kept its old key, so its old embedding."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    red = _write_png(tmp_path / "a.png", (255, 0, 0))
    green = _write_png(tmp_path / "b.png", (0, 255, 0))
    embedder = Embedder(MeanColourScorer(), EmbeddingCache(tmp_path / "cache", "scorer"))
    embedder.images([red])
    embedder.images([green])  # a.png is no longer among the previous call's files
    _write_png(tmp_path / "a.png", (0, 0, 255))
    np.testing.assert_array_equal(embedder.images([red]), [[0, 0, 255]])


def _write_rows_table(path, metadata, row_id="eda:0:0:1"):
    import pyarrow as pa

    from augment.scoring import store

    writer = store.TableWriter(path, pa.schema([store.row_schema().field("row_id")]), metadata)
    writer.write({"row_id": [row_id]})
    return writer.commit()


def test_a_side_table_is_current_only_in_this_scores_version_and_for_the_inputs_asked(tmp_path):
    """Mutation S05 (table_is_current ignoring scores_version) passed: a re-score would reuse tables another
    version wrote beside its entry (the inputs key, S04, is also checked end to end)."""
    from augment.scoring.store import SCORES_VERSION, table_is_current

    current = _write_rows_table(tmp_path / "a" / "rows.parquet", {"scores_version": SCORES_VERSION, "inputs_key": "key-a"})
    assert table_is_current(current) and table_is_current(current, "key-a")
    assert not table_is_current(current, "key-b")
    older = _write_rows_table(tmp_path / "b" / "rows.parquet", {"scores_version": SCORES_VERSION + 1, "inputs_key": "key-a"})
    assert not table_is_current(older) and not table_is_current(older, "key-a")
    unkeyed = _write_rows_table(tmp_path / "c" / "rows.parquet", {"scores_version": SCORES_VERSION})
    assert table_is_current(unkeyed) and not table_is_current(unkeyed, "key-a")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "rows.parquet").write_bytes(b"PAR1 cut short")
    assert not table_is_current(tmp_path / "d" / "rows.parquet", "key-a")


def _scores_document():
    entry = {"scorer": {"name": "tiny-clip", "id": "tiny-id", "slug": "tiny-clip-1"}, "pool": {"finished": "x"},
             "tables": {"rows": "scores/tiny-clip-1/rows.parquet"},
             # a modality's statistics may be null, which check_scores_document accepts
             "alignment": {"all": {"mean": 0.1}, "image": None}, "gap": {"text": None}}
    return {"scores_version": 1, "latest": "tiny-clip-1", "scorers": {"tiny-clip-1": entry}}


def test_a_scores_document_is_refused_without_its_rows_table_and_kept_with_null_statistics(tmp_path):
    """Mutations S10 (a null modality in a summary refused: a valid scores.json refused) and S17 (an entry
    without tables.rows accepted: select failed later with a KeyError traceback) passed."""
    import pytest

    from augment.errors import PoolError
    from augment.scoring.store import check_scores_document

    path = tmp_path / "scores.json"
    check_scores_document(_scores_document(), path, tmp_path)
    without_rows = _scores_document()
    del without_rows["scorers"]["tiny-clip-1"]["tables"]["rows"]
    with pytest.raises(PoolError, match=rf"^{path}: in the entry of scorer 'tiny-clip-1', 'tables.rows' is missing;"):
        check_scores_document(without_rows, path, tmp_path)


def test_intervals_of_an_earlier_resampling_scheme_are_not_current():
    """Mutation S03 (intervals_are_current true for any recorded scheme) passed: the tests only dropped the
    "resampling" key, so an entry whose intervals an earlier scheme drew (recorded under its own name) would be
    reused and published as this version's."""
    from augment.scoring.measures import RESAMPLING
    from augment.scoring.store import intervals_are_current

    assert intervals_are_current({"resampling": RESAMPLING})
    assert not intervals_are_current({"resampling": "index-matrix-2-gap-by-items"})
    assert not intervals_are_current({})


def test_a_side_table_of_another_scores_version_is_refused_when_read(tmp_path):
    """Mutation S08 (read_table not checking scores_version) passed: select and the report read a table another
    version of mat-plus wrote as if its columns meant what this version's do."""
    import pytest

    from augment.errors import PoolError
    from augment.scoring.store import read_table

    path = _write_rows_table(tmp_path / "rows.parquet", {"scores_version": 2})
    with pytest.raises(PoolError, match=rf"^{path}: scores version 2, this mat-plus reads 1; run `augment score` again$"):
        read_table(path, ["row_id"])
    assert read_table(_write_rows_table(tmp_path / "now" / "rows.parquet", {"scores_version": 1}), ["row_id"]).num_rows == 1


def test_an_open_clip_scorer_is_found_by_its_name_without_the_pretrained_tag(tmp_path):
    """Mutation S12 (find_scorer_entry matching the full name only) passed: `--scorer ViT-B-16`, the name the
    README's score commands give, no longer found the scores stored under ViT-B-16:openai."""
    import json

    from augment.scoring.store import find_scorer_entry

    document = _scores_document()
    entry = document["scorers"]["tiny-clip-1"]
    entry["scorer"].update(name="ViT-B-16:openai", slug="vit-b-16-openai")
    document = {"scores_version": 1, "latest": "vit-b-16-openai", "scorers": {"vit-b-16-openai": entry}}
    (tmp_path / "scores.json").write_text(json.dumps(document))
    assert find_scorer_entry(tmp_path, "ViT-B-16") == entry
    assert find_scorer_entry(tmp_path, "ViT-B-16:openai") == entry


def test_without_a_scorer_the_latest_entry_is_read_not_the_first(tmp_path):
    """Mutation S30 (find_scorer_entry without --scorer returning the first stored entry) passed: every test pool
    had one scorer, so select and push would read another scorer's scores than the latest."""
    import json

    from augment.scoring.store import find_scorer_entry

    first, latest = _scores_document()["scorers"]["tiny-clip-1"], _scores_document()["scorers"]["tiny-clip-1"]
    latest["scorer"].update(name="other-clip", slug="other-clip-1")
    document = {"scores_version": 1, "latest": "other-clip-1", "scorers": {"tiny-clip-1": first, "other-clip-1": latest}}
    (tmp_path / "scores.json").write_text(json.dumps(document))
    assert find_scorer_entry(tmp_path, None)["scorer"]["slug"] == "other-clip-1"
