"""`train eval`'s progress folder: one evaluation per OUT (a lock), removal a kill cannot leave
half-done, and progress files whose content is wrong refused in one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def eval_args(world: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "tiny-clip", "--source", str(world), "--split", "test", "--limit", "4", "--batch-size", "2",
            "--attacks", "clean,pgd", "--pgd-steps", "2", "--workers", "0", "--no-progress", "--out", str(out), *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]  # besides "reading ...", "resuming ..."
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_second_eval_into_a_held_out_is_refused_and_a_killed_holder_blocks_nothing(sample_world_dir, tmp_path, capsys):
    """Two evaluations into one OUT shared its progress and report: one silently replaced the other's.
    While one holds OUT another stops at once in one line (exit 2); a holder killed with SIGKILL
    (the kernel drops its flock) does not block the next run."""
    from train.cli import main
    from train.commands_eval import LOCK_FILE

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock\n"  # as train eval holds OUT
                               "with FileLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
         str(out / LOCK_FILE)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(eval_args(sample_world_dir, out)) == 2
        line = one_line_error(capsys)
        assert str(out) in line and "another train eval is writing here" in line, line
        assert not (out / "eval.json").exists() and not (out / ".progress").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_FILE).exists()  # left by the killed holder
    assert main(eval_args(sample_world_dir, out)) == 0
    assert (out / "eval.json").is_file() and not (out / ".progress").exists()


def test_a_failed_eval_leaves_no_out_it_created(tmp_path, capsys):
    """The lock's folder is not left behind by a run that wrote nothing (a wrong --source)."""
    from train.cli import main

    assert main(eval_args(tmp_path / "missing", tmp_path / "out")) == 2
    assert not (tmp_path / "out").exists()


class _Record:
    """A finished batch with pixels (what re-ranking keeps), as `BatchStore.save` takes it."""

    images = [torch.zeros(1, 3, 2, 2)]

    def state(self) -> dict:
        return {"image_emb": [torch.zeros(1, 4)]}


def test_a_kill_while_a_finished_store_is_removed_leaves_each_attack_whole(tmp_path, monkeypatch):
    """rmtree deleted an attack's folder in directory order: a kill after its summary.json went left
    its batches (their pixels already deleted) to be resumed as finished, which failed. Now an
    attack's folder is gone at once, or whole; a trash folder a kill leaves is deleted, never read."""
    import shutil

    from train.eval_store import BatchStore, remove_finished_store

    folder = tmp_path / ".progress"
    store = BatchStore(folder, {"a": 1})
    for batch in (0, 1):
        store.save("pgd", batch, _Record())
    store.save_summary("pgd", {"tr@1": 50.0})
    real_rmtree = shutil.rmtree

    def killed_part_way(path, *args, **kwargs):
        summary = Path(path) / "summary.json"
        if summary.is_file():  # the first file gone, then the kill
            summary.unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_part_way)
    with pytest.raises(KeyboardInterrupt):
        remove_finished_store(folder)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    resumed = BatchStore(folder, {"a": 1})
    assert resumed.load_summary("pgd") is not None or not resumed.has("pgd", 0)
    assert resumed.finished_batches() == {} and list(folder.iterdir()) == [folder / "settings.json"]


def test_restart_removes_the_progress_folder_as_one_step(tmp_path, monkeypatch):
    """--restart's removal: a kill part-way leaves no half-deleted OUT/.progress to resume, only a
    trash folder the next store deletes."""
    import argparse
    import shutil

    from train.commands_eval import progress_folder
    from train.eval_store import BatchStore

    out = tmp_path / "out"
    store = BatchStore(out / ".progress", {"a": 1})
    store.save("pgd", 0, _Record())
    store.save_summary("pgd", {"tr@1": 50.0})
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        progress_folder(argparse.Namespace(out=str(out), restart=True))
    monkeypatch.undo()
    assert not (out / ".progress").exists()
    BatchStore(out / ".progress", {"a": 2})  # other settings: nothing finished is left to refuse
    assert sorted(p.name for p in out.iterdir()) == [".progress"]


