"""Guards from mutation audit CQ of publishing a pool (augment/hub.py): what a `push --to-dir` export embeds,
which files in its folder it may replace, the local paths it publishes and which repository pool counts as
this one. Each test fails under a plausible bug that every earlier test let pass (named in its docstring);
small pools written by the tests' own helpers, no network."""
from __future__ import annotations

from augment.pool import write_pool
from tests.test_hub_cards import make_pool, png_bytes, pool_meta
from tests.test_select_push_fixes import files_under, refused, run


def test_an_image_stored_as_a_path_in_a_later_shard_is_exported_as_bytes(tmp_path):
    """Whether a shard's images need embedding is read from every chunk of the image column: reading the
    first chunk alone (the pool's first data shard) wrote a later shard's image as its file's path, which
    no one else can read (audit CQ)."""
    from datasets import Image, load_dataset

    from augment.cli import main
    from augment.pool import load_pool

    picture = tmp_path / "picture.png"
    picture.write_bytes(png_bytes(9))
    records = load_pool(make_pool(tmp_path / "bytes", rows=6)).dataset.cast_column("image", Image(decode=False)).to_list()
    records[4]["image"] = {"bytes": None, "path": str(picture)}
    write_pool(tmp_path / "pool", records, pool_meta(), shard_rows=3)
    assert len(list((tmp_path / "pool" / "data").glob("*.parquet"))) == 2  # the path-stored image in the second
    assert main(["push", str(tmp_path / "pool"), "--to-dir", str(tmp_path / "repo")]) == 0
    pushed = load_dataset(str(tmp_path / "repo"), split="train").cast_column("image", Image(decode=False))
    assert pushed[4]["image"] == {"bytes": png_bytes(9), "path": "picture.png"}


def test_a_file_of_ones_own_named_like_a_shard_is_not_an_export_shard(tmp_path, capsys):
    """Only push_to_hub's shard names (train-00000-of-00001.parquet) are an export's: `train-*.parquet` taken
    for one let --force delete a user's data/train-mine.parquet (audit CQ)."""
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train-mine.parquet").write_bytes(b"mine")
    pool = make_pool(tmp_path / "pool", method="eda", modality="text", model=None)
    line = refused(capsys, "push", pool, "--to-dir", out, "--force")
    assert "not a pool export (data/train-mine.parquet)" in line
    assert files_under(out) == {"data/train-mine.parquet": b"mine"}


def test_a_data_folder_linked_to_another_export_is_never_emptied_through_the_link(tmp_path, capsys):
    """out/data a link to another export's data folder: --force refuses it, as a link is no file an export
    writes; followed, it deleted the other export's shards (audit CQ)."""
    other = tmp_path / "other"
    assert run(capsys, "push", make_pool(tmp_path / "a", method="eda", modality="text", model=None),
               "--to-dir", other)[0] == 0
    before = files_under(other)
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").symlink_to(other / "data", target_is_directory=True)
    pool = make_pool(tmp_path / "b", method="shuffle", modality="text", model=None)
    assert "not a pool export (data)" in refused(capsys, "push", pool, "--to-dir", out, "--force")
    assert files_under(other) == before


def test_a_dataset_with_a_card_but_no_pool_json_is_not_taken_for_this_export_killed(tmp_path, capsys):
    """A folder of a card and shards but no pool.json (a Hub dataset's clone) is not this export killed while
    writing (it writes its card after its pool.json): without --force it is refused; taking a card there for
    this export's let it be replaced (audit CQ)."""
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "README.md").write_text("my dataset\n")
    (out / "data" / "train-00000-of-00001.parquet").write_bytes(b"rows")
    before = files_under(out)
    pool = make_pool(tmp_path / "pool", method="eda", modality="text", model=None)
    assert "exists and is not empty" in refused(capsys, "push", pool, "--to-dir", out)
    assert files_under(out) == before


def test_local_paths_inside_lists_are_published_by_their_last_part():
    """pool.json and scores.json are published with every local path shortened, in lists too: a list's strings
    left whole published the uploader's folders (audit CQ)."""
    from augment.hub import published_document

    document = {"parents": ["/home/u/pools/eda", {"path": "/home/u/pools/sd"}, 3], "seeds": [1, 2], "model": "org/name"}
    assert published_document(document) == {"parents": ["eda", {"path": "sd"}, 3], "seeds": [1, 2], "model": "org/name"}


def test_pools_differing_only_in_modality_are_not_the_same_pool():
    """A derived pool's modality tells it apart (an adversarial pool's text and image attacks): left out of
    same_pool, a push replaced the other modality's pool in a repository without --force (audit CQ)."""
    from augment.hub import same_pool

    ours = {**pool_meta("adversarial", "text", "tiny-clip"), "recipe": 1}
    assert same_pool(ours, dict(ours))
    assert not same_pool(ours, {**ours, "modality": "image"})


def test_an_export_finished_into_the_folder_while_this_one_waited_for_its_lock_is_not_replaced(tmp_path, capsys,
                                                                                             monkeypatch):
    """The folder is checked again once its lock is held: another pool's export that finished between the first
    check and the lock was deleted and replaced without --force when only the first check was made (audit CQ)."""
    import shutil

    from augment import hub

    other = tmp_path / "other"
    assert run(capsys, "push", make_pool(tmp_path / "a", method="eda", modality="text", model=None),
               "--to-dir", other)[0] == 0
    out = tmp_path / "out"
    real = hub.sole_writer_of_processes

    def another_export_finishes_first(folder, *args, **kwargs):
        shutil.copytree(other, folder, dirs_exist_ok=True)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(hub, "sole_writer_of_processes", another_export_finishes_first)
    pool = make_pool(tmp_path / "b", method="shuffle", modality="text", model=None)
    assert "exists and is not empty" in refused(capsys, "push", pool, "--to-dir", out)
    monkeypatch.undo()
    assert files_under(out) == files_under(other)
