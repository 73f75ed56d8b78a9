"""Retrieval metrics on hand-made matrices; `evaluate` and `train eval` on the trained tiny CLIP."""
from __future__ import annotations

import argparse
import json
import re

from pathlib import Path

import pytest
import torch

from tests.conftest import evaluation_killed_at_batch
from train.metrics import (
    attack_success_rates,
    image_retrieval_ranks,
    retrieval_hits,
    retrieval_metrics,
    text_retrieval_ranks,
)

# 3 images x 5 captions; captions 0,1 belong to image 0, captions 2,3 to image 1, caption 4 to image 2
IMAGE_OF_TEXT = torch.tensor([0, 0, 1, 1, 2])
SIMS = torch.tensor([
    [0.9, 0.1, 0.8, 0.2, 0.3],  # image 0: own best 0.9, nothing above -> rank 0
    [0.7, 0.6, 0.5, 0.1, 0.4],  # image 1: own best 0.5, 0.7 and 0.6 above -> rank 2
    [0.2, 0.3, 0.6, 0.5, 0.4],  # image 2: own 0.4, 0.6 and 0.5 above -> rank 2
])
# caption columns: c0 [.9 .7 .2] rank 0; c1 [.1 .6 .3] rank 2; c2 [.8 .5 .6] rank 2;
# c3 [.2 .1 .5] rank 2; c4 [.3 .4 .4] ties image 1 -> rank 1 (ties count against the query)


def test_ranks_on_hand_made_matrix():
    assert text_retrieval_ranks(SIMS, IMAGE_OF_TEXT).tolist() == [0, 2, 2]
    assert image_retrieval_ranks(SIMS, IMAGE_OF_TEXT).tolist() == [0, 2, 2, 2, 1]


def test_recalls_on_hand_made_matrix():
    metrics = retrieval_metrics(SIMS, IMAGE_OF_TEXT)
    assert metrics["tr@1"] == pytest.approx(100 / 3)
    assert metrics["tr@5"] == metrics["tr@10"] == 100.0
    assert metrics["ir@1"] == pytest.approx(20.0)
    assert metrics["ir@5"] == metrics["ir@10"] == 100.0
    assert metrics["rsum"] == pytest.approx(100 / 3 + 200 + 20 + 200)
    # a larger gallery separates K: 12 captions of 12 images, caption t ranked t-th for image 0
    sims = torch.eye(12)
    sims[0] = torch.linspace(1.0, 0.0, 12).roll(5)  # image 0's own caption (index 0) sits at rank 7
    metrics = retrieval_metrics(sims, torch.arange(12))
    assert metrics["tr@1"] == pytest.approx(1100 / 12)  # image 0 misses at 1 and 5, hits at 10
    assert metrics["tr@5"] == pytest.approx(1100 / 12) and metrics["tr@10"] == 100.0


def test_collapsed_model_scores_zero():
    metrics = retrieval_metrics(torch.zeros(3, 5), IMAGE_OF_TEXT)
    assert metrics["tr@1"] == metrics["ir@1"] == 0.0


def test_recalls_are_exact_fractions_not_float32_means():
    # 1 of 5 captions: 20.0 exactly (a float32 mean wrote 20.000000298023224 into eval.json)
    metrics = retrieval_metrics(torch.eye(5)[[0, 1, 2, 3, 4]].roll(1, dims=1) + torch.eye(5) * torch.tensor([1.5, 0, 0, 0, 0]),
                                torch.arange(5))
    assert metrics["ir@1"] == 20.0 and repr(metrics["ir@1"]) == "20.0"


def test_nan_scores_count_as_misses_not_hits():
    """An overflowed model's NaN similarities score 0, not 100 (NaN >= x is False); a NaN image
    column never lifts a caption query either."""
    sims = torch.full((3, 5), float("nan"))
    recalls = retrieval_metrics(sims, IMAGE_OF_TEXT)
    assert recalls["tr@1"] == recalls["ir@1"] == 0.0  # R@5 / R@10 of a 3-image gallery hold everything
    assert recalls == retrieval_metrics(torch.zeros(3, 5), IMAGE_OF_TEXT)  # as a collapsed model
    partly = SIMS.clone().float()
    partly[1] = float("nan")  # image 1's scores: its queries miss, and it outranks every caption query's own image
    ranks_tr = text_retrieval_ranks(partly, IMAGE_OF_TEXT)
    ranks_ir = image_retrieval_ranks(partly, IMAGE_OF_TEXT)
    assert int(ranks_tr[1]) > 0
    assert all(int(rank) > 0 for text, rank in enumerate(ranks_ir) if IMAGE_OF_TEXT[text] != 1)


