"""`augment select` and `augment push --to-dir` on folders and scores that are not what they seem:
another pool's files, a damaged or stale scores.json, another parent, a killed export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from augment.pool import write_pool

EXPORT_FILES = ["README.md", "data/train-00000-of-00001.parquet", "pool.json"]


def text_pool(path: Path, method: str, rows: int = 6) -> Path:
    """A complete text pool: two items of `rows // 2` rows each; every such pool shares seed and source."""
    records = [{
        "row_id": f"{method}:img{i % 2}:0:{i}", "source_image_id": f"img{i % 2}", "source_caption_index": 0,
        "split": "train", "modality": "text", "image": None, "caption": f"{method} caption {i}", "method": method,
        "seed": i, "provenance": "{}",
    } for i in range(rows)]
    write_pool(path, records, {"method": method, "modality": "text", "model": None, "params": {}, "seed": 0, "n": 3,
                               "split": "train", "limit": None, "source": "world", "source_fingerprint": "fp"})
    return path


def write_scores(pool: Path, finished: str | None = None, slug: str = "tiny-clip-1", keep: dict | None = None,
                 inputs_key: str | None = None) -> dict:
    """scores.json with one entry as `augment score` writes it (alignment 0.1 per row), its rows table too;
    `finished`: the pool's finish stamp it was scored at (default: the pool's own); `inputs_key`: its run's,
    recorded in the entry and the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from augment.scoring import store
    from augment.scoring.measures import RESAMPLING
    from augment.scoring.pool_scores import pool_file_stamps

    meta = json.loads((pool / "pool.json").read_text())
    row_ids = pq.read_table(pool / "data" / "shard-00000.parquet", columns=["row_id"])["row_id"].to_pylist()
    table = Path("scores", slug, "rows.parquet")
    schema = pa.schema([store.row_schema().field(name) for name in ("row_id", "alignment")])
    writer = store.TableWriter(pool / table, schema, {"scores_version": 1, **({"inputs_key": inputs_key} if inputs_key else {})})
    writer.write({"row_id": row_ids, "alignment": [0.1] * len(row_ids)})
    writer.close()
    entry = {"scorer": {"name": "tiny-clip", "id": "tiny-id", "slug": slug},
             "pool": {"finished": finished or meta["finished"], "num_rows": len(row_ids),
                      "files": pool_file_stamps(SimpleNamespace(path=pool))},
             "alignment": {"all": {"mean": 0.1, "low": 0.05, "high": 0.15, "n": len(row_ids)}},
             "tables": {"rows": str(table)}, "resampling": RESAMPLING,
             **({"inputs_key": inputs_key} if inputs_key else {})}
    document = {"scores_version": 1, "latest": slug, "scorers": {**(keep or {}), slug: entry}}
    (pool / "scores.json").write_text(json.dumps(document))
    return document


def run(capsys, *argv) -> tuple[int, str]:
    from augment.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused(capsys, *argv) -> str:
    """The command exits 2 with one error line and no traceback; that line."""
    code, err = run(capsys, *argv)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- push --to-dir


def test_force_never_writes_an_export_among_other_files_inside_data(tmp_path, capsys):
    pool = text_pool(tmp_path / "eda", "eda")
    another_pool = text_pool(tmp_path / "other", "shuffle")
    before = files_under(another_pool)
    line = refused(capsys, "push", pool, "--to-dir", another_pool, "--force")
    assert "not a pool export (data/shard-00000.parquet" in line
    assert files_under(another_pool) == before

    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "mine.csv").write_text("hi")
    assert "not a pool export (data/mine.csv)" in refused(capsys, "push", pool, "--to-dir", mine, "--force")
    assert files_under(mine) == {"data/mine.csv": b"hi"}


