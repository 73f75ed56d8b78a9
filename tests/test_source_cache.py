"""The source cache: a text source is parsed once, then mapped from Arrow until it changes."""
from __future__ import annotations

import json
import os

import pytest

import augment.sources as sources
from augment.cli import main as augment_main
from augment.errors import SourceError
from augment.sources import load_source, source_fingerprint
from tests.conftest import write_image

OLD = 1_600_000_000  # seconds: long enough ago that no timestamp of these files is racy


def age(*paths, seconds=OLD):
    """Give files and folders an old mtime (a just-written file is too recent to be cached)."""
    for path in paths:
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def aged(karpathy_dir):
    age(karpathy_dir / "dataset_toy.json", karpathy_dir / "images", karpathy_dir)
    return karpathy_dir


@pytest.fixture
def cache(tmp_path_factory):
    """A cache folder outside the source's folder (writing into that folder changes its mtime)."""
    return tmp_path_factory.mktemp("source-cache")


@pytest.fixture
def parses(monkeypatch):
    """Counts the reads that parse the source (a cache hit makes none)."""
    calls = []
    detect = sources.detect_format

    def counting(source):
        calls.append(source)
        return detect(source)

    monkeypatch.setattr(sources, "detect_format", counting)
    return calls


def test_a_hit_maps_the_same_table_and_fingerprint_without_parsing(karpathy_dir, cache, parses, monkeypatch):
    source = str(aged(karpathy_dir))
    fresh, _ = load_source(source, cache=False)
    first, report = load_source(source, cache=cache)
    assert len(parses) == 2 and report.format == "karpathy"
    assert len(list(cache.glob("*.arrow"))) == 1
    hit, hit_report = load_source(source, cache=cache)
    assert len(parses) == 2  # no JSON read, no per-record check
    assert hit_report.format == "karpathy" and hit_report.skipped == []
    assert hit.features == fresh.features
    assert hit.data.table.equals(fresh.data.table)
    assert hit[0]["image"].mode == "RGB" and json.loads(hit[0]["meta"]) == {"scene": {"objects": 0}}
    # the stored fingerprint is the content's, and a hit does not hash the table again
    expected = source_fingerprint(fresh)
    monkeypatch.setattr(sources.hashlib, "sha256", None)
    assert source_fingerprint(hit) == source_fingerprint(first) == expected
    with pytest.raises(TypeError):  # a subset is other content: hashed, not looked up
        source_fingerprint(hit.select([0]))


def test_a_touched_or_edited_source_is_read_again(karpathy_dir, cache, parses):
    source = str(aged(karpathy_dir))
    load_source(source, cache=cache)
    age(karpathy_dir / "dataset_toy.json", seconds=OLD + 1)  # touched: same bytes, another mtime
    load_source(source, cache=cache)
    assert len(parses) == 2
    path = karpathy_dir / "dataset_toy.json"
    data = json.loads(path.read_text())
    data["images"][0]["sentences"][0]["raw"] = "CAPTION 0 of image 0"  # same size, other text
    path.write_text(json.dumps(data))
    age(path, seconds=OLD + 1)  # even with the old mtime back (cp -p): ctime changed
    edited, _ = load_source(source, cache=cache)
    assert len(parses) == 3 and edited[0]["captions"][0] == "CAPTION 0 of image 0"
    load_source(source, cache=cache)
    assert len(parses) == 3


def test_a_removed_image_is_reported_up_front_as_without_the_cache(karpathy_dir, cache):
    source = str(aged(karpathy_dir))
    load_source(source, cache=cache)
    (karpathy_dir / "images" / "002.png").unlink()  # the folder's mtime changes
    with pytest.raises(SourceError, match=r"images\[2\] \(002.png\): image file not found"):
        load_source(source, cache=cache)


def test_a_corrupt_cache_file_is_rebuilt(karpathy_dir, cache, parses):
    source = str(aged(karpathy_dir))
    fresh, _ = load_source(source, cache=cache)
    [entry] = cache.glob("*.arrow")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # truncated
    rebuilt, _ = load_source(source, cache=cache)
    assert len(parses) == 2 and rebuilt.data.table.equals(fresh.data.table)
    entry.write_bytes(b"not arrow at all")
    load_source(source, cache=cache)
    assert len(parses) == 3
    hit, _ = load_source(source, cache=cache)  # rewritten whole: a hit again
    assert len(parses) == 3 and hit.data.table.equals(fresh.data.table)
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporaries left