def test_attack_success_rate_on_hand_made_matrix():
    attacked = SIMS.clone()
    attacked[0, 0] = 0.0  # image 0 / caption 0, the only clean R@1 hits, now fail
    rates = attack_success_rates(retrieval_hits(SIMS, IMAGE_OF_TEXT), retrieval_hits(attacked, IMAGE_OF_TEXT))
    assert rates["asr_tr@1"] == 100.0 and rates["asr_ir@1"] == 100.0
    assert rates["asr_tr@5"] == 0.0  # image 0's caption 1 still in its top 5
    clean = {"tr@1": torch.tensor([True, True, False, True]), "ir@1": torch.tensor([False, False])}
    under_attack = {"tr@1": torch.tensor([False, True, True, True]), "ir@1": torch.tensor([True, False])}
    rates = attack_success_rates(clean, under_attack)
    assert rates["asr_tr@1"] == pytest.approx(100 / 3)  # 1 of the 3 clean hits broken; new hits do not count
    assert rates["asr_ir@1"] is None  # no clean hit: undefined


# ----------------------------------------------------------------------------- evaluate


FAST = dict(mlm="tiny-mlm", steps=5, step_size=0.5 / 255, top_k=5)


@pytest.fixture(scope="module")
def world(sample_world_dir):
    from augment.sources import load_source

    return load_source(str(sample_world_dir))[0]


def scene_checker(caption: str, row: dict):
    from augment.world.scene import Scene
    from augment.world.truth import check_caption
    from augment.sources import scene_of

    return check_caption(caption, Scene.from_dict(scene_of(row)))


@pytest.fixture(scope="module")
def report(trained_bundle, world, sample_world_dir, tmp_path_factory):
    """Every attack, white-box, 16 test images x 2 captions, adversarial pools and the truth checker."""
    from train.evaluate import evaluate

    save_adv = tmp_path_factory.mktemp("adversarial")
    result = evaluate(trained_bundle, world, split="test", attacks=["clean", "pgd", "bert-attack", "sep", "co-attack", "sga"],
                      batch_size=8, captions_per_image=2, limit=16, save_adv=save_adv, attack_options=FAST,
                      caption_checker=scene_checker, progress=False,
                      source_meta={"source": str(sample_world_dir), "source_format": "karpathy"})
    return result, save_adv


def test_every_attack_lowers_recall(report):
    attacks = report[0]["attacks"]
    clean = attacks["clean"]
    assert clean["tr@1"] > 20 and clean["ir@1"] > 20  # the fixture model has something to break
    for name, entry in attacks.items():
        if name == "clean":
            continue
        assert entry["tr@1"] + entry["ir@1"] < clean["tr@1"] + clean["ir@1"], name
        assert entry["rsum"] < clean["rsum"], name
        assert entry["asr_tr@1"] > 0 or entry["asr_ir@1"] > 0, name


def test_sga_at_least_as_strong_as_sep_attack(report):
    # Compared by RSUM (six recalls over the whole gallery), stable where R@1 alone sits near 0.
    # Measured with these settings (white-box, 16 test scenes x 2 captions, PGD 5 x 0.5/255,
    # top-k 5), seeds 0, 1, 2: RSUM sep 303.1 / 303.1 / 300.0 vs sga 193.8 each (clean 490.6).
    attacks = report[0]["attacks"]
    assert attacks["sga"]["rsum"] <= attacks["sep"]["rsum"]
    assert attacks["sga"]["tr@1"] + attacks["sga"]["ir@1"] <= attacks["sep"]["tr@1"] + attacks["sep"]["ir@1"]


def test_report_budgets_and_settings(report):
    result = report[0]
    assert result["settings"]["mode"] == "white-box"
    assert result["settings"]["num_images"] == 16 and result["settings"]["num_captions"] == 32
    for name in ("pgd", "sep", "co-attack", "sga"):
        assert result["attacks"][name]["linf_max"] <= 2 / 255 + 1e-6
    for name in ("bert-attack", "sep", "co-attack", "sga"):
        entry = result["attacks"][name]
        assert entry["words_changed_max"] <= 1
        checked = entry["meaning_preserved"]
        assert checked["changed_captions"] > 0 and 0 <= checked["judged"] <= checked["changed_captions"]
        # reverting false captions can only help retrieval
        assert entry["rsum_meaning_preserved"] >= entry["rsum"] - 1e-9
    assert result["attacks"]["pgd"]["params"]["steps"] == 5
    assert result["attacks"]["sga"]["params"]["scales"] == [0.5, 0.75, 1.25, 1.5]
    json.dumps(result)  # everything is JSON