@pytest.mark.parametrize("option, value, expected", [
    ("--license", "CC BY 4.0", "--license 'CC BY 4.0': not a Hub license id (did you mean cc-by-4.0"),
    ("--license", "apache2", "--license 'apache2': not a Hub license id (did you mean apache-2.0"),
    ("--license", "bogus-lic", "--license 'bogus-lic': not a Hub license id"),
    # another case is not the Hub's id: compared as the Hub lists them (guards a mutation, audit CK)
    ("--license", "MIT", "--license 'MIT': not a Hub license id (did you mean mit"),
    ("--language", "english", "--language 'english': expected comma-separated ISO 639 codes such as en or en,fr ('english' is not one)"),
    ("--language", ",", "--language ',': expected comma-separated ISO 639 codes"),
    # the Hub refuses a BCP-47 tag in `language` (it goes in language_details)
    ("--language", "en-US", "('en-US' is not one); 'en-US' is a regional tag: the Hub's language field takes its ISO "
                            "639 code, en"),
])
def test_card_metadata_the_hub_would_refuse_is_refused_before_anything_is_written(tmp_path, capsys, option, value, expected):
    """The Hub checks a card's license and language on each commit: a push wrote the data commit, then
    its card was refused (HTTP 400), leaving a repository without its card that a re-run called foreign."""
    pool = text_pool(tmp_path / "pool", "eda")
    assert expected in refused(capsys, "push", pool, "--to-dir", tmp_path / "export", option, value)
    assert not (tmp_path / "export").exists()
    assert run(capsys, "push", pool, "--to-dir", tmp_path / "good", "--license", "openrail++", "--language", "en,zh",
               "--source-license", "Flickr terms")[0] == 0  # the source's license is the card's text: any words


