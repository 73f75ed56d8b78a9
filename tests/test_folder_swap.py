"""`augment.atomic.swap_folder_into_place`: the one way a finished folder replaces another (save-tiny,
make-sample, the trainer's checkpoint and best weights)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import augment.atomic as atomic
from augment.atomic import remove_dead_swap_leftovers, swap_folder_into_place


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(path: Path) -> dict[str, str]:
    return {child.name: child.read_text() for child in sorted(path.iterdir())}


def test_a_new_target_is_the_staged_folder_and_nothing_else_is_left(tmp_path):
    staged = folder(tmp_path / ".model.tmp-abc", weights="new", manifest="new")
    assert swap_folder_into_place(staged, tmp_path / "model") == tmp_path / "model"
    assert contents(tmp_path / "model") == {"manifest": "new", "weights": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_existing_target_is_complete_before_and_after_each_rename(tmp_path, monkeypatch):
    target = folder(tmp_path / "model", weights="old", manifest="old")
    staged = folder(tmp_path / ".model.tmp-abc", weights="new", manifest="new")
    seen = []
    real = os.replace

    def watched(source, destination):
        real(source, destination)
        # what a reader finds after each rename: the old folder (aside, the fallback) or the new one, whole
        seen.append({p.name: contents(p) for p in tmp_path.iterdir()})

    monkeypatch.setattr(atomic.os, "replace", watched)
    swap_folder_into_place(staged, target)
    aside = f".model.old-{os.getpid()}"
    assert seen == [{aside: {"manifest": "old", "weights": "old"}, staged.name: {"manifest": "new", "weights": "new"}},
                    {aside: {"manifest": "old", "weights": "old"}, "model": {"manifest": "new", "weights": "new"}}]
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and contents(target)["weights"] == "new"


def test_a_fixed_aside_name_holds_the_old_folder_during_the_swap_and_is_removed_after(tmp_path, monkeypatch):
    """The trainer's `.ckpt-old` / `.best-old`: what its loaders fall back to after a kill between the renames."""
    target, aside = folder(tmp_path / "ckpt", state="1"), tmp_path / ".ckpt-old"
    staged = folder(tmp_path / ".ckpt-partial", state="2")
    real, asides = os.replace, []

    def watched(source, destination):
        asides.append(contents(aside) if aside.exists() else None)
        real(source, destination)

    monkeypatch.setattr(atomic.os, "replace", watched)
    swap_folder_into_place(staged, target, aside=aside)
    assert asides == [None, {"state": "1"}]  # the second rename happens with the old one at the fixed name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"] and contents(target) == {"state": "2"}