def test_save_adv_writes_loadable_pools(report):
    from augment.pool import load_pool

    _, save_adv = report
    image_pool = load_pool(save_adv / "pgd")
    assert image_pool.method == "adversarial" and len(image_pool) == 16
    assert set(image_pool.dataset["modality"]) == {"image"}
    text_pool = load_pool(save_adv / "bert-attack")
    assert len(text_pool) == 32 and set(text_pool.dataset["modality"]) == {"text"}
    pair_pool = load_pool(save_adv / "sga")
    assert len(pair_pool) == 32 and set(pair_pool.dataset["modality"]) == {"pair"}
    # pool.json says what its rows are and how many images they come from, as a generated pool's does
    assert [p.meta["modality"] for p in (image_pool, text_pool, pair_pool)] == ["image", "text", "pair"]
    assert {p.meta["source_items"] for p in (image_pool, text_pool, pair_pool)} == {16}
    row = pair_pool.dataset[0]
    assert row["image"].size == (64, 64) and row["caption"]
    provenance = json.loads(row["provenance"])
    assert provenance["attack"] == "sga" and "words_changed" in provenance


def test_save_adv_pools_match_their_source_and_can_be_shared(report, world, sample_world_dir, tmp_path):
    """Like `augment generate`'s pools: the whole source's fingerprint (score and mat+ take them with it),
    the model by name (a card renders it)."""
    from augment.cli import main as augment_main
    from augment.commands.score import source_of
    from augment.pool import load_pool
    from augment.sources import source_fingerprint

    _, save_adv = report
    pool = load_pool(save_adv / "pgd")
    assert pool.meta["source_fingerprint"] == source_fingerprint(world)
    assert isinstance(pool.meta["model"], str) and pool.meta["attacker"]["family"] == "open_clip"
    # the source as it was read: `augment score POOL` finds it without --source, the card names it
    assert pool.meta["source"] == str(sample_world_dir) and pool.meta["source_format"] == "karpathy"
    assert source_of(pool, None) == str(sample_world_dir)
    assert augment_main(["push", str(save_adv / "pgd"), "--to-dir", str(tmp_path / "repo")]) == 0
    card = (tmp_path / "repo" / "README.md").read_text()
    assert "adversarial" in card and "this pool: `image`" in card
    assert f"source dataset `{sample_world_dir.name}`" in card and "| source items used | 16 |" in card


def test_transfer_mode_runs(trained_bundle, world):
    from models import load_model
    from train.evaluate import evaluate

    attacker = load_model("tiny-clip")  # untrained: a different model of the same architecture
    result = evaluate(trained_bundle, world, split="test", attacks=["clean", "pgd", "bert-attack"], attacker=attacker,
                      limit=8, captions_per_image=1, attack_options=dict(FAST, steps=2), progress=False)
    assert result["settings"]["mode"] == "transfer"
    assert result["attacker"]["name"] == "tiny-clip" and result["victim"]["name"] == str(trained_bundle.name)
    assert set(result["attacks"]) == {"clean", "pgd", "bert-attack"}
    assert result["attacks"]["pgd"]["linf_max"] <= 2 / 255 + 1e-6


@pytest.mark.parametrize("protocol, transfer, expected", [
    ("sga", True, "sga-scripts"), ("project", True, "project"), ("co-attack", True, "project"), ("sga", False, None)])
def test_transfer_hands_images_over_as_the_protocol_says(trained_bundle, world, monkeypatch, protocol, transfer, expected):
    """Under `--protocol sga` a transfer attack's images reach the victim as the SGA transfer scripts
    hand them over (`sga_scripts_hand_over`); white-box, the attacker's pixels are the victim's."""
    from models import load_model
    from train.eval_common import HAND_OVERS
    from train.eval_report import settings_markdown
    from train.evaluate import evaluate

    calls = []
    for name, hand_over in list(HAND_OVERS.items()):
        monkeypatch.setitem(HAND_OVERS, name, lambda images, victim, name=name, hand_over=hand_over:
                            calls.append((name, victim)) or hand_over(images, victim))
    attacker = load_model("tiny-clip") if transfer else None
    result = evaluate(trained_bundle, world, split="test", attacks=["clean", "pgd"], attacker=attacker, limit=2,
                      captions_per_image=1, attack_options=dict(FAST, steps=1, protocol=protocol), progress=False)
    assert result["settings"].get("transfer_hand_over") == expected
    assert ("as the SGA transfer scripts do" in " ".join(settings_markdown(result))) == (expected == "sga-scripts")
    assert {name for name, _ in calls} == {expected or "project"}
    assert all(victim is trained_bundle for _, victim in calls) and calls


def test_older_spelling_attack_protocol_reaches_every_reader(trained_bundle, world):
    """The study's `eval: {attack_protocol: sga}` (an older spelling): the attacks, the caption
    preprocessing and eval.md all see protocol sga (it used to fail at the first attack)."""
    from train.eval_report import settings_markdown
    from train.evaluate import evaluate

    result = evaluate(trained_bundle, world, split="test", attacks=["clean", "pgd"], limit=2, captions_per_image=1,
                      attack_options=dict(FAST, steps=1, attack_protocol="sga"), progress=False)
    assert result["settings"]["caption_preprocess"] == "pre_caption"
    assert result["settings"]["attack_options"]["protocol"] == "sga" and "attack_protocol" not in result["settings"]["attack_options"]
    assert any("attack protocol `sga`" in line for line in settings_markdown(result))
    with pytest.raises(ValueError, match=r"protocol and attack_protocol disagree \('co-attack' vs 'sga'\)"):
        evaluate(trained_bundle, world, split="test", attacks=["clean"], limit=1, progress=False,
                 attack_options={"attack_protocol": "sga", "protocol": "co-attack"})