def test_a_damaged_scores_json_stops_an_export_before_anything_is_written(tmp_path, capsys):
    pool = text_pool(tmp_path / "pool", "eda")
    earlier = tmp_path / "earlier"
    assert run(capsys, "push", text_pool(tmp_path / "other", "shuffle"), "--to-dir", earlier)[0] == 0
    before = files_under(earlier)
    (pool / "scores.json").write_text('{"scores_version": 1,')
    assert "scores.json" in refused(capsys, "push", pool, "--to-dir", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert "scores.json" in refused(capsys, "push", pool, "--to-dir", earlier, "--force")
    assert files_under(earlier) == before


def test_push_leaves_out_scores_of_the_pool_before_it_was_rewritten(tmp_path, capsys):
    pool = text_pool(tmp_path / "pool", "eda")
    selection = tmp_path / "st"
    assert run(capsys, "select", pool, "--out", selection, "--methods", "eda")[0] == 0
    write_scores(selection)
    assert run(capsys, "select", pool, "--out", selection, "--max-per-item", "1", "--overwrite")[0] == 0
    code, err = run(capsys, "push", selection, "--to-dir", tmp_path / "stx")
    assert code == 0
    notes = [line for line in err.splitlines() if "tiny-clip-1" in line]
    assert len(notes) == 1 and notes[0].startswith("note:") and "left out" in notes[0], err
    assert sorted(files_under(tmp_path / "stx")) == EXPORT_FILES
    assert "## Scores" not in (tmp_path / "stx" / "README.md").read_text()

    # a current entry beside a stale one: only the current one is published, and it is the latest
    stale = write_scores(pool, finished="2001-01-01T00:00:00+00:00", slug="old-1")["scorers"]
    write_scores(pool, slug="new-1", keep=stale)
    document = json.loads((pool / "scores.json").read_text())
    document["latest"] = "old-1"
    (pool / "scores.json").write_text(json.dumps(document))
    assert run(capsys, "push", pool, "--to-dir", tmp_path / "px")[0] == 0
    published = json.loads((tmp_path / "px" / "scores.json").read_text())
    assert list(published["scorers"]) == ["new-1"] and published["latest"] == "new-1"
    assert "## Scores" in (tmp_path / "px" / "README.md").read_text()


def test_push_leaves_out_intervals_an_earlier_resampling_scheme_drew(tmp_path, capsys):
    """Scores an earlier mat-plus computed (its row bootstrap covered the mean ~70% of the time at a
    nominal 95%) were published on the card and in scores.json without a word."""
    pool = text_pool(tmp_path / "pool", "eda")
    old = write_scores(pool, slug="old-1")["scorers"]
    old["old-1"].pop("resampling")  # as written before the scheme was recorded
    write_scores(pool, slug="new-1", keep=old)
    code, err = run(capsys, "push", pool, "--to-dir", tmp_path / "px")
    assert code == 0 and "old-1" in err and "earlier mat-plus drew their confidence intervals" in err
    assert list(json.loads((tmp_path / "px" / "scores.json").read_text())["scorers"]) == ["new-1"]


def test_an_interrupted_export_resumes_with_the_same_command(tmp_path, capsys, monkeypatch):
    from augment import hub
    from augment.commands.push import TO_DIR_INTERRUPTED

    pool = text_pool(tmp_path / "pool", "eda")
    out = tmp_path / "out"

    def interrupted(dataset):
        (out / "data" / "train-00000-of-00001.parquet").write_bytes(b"half")  # as a kill between renames leaves
        raise KeyboardInterrupt

    real = hub._embedded
    monkeypatch.setattr(hub, "_embedded", interrupted)
    code, err = run(capsys, "push", pool, "--to-dir", out)
    assert code == 130 and f"interrupted: {TO_DIR_INTERRUPTED}" in err, err
    monkeypatch.setattr(hub, "_embedded", real)
    assert run(capsys, "push", pool, "--to-dir", out)[0] == 0
    assert sorted(files_under(out)) == EXPORT_FILES
    assert run(capsys, "push", pool, "--to-dir", out)[0] == 0  # its own finished export: written again

    killed = tmp_path / "killed"  # kill -9: another shard count's shard and a dead process's temporary
    (killed / "data").mkdir(parents=True)
    (killed / "data" / "train-00000-of-00002.parquet").write_bytes(b"x")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (killed / "data" / f".train-00001-of-00002.parquet.tmp-{dead.pid}").write_bytes(b"x")
    assert run(capsys, "push", pool, "--to-dir", killed)[0] == 0
    assert sorted(files_under(killed)) == EXPORT_FILES

    # a finished export of another pool is not this export's leftovers
    assert "not empty" in refused(capsys, "push", text_pool(tmp_path / "other", "shuffle"), "--to-dir", out)


def test_a_dangling_link_as_the_output_is_named(tmp_path, capsys):
    pool = text_pool(tmp_path / "pool", "eda")
    link = tmp_path / "dl"
    link.symlink_to(tmp_path / "gone")
    assert "link to a missing" in refused(capsys, "push", pool, "--to-dir", link)
    assert not (tmp_path / "gone").exists()
    # select, generate, train, train eval, the study: refused as they parse --out (an argparse error, exit 2)


@pytest.mark.parametrize("command", ["select", "generate", "train", "eval", "study"])
def test_a_dangling_link_as_an_output_folder_is_refused_before_any_work(tmp_path, capsys, command):
    """`train` and `train eval` followed such a link and made its missing target (a run of an old link
    to an unmounted disk written on the root filesystem); generate failed with `File exists`."""
    from analysis.cli import main as analysis_main
    from augment.cli import main as augment_main
    from train.cli import main as train_main

    pool = text_pool(tmp_path / "pool", "eda")
    link = tmp_path / "dl"
    link.symlink_to(tmp_path / "gone" / "deeper")
    argv, main = {
        "select": ([pool, "--out", link, "--max-per-item", "1"], augment_main),
        "generate": (["--method", "eda", "--source", tmp_path, "--out", link], augment_main),
        "train": (["clean", "--model", "tiny-clip", "--train-data", tmp_path, "--out", link], train_main),
        "eval": (["eval", "tiny-clip", "--source", tmp_path, "--out", link], train_main),
        "study": (["study", "--config", "mini", "--out", link], analysis_main),
    }[command]
    argv = ([command] if main is augment_main else []) + [str(a) for a in argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and "link to a missing" in errors[0], err
    assert not (tmp_path / "gone").exists()


# ----------------------------------------------------------------------------- select


def test_a_selection_from_another_parent_is_not_silently_replaced(tmp_path, capsys):
    first, second = text_pool(tmp_path / "eda", "eda"), text_pool(tmp_path / "other", "shuffle")
    out = tmp_path / "sel"
    assert run(capsys, "select", first, "--out", out, "--max-per-item", "1")[0] == 0
    assert "different parent" in refused(capsys, "select", second, "--out", out, "--max-per-item", "1")
    assert json.loads((out / "pool.json").read_text())["parent"]["meta"]["method"] == "eda"
    assert run(capsys, "select", first, "--out", out, "--max-per-item", "1")[0] == 0  # the same command again

    meta = json.loads((first / "pool.json").read_text())  # a generate re-run renews the stamp, not the rows
    (first / "pool.json").write_text(json.dumps({**meta, "finished": "2099-01-01T00:00:00+00:00"}))
    assert run(capsys, "select", first, "--out", out, "--max-per-item", "1")[0] == 0
    assert run(capsys, "select", second, "--out", out, "--max-per-item", "1", "--overwrite")[0] == 0


def test_select_overwrite_keeps_the_old_pool_whole_until_the_new_one_is_written(tmp_path, capsys, monkeypatch):
    """`select --overwrite` cleared its output before writing: a failure mid-write (a full disk, a
    crash) lost the pool that was there. It writes beside it and swaps the finished pool in; what
    else the folder holds (a card and notes of the user's own) comes along."""
    import augment.pool as pool_module

    first, second = text_pool(tmp_path / "eda", "eda"), text_pool(tmp_path / "other", "shuffle")
    out = tmp_path / "sel"
    assert run(capsys, "select", first, "--out", out, "--max-per-item", "1")[0] == 0
    (out / "NOTES.txt").write_text("my notes")
    before = files_under(out)

    real_write_shard = pool_module.PoolWriter.write_shard

    def failing(self, index, rows):
        real_write_shard(self, index, rows)
        raise OSError(28, "No space left on device", str(self.shard_path(index)))

    monkeypatch.setattr(pool_module.PoolWriter, "write_shard", failing)
    line = refused(capsys, "select", second, "--out", out, "--max-per-item", "1", "--overwrite")
    # the shard is named where it was going, not in the hidden staging folder (.sel.partial-PID-xxxxxxxx)
    assert f"{out / 'data' / 'shard-00000.parquet'}: No space left on device" in line and ".partial-" not in line
    # the writers' lock file stays where the failed run took it (as a run folder's .train.lock does)
    assert {name: data for name, data in files_under(out).items() if name != ".generate.lock"} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eda", "other", "sel"]  # no staged folder left

    monkeypatch.setattr(pool_module.PoolWriter, "write_shard", real_write_shard)
    (out / "README.md").write_text("# my own card\n")
    assert run(capsys, "select", second, "--out", out, "--max-per-item", "1", "--overwrite")[0] == 0
    assert json.loads((out / "pool.json").read_text())["parent"]["meta"]["method"] == "shuffle"
    assert (out / "NOTES.txt").read_text() == "my notes" and (out / "README.md").read_text() == "# my own card\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eda", "other", "sel"]


def test_a_selection_written_through_a_link_replaces_the_linked_pool(tmp_path, capsys):
    first = text_pool(tmp_path / "eda", "eda")
    real = tmp_path / "real"
    assert run(capsys, "select", first, "--out", real, "--max-per-item", "1")[0] == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    assert run(capsys, "select", first, "--out", link, "--max-per-item", "2", "--overwrite")[0] == 0
    assert link.is_symlink() and json.loads((real / "pool.json").read_text())["selected_rows"] == 4


def test_a_selection_keeps_its_parents_provenance_without_its_shard_fingerprints(tmp_path, capsys):
    """The parent's `shard_inputs` (one entry per shard: megabytes at --shard-size 1 on a large source) was
    copied into every selection's pool.json; its identity keys stay, and so does resuming the selection."""
    parent = text_pool(tmp_path / "eda", "eda")
    meta = json.loads((parent / "pool.json").read_text())
    (parent / "pool.json").write_text(json.dumps({**meta, "shard_inputs": ["0123456789abcdef"] * 1000}))
    out = tmp_path / "sel"
    assert run(capsys, "select", parent, "--out", out, "--max-per-item", "1")[0] == 0
    copied = json.loads((out / "pool.json").read_text())["parent"]["meta"]
    assert "shard_inputs" not in copied and copied["method"] == "eda" and copied["source_fingerprint"] == "fp"
    assert run(capsys, "select", parent, "--out", out, "--max-per-item", "1")[0] == 0  # the same command again


def _drop(key):
    def damage(document, entry):
        del (document if key == "latest" else entry)[key]
    return damage


SCORES_DAMAGE = {
    "no latest": (_drop("latest"), "'latest'"),
    "latest a list": (lambda d, e: d.update(latest=["tiny-clip-1"]), "'latest'"),
    "latest names no scorer": (lambda d, e: d.update(latest="gone"), "'latest'"),
    "entry without pool": (_drop("pool"), "'pool'"),
    "entry without tables": (_drop("tables"), "'tables'"),
    "entry without scorer": (_drop("scorer"), "'scorer'"),
    "pool a text": (lambda d, e: e.update(pool="p"), "'pool'"),
    "tables null": (lambda d, e: e.update(tables=None), "'tables'"),
    "scorer without name": (lambda d, e: e["scorer"].pop("name"), "'scorer.name'"),
    # push's card read these as objects of objects: AttributeError tracebacks until audit AZ
    "alignment a text": (lambda d, e: e.update(alignment="x"), "'alignment'"),
    "gap a list": (lambda d, e: e.update(gap=[1]), "'gap'"),
    "diversity of a text": (lambda d, e: e.update(diversity={"text": "x"}), "'diversity'"),
}


@pytest.mark.parametrize("damage", list(SCORES_DAMAGE))
def test_a_scores_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, damage):
    pool = text_pool(tmp_path / "pool", "eda")
    document = write_scores(pool)
    change, key = SCORES_DAMAGE[damage]
    change(document, document["scorers"]["tiny-clip-1"])
    (pool / "scores.json").write_text(json.dumps(document))
    line = refused(capsys, "select", pool, "--out", tmp_path / "out", "--min-alignment", "0")
    assert "scores.json" in line and key in line, line
    assert "scores.json" in refused(capsys, "push", pool, "--to-dir", tmp_path / "x")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_a_rows_table_without_alignment_is_one_line(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = text_pool(tmp_path / "pool", "eda")
    write_scores(pool)
    table = pool / "scores" / "tiny-clip-1" / "rows.parquet"
    pq.write_table(pq.read_table(table).drop_columns(["alignment"]).replace_schema_metadata({"scores_version": "1"}), table)
    line = refused(capsys, "select", pool, "--out", tmp_path / "out", "--min-alignment", "0")
    assert "rows.parquet" in line and "'alignment'" in line, line
    pq.write_table(pa.table({"row_id": ["a"], "alignment": ["high"]}, metadata={"scores_version": "1"}), table)
    assert "'alignment'" in refused(capsys, "select", pool, "--out", tmp_path / "out", "--min-alignment", "0")
    assert os.listdir(tmp_path) == ["pool"]


def test_select_waits_for_a_rescore_writing_the_pools_scores(tmp_path, capsys):
    """`augment score` renames its new tables into place, then writes scores.json, under scores/.lock;
    a select reading in between found the new table beside the old entry and was refused. It waits for
    the lock now, then reads the finished run's entry and table."""
    from augment.cli import main
    from augment.scoring import store

    pool = text_pool(tmp_path / "pool", "eda")
    write_scores(pool, inputs_key="run-1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
                               "print('held', flush=True); sys.stdin.read()", str(store.scores_lock_path(pool))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    codes = []
    try:
        assert holder.stdout.readline().strip() == "held"
        document = write_scores(pool, inputs_key="run-2")  # the re-score half-way: its table in place, its entry not
        (pool / "scores.json").write_text(json.dumps({**document, "scorers": {
            "tiny-clip-1": {**document["scorers"]["tiny-clip-1"], "inputs_key": "run-1"}}}))
        capsys.readouterr()
        selecting = threading.Thread(target=lambda: codes.append(
            main(["select", str(pool), "--out", str(tmp_path / "out"), "--min-alignment", "0"])))
        selecting.start()
        time.sleep(1.0)
        assert selecting.is_alive() and codes == [], capsys.readouterr().err
        (pool / "scores.json").write_text(json.dumps(document))  # the re-score finishes
    finally:
        holder.stdin.close()  # the holder exits: its lock goes with it
        holder.wait(timeout=30)
    selecting.join(timeout=60)
    assert codes == [0]
    err = capsys.readouterr().err
    assert "another `augment score` is writing its scores" in err and "waiting for it to finish" in err
    assert json.loads((tmp_path / "out" / "pool.json").read_text())["selected_rows"] == 6


def test_a_pool_whose_scores_cannot_be_locked_is_still_selectable(tmp_path, capsys, monkeypatch):
    """A read-only pool (its lock file cannot be made) is read without the lock; a pool never scored gets
    no scores folder from being read."""
    import filelock

    from augment.errors import PoolError
    from augment.scoring import store

    pool = text_pool(tmp_path / "pool", "eda")
    assert "has no scores" in refused(capsys, "select", pool, "--out", tmp_path / "none", "--min-alignment", "0")
    assert not (pool / "scores").exists()
    write_scores(pool)

    class ReadOnlyLock(filelock.FileLock):
        def acquire(self, *args, **kwargs):
            if Path(self.lock_file).is_relative_to(pool):  # the pool is read-only, the selection's folder is not
                raise PermissionError(13, "Permission denied", self.lock_file)
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(filelock, "FileLock", ReadOnlyLock)
    assert run(capsys, "select", pool, "--out", tmp_path / "out", "--min-alignment", "0")[0] == 0
    assert run(capsys, "push", pool, "--to-dir", tmp_path / "export")[0] == 0
    with pytest.raises(PoolError, match="cannot lock its scores for writing"), store.scoring_lock(pool):
        pass  # a writer still needs the lock


def test_select_warns_of_a_method_no_row_has(tmp_path, capsys):
    """`--methods eda,foo` kept the eda rows without a word that `foo` (a typo?) matched nothing."""
    pool = text_pool(tmp_path / "pool", "eda")
    code, err = run(capsys, "select", pool, "--out", tmp_path / "sel", "--methods", "eda,foo")
    assert code == 0 and f"warning: --methods foo: no row of {pool} has that method (its methods: eda)" in err, err
    code, err = run(capsys, "select", pool, "--out", tmp_path / "sel2", "--methods", "eda")
    assert code == 0 and "warning" not in err, err


def test_push_says_when_a_pool_of_test_images_is_listed_as_the_hub_split_train(tmp_path, capsys):
    """A pool made from the source's test split was published as split `train` without a word."""
    pool = text_pool(tmp_path / "pool", "eda")
    meta = json.loads((pool / "pool.json").read_text())
    (pool / "pool.json").write_text(json.dumps({**meta, "split": "test"}))
    code, err = run(capsys, "push", pool, "--to-dir", tmp_path / "export")
    assert code == 0 and "is made from the source's 'test' split; the Hub lists its rows under the split `train`" in err
    code, err = run(capsys, "push", text_pool(tmp_path / "train", "eda"), "--to-dir", tmp_path / "export2")
    assert code == 0 and "split `train`" not in err


def test_push_names_scores_under_a_scorer_id_of_an_earlier_version_as_superseded(tmp_path, capsys):
    """A pool 5236631 scored with tiny-clip (its entry under the id's earlier digest, tiny-clip-c78295e3), scored
    again now (tiny-clip-b91811a4, published): every push said the old entry was left out and to run `augment
    score POOL` to publish current ones, which only reused the published entry; the note came back at every push."""
    pool = text_pool(tmp_path / "pool", "eda")
    old = write_scores(pool, slug="tiny-clip-c78295e3")["scorers"]
    old["tiny-clip-c78295e3"].pop("resampling")  # written before the scheme was recorded
    old["tiny-clip-c78295e3"]["scorer"]["id"] = "open_clip:a9ca7b509367aedb"  # the earlier digest of the same model
    write_scores(pool, slug="tiny-clip-b91811a4", keep=old)
    code, err = run(capsys, "push", pool, "--to-dir", tmp_path / "px")
    assert code == 0 and "the scores of tiny-clip-c78295e3 are left out: tiny-clip is published as " \
                         "tiny-clip-b91811a4" in err, err
    assert "augment score" not in err
    assert list(json.loads((tmp_path / "px" / "scores.json").read_text())["scorers"]) == ["tiny-clip-b91811a4"]


def test_push_publishes_the_newest_current_scores_as_latest_when_the_latest_is_left_out(tmp_path, capsys):
    """The latest entry left out (scored before the pool changed): the published latest was the last entry
    listed, which in a scores.json written with sorted keys is the alphabetically last scorer, not the one
    scored last (audit CQ's H03)."""
    from augment.hub import published_scores
    from augment.pool import load_pool

    pool = text_pool(tmp_path / "pool", "eda")
    entries = write_scores(pool, slug="b-scorer")["scorers"]
    entries = write_scores(pool, slug="z-scorer", keep=entries)["scorers"]
    entries["b-scorer"]["created"], entries["z-scorer"]["created"] = "2026-12-08T10:00:00+00:00", "2026-12-01T10:00:00+00:00"
    stale = {**entries["b-scorer"], "pool": {**entries["b-scorer"]["pool"], "finished": "2020-01-01T00:00:00+00:00"}}
    document = {"scores_version": 1, "latest": "a-stale", "scorers": {**entries, "a-stale": stale}}
    (pool / "scores.json").write_text(json.dumps(document, sort_keys=True))
    published, left_out = published_scores(load_pool(pool))
    assert left_out == ["a-stale"] and list(published["scorers"]) == ["b-scorer", "z-scorer"]
    assert published["latest"] == "b-scorer"
    code, err = run(capsys, "push", pool, "--to-dir", tmp_path / "export")
    assert code == 0 and json.loads((tmp_path / "export" / "scores.json").read_text())["latest"] == "b-scorer", err