def test_progress_an_earlier_version_wrote_is_named_so(tmp_path):
    """A killed evaluation of an earlier mat-plus resumed by this one was refused as "an evaluation with
    other settings (differ: device (--device), options.guide (--text-guide) ...): run that evaluation's
    command again", the command the user had just run; settings.json now records its format, and one
    written before it resumes when it holds the same settings."""
    import json

    from augment.errors import MatPlusError
    from train.eval_store import FORMAT_KEY, SETTINGS_FILE, BatchStore

    folder = tmp_path / ".progress"
    BatchStore(folder, {"a": 1}).save("pgd", 0, _Record())
    marker = folder / SETTINGS_FILE
    assert json.loads(marker.read_text())[FORMAT_KEY] == 4
    marker.write_text(json.dumps({"a": 1}))  # as written before the key: the same settings resume
    assert BatchStore(folder, {"a": 1}).finished_batches() == {"pgd": 1}
    marker.write_text(json.dumps({"b": 1}))  # an earlier version recorded its settings otherwise
    with pytest.raises(MatPlusError, match=r"1 finished batches an earlier mat-plus wrote, with settings this "
                                           r"version records otherwise \(differ: a, b\)"):
        BatchStore(folder, {"a": 1})
    assert (folder / "pgd").is_dir()  # nothing lost


def test_progress_of_a_budget_zero_text_part_from_before_no_substitutes_is_named_an_earlier_versions(tmp_path):
    """`train eval --attacks sep --word-budget 0` killed before 2026-12-06 recorded its text part's masked LM (source
    mlm, mlm_weights); this version records source none and loads none. Resumed with the same command, it was refused
    as "an evaluation with other settings (...): run that evaluation's command again", the one just run."""
    from augment.errors import MatPlusError
    from train.eval_store import FORMAT_KEY, SETTINGS_FILE, BatchStore

    image = {"eps": 0.01, "steps": 10}
    now = {"attacks": {"sep": {"image": image, "text": {"source": "none", "budget": 0}}}}
    before = {"attacks": {"sep": {"image": image, "text": {"source": "mlm", "mlm": "tiny-mlm", "budget": 0}}},
              "mlm_weights": ["0123"]}
    folder = tmp_path / ".progress"
    BatchStore(folder, before).save("sep", 0, _Record())
    marker = folder / SETTINGS_FILE
    marker.write_text(json.dumps({**before, FORMAT_KEY: 2}))  # as the version before NoSubstitutes wrote it
    with pytest.raises(MatPlusError, match=r"1 finished batches an earlier mat-plus wrote, with settings this version "
                                           r"records otherwise \(differ: attacks.sep, mlm_weights\)"):
        BatchStore(folder, now)
    marker.write_text(json.dumps({**now, FORMAT_KEY: 2}))  # an earlier version's of the same settings: resumes
    assert BatchStore(folder, now).finished_batches() == {"sep": 1}