def test_cli_writes_eval_json_and_markdown(trained_clip, sample_world_dir, tmp_path):
    from train import commands_eval

    parser = argparse.ArgumentParser(prog="train")
    commands_eval.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "eval"
    args = parser.parse_args([
        "eval", str(trained_clip), "--source", str(sample_world_dir), "--split", "test", "--attacks", "clean,pgd,bert-attack",
        "--attack-eps", "2/255", "--pgd-steps", "2", "--top-k", "3", "--limit", "8", "--captions-per-image", "1",
        "--out", str(out), "--no-progress",
    ])
    assert args.func(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert list(report["attacks"]) == ["clean", "pgd", "bert-attack"]
    assert report["settings"]["attack_options"]["mlm"] == "tiny-mlm"  # a tiny-clip checkpoint gets the tiny MLM
    assert report["settings"]["attack_options"]["eps"] == pytest.approx(2 / 255)
    assert report["settings"]["precision"] == "fp32" and report["settings"]["device"] == "cpu"
    # the sample world's truth checker is picked up automatically
    assert report["settings"]["caption_checker"] == "check_caption_of_row"
    assert "meaning_preserved" in report["attacks"]["bert-attack"]
    table = (out / "eval.md").read_text()
    assert "| pgd |" in table and "ASR TR@1" in table and "R@1 under attack" in table
    from augment.errors import MatPlusError

    # an unknown attack: one line before any model or source is read (tests/test_protocol_review_fixes.py)
    unknown = parser.parse_args(["eval", "tiny-clip", "--source", "x", "--out", "y", "--attacks", "pgd,fgsm"])
    with pytest.raises(MatPlusError, match=r"^--attacks: unknown attack 'fgsm' \(choose from "):
        unknown.func(unknown)


def test_killed_evaluation_resumes_to_the_same_report(trained_bundle, world, tmp_path, monkeypatch, capsys):
    """Finished batches are kept in progress_dir; a run killed mid-attack resumes to the uninterrupted report
    (also when DataLoader workers decode the images)."""
    from train import evaluate as evaluation

    kwargs = dict(split="test", attacks=["clean", "pgd", "bert-attack"], limit=8, batch_size=4, captions_per_image=1,
                  attack_options=dict(FAST, steps=2), progress=False)
    whole = evaluation.evaluate(trained_bundle, world, save_adv=tmp_path / "adv-whole", **kwargs)

    # the third attacked batch never finishes: pgd's two are done, bert-attack's first dies
    evaluation_killed_at_batch(monkeypatch, 3, lambda: evaluation.evaluate(
        trained_bundle, world, progress_dir=tmp_path / "progress", save_adv=tmp_path / "adv", **kwargs))
    assert (tmp_path / "progress" / "pgd" / "summary.json").is_file()
    assert len(list((tmp_path / "progress").rglob("batch-*.pt"))) == 2
    tag = json.loads((tmp_path / "progress" / "settings.json").read_text())
    assert tag["device"] == "cpu" and len(tag["mlm_weights"]) == 1  # bert-attack's masked LM, fingerprinted
    # the same folder with other settings is refused, naming them, and loses nothing
    from augment.errors import MatPlusError
    from models.half_precision import autocast

    with pytest.raises(MatPlusError, match=r"holds 2 finished batches of an evaluation with other settings "
                                           r"\(differ: .*precision \(--precision\), seed \(--seed\)\): run that evaluation's "
                                           r"command again"):
        with autocast("cpu", "amp_bf16"):
            evaluation.evaluate(trained_bundle, world, progress_dir=tmp_path / "progress", seed=1, **kwargs)
    assert len(list((tmp_path / "progress").rglob("batch-*.pt"))) == 2
    # what the names do not say: other weights under the same model name, another source's rows
    import copy

    retrained = copy.deepcopy(trained_bundle)
    with torch.no_grad():
        next(retrained.parameters()).add_(1e-3)
    with pytest.raises(MatPlusError, match=r"other settings \(differ: attacker_weights, weights\)"):
        evaluation.evaluate(retrained, world, progress_dir=tmp_path / "progress", **kwargs)
    other_source = world.map(lambda row: {"captions": [caption + " again" for caption in row["captions"]]})
    with pytest.raises(MatPlusError, match=r"other settings \(differ: source\)"):
        evaluation.evaluate(trained_bundle, other_source, progress_dir=tmp_path / "progress", **kwargs)
    import augment.registry

    loaded_mlm = augment.registry.load_mlm

    def retrained_mlm(*args, **load_kwargs):  # the masked LM's folder retrained in place: the same name
        model, tokenizer = loaded_mlm(*args, **load_kwargs)
        model = copy.deepcopy(model)
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
        return model, tokenizer

    with monkeypatch.context() as patched:
        patched.setattr(augment.registry, "load_mlm", retrained_mlm)
        with pytest.raises(MatPlusError, match=r"other settings \(differ: mlm_weights\)"):
            evaluation.evaluate(trained_bundle, world, progress_dir=tmp_path / "progress", **kwargs)
    assert len(list((tmp_path / "progress").rglob("batch-*.pt"))) == 2
    # resumed with images decoded by 2 DataLoader workers: the report does not depend on them
    capsys.readouterr()
    resumed = evaluation.evaluate(trained_bundle, world, progress_dir=tmp_path / "progress", workers=2,
                                  save_adv=tmp_path / "adv", **kwargs)
    # and it says what it kept, in one line
    assert (f"resuming from {tmp_path / 'progress'}: 2 finished batches kept (pgd 2); train eval --restart discards them"
            in capsys.readouterr().err)
    for name in whole["attacks"]:
        a, b = dict(whole["attacks"][name]), dict(resumed["attacks"][name])
        a.pop("seconds", None), b.pop("seconds", None)
        a.pop("adversarial_pool", None), b.pop("adversarial_pool", None)
        assert a == b, name
    # pgd's pool, finished before the kill and reopened by the resumed run, is complete again, the same rows
    from augment.pool import load_pool

    for name in ("pgd", "bert-attack"):
        kept, again = load_pool(tmp_path / "adv-whole" / name).dataset, load_pool(tmp_path / "adv" / name).dataset
        assert kept["row_id"] == again["row_id"] and kept["caption"] == again["caption"], name
    # every attack finished, then --save-adv to a new folder: the attacks run again to write it (it used
    # to stop with "0 of 2 shards written; re-run to finish", on every re-run)
    late = evaluation.evaluate(trained_bundle, world, progress_dir=tmp_path / "progress", save_adv=tmp_path / "adv-late",
                               **kwargs)
    for name in ("pgd", "bert-attack"):
        assert {k: v for k, v in late["attacks"][name].items() if k not in ("seconds", "adversarial_pool")} == {
            k: v for k, v in whole["attacks"][name].items() if k not in ("seconds", "adversarial_pool")}, name
        kept, again = load_pool(tmp_path / "adv-whole" / name).dataset, load_pool(tmp_path / "adv-late" / name).dataset
        assert kept["row_id"] == again["row_id"] and kept["caption"] == again["caption"], name
    # another evaluation (another OUT) with other settings into the same --save-adv: refused, the pools kept
    # (their own report points at them; they used to be silently replaced)
    pool_json = (tmp_path / "adv" / "pgd" / "pool.json").read_text()
    with pytest.raises(MatPlusError, match=r"--save-adv: .*adv/pgd holds the evaluation in .*'s pgd pool, made with "
                                           r"other settings \(.*seed.*\): choose another --save-adv"):
        evaluation.evaluate(trained_bundle, world, progress_dir=tmp_path / "other" / "progress", seed=5,
                            save_adv=tmp_path / "adv", **kwargs)
    assert (tmp_path / "adv" / "pgd" / "pool.json").read_text() == pool_json
    # this evaluation started again with other settings (train eval --restart empties its progress): replaced
    import shutil

    shutil.rmtree(tmp_path / "progress")
    evaluation.evaluate(trained_bundle, world, progress_dir=tmp_path / "progress", seed=5,
                        save_adv=tmp_path / "adv", **{**kwargs, "attacks": ["clean", "pgd"]})
    assert load_pool(tmp_path / "adv" / "pgd").meta["seed"] == 5


def test_a_finished_store_is_deleted_settings_last(tmp_path, monkeypatch):
    """A kill while the finished evaluation's store is deleted leaves one the same command resumes
    (settings.json and some batches), never batches without their settings (refused as another's)."""
    import shutil

    from train.eval_store import remove_finished_store

    store = tmp_path / ".progress"
    (store / "pgd").mkdir(parents=True)
    for name in ("settings.json", "clean.pt", "pgd/batch-00000.pt"):
        (store / name).write_text("x")
    removed = []
    real_rmtree, real_unlink = shutil.rmtree, Path.unlink
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: removed.append(Path(path).name) or real_rmtree(path, **kw))
    monkeypatch.setattr(Path, "unlink", lambda path, **kw: removed.append(path.name) or real_unlink(path, **kw))
    remove_finished_store(store)
    assert not store.exists() and removed[-1] == ".progress" and "settings.json" not in removed[:-1]
    assert set(removed[:-1]) == {"clean.pt", ".trash-pgd"}  # an attack's folder renamed first: gone at once