def test_just_written_sources_and_skip_bad_are_not_cached(karpathy_dir, cache):
    load_source(str(karpathy_dir), cache=cache)  # written by the fixture a moment ago: racy
    assert not any(cache.iterdir())
    aged(karpathy_dir)
    load_source(str(karpathy_dir), cache=cache, skip_bad=True)
    assert not any(cache.iterdir())
    load_source(str(karpathy_dir), cache=cache)
    assert any(cache.iterdir())


def test_relative_names_are_cached_per_working_folder(karpathy_dir, cache, tmp_path_factory, monkeypatch):
    aged(karpathy_dir)
    monkeypatch.chdir(karpathy_dir.parent)
    here, _ = load_source(karpathy_dir.name, cache=cache)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.symlink(karpathy_dir, elsewhere / karpathy_dir.name)
    monkeypatch.chdir(elsewhere)
    there, _ = load_source(karpathy_dir.name, cache=cache)
    assert len(list(cache.glob("*.arrow"))) == 2
    assert there[0]["image"].size == here[0]["image"].size  # its image paths work from here


def test_a_bad_record_is_one_line_and_exit_2_and_nothing_is_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MATPLUS_CACHE", str(tmp_path / "cache"))
    write_image(tmp_path / "src" / "images" / "a.png")
    (tmp_path / "src" / "dataset_bad.json").write_text(json.dumps({"images": [
        {"filename": "a.png", "split": "train", "sentences": [{"raw": "a thing"}]},
        {"filename": "a.png", "split": "nowhere", "sentences": [{"raw": "a thing"}]}]}))
    age(tmp_path / "src" / "dataset_bad.json", tmp_path / "src" / "images", tmp_path / "src")
    for _ in range(2):  # the second read is a first read too: nothing was cached
        capsys.readouterr()
        code = augment_main(["generate", "--method", "img-aug", "--source", str(tmp_path / "src"),
                             "--out", str(tmp_path / "pool"), "--n", "1", "--no-progress"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1
        assert "dataset_bad.json: images[1] (a.png): unknown split 'nowhere'" in err[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "pool").exists()


def test_the_least_recently_used_entries_are_pruned(tmp_path):
    from augment.source_cache import prune

    for number in range(5):
        (tmp_path / f"{number}.arrow").write_bytes(b"x" * 10)
        age(tmp_path / f"{number}.arrow", seconds=OLD + number)  # 4 is the most recently used
    (tmp_path / ".0.arrow.tmp-999999999").write_bytes(b"half")  # a killed writer's (no such process)
    removed = prune(tmp_path, keep=tmp_path / "0.arrow", max_entries=3)
    assert sorted(p.name for p in removed) == ["1.arrow", "2.arrow"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.arrow", "3.arrow", "4.arrow"]
    assert [p.name for p in prune(tmp_path, max_entries=10, max_bytes=25)] == ["0.arrow"]


def test_the_caches_follow_xdg_cache_home(tmp_path, monkeypatch):
    """The source and tiny caches sat in ~/.cache/mat-plus whatever XDG_CACHE_HOME said (audit BG), where
    huggingface_hub and torch put theirs under it: a cluster pointing it at scratch space kept ours in home."""
    from augment.source_cache import default_cache_folder
    from augment.tiny import tiny_cache_root

    for name in ("MATPLUS_CACHE", "MATPLUS_TINY_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_folder() == tmp_path / "xdg" / "mat-plus" / "sources"
    assert tiny_cache_root() == tmp_path / "xdg" / "mat-plus" / "tiny"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_folder() == tmp_path / "home" / ".cache" / "mat-plus" / "sources"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid to the spec: ignored
    assert default_cache_folder() == tmp_path / "home" / ".cache" / "mat-plus" / "sources"
    monkeypatch.setenv("MATPLUS_TINY_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("MATPLUS_CACHE", str(tmp_path / "ours"))
    assert tiny_cache_root() == tmp_path / "mine" and default_cache_folder() == tmp_path / "ours" / "sources"
