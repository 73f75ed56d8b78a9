"""Reliability fixes of `train` and `train eval`: one trainer per run folder (a lock), SIGTERM and
Ctrl-C as one line naming how to continue, a resumed run with no step left still reporting its
losses, and a failed checkpoint / progress write (torch's RuntimeError on a full disk) as one
line with no partial copy left. Runs are a few steps of the tiny CLIP on the sample world."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FAST = ["--batch-size", "8", "--no-progress", "--workers", "0", "--model", "tiny-clip"]
# what torch.save raises when the disk fills part-way through a checkpoint
FULL_DISK = "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"


def _main(capsys, *argv) -> tuple[int, str]:
    from train.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _train(world: Path, run: Path, *extra) -> list[str]:
    return ["clean", "--train-data", world, "--out", run, *FAST, *extra]


# ----------------------------------------------------------------------------- 1. one trainer per run folder


def test_a_second_trainer_into_a_held_run_folder_is_refused_before_touching_it(tmp_path, sample_world_dir, capsys):
    from filelock import FileLock

    from train.run_folder import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # the running trainer's
    held = FileLock(run / LOCK_FILE, timeout=0)
    held.acquire()  # flock: a second open file description conflicts, in this process as in another
    try:
        code, err = _main(capsys, *_train(sample_world_dir, run, "--max-steps", "1", "--resume", "latest"))
    finally:
        held.release()
    assert code == 2
    assert err.count("\n") == 0 and "another train is writing here" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_FILE, "metrics.jsonl"])
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_the_lock_outlives_overwrite_and_a_failed_run_leaves_no_folder(tmp_path, sample_world_dir, capsys):
    from train.run_folder import LOCK_FILE, RUN_OUTPUTS

    assert LOCK_FILE not in RUN_OUTPUTS  # --overwrite clears RUN_OUTPUTS: never the lock it holds
    missing = tmp_path / "nowhere"
    code, _ = _main(capsys, "clean", "--train-data", missing, "--out", tmp_path / "run", *FAST, "--max-steps", "1")
    assert code == 2
    assert not (tmp_path / "run").exists()  # the lock file it took is not left in a folder it created


# ----------------------------------------------------------------------------- 2-3. SIGTERM and Ctrl-C


def test_train_and_train_eval_take_sigterm_as_an_interrupt_naming_how_to_continue():
    from train.cli import build_parser, config_from_args

    train_args = build_parser().parse_args(["clean", "--train-data", "w", "--out", "run"])
    assert train_args.sigterm_interrupts is True
    assert "--resume latest" in train_args.interrupted and "re-run the same command" not in train_args.interrupted
    config_from_args(train_args)  # the runner's defaults are not taken for settings of the run
    eval_args = build_parser().parse_args(["eval", "tiny-clip", "--source", "w", "--out", "o"])
    assert eval_args.sigterm_interrupts is True
    assert "finished batches are kept" in eval_args.interrupted


def test_sigterm_stops_train_in_one_line_with_exit_143(tmp_path, sample_world_dir):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MATPLUS_LOGLEVEL": "ERROR"}
    command = [sys.executable, "-m", "train.cli", *map(str, _train(sample_world_dir, run, "--max-steps", "100000",
                                                                   "--save-every", "1"))]
    trainer = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "ckpt").is_dir() and time.monotonic() < deadline and trainer.poll() is None:
            time.sleep(0.5)
        assert (run / "ckpt").is_dir(), "the run saved no checkpoint"
        trainer.send_signal(signal.SIGTERM)
        _, err = trainer.communicate(timeout=120)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 143
    assert err.strip().count("\n") == 0 and err.startswith("interrupted: ") and "--resume latest" in err


# ----------------------------------------------------------------------------- 4. resumed with no step left


def test_a_run_killed_before_its_summary_resumes_with_its_final_losses(tmp_path, sample_world_dir, capsys):
    run = tmp_path / "run"
    assert _main(capsys, *_train(sample_world_dir, run, "--max-steps", "2"))[0] == 0
    losses = json.loads((run / "summary.json").read_text())["final"]
    assert losses["loss"] is not None
    (run / "summary.json").unlink()  # a kill -9 after the final checkpoint, before summary.json
    from train.cli import main

    assert main([str(a) for a in _train(sample_world_dir, run, "--max-steps", "2", "--resume", "latest")]) == 0
    out = capsys.readouterr().out
    assert "no steps run" not in out
    assert json.loads((run / "summary.json").read_text())["final"] == losses


# ----------------------------------------------------------------------------- 5. a full disk while saving


def _torch_save_fails_after(monkeypatch, good: int) -> None:
    """torch.save writes `good` files, then fails as it does on a full disk (a part-written file left)."""
    real, calls = torch.save, []

    def save(value, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > good:
            Path(path).write_bytes(b"part")
            raise RuntimeError(FULL_DISK)
        return real(value, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_checkpoint_write_failing_on_a_full_disk_is_one_line_and_leaves_no_partial(tmp_path, sample_world_dir,
                                                                                    capsys, monkeypatch):
    run = tmp_path / "run"
    assert _main(capsys, *_train(sample_world_dir, run, "--max-steps", "2", "--save-every", "1"))[0] == 0
    before = (run / "ckpt" / "train_state" / "state.json").read_text()
    _torch_save_fails_after(monkeypatch, good=1)  # the RNG state written, the optimizer's not
    code, err = _main(capsys, *_train(sample_world_dir, run, "--max-steps", "3", "--save-every", "1",
                                      "--resume", "latest"))
    assert code == 2
    assert err.splitlines()[-1].startswith("error: ") and "could not be written" in err and "Traceback" not in err
    assert "optimizer.pt" in err
    assert not (run / ".ckpt-partial").exists()
    assert (run / "ckpt" / "train_state" / "state.json").read_text() == before  # the last checkpoint kept


def test_a_write_over_the_file_size_limit_says_so_not_a_full_disk(tmp_path):
    """torch's failed write carries no errno: a file-size limit (ulimit -f, EFBIG) was reported as
    "No space left on device?" (audit U's left finding). The real limit, in a child process."""
    script = ("import resource, torch; from pathlib import Path; from train.checkpoint import save_tensors\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
              "try:\n    save_tensors({'x': torch.zeros(100_000)}, Path('big.pt'))\n"
              "except OSError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == ("[Errno 5] could not be written (the file-size limit of this process is reached: "
                                  "ulimit -f, 100000 bytes): 'big.pt'"), out
    assert not (tmp_path / "big.pt").exists()


def test_a_full_disk_line_says_the_space_left(tmp_path, monkeypatch):
    import shutil

    from train.checkpoint import save_tensors

    _torch_save_fails_after(monkeypatch, good=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10 * 2 ** 30, 10 * 2 ** 30, 2 ** 20))
    with pytest.raises(OSError, match=r"could not be written \(No space left on device\? 1 MiB free there now\)"):
        save_tensors({"x": torch.zeros(1)}, tmp_path / "a.pt")


def test_a_progress_batch_failing_on_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    from train.eval_store import BatchStore

    store = BatchStore(tmp_path / ".progress", {"attacks": "pgd"})
    _torch_save_fails_after(monkeypatch, good=0)
    with pytest.raises(OSError, match="could not be written"):
        store._write(tmp_path / ".progress" / "pgd" / "batch-00001.pt", {"x": torch.zeros(1)})
    assert not [p for p in (tmp_path / ".progress").rglob("*") if ".tmp" in p.name]
    assert not store.has("pgd", 1)


def test_loader_workers_stopped_by_ctrl_c_are_the_interrupt_not_a_death(monkeypatch, capsys):
    """was: Ctrl-C stopped the DataLoader workers too, torch reported them dead while the main process
    unwound, and the run ended `error: ... likely out of memory: use fewer --workers` (exit 2)."""
    import argparse
    import os
    import signal

    from augment.cli_common import run_main
    from augment.loading import worker_death

    died = RuntimeError("DataLoader worker (pid(s) 14683) exited unexpectedly")
    assert worker_death(died) is not None  # no Ctrl-C: the one-line death

    def command(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # as the terminal's Ctrl-C reaches the main process
        except KeyboardInterrupt:  # recorded, then raised as always; torch then reports its workers
            pass
        failure = worker_death(died)
        raise failure if failure else died

    def parser():
        built = argparse.ArgumentParser(prog="x")
        built.set_defaults(func=command, interrupted="finished steps are kept")
        return built

    # Ctrl-C as an interactive shell delivers it (a suite started in the background by a
    # non-interactive shell inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run_main(parser, []) == 130
        assert capsys.readouterr().err.strip() == "interrupted: finished steps are kept"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    assert worker_death(died) is not None  # and forgotten once the command ended


def test_a_worker_that_exited_by_itself_is_not_called_out_of_memory():
    """A worker that failed at start-up (every forkserver worker did, audit S) was reported only as "likely
    out of memory: use fewer --workers": an exit (an OOM kill seen from the queue, or the worker's own
    failure) also points to --workers 0, which shows such an error; the OOM killer's signal does not."""
    from augment.loading import worker_death

    exited = worker_death(RuntimeError("DataLoader worker (pid(s) 14683) exited unexpectedly"), workers=2)
    assert "use fewer --workers (2 now; --workers 0 shows an error of the worker's own), then" in str(exited)
    killed = worker_death(RuntimeError("DataLoader worker (pid 14683) is killed by signal: Killed."), workers=2)
    assert "likely out of memory: use fewer --workers (2 now), then" in str(killed)