def test_truth_checker_choice_is_one_rule_for_every_task():
    """--truth-checker: 'auto' uses the checker only where every image has a scene, 'world' insists, 'none' never."""
    from augment.errors import MatPlusError
    from train.commands_eval import truth_checker_for

    def checker(*_):
        return True

    assert truth_checker_for("auto", True, checker) is checker
    assert truth_checker_for("auto", False, checker) is None
    assert truth_checker_for("world", True, checker) is checker
    assert truth_checker_for("none", True, checker) is None
    with pytest.raises(MatPlusError, match="--truth-checker world needs a sample-world source"):
        truth_checker_for("world", False, checker)


def test_train_eval_takes_the_trainers_pgd_budget_name(tmp_path, capsys):
    """The PGD budget is --attack-eps in `train eval` as in training, where --eps is AdamW's epsilon."""
    from train.cli import main as train_main

    with pytest.raises(SystemExit) as stopped:
        train_main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--eps", "2/255", "--out", str(tmp_path / "e")])
    assert stopped.value.code == 2
    assert "the PGD budget is --attack-eps 2/255, as in training (where --eps is AdamW's epsilon" in capsys.readouterr().err


def test_train_eval_says_where_the_model_goes(tmp_path, capsys):
    """`--model` (the trainer's spelling) is answered with where train eval takes the model, not argparse's
    'unrecognized arguments'."""
    from train.cli import main as train_main

    with pytest.raises(SystemExit) as stopped:
        train_main(["eval", "--model", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "e")])
    assert stopped.value.code == 2
    assert "train eval takes the model as its first argument: train eval tiny-clip --source" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["retrieval", "captioning", "grounding"])