def test_sigterm_and_ctrl_c_during_the_swap_arrive_after_it(tmp_path, monkeypatch):
    target = folder(tmp_path / "model", weights="old")
    staged = folder(tmp_path / ".model.tmp-abc", weights="new")
    real, delivered = os.replace, []

    def interrupted(source, destination):
        real(source, destination)
        if source == target:  # between the renames
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, lambda *_: delivered.append(contents(target)))
    # Ctrl-C as an interactive shell delivers it: a suite started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then raises nothing on it
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(atomic.os, "replace", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            swap_folder_into_place(staged, target)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert delivered == [{"weights": "new"}]
    # the replaced folder is gone even though the interrupt left the call early
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_swap_killed_between_the_renames_is_cleaned_up_by_the_next(tmp_path):
    """kill -9 after the first rename: the target is missing, the old folder waits aside under the
    dead process's id; the next swap of that target deletes it."""
    target = folder(tmp_path / "model", weights="old")
    script = ("import os, sys; from pathlib import Path; import augment.atomic as a; real = os.replace\n"
              "def killed(s, d):\n    real(s, d); os.kill(os.getpid(), 9)\n"
              "staged = Path(sys.argv[1]).with_name(f'.model.partial-{os.getpid()}-0123abcd')\n"
              "staged.mkdir(); (staged / 'weights').write_text('new'); print(os.getpid(), flush=True)\n"
              "a.os.replace = killed; a.swap_folder_into_place(staged, sys.argv[1])\n")
    child = subprocess.run([sys.executable, "-c", script, str(target)], cwd=Path(__file__).resolve().parents[1],
                           stdout=subprocess.PIPE, text=True)
    assert child.returncode == -signal.SIGKILL
    pid = int(child.stdout)
    assert {p.name: contents(p) for p in tmp_path.iterdir()} == {
        f".model.old-{pid}": {"weights": "old"}, f".model.partial-{pid}-0123abcd": {"weights": "new"}}
    swap_folder_into_place(folder(tmp_path / ".model.tmp-def", weights="newer"), target)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and contents(target) == {"weights": "newer"}


def test_only_dead_processes_leftovers_of_this_target_are_removed(tmp_path):
    dead = dead_pid()
    stale = [folder(tmp_path / f".model.old-{dead}"), folder(tmp_path / f".model.partial-{dead}-0123abcd"),
             folder(tmp_path / f".model.old-{dead}-89abcdef")]
    kept = [folder(tmp_path / f".model.old-{os.getppid()}"),  # a live process's swap in progress
            folder(tmp_path / f".other.old-{dead}"),  # another target's
            folder(tmp_path / ".model.tmp-12345678"),  # not a swap's name, though all digits
            folder(tmp_path / ".ckpt-old")]  # a fixed name: its owner tidies it
    (tmp_path / f".model.old-{dead}.txt").write_text("not a swap's")
    staged = folder(tmp_path / f".model.partial-{dead}-fedcba98", weights="new")  # the one being swapped in
    swap_folder_into_place(staged, tmp_path / "model")
    assert not any(path.exists() for path in stale)
    assert all(path.is_dir() for path in kept) and (tmp_path / f".model.old-{dead}.txt").is_file()
    assert contents(tmp_path / "model") == {"weights": "new"}
    assert remove_dead_swap_leftovers(tmp_path / "missing" / "model") == []


def test_a_killed_tiny_builds_staging_folder_is_removed_by_the_next_build(tmp_path):
    """save-tiny stages in `.NAME.partial-PID-xxxxxxxx` (it used mkdtemp's random `.NAME.tmp-xxxx`,
    which nothing could tell from a live build's and so nothing ever deleted)."""
    from augment.tiny import _build_in_place

    leftover = folder(tmp_path / f".tiny-clip.partial-{dead_pid()}-0123abcd", weights="half")
    staged_as = []

    def build(tmp):
        staged_as.append(tmp.name)
        (tmp / "weights").write_text("whole")

    _build_in_place(tmp_path, "tiny-clip", build)
    assert re.fullmatch(rf"\.tiny-clip\.partial-{os.getpid()}-[0-9a-f]{{8}}", staged_as[0]), staged_as
    assert not leftover.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny-clip"]
    assert contents(tmp_path / "tiny-clip") == {"weights": "whole"}


def test_a_missing_parent_is_the_rename_error_and_the_staged_folder_stays(tmp_path):
    staged = folder(tmp_path / ".model.tmp-abc", weights="new")
    with pytest.raises(FileNotFoundError) as raised:
        swap_folder_into_place(staged, tmp_path / "gone" / "model")
    assert raised.value.filename == str(staged) and raised.value.filename2 == str(tmp_path / "gone" / "model")
    assert contents(staged) == {"weights": "new"}


def test_a_failed_second_rename_keeps_the_old_folder_aside(tmp_path, monkeypatch):
    """Never deleted after a failed rename: aside is then the only copy (the trainer's loaders fall back to it)."""
    target, aside = folder(tmp_path / "ckpt", state="1"), tmp_path / ".ckpt-old"
    staged = tmp_path / ".ckpt-partial"  # vanished before the swap
    with pytest.raises(FileNotFoundError):
        swap_folder_into_place(staged, target, aside=aside)
    assert not target.exists() and contents(aside) == {"state": "1"}


class _FilesModel:
    """What save_checkpoint needs of a model: save(folder) writes its files."""

    def save(self, folder: Path) -> None:
        (Path(folder) / "weights.safetensors").write_text("w")


def _save(run: Path):
    import torch

    from train.checkpoint import save_checkpoint

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return save_checkpoint(run, model=_FilesModel(), optimizer=optimizer, scheduler=scheduler, scaler=None,
                           state={"step": 7}, rank=0, is_main=True, barrier=lambda: None)


def test_a_checkpoint_left_only_aside_by_a_kill_survives_the_next_save_until_its_replacement_is_in_place(
        tmp_path, monkeypatch):
    """A kill between a swap's renames leaves RUN/.ckpt-old as the only checkpoint; the next save
    must keep it until the new RUN/ckpt exists (it deleted it first, so a second kill lost both)."""
    import train.checkpoint as checkpoint

    run = tmp_path / "run"
    _save(run)
    os.replace(checkpoint.checkpoint_dir(run), run / checkpoint.OLD_DIR)  # the first kill, between the renames
    assert checkpoint.find_checkpoint(run) == run / checkpoint.OLD_DIR

    def killed(*args, **kwargs):
        raise SystemExit("killed before the swap")

    monkeypatch.setattr(checkpoint, "swap_folder_into_place", killed)
    with pytest.raises(SystemExit):
        _save(run)
    assert checkpoint.find_checkpoint(run) == run / checkpoint.OLD_DIR
    monkeypatch.undo()
    assert _save(run) == checkpoint.checkpoint_dir(run)
    assert checkpoint.find_checkpoint(run) == checkpoint.checkpoint_dir(run)
    assert not (run / checkpoint.OLD_DIR).exists()


def test_a_checkpoint_save_interrupted_while_writing_the_model_removes_its_partial_copy(tmp_path, monkeypatch):
    """Guards a mutation (audit BZ): the partial copy's clean-up catching `Exception` instead of `BaseException`
    passed every test; a Ctrl-C while the weights were written left RUN/.ckpt-partial (a model's size on the disk
    the next save needs) beside the untouched last checkpoint."""
    import train.checkpoint as checkpoint

    run = tmp_path / "run"
    _save(run)

    def interrupted(self, folder):
        (Path(folder) / "weights.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(_FilesModel, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(run)
    assert not (run / checkpoint.PARTIAL_DIR).exists()
    assert (checkpoint.checkpoint_dir(run) / "weights.safetensors").read_text() == "w"


def test_a_killed_saves_partial_copy_leaves_nothing_in_the_next_checkpoint(tmp_path):
    """Guards a mutation (audit BZ): save_checkpoint writing into a killed save's RUN/.ckpt-partial without
    emptying it first passed every test; the dead save's files (another process count's RNG state, a weights
    file the model no longer writes) went into RUN/ckpt and were listed as its model files."""
    import train.checkpoint as checkpoint

    run = tmp_path / "run"
    stale = run / checkpoint.PARTIAL_DIR / checkpoint.STATE_DIR
    stale.mkdir(parents=True)
    (stale / "rng-1.pt").write_bytes(b"dead")
    (run / checkpoint.PARTIAL_DIR / "old.safetensors").write_bytes(b"dead")
    final = _save(run)
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()) == [
        f"{checkpoint.STATE_DIR}/{name}" for name in ("optimizer.pt", "rng-0.pt", "scheduler.pt", checkpoint.STATE_FILE)
    ] + ["weights.safetensors"]


def test_a_checkpoint_copied_without_its_weights_is_refused_naming_them(tmp_path):
    """Guards a mutation (audit BZ): check_model_files skipping the first listed model file passed every test; a
    checkpoint copied without its only weights file resumed, the model starting from random weights."""
    import train.checkpoint as checkpoint

    final = _save(tmp_path / "run")
    (final / "weights.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"weights\.safetensors is missing; copy the checkpoint again"):
        checkpoint.read_state(final)


def test_a_kill_after_the_swaps_second_rename_resumes_the_new_checkpoint_not_its_leftover(tmp_path):
    """Guards BW's un-run M45 (audit BX): find_checkpoint preferring RUN/.ckpt-old to RUN/ckpt passed every test, none
    leaving both; a kill after the swap's second rename leaves both, and `--resume latest` then went back to the
    checkpoint before the newest one."""
    import shutil

    import train.checkpoint as checkpoint

    run = tmp_path / "run"
    _save(run)
    shutil.copytree(checkpoint.checkpoint_dir(run), run / checkpoint.OLD_DIR)  # the previous checkpoint, not yet deleted
    assert checkpoint.find_checkpoint(run) == checkpoint.checkpoint_dir(run)


def test_a_plot_written_halfway_leaves_the_previous_one(tmp_path):
    """The study's and the scorer's PNGs go through `save_figure_atomic` (the study's were written in place)."""
    from augment.atomic import save_figure_atomic

    class Figure:  # what save_figure_atomic reads of a matplotlib figure
        def __init__(self, fail: bool):
            self.fail, self.paths = fail, []

        def savefig(self, path, **options):
            self.paths.append(Path(path))
            Path(path).write_bytes(b"half" if self.fail else b"new")
            if self.fail:
                raise KeyboardInterrupt

    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        save_figure_atomic(Figure(fail=True), path, dpi=100)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    figure = Figure(fail=False)
    save_figure_atomic(figure, path, dpi=100)
    assert path.read_bytes() == b"new" and figure.paths[0].suffix == ".png"  # matplotlib's format follows it


def test_a_pool_left_aside_by_a_killed_swap_is_named_with_the_mv_that_restores_it(tmp_path, monkeypatch):
    """`select --overwrite X` killed between the swap's renames: X missing, the old pool at `.X.old-PID`.
    Every reader said `X: no such pool folder` (a relative `pools/X`: that the Hub has no dataset of
    that name), nothing pointing to the old pool, which the next run writing X deletes."""
    from augment.errors import PoolError
    from augment.pool import load_pool, write_pool
    from tests.test_pool import _row

    write_pool(tmp_path / "pools" / "sel", [_row(0), _row(1)], {"method": "m"})
    aside = tmp_path / "pools" / f".sel.old-{dead_pid()}"
    (tmp_path / "pools" / "sel").rename(aside)
    folder(tmp_path / "pools" / f".other.old-{dead_pid()}")  # another folder's: not named
    monkeypatch.chdir(tmp_path)
    for given in (tmp_path / "pools" / "sel", "pools/sel"):  # `pools/sel` is no Hub id when its leftover is here
        with pytest.raises(PoolError) as raised:
            load_pool(given)
        message = str(raised.value)
        assert message.startswith(f"{given}: no such pool folder; a swap by process") and "\n" not in message
        assert f"`mv {aside if given != 'pools/sel' else 'pools/' + aside.name} {given}` restores it" in message
    os.rename(aside, tmp_path / "pools" / "sel")  # what it says to run
    assert len(load_pool("pools/sel")) == 2


def test_a_live_swaps_aside_folder_and_a_present_target_are_not_named(tmp_path):
    from augment.atomic import swap_leftover_note

    folder(tmp_path / f".model.old-{os.getppid()}")  # a swap in progress: its process is alive
    assert swap_leftover_note(tmp_path / "model") == ""
    folder(tmp_path / "model")
    folder(tmp_path / f".model.old-{dead_pid()}")
    assert swap_leftover_note(tmp_path / "model") == ""
    assert swap_leftover_note(tmp_path / "missing" / "model") == ""


def test_a_checkpoint_folder_left_only_aside_is_named_where_a_model_folder_is_missing(tmp_path):
    """`train eval --model RUN/ckpt` after a save killed between its renames (RUN/.ckpt-old, the trainer's
    fixed aside name) said `folder RUN/ckpt does not exist`."""
    from augment.errors import ModelLoadError
    from augment.registry import resolve_source

    folder(tmp_path / ".ckpt-old", **{"config.json": "{}"})
    with pytest.raises(ModelLoadError) as raised:
        resolve_source(str(tmp_path / "ckpt"), "victim")
    assert str(raised.value).endswith(f"does not exist; a swap was killed between its two renames and left the old "
                                      f"folder at {tmp_path / '.ckpt-old'}: `mv {tmp_path / '.ckpt-old'} "
                                      f"{tmp_path / 'ckpt'}` restores it")


def test_a_leftover_removed_while_it_is_named_is_left_out_not_an_error(tmp_path, monkeypatch):
    """A writer of the same target starting its swap deletes dead processes' leftovers
    (`remove_dead_swap_leftovers`): one gone between the listing and the look at its time raised
    FileNotFoundError out of the reader's 'no such pool folder' (or 'folder does not exist') error."""
    import shutil

    from augment.errors import PoolError
    from augment.pool import load_pool

    pid = dead_pid()
    aside = folder(tmp_path / "pools" / f".sel.old-{pid}")

    def removed_meanwhile(checked: int) -> bool:
        shutil.rmtree(aside, ignore_errors=True)  # the other writer's clean-up, at this moment
        return False

    monkeypatch.setattr(atomic, "_process_alive", removed_meanwhile)
    assert atomic.swap_leftover_note(tmp_path / "pools" / "sel") == ""
    folder(aside)
    with pytest.raises(PoolError, match=r"sel: no such pool folder$"):
        load_pool(tmp_path / "pools" / "sel")


def test_of_two_killed_swaps_leftovers_the_latest_is_named(tmp_path):
    """Two swaps into `model` killed between their renames: the note's `mv` restores the newer old folder (the
    last one readers saw), not an older one a later swap had already replaced."""
    from augment.atomic import swap_leftover_note

    older, newer = folder(tmp_path / f".model.old-{dead_pid()}"), folder(tmp_path / f".model.old-{dead_pid()}")
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    note = swap_leftover_note(tmp_path / "model")
    assert f"left the old folder at {newer}:" in note and f"{older}:" not in note


def test_a_reader_waits_out_the_trainers_swap_of_its_fixed_aside_name(tmp_path, monkeypatch):
    """RUN/ckpt missing with the trainer's `.ckpt-old` beside it (no process id in the name): the instant between
    the trainer's two renames, waited out as `.NAME.old-PID` of a live process is, not read as no checkpoint."""
    import time

    slept = []

    def second_rename_done(seconds):
        slept.append(seconds)
        (tmp_path / "ckpt").mkdir(exist_ok=True)

    monkeypatch.setattr(time, "sleep", second_rename_done)
    (tmp_path / ".ckpt-old").mkdir()
    atomic.wait_out_a_swap(tmp_path / "ckpt")
    assert len(slept) == 1