@pytest.fixture()
def kept_progress(sample_world_dir, tmp_path, monkeypatch, capsys):
    """OUT/.progress of a retrieval evaluation killed just before its report (clean.pt, pgd's batches
    and summary), and the numbers of the uninterrupted run."""
    import train.eval_report
    from train.cli import main

    assert main(eval_args(sample_world_dir, tmp_path / "whole")) == 0
    whole = json.loads((tmp_path / "whole" / "eval.json").read_text())["attacks"]
    with monkeypatch.context() as patch:
        patch.setattr(train.eval_report, "write_report", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(eval_args(sample_world_dir, tmp_path / "out")) != 0  # the CLI's "interrupted" line
    assert (tmp_path / "out" / ".progress" / "pgd" / "summary.json").is_file()
    capsys.readouterr()
    return tmp_path / "out", whole


@pytest.mark.parametrize("name, content", [
    ("clean.pt", [1, 2]),  # TypeError, exit 1, before
    ("clean.pt", {"image_emb": torch.zeros(4, 8), "text_emb": torch.zeros(3, 8), "hits": {}}),
    ("pgd/batch-00001.pt", {"x": 1}),  # RuntimeError: index out of bounds, before
    ("pgd/batch-00001.pt", {"image_emb": [torch.zeros(1, 8)], "text_emb": [], "texts": [], "words_changed": [],
                            "checker_verdicts": [], "linf": 0.0, "seconds": 0.0}),
])
def test_a_progress_file_with_the_wrong_content_is_one_line(kept_progress, sample_world_dir, capsys, name, content):
    """A progress file torch reads but that holds something else is the damaged file's one line
    naming it (exit 2), not a traceback."""
    from train.cli import main

    out, _ = kept_progress
    progress = out / ".progress"
    (progress / "pgd" / "summary.json").unlink()  # the batches are read back, not the kept entry
    torch.save(content, progress / name)
    assert main(eval_args(sample_world_dir, out)) == 2
    line = one_line_error(capsys)
    assert str(progress / name) in line and "--restart" in line, line
    assert not (out / "eval.json").exists()


def test_a_progress_settings_json_that_is_not_utf8_is_one_line(kept_progress, sample_world_dir, capsys):
    """OUT/.progress/settings.json with a byte that is not UTF-8 (a damaged disk, a hand edit) was a
    UnicodeDecodeError traceback, exit 1 (audit AZ); it is damaged as a truncated one is: the finished
    batches cannot be resumed, the line says --restart, and they are kept until then."""
    from train.cli import main

    out, _ = kept_progress
    marker = out / ".progress" / "settings.json"
    text = marker.read_bytes()
    marker.write_bytes(text[:20] + b"\xff\xfe" + text[20:])
    batches = {p: p.read_bytes() for p in (out / ".progress").rglob("batch-*.pt")}
    assert main(eval_args(sample_world_dir, out)) == 2
    line = one_line_error(capsys)
    assert "settings.json is missing or damaged, so no evaluation can resume them" in line and "--restart" in line, line
    assert {p: p.read_bytes() for p in (out / ".progress").rglob("batch-*.pt")} == batches and batches
    assert not (out / "eval.json").exists()


def test_progress_with_the_right_content_still_resumes_to_the_same_numbers(kept_progress, sample_world_dir):
    from train.cli import main

    out, whole = kept_progress
    (out / ".progress" / "pgd" / "summary.json").unlink()
    assert main(eval_args(sample_world_dir, out)) == 0
    resumed = json.loads((out / "eval.json").read_text())["attacks"]
    drop = ("seconds",)
    assert {n: {k: v for k, v in e.items() if k not in drop} for n, e in resumed.items()} == \
        {n: {k: v for k, v in e.items() if k not in drop} for n, e in whole.items()}


def test_captioning_and_grounding_batches_with_the_wrong_content_are_one_line(tmp_path):
    """Every task's kept batch is checked where it is read back: a KeyError or zip's ValueError, before."""
    from augment.errors import MatPlusError
    from train.eval_store import BatchStore
    from train.evaluate_captioning import _Record
    from train.evaluate_grounding import _BatchResult

    store = BatchStore(tmp_path / ".progress", {"a": 1})
    good = _BatchResult([True, False], [True, False], [0, 1], [None, True], 0.0, 1.0)
    store.save("pgd", 0, good)
    assert store.load_state("pgd", 0, lambda state: _BatchResult.problem(2, state)) == good.state()
    for check in (lambda state: _BatchResult.problem(3, state), _Record.problem):
        with pytest.raises(MatPlusError, match=r"batch-00000\.pt: unreadable \(.*\); run train eval with --restart"):
            store.load_state("pgd", 0, check)
    caption = _Record(None)
    store.save("clean", 0, caption)
    assert store.load_state("clean", 0, _Record.problem) == caption.state()


def test_a_worker_death_raised_inside_an_attack_is_one_line_and_the_rerun_resumes(sample_world_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    """torch's SIGCHLD handler raises a dead DataLoader worker's RuntimeError wherever the main process
    is, here inside PGD: was a traceback and exit 1; now the trainer's one line, exit 2, the finished
    batches kept for the rerun."""
    from train.attacks.pgd import PGD
    from train.cli import main

    original, calls = PGD.__call__, []

    def dies_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PGD, "__call__", dies_on_the_second_batch)
    out = tmp_path / "out"
    assert main(eval_args(sample_world_dir, out)) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: a data-loading worker process died (DataLoader worker (pid 4242) is killed by "
                           "signal: Killed), likely out of memory: use fewer --workers (0 now), then re-run the same "
                           "command: it resumes"), line
    assert len(list((out / ".progress" / "pgd").glob("batch-*.pt"))) == 1  # the first batch is kept
    monkeypatch.setattr(PGD, "__call__", original)
    assert main(eval_args(sample_world_dir, out)) == 0
    captured = capsys.readouterr()
    assert "1 finished batches kept (pgd 1)" in captured.out + captured.err, captured


def test_an_absent_split_of_a_source_without_splits_says_how_to_evaluate_it():
    """An open_clip TSV names no split: every row is read as "train", so `train eval`'s default --split
    test found nothing, and the line did not say what to do."""
    import datasets

    from augment.errors import SourceError
    from train.eval_common import Gallery

    rows = datasets.Dataset.from_dict({"image_id": ["a"], "captions": [["a red ball"]], "split": ["train"]})
    with pytest.raises(SourceError, match=r"^source has no 'test' rows \(splits present: \['train'\]\); a source that "
                                          r"names no splits is read as 'train': --source-split test labels every row "
                                          r"test, or --split all evaluates them all$"):
        Gallery.from_source(rows, "test")
    labelled = datasets.Dataset.from_dict({"image_id": ["a", "b"], "captions": [["x"], ["y"]], "split": ["train", "val"]})
    with pytest.raises(SourceError, match=r"^source has no 'test' rows \(splits present: \['train', 'val'\]\)$"):
        Gallery.from_source(labelled, "test")  # it names its splits: no relabelling offered


def test_images_a_resumed_evaluation_kept_leave_the_bars_rate_and_time_left_alone():
    """A resumed evaluation reads its kept batches back in no time; counting them in the bar's rate made it
    show thousands of images a second and a time left several times too short (audit AC, ViT-B-16)."""
    from train.eval_common import advance_resumed, evaluation_bar

    clock = [0.0]
    bar = evaluation_bar(10, "evaluating", True)
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    bar.mininterval = 0
    advance_resumed(bar, 8)  # two kept batches of four
    clock[0] = 30.0
    bar.update(1)  # the first image attacked in this run took 30 s
    assert bar.n == 9
    assert bar.format_dict["rate"] == pytest.approx(1 / 30)
    shown = str(bar)  # what the user reads: 30 s an image, one image left
    assert "9/10" in shown and "30.00s/img" in shown and "<00:30" in shown, shown
    bar.close()
    quiet = evaluation_bar(10, "evaluating", False)
    advance_resumed(quiet, 8)  # --no-progress: nothing to move
    quiet.close()


def test_each_attack_has_a_bar_of_its_own(sample_world_dir, capsys):
    """was: one bar over images x attacks ("evaluating", the attack as a postfix): its rate averaged clean-fast
    and SGA-slow attacks, so while SGA began its time left was several times too short (audit AB)."""
    import re

    from augment.sources import load_source
    from models import load_model
    from train.evaluate import evaluate

    source, _ = load_source(str(sample_world_dir))
    evaluate(load_model("tiny-clip"), source, split="test", attacks=["pgd", "bert-attack"], batch_size=4,
             captions_per_image=1, limit=4, attack_options={"steps": 1, "candidates": "wordnet"}, seed=0, progress=True)
    shown = capsys.readouterr().err
    for name, number in (("pgd", 1), ("bert-attack", 2)):  # each over the 4 images, not 8 for both
        assert re.search(rf"evaluating {name} \({number}/2\): +100%.* 4/4 ", shown), shown[-800:]


def test_each_batch_of_an_attack_is_seeded_by_its_own_index(sample_world_dir, monkeypatch):
    """Guards a mutation (audit BX): a batch's attack seed without the batch's index passed every evaluation test;
    every batch's PGD then started from the same noise. Pinned as (seed, attack, batch index), what a resumed batch
    draws again."""
    import train.evaluate
    from augment.seeds import derive_seed
    from augment.sources import load_source
    from models import load_model

    seeds = []
    monkeypatch.setattr(train.evaluate, "reseed_attack", lambda attack, seed: seeds.append(seed))
    source, _ = load_source(str(sample_world_dir))
    train.evaluate.evaluate(load_model("tiny-clip"), source, split="test", attacks=["pgd"], batch_size=2,
                            captions_per_image=1, limit=4, attack_options={"steps": 1}, seed=5, progress=False)
    assert seeds == [derive_seed(5, "pgd", 0), derive_seed(5, "pgd", 1)]


def test_word_attack_progress_of_an_earlier_word_search_is_not_resumed_into_a_mix(tmp_path):
    """22f3ee6's `train eval --attacks clean,pgd,bert-attack` killed mid-way (progress format 2) resumed under this
    version with the same settings: batches whose words were split and substitutes accepted before 2026-12-06's
    changes (other scripts, accents, curly apostrophes) beside batches of today's, one eval.json of two attacks,
    exit 0. Format 3's reference reading took BERT's [unused] placeholders until later that day. Attacks that search
    no words (PGD, a text part of budget 0) still resume."""
    from augment.errors import MatPlusError
    from train.eval_store import FORMAT_KEY, SETTINGS_FILE, BatchStore

    mlm = {"source": "mlm", "mlm": "tiny-mlm", "top_k": 10, "budget": 1}
    reference = {**mlm, "source": "mlm-reference", "reading": "reference", "reference_bugs": False}
    pgd = {"eps": 0.01, "steps": 10}
    cases = [  # (format, attacks, resumes)
        (2, {"pgd": pgd, "bert-attack": mlm}, False),
        (2, {"pgd": pgd, "sep": {"image": pgd, "text": {"source": "none", "budget": 0}}}, True),
        (3, {"bert-attack": mlm}, True),
        (3, {"sga": {"image": pgd, "text": reference}}, False),
        (3, {"sga": {"image": pgd, "text": {**reference, "reference_bugs": True}}}, True),
        (0, {"bert-attack": mlm}, False),
    ]
    for index, (earlier, attacks, resumes) in enumerate(cases):
        settings = {"attacks": attacks, "seed": 0}
        folder = tmp_path / f"{index}" / ".progress"
        name = sorted(attacks)[-1]
        BatchStore(folder, settings).save(name, 0, _Record())
        marker = folder / SETTINGS_FILE
        marker.write_text(json.dumps({**settings, **({FORMAT_KEY: earlier} if earlier else {})}))
        if resumes:
            assert BatchStore(folder, settings).finished_batches() == {name: 1}, attacks
        else:
            changed = ", ".join(sorted(a for a in attacks if a not in ("pgd",)))
            with pytest.raises(MatPlusError, match=rf"1 finished batches an earlier mat-plus wrote, whose word attacks "
                                                   rf"\({changed}\) chose words and substitutes as this version no "
                                                   r"longer does .*: finish them with that version, or discard them "
                                                   r"\(train eval --restart\)$"):
                BatchStore(folder, settings)
            assert (folder / name / "batch-00000.pt").is_file()  # nothing lost


def test_weights_retrained_to_the_same_sum_are_other_weights():
    """The resume tag's weight fingerprint: a retrained checkpoint whose tensors happen to sum as before (signs
    moved, values swapped between positive and negative) is other weights, not the finished batches' own."""
    from train.eval_store import weights_fingerprint

    before, after = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        before.weight.copy_(torch.tensor([[0.5, -0.5]]))
        after.weight.copy_(torch.tensor([[0.0, 0.0]]))
    assert weights_fingerprint(before) != weights_fingerprint(after)


def test_a_transfer_attackers_weights_are_fingerprinted_apart_from_the_victims():
    """A transfer evaluation (--attacker another model) resumed with the attacker retrained in place: its own
    fingerprint changes, so the batches its adversarial examples made are not resumed under the new weights."""
    from train.eval_store import weights_fingerprint, weights_identity

    victim, attacker = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        attacker.weight.add_(1.0)
    identity = weights_identity(victim, attacker)
    assert identity == {"weights": weights_fingerprint(victim), "attacker_weights": weights_fingerprint(attacker)}
    assert identity["attacker_weights"] != identity["weights"]
    assert weights_identity(victim, victim)["attacker_weights"] == weights_fingerprint(victim)  # white-box


def test_a_kill_while_a_finished_store_is_removed_keeps_its_settings_while_batches_remain(tmp_path, monkeypatch):
    """settings.json goes last whatever order the folder lists its entries in: a kill after it went and before an
    attack's folder did would leave finished batches no evaluation can resume (refused as settings missing)."""
    import train.eval_store as eval_store
    from train.eval_store import SETTINGS_FILE, BatchStore, remove_finished_store

    folder = tmp_path / ".progress"
    BatchStore(folder, {"a": 1}).save("pgd", 0, _Record())
    listed = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda path: iter(sorted(listed(path), key=lambda p: p.name != SETTINGS_FILE)))

    def killed(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_store, "remove_tree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_finished_store(folder)
    monkeypatch.undo()
    assert BatchStore(folder, {"a": 1}).finished_batches() == {"pgd": 1}


def test_kept_pixels_of_another_batch_size_are_refused():
    """A batch's pixels read back for re-ranking with other rows than its queries (a hand copy, another run's
    file): refused as damaged, not re-ranked against the wrong images."""
    from train.eval_store import tensors_problem

    assert tensors_problem([torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)], rows=3, dims=4) == "2 rows, not 3"
    assert tensors_problem(torch.zeros(3, 4), rows=3, width=4) is None