def test_train_eval_reads_the_data_before_loading_any_model(tmp_path, capsys, monkeypatch, task):
    """A wrong --source stops in one line before a model loads (a real one takes minutes)."""
    import models
    from train.cli import main as train_main

    def loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was read")

    monkeypatch.setattr(models, "load_model", loading)
    missing = tmp_path / "missing"
    assert train_main(["eval", "tiny-clip", "--task", task, "--source", str(missing), "--attacks", "clean",
                       "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "AssertionError" not in err and not (tmp_path / "e").exists()


def test_settings_lines_of_a_report():
    """eval.md's settings: the protocol where there is one, then one line per attack that has parameters
    (a clean-only report ends after the settings sentence, with no empty list)."""
    from train.eval_report import settings_markdown

    report = {"settings": {"precision": "amp_bf16", "seed": 3, "caption_preprocess": "none",
                           "attack_options": {"protocol": "sga", "reference_bugs": True}},
              "attacks": {"clean": {"params": {}}}}
    assert settings_markdown(report) == [
        "", "Settings: attack protocol `sga` with the reference code's bugs (`--reference-bugs`); captions preprocessed: "
            "none; precision amp_bf16; seed 3."]
    report["attacks"]["pgd"] = {"params": {"eps": 4 / 255, "steps": 5}}
    assert settings_markdown(report)[-2:] == ["", "- `pgd`: eps 4/255, steps 5"]
    assert settings_markdown(report)[1].endswith("seed 3. Each attack ran with:")
    report["settings"]["device"] = "cuda"  # recorded since 2026-12-06 (older reports: none, nothing said)
    assert "; precision amp_bf16 on cuda; seed 3." in settings_markdown(report)[1]


def test_report_cells_parts_off_hand_over_and_skipped_records_in_eval_md():
    """Guards mutations (audit CH) of eval.md's words that passed every test: an undefined percentage shown as 0.0
    (not "-"), an image part of eps 0 not said to be off, the SGA scripts' CLIP hand-over said of ALBEF and the
    other way round, and the skipped records' count left out."""
    from train.eval_report import percent_cell, settings_markdown

    assert (percent_cell(None), percent_cell(12.345)) == ("-", "12.3")
    report = {"settings": {"seed": 0, "skipped_records": 2, "transfer_hand_over": "sga-scripts"},
              "victim": {"family": "albef"},
              "attacks": {"sep": {"params": {"image": {"eps": 0, "steps": 3}, "text": {"budget": 1}}}}}
    said = settings_markdown(report)
    assert "to albef: through an 8-bit image, then bicubic Resize" in said[1]
    assert "2 bad source records skipped (`--skip-bad`)" in said[1]
    assert said[-1].startswith("- `sep` (its image part off: eps 0): ")
    report["victim"]["family"] = "open_clip"
    assert "to a CLIP (open_clip): float pixels" in settings_markdown(report)[1]


def test_a_damaged_progress_file_is_one_line_naming_it(tmp_path):
    """Batches are written atomically; a damaged disk or a hand edit still gets one line, not a traceback."""
    from augment.errors import MatPlusError
    from train.eval_store import BatchStore

    store = BatchStore(tmp_path / "progress", {"seed": 0})
    batch = store._path("pgd", 0)
    batch.parent.mkdir(parents=True, exist_ok=True)
    batch.write_bytes(b"not a torch file")
    with pytest.raises(MatPlusError, match=rf"^{re.escape(str(batch))}: unreadable \(.*\); run train eval with --restart"):
        store.load_state("pgd", 0)
    (tmp_path / "progress" / "clean.pt").write_bytes(b"a damaged clean pass")
    with pytest.raises(MatPlusError, match=r"clean.pt: unreadable"):
        store.load_clean()


def test_skip_bad_evaluation_says_how_many_records_it_left_out(sample_world_dir, tmp_path):
    """--skip-bad changes the gallery (the next image moves into --limit): eval.json and eval.md say so."""
    import shutil

    from train.cli import main as train_main

    world = tmp_path / "world"
    shutil.copytree(sample_world_dir, world)  # real files: one is damaged below
    document = json.loads(next(world.glob("dataset_*.json")).read_text())
    test_image = next(image for image in document["images"] if image["split"] == "test")
    damaged = next(world.rglob(test_image["filename"]))
    damaged.write_bytes(damaged.read_bytes()[:100])
    out = tmp_path / "eval"
    assert train_main(["eval", "tiny-clip", "--source", str(world), "--split", "test", "--limit", "2", "--attacks", "clean",
                       "--skip-bad", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "eval.json").read_text())["settings"]["skipped_records"] == 1
    assert "1 bad source records skipped (`--skip-bad`)" in (out / "eval.md").read_text()


def test_train_eval_no_progress_silences_reading_the_source(tmp_path, capsys):
    """`train eval --no-progress` draws no bar, the source's first read included (its flag is `--progress`'s
    negation, not augment's `no_progress`); without it the read shows one."""
    from augment.world.writer import write_sample
    from train.cli import main as train_main

    for progress in ("--no-progress", "--progress"):
        world = tmp_path / f"world{progress}"
        write_sample(world, n=8, seed=0)  # a source read for the first time: not from the source cache
        capsys.readouterr()
        assert train_main(["eval", "tiny-clip", "--source", str(world), "--split", "test", "--attacks", "clean",
                           "--limit", "2", progress, "--out", str(tmp_path / f"eval{progress}")]) == 0
        assert ("reading " in capsys.readouterr().err) == (progress == "--progress")


class _SwapFirstTwoWords:
    """A user's text attack as the Python API takes it: no info["words_changed"] recorded."""
    modality, name = "text", "word-swap"

    def __init__(self, victim):
        self.victim = victim

    def params(self):
        return {}

    def __call__(self, images, texts, image_of_text=None):
        from train.attacks.base import AttackResult

        swapped = [" ".join([w[1], w[0], *w[2:]]) if len(w) > 1 else t for t, w in ((t, t.split()) for t in texts)]
        return AttackResult(images=images, texts=swapped)


def test_a_ready_made_text_attack_without_its_word_changes_is_counted_and_resumes(trained_bundle, world, tmp_path):
    """Without info["words_changed"] the report said no caption changed, the truth checker's verdicts
    were a tensor-size error, and a resume refused the batch files the evaluation itself wrote."""
    from train.attacks.base import word_changes
    from train.evaluate import evaluate

    assert word_changes("a red circle", "red a circle") == [{"position": 0, "from": "", "to": "red"},
                                                            {"position": 1, "from": "red", "to": ""}]
    assert word_changes("a red circle", "a blue circle") == [{"position": 1, "from": "red", "to": "blue"}]
    kwargs = dict(split="test", limit=4, captions_per_image=2, batch_size=2, progress=False,
                  caption_checker=scene_checker, progress_dir=tmp_path / "progress")
    first = evaluate(trained_bundle, world, attacks=[_SwapFirstTwoWords(trained_bundle)], **kwargs)
    entry = first["attacks"]["word-swap"]
    assert entry["captions_changed_pct"] == 100.0 and entry["words_changed_mean"] == 2.0
    assert entry["meaning_preserved"]["changed_captions"] == 8
    again = evaluate(trained_bundle, world, attacks=[_SwapFirstTwoWords(trained_bundle)], **kwargs)  # every batch kept
    assert again["attacks"]["word-swap"]["rsum"] == entry["rsum"]


@pytest.mark.parametrize("name, message", [("", "has no name"), ("clean", "is named 'clean'"),
                                           ("../escape", "is no plain file name")])
def test_a_ready_made_attack_name_that_cannot_key_its_row_is_refused(trained_bundle, world, name, message):
    """An empty name gave a nameless row (and batches over the clean ones'), `clean` was dropped
    unrun, and `/` or `..` wrote its batches outside the progress folder."""
    from train.evaluate import evaluate

    attack = _SwapFirstTwoWords(trained_bundle)
    attack.name = name
    with pytest.raises(ValueError, match=message):
        evaluate(trained_bundle, world, split="test", attacks=[attack], limit=1, progress=False)


def test_the_gallery_is_ranked_in_fp32_under_a_cpus_half_precision_autocast():
    """`--precision amp_bf16` (or amp) on a CPU: the similarity matrix was computed under the run's autocast, in bf16,
    whose spacing near 0.3 is 2^-9; two captions 5e-4 apart tied, and ties count as misses (audit AD)."""
    from models.half_precision import autocast
    from train.evaluate import Ranker

    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.3010, 0.1], [0.3005, 0.9]])  # image 0's own caption leads image 1's by 5e-4
    ranker = Ranker(object(), rerank_k=0, image_of_text=torch.tensor([0, 1]), batch_size=2)
    fp32 = ranker.hits(images, texts, None, None)
    assert fp32["tr@1"].tolist() == [True, True]
    for precision in ("amp_bf16", "amp_fp16"):
        with autocast("cpu", precision):
            hits = ranker.hits(images, texts, None, None)
        assert {name: hit.tolist() for name, hit in hits.items()} == {name: hit.tolist() for name, hit in fp32.items()}


@pytest.mark.parametrize("embedding, reading", [("multimodal", "every state, the caption padded to 30 tokens"),
                                                ("multimodal-cls", "its [CLS] state")])
def test_settings_line_says_which_fused_reading_was_attacked(embedding, reading):
    """eval.md said `multimodal-cls` attacked "the fusion encoder's output of each pair", as for `multimodal`, where
    that reading attacks only its [CLS] state (audit AD)."""
    from train.eval_report import settings_markdown

    report = {"settings": {"precision": "fp32", "seed": 0, "attack_options": {"protocol": "co-attack",
                                                                             "attacked_embedding": embedding}},
              "attacks": {"clean": {"params": {}}}}
    assert (f"attacked embedding `{embedding}` (the fusion encoder's output of each pair: {reading})"
            in settings_markdown(report)[1])


def test_an_evaluated_checkpoint_a_running_trainer_replaces_records_the_step_of_the_weights_it_read(tmp_path, monkeypatch):
    """`train eval RUN/ckpt` while `train ... --resume` of RUN goes on and saves (`swap_folder_into_place`): the
    report named the folder alone, whose weights the next save replaced, so which step was evaluated could not be
    told. A save during the load (here: right after it) loads again, and eval.json records the step read."""
    import models
    import torch

    from augment.atomic import swap_folder_into_place
    from augment.world.writer import write_sample
    from models import load_model, save_model
    from train.cli import main as train_main

    write_sample(tmp_path / "world", n=8, seed=0)
    run = tmp_path / "run"

    def checkpoint(folder, step, shift):
        model = load_model("tiny-clip")
        with torch.no_grad():
            next(model.parameters()).add_(shift)
        save_model(model, folder)
        (folder / "train_state").mkdir()
        (folder / "train_state" / "state.json").write_text(json.dumps({"step": step}))

    checkpoint(run / "ckpt", 10, 0.0)
    checkpoint(run / ".ckpt-partial", 20, 1.0)
    real, loads = models.load_model, []

    def saved_meanwhile(name, *args, **kwargs):  # the trainer's next save, once this load has read the folder
        loads.append(name)
        model = real(name, *args, **kwargs)
        if len(loads) == 1:
            swap_folder_into_place(run / ".ckpt-partial", run / "ckpt", aside=run / ".ckpt-old")
        return model

    monkeypatch.setattr(models, "load_model", saved_meanwhile)
    out = tmp_path / "eval"
    assert train_main(["eval", str(run / "ckpt"), "--source", str(tmp_path / "world"), "--split", "test", "--limit", "2",
                       "--attacks", "clean", "--out", str(out), "--no-progress"]) == 0
    assert loads == [str(run / "ckpt")] * 2
    assert json.loads((out / "eval.json").read_text())["settings"]["checkpoint_step"] == 20


def test_a_checkpoint_evaluated_between_the_two_renames_of_a_save_waits_for_the_second(tmp_path, monkeypatch):
    """The trainer's save renames RUN/ckpt to RUN/.ckpt-old, then the new folder in: `train eval RUN/ckpt` at that
    instant said the folder does not exist."""
    import os
    import time

    from train.eval_common import load_evaluated

    run = tmp_path / "run"
    (run / ".ckpt-old").mkdir(parents=True)
    (run / ".ckpt-partial" / "train_state").mkdir(parents=True)
    (run / ".ckpt-partial" / "train_state" / "state.json").write_text('{"step": 7}')
    monkeypatch.setattr(time, "sleep", lambda seconds: os.replace(run / ".ckpt-partial", run / "ckpt"))
    assert load_evaluated(str(run / "ckpt"), lambda: (run / "ckpt").is_dir()) == (True, 7)