def test_a_progress_number_that_is_a_bool_is_refused():
    """True is an int to Python: a kept batch whose count or time is `true` (a hand edit, another program's file)
    would be summed as 1, so the content check refuses it by name."""
    from train.eval_store import content_problem

    assert content_problem({"words_changed": True}, {"words_changed": (int, None)}) == "words_changed is a bool"
    assert content_problem({"seconds": False}, {"seconds": ((int, float), None)}) == "seconds is a bool"
    assert content_problem({"seconds": 2}, {"seconds": ((int, float), None)}) is None


def test_a_finished_attacks_pixels_are_deleted_with_its_summary_kept(tmp_path):
    """Disk holds one attack's adversarial pixels at a time: once its report entry is kept, its batches' pixels
    (only re-ranking reads them) go; the batches themselves stay."""
    from train.eval_store import BatchStore

    store = BatchStore(tmp_path / ".progress", {"a": 1})
    for batch in (0, 1):
        store.save("pgd", batch, _Record())
    assert len(list((store.folder / "pgd").glob("pixels-*.pt"))) == 2
    store.save_summary("pgd", {"tr@1": 50.0})
    assert sorted(p.name for p in (store.folder / "pgd").iterdir()) == ["batch-00000.pt", "batch-00001.pt",
                                                                        "summary.json"]
