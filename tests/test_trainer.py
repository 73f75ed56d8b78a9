"""The trainer: every method on the tiny CLIP, pools, the loss, resume, config, two processes.

Runs are a few steps of small batches on the sample world; each test says what it checks.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from augment.errors import MatPlusError
from train.run_folder import LOCK_FILE

REPO = Path(__file__).resolve().parent.parent
# decoding in this process (workers 0): test_workers_* checks that workers give the same weights
FAST = dict(batch_size=8, lr=1e-4, pgd_steps=2, progress=False, log_every=1, workers=0)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def source(sample_world_dir):
    from augment.sources import load_source

    dataset, _ = load_source(str(sample_world_dir))
    return dataset


def _pool_row(method, image_id, caption_index, k, modality, caption=None, image=None):
    return {
        "row_id": f"{method}:{image_id}:{caption_index}:{k}", "source_image_id": image_id,
        "source_caption_index": caption_index, "split": "train", "modality": modality, "image": image,
        "caption": caption, "method": method, "seed": k, "provenance": "{}",
    }


def _write_pool(folder, rows, fingerprint, method) -> str:
    from augment.pool import write_pool

    write_pool(folder, rows, {"name": Path(folder).name, "method": method, "source_fingerprint": fingerprint})
    return str(folder)


@pytest.fixture(scope="module")
def pools(tmp_path_factory, source):
    """For every train image: a text pool (tied captions and an untied one), an image pool (flips) and a
    pair pool (tied to caption 0 only)."""
    from PIL import ImageOps

    from augment.sources import select_split, source_fingerprint

    root = tmp_path_factory.mktemp("pools")
    fingerprint = source_fingerprint(source)
    train = select_split(source, "train")
    text_rows, image_rows, pair_rows = [], [], []
    for row in train:
        image_id = row["image_id"]
        for c, caption in enumerate(row["captions"]):
            text_rows.append(_pool_row("t", image_id, c, 0, "text", caption=f"{caption} today"))
        text_rows.append(_pool_row("t", image_id, -1, 1, "text", caption="a picture of shapes"))
        flipped = ImageOps.mirror(row["image"])
        image_rows.append(_pool_row("i", image_id, -1, 0, "image", image=flipped))
        pair_rows.append(_pool_row("p", image_id, 0, 0, "pair", caption=row["captions"][0], image=flipped))
    return {
        "text": _write_pool(root / "text-pool", text_rows, fingerprint, "t"),
        "image": _write_pool(root / "image-pool", image_rows, fingerprint, "i"),
        "pair": _write_pool(root / "pair-pool", pair_rows, fingerprint, "p"),
        "fingerprint": fingerprint,
        "train": train,
    }


def _run(tmp_path, name, world, **settings):
    from train.trainer import train_run

    config = {"train_data": str(world), "out": str(tmp_path / name), "max_steps": 2, **FAST, **settings}
    records = []
    summary = train_run(config, callbacks=[records.append])
    return summary, records


def test_progress_bar_labels_its_losses_as_running_means(tmp_path, sample_world_dir, capsys):
    _run(tmp_path, "bar", sample_world_dir, method="mat", pgd_steps=1, progress=True)
    shown = capsys.readouterr().err
    assert re.search(r"loss_ema=[0-9.]+", shown) and re.search(r"robust_ema=[0-9.]+", shown), shown[-400:]
    assert re.search(r"data=[0-9]+%", shown), shown[-400:]


def test_in_training_validation_shows_its_own_bar_under_the_training_bar(tmp_path, sample_world_dir, capsys):
    """--val-frequency: the attacked validation has a bar of its own while it runs (it used to run
    silently under the training bar), then its one line; with --no-progress neither bar."""
    validation = dict(method="clean", val_frequency=1, val_limit=4, val_attack="pgd", pgd_steps=1, schedule_steps=2)
    _run(tmp_path, "valbar", sample_world_dir, progress=True, **validation)
    shown = capsys.readouterr().err
    assert re.search(r"evaluating pgd: +100%.* 4/4 ", shown), shown[-600:]  # 4 images, the attack's bar (clean is apart)
    assert re.search(r"step +[0-9]+: val robust", shown), shown[-600:]
    _run(tmp_path, "quiet", sample_world_dir, progress=False, **validation)
    assert "evaluating" not in capsys.readouterr().err


def _checkpoint_state(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "ckpt" / "open_clip_model.safetensors"))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_loads_in_open_clip(run_dir: Path) -> None:
    import open_clip

    model = open_clip.create_model(f"local-dir:{run_dir / 'ckpt'}")
    saved = _checkpoint_state(run_dir)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def _assert_within_eps(records, eps):
    for record in records:
        adv, clean = record.output.adv_pixels, record.batch.pixels
        assert adv is not None and adv.shape == clean.shape
        assert (adv - clean).abs().max().item() <= eps + 1e-6
        assert adv.min().item() >= 0 and adv.max().item() <= 1
        assert (adv - clean).abs().max().item() > 0  # the attack did move the pixels


# ----------------------------------------------------------------------------- the loss


def test_a_local_loss_term_keeps_its_value_and_scales_its_gradient():
    """ITM and momentum-distilled ITC cover this process's rows only: their gradient is divided by the
    world size (the gathered ITC's gradient scale), their logged value is not (it was: half the loss
    under 2 processes)."""
    from tasks.retrieval import local_term

    weight = torch.tensor(3.0, requires_grad=True)
    term = local_term(weight * 2.0, 2.0)
    term.backward()
    assert term.detach().item() == 6.0 and weight.grad.item() == 1.0
    alone = local_term(torch.tensor(3.0, requires_grad=True) * 2.0, 1.0)
    assert alone.grad_fn is not None and alone.detach().item() == 6.0


def test_itm_hard_negatives_are_drawn_by_the_temperature_scaled_itc_logits(monkeypatch):
    """ALBEF and BLIP draw an image's negative caption by softmax(sim / temperature): on raw cosines
    a caption at cosine 0.8 among 30 at 0.1 was drawn 6% of the time (uniform: 3%), at 1/0.07: ~100%."""
    import tasks.retrieval as retrieval
    from models.base import EncoderOutput, TextTokens

    draw = retrieval.hard_negatives
    sims = torch.full((1, 31), 0.1)
    sims[0, 0] = 0.8
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([draw(sims / 0.07, torch.zeros(1, 31), generator) for _ in range(200)])
    assert (draws == 0).float().mean() > 0.95

    seen = []
    monkeypatch.setattr(retrieval, "hard_negatives",
                        lambda similarity, positives: seen.append(similarity) or draw(similarity, positives))

    class Matcher:
        def itm_logits(self, features, tokens):
            return torch.zeros(len(features))

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    output = EncoderOutput(image, text, torch.tensor(1 / 0.07), image_features=torch.randn(4, 3, 8))
    retrieval.itm_loss(Matcher(), output, TextTokens(torch.ones(4, 5, dtype=torch.long)), torch.arange(4))
    torch.testing.assert_close(seen[0], image @ text.T / 0.07)  # each image's captions
    torch.testing.assert_close(seen[1], (image @ text.T / 0.07).T)  # each caption's images


def test_multi_positive_loss_equals_clip_loss_for_distinct_keys_and_never_repels_one_item():
    from open_clip.loss import ClipLoss

    from tasks.retrieval import multi_positive_targets, softmax_itc_loss

    def ContrastiveLoss():  # the loss as the trainer computes it: scaled cosine logits, positives by key
        return lambda image, text, keys, scale: softmax_itc_loss(scale * image @ text.T, multi_positive_targets(keys, keys))

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(10.0)
    distinct = torch.arange(6)
    expected = ClipLoss()(image, text, scale)
    assert torch.allclose(ContrastiveLoss()(image, text, distinct, scale), expected, atol=1e-6)

    # rows 0 and 1 are two views of one source item: each caption is a positive of both images
    keys = torch.tensor([0, 0, 1, 2, 3, 4])
    loss = ContrastiveLoss()(image, text, keys, scale)
    swapped = text[[1, 0, 2, 3, 4, 5]]
    assert torch.allclose(loss, ContrastiveLoss()(image, swapped, keys, scale), atol=1e-6)
    assert not torch.allclose(ClipLoss()(image, text, scale), ClipLoss()(image, swapped, scale), atol=1e-4)
    # explicit targets: image 0's softmax row has 1/2 on captions 0 and 1
    logits = scale * image @ text.T
    image_term = -(logits.log_softmax(1)[0, :2].mean() + logits.log_softmax(1)[1, :2].mean()
                   + sum(logits.log_softmax(1)[i, i] for i in range(2, 6)))
    text_term = -(logits.T.log_softmax(1)[0, :2].mean() + logits.T.log_softmax(1)[1, :2].mean()
                  + sum(logits.T.log_softmax(1)[i, i] for i in range(2, 6)))
    assert torch.allclose(loss, (image_term + text_term) / 12, atol=1e-5)
    # the gradient never pushes caption 1 away from image 0: moving it onto image 0 lowers the loss
    closer = text.clone()
    closer[1] = torch.nn.functional.normalize(text[1] + image[0], dim=-1)
    apart = text.clone()
    apart[1] = torch.nn.functional.normalize(text[1] - image[0], dim=-1)
    assert ContrastiveLoss()(image, apart, keys, scale) > ContrastiveLoss()(image, closer, keys, scale)


# ----------------------------------------------------------------------------- config


def test_yaml_config_and_command_line_overrides(tmp_path, sample_world_dir):
    import yaml

    from train.cli import build_parser, config_from_args
    from train.config import ConfigError, read_yaml_config, resolve_config, save_config

    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "model": "tiny-clip", "train-data": str(sample_world_dir), "batch-size": 32, "attack-eps": "4/255",
        "pgd_steps": 3, "lr": "5e-5", "word_budget": 2,
    }))
    args = build_parser().parse_args([
        "mat", "--config", str(config_file), "--out", str(tmp_path / "run"), "--batch-size", "8", "--attack-eps", "1/255",
    ])
    config = config_from_args(args)
    assert config.method == "mat"
    assert config.batch_size == 8  # command line beats the file
    assert config.attack_eps == pytest.approx(1 / 255)
    assert config.eps == pytest.approx(1e-6)  # AdamW's epsilon, open_clip's --eps
    assert config.pgd_step_size == pytest.approx(1 / 255 / 4)  # derived from the resolved eps
    assert config.pgd_steps == 3 and config.lr == pytest.approx(5e-5) and config.word_budget == 2  # from the file
    assert config.wd == 0.1  # default
    assert config.mlm == "tiny-mlm" and config.lock_text is False
    # a folder holding a model trained from a tiny twin (a run's checkpoint) also gets the offline tiny-mlm
    from train.config import default_mlm

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "matplus_model.json").write_text(json.dumps({"family": "open_clip", "tiny_twin": "tiny-clip"}))
    assert default_mlm(str(tmp_path / "ckpt")) == "tiny-mlm"
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "matplus_model.json").write_text(json.dumps({"family": "open_clip", "tiny_twin": None}))
    assert default_mlm(str(tmp_path / "real")) != "tiny-mlm"
    assert resolve_config({"method": "tecoa", "train_data": "s", "out": "o"}).lock_text is True

    # the saved config resolves back to the same settings
    save_config(config, tmp_path / "saved")
    assert resolve_config(read_yaml_config(tmp_path / "saved" / "config.yaml")) == config

    (tmp_path / "bad.yaml").write_text("batch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        read_yaml_config(tmp_path / "bad.yaml")
    (tmp_path / "twice.yaml").write_text("lr: 1e-4\nbatch_size: 8\nlr: 1e-3\n")  # PyYAML kept the last lr silently
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \(duplicate key 'lr' \(line 3\)"):
        read_yaml_config(tmp_path / "twice.yaml")
    with pytest.raises(ConfigError, match="needs --pools"):
        resolve_config({"method": "mat+", "train_data": "s", "out": "o"})
    with pytest.raises(ConfigError, match="pool-weights"):
        resolve_config({"method": "mat+", "train_data": "s", "out": "o", "pools": ["a", "b"], "pool_weights": [1]})
    # options a method does not use are not offered
    with pytest.raises(SystemExit):
        build_parser().parse_args(["clean", "--attack-eps", "2/255"])


@pytest.mark.parametrize("settings, named", [
    ({"method": "mat", "text_candidates": "wordnet", "mlm": "bert"}, "--mlm is not read with --text-candidates wordnet"),
    ({"method": "clean", "p_original": 0.9}, "--p-original is not read without --pools"),
    ({"method": "mat+", "pools": ["p"], "pool_mode": "expand", "p_original": 0.2}, "--p-original is not read without --pools or with --pool-mode expand"),
    ({"method": "mat", "pool_mode": "expand"}, "--pool-mode is not read without --pools"),
    ({"method": "mat+", "pools": ["p", "q"], "pool_mode": "expand", "pool_weights": [1, 3]},
     "--pool-weights is not read with --pool-mode expand"),
    ({"method": "clean", "val_split": "test", "val_limit": 10}, "--val-split is not read without --val-frequency; --val-limit is not"),
    ({"method": "clean", "wandb_project_name": "x", "report_to": "tensorboard"}, "--wandb-project-name is not read without --report-to wandb"),
    ({"method": "clean", "csv_img_key": "filepath"}, "--csv-img-key is not read for a source that is not a .csv/.tsv file"),
    ({"method": "fare", "lock_text": False}, "--no-lock-text is not read by fare"),
])
def test_a_setting_other_settings_leave_unread_is_refused(settings, named):
    from train.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match="^" + re.escape(named)):
        resolve_config({"train_data": "s.json", "out": "o", **settings})


def test_unread_settings_are_accepted_where_read_and_saved_configs_feed_back(tmp_path):
    from train.config import read_yaml_config, resolve_config, save_config

    read = [
        {"method": "mat", "text_candidates": "mlm", "mlm": "bert"},
        {"method": "mat+", "pools": ["p"], "p_original": 0.2, "allow_pool_mismatch": True},
        {"method": "clean", "val_frequency": 1, "val_split": "test", "val_data": "v.json"},
        {"method": "clean", "wandb_project_name": "x", "report_to": "tensorboard,wandb"},
        {"method": "clean", "train_data": "t.tsv", "csv_img_key": "filepath", "csv_separator": "\t"},
        {"method": "clean", "val_frequency": 1, "val_data": "v.csv", "csv_caption_key": "title"},
        {"method": "tecoa", "lock_text": False},
        {"method": "mat", "text_candidates": "wordnet", "mlm": None},
        {"method": "mat+", "pools": ["p", "q"], "pool_weights": [1, 3]},
        {"method": "mat+", "pools": ["p", "q"], "pool_mode": "expand", "pool_weights": [1, 1]},
    ]
    for settings in read:
        resolve_config({"train_data": "s.json", "out": "o", **settings})
    # a run's config.yaml holds every setting (derived ones null, their values in `derived:`): fed back, none is refused
    for method in ("clean", "tecoa", "fare", "mat", "mat+", "expand"):
        settings = {"method": method, "pools": ["p"] if method == "mat+" else []}
        if method == "expand":
            settings = {"method": "mat+", "pools": ["p", "q"], "pool_mode": "expand"}
        config = resolve_config({"train_data": "s.json", "out": "o", **settings})
        save_config(config, tmp_path / method)
        assert resolve_config(read_yaml_config(tmp_path / method / "config.yaml")) == config


@pytest.mark.parametrize("norm", [0, -1.0])
def test_max_grad_norm_must_be_positive(norm):
    from train.config import ConfigError, resolve_config

    # a negative norm made torch's clipping multiply every gradient by a negative scale
    with pytest.raises(ConfigError, match="--grad-clip-norm must be positive"):
        resolve_config({"train_data": "s.json", "out": "o", "max_grad_norm": norm})


def test_albef_options_for_another_family_are_one_line(tmp_path):
    from augment.errors import ModelLoadError
    from models import load_model

    with pytest.raises(ModelLoadError, match=r"^model 'tiny-clip' \(open_clip\) has no loading option bert_config, config "):
        load_model("tiny-clip", config="a.yaml", bert_config="b.json")


# ----------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", ["clean", "tecoa", "fare"])
def test_method_runs_and_checkpoint_loads_in_open_clip(tmp_path, sample_world_dir, method):
    summary, records = _run(tmp_path, method, sample_world_dir, method=method)
    run_dir = tmp_path / method
    _assert_loads_in_open_clip(run_dir)
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["loss"] is not None and m["clean_loss"] is not None for m in metrics)
    assert summary["steps"] == 2 and summary["pool_draws"] == {"original": 16}
    if method == "clean":
        assert all(m["robust_loss"] is None for m in metrics)
    else:
        assert all(m["robust_loss"] is not None for m in metrics)
        _assert_within_eps(records, 2 / 255)
    if method == "fare":  # the text tower and the logit scale stay as they were
        from models import load_model

        original = load_model("tiny-clip").model.state_dict()
        trained = _checkpoint_state(run_dir)
        assert torch.equal(trained["token_embedding.weight"], original["token_embedding.weight"])
        assert torch.equal(trained["logit_scale"], original["logit_scale"])
        assert not torch.equal(trained["visual.conv1.weight"], original["visual.conv1.weight"])


def _changed_words(clean: str, adversarial: str) -> int:
    a, b = clean.split(), adversarial.split()
    assert len(a) == len(b)  # substitutions only
    return sum(x != y for x, y in zip(a, b))


def test_mat_attacks_text_within_budget_then_image_within_eps(tmp_path, sample_world_dir):
    summary, records = _run(tmp_path, "mat", sample_world_dir, method="mat", word_budget=1, inner_order="alternate")
    _assert_loads_in_open_clip(tmp_path / "mat")
    _assert_within_eps(records, 2 / 255)
    changes = [_changed_words(c, a) for r in records for c, a in zip(r.batch.texts, r.output.adv_texts)]
    assert max(changes) <= 1
    assert sum(changes) > 0  # the attack did replace words
    assert summary["final"]["robust_loss"] is not None


# ----------------------------------------------------------------------------- MAT+ and pools


def test_a_resume_refuses_a_pool_made_again_in_its_folder(tmp_path, sample_world_dir, pools):
    """A pool regenerated in its folder (generate --overwrite) between a kill and the resume: the run went on with
    other rows, and nothing said so (the config records the pool's path only; audit BH's left finding). Each
    checkpoint now records its pools' method, rows and finish stamp; the same pool copied elsewhere is the same."""
    import shutil

    from augment.pool import load_pool
    from train.config import ConfigError

    pool = tmp_path / "pool"
    shutil.copytree(pools["text"], pool)
    settings = dict(method="mat+", pools=[str(pool)], pgd_steps=1, schedule_steps=3)
    _run(tmp_path, "run", sample_world_dir, max_steps=1, **settings)
    saved = json.loads((tmp_path / "run" / "ckpt" / "train_state" / "state.json").read_text())["pools"]
    assert saved == {"text-pool": {key: load_pool(pool).meta[key] for key in ("method", "num_rows", "finished")}}
    meta = json.loads((pool / "pool.json").read_text())
    (pool / "pool.json").write_text(json.dumps({**meta, "finished": "2030-01-01T00:00:00+00:00"}))  # made again
    with pytest.raises(ConfigError, match="--resume: pool text-pool is another pool than the run trained on"):
        _run(tmp_path, "run", sample_world_dir, max_steps=2, resume="latest", **settings)
    (pool / "pool.json").write_text(json.dumps(meta))
    summary, _ = _run(tmp_path, "run", sample_world_dir, max_steps=2, resume="latest", **settings)
    assert summary["steps"] == 2


def test_a_resume_refuses_another_pool_moved_in_under_the_pools_path(tmp_path, sample_world_dir, pools):
    """A pool made elsewhere and moved in under the run's pool path between a kill and the resume (`augment select
    --out X.new`, then `mv X.new X`): its pool.json names it `X.new`, and the resume compared the pools by name
    only, so the pool the run trained on, unmatched, was not compared and the run went on with other rows. The
    run's pools are the same paths in the same order (config.yaml), so they are compared in order."""
    import shutil

    from train.config import ConfigError

    pool = tmp_path / "pool"
    shutil.copytree(pools["text"], pool)
    settings = dict(method="mat+", pools=[str(pool)], pgd_steps=1, schedule_steps=3)
    _run(tmp_path, "run", sample_world_dir, max_steps=1, **settings)
    meta = json.loads((pool / "pool.json").read_text())
    (pool / "pool.json").write_text(json.dumps({**meta, "name": "pool.new", "finished": "2030-01-01T00:00:00+00:00"}))
    with pytest.raises(ConfigError, match="--resume: pool pool.new is another pool than the run trained on"):
        _run(tmp_path, "run", sample_world_dir, max_steps=2, resume="latest", **settings)
    (pool / "pool.json").write_text(json.dumps({**meta, "name": "pool.new"}))  # the same pool, renamed: resumes
    summary, _ = _run(tmp_path, "run", sample_world_dir, max_steps=2, resume="latest", **settings)
    assert summary["steps"] == 2


def test_a_study_run_whose_pool_was_made_again_is_trained_again_not_stopped(tmp_path, sample_world_dir, pools):
    """The study resumes a killed run of the same settings (`analysis.study.train_resumable`); a pool it made again
    since with the same settings (deleted, a damaged shard's pool re-made) has another finish stamp, and the resume's
    refusal (`--resume: pool NAME is another pool than the run trained on ... start over with --overwrite`) stopped
    the study, which has no --overwrite to give: the run is trained again from scratch, as for other settings."""
    import shutil

    from analysis.study import train_resumable

    pool = tmp_path / "pool"
    shutil.copytree(pools["text"], pool)
    settings = {"train_data": str(sample_world_dir), **FAST, "method": "mat+", "pools": [str(pool)], "pgd_steps": 1,
                "schedule_steps": 3}
    logs = []
    train_resumable(tmp_path / "run", {**settings, "max_steps": 1}, made_from="fingerprint", log=logs.append)
    meta = json.loads((pool / "pool.json").read_text())
    (pool / "pool.json").write_text(json.dumps({**meta, "finished": "2030-01-01T00:00:00+00:00"}))  # made again
    summary = train_resumable(tmp_path / "run", {**settings, "max_steps": 2}, made_from="fingerprint", log=logs.append)
    assert summary["steps"] == 2 and any("another pool" in line and "from scratch" in line for line in logs), logs
    state = json.loads((tmp_path / "run" / "ckpt" / "train_state" / "state.json").read_text())
    assert state["pools"]["text-pool"]["finished"] == "2030-01-01T00:00:00+00:00"


def test_mat_plus_draws_pool_rows_and_counts_them(tmp_path, sample_world_dir, pools):
    from train.cli import main

    out = tmp_path / "matplus"
    code = main([
        "mat+", "--train-data", str(sample_world_dir), "--out", str(out), "--pools", pools["text"], pools["image"],
        pools["pair"], "--pool-weights", "2", "1", "1", "--p-original", "0", "--max-steps", "2", "--batch-size", "8",
        "--pgd-steps", "1", "--no-progress", "--seed", "3",
    ])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = _metrics(out)
    totals = {name: sum(m["pool_draws"][name] for m in metrics) for name in summary["pool_draws"]}
    assert totals == summary["pool_draws"]
    assert sum(totals.values()) == 16  # every position of both batches is one draw
    assert totals["original"] == 0  # p_original 0 and every item has views
    assert totals["text-pool"] > 0 and totals["image-pool"] > 0
    _assert_loads_in_open_clip(out)


def test_pool_sampling_draws_views_of_the_item_and_none_with_p_original_1(source, pools):
    from augment.pool import load_pool
    from train.data import ORIGINAL, TrainData

    loaded = [load_pool(pools[k]) for k in ("text", "image", "pair")]
    data = TrainData(source, loaded, p_original=0.0, seed=0)
    seen_sources = set()
    for step in range(20):
        plan = data.plan(step, 32)
        assert sum(plan.draws.values()) == 32 and plan.draws[ORIGINAL] == 0
        for view in plan.views:
            assert view.pool >= 0
            pool = data.pools[view.pool]
            assert pool.image_index[view.row] == view.key
            assert pool.caption_index[view.row] in (-1, view.caption)  # tied to this caption or to none
            image, caption, name = data.view_content(view)
            seen_sources.add((name, pool.modality[view.row]))
            if pool.modality[view.row] == "image":
                assert caption == data.captions[view.key][view.caption]
    assert {name for name, _ in seen_sources} == {"text-pool", "image-pool", "pair-pool"}
    # plans depend on (seed, step) only
    assert data.plan(7, 32) == TrainData(source, loaded, p_original=0.0, seed=0).plan(7, 32)

    never = TrainData(source, loaded, p_original=1.0, seed=0)
    draws = [never.plan(step, 64).draws for step in range(20)]
    assert all(d[ORIGINAL] == 64 and d["text-pool"] == d["image-pool"] == d["pair-pool"] == 0 for d in draws)

    expand = TrainData(source, loaded, pool_mode="expand", seed=0)
    assert expand.num_entries == expand.num_items + sum(len(p) for p in loaded)
    drawn = sum(sum(v for k, v in expand.plan(s, 64).draws.items() if k != ORIGINAL) for s in range(10))
    assert drawn > 0
    # two views of one source image share a key: the loss sees them as positives
    plan = data.plan(0, 256)
    keys = [v.key for v in plan.views]
    assert len(set(keys)) < len(keys)


def test_pools_are_indexed_through_arrow_never_row_by_row(source, pools, monkeypatch):
    """A pool's columns are read whole, through arrow, when training starts: read row by row (datasets'
    `Column`, one formatted row at a time, nine passes) a 600k-row pool (COCO's 118k images x 5
    captions) took 2.5 min to index before the first step (audit AM)."""
    import datasets
    import pyarrow.parquet as pq

    from augment.pool import load_pool
    from train.data import TrainData

    def row_by_row(self):
        raise AssertionError("a pool's dataset was read row by row")

    loaded = [load_pool(pools[k]) for k in ("text", "image", "pair")]
    monkeypatch.setattr(datasets.Dataset, "__iter__", row_by_row)
    if hasattr(datasets.arrow_dataset, "Column"):  # datasets < 4 has none: dataset[name] is a list, read whole
        monkeypatch.setattr(datasets.arrow_dataset.Column, "__iter__", row_by_row)
    data = TrainData(source, loaded, p_original=0.0, seed=0)
    for views, pool in zip(data.pools, loaded):
        stored = pq.read_table(sorted((pool.path / "data").glob("*.parquet")),
                               columns=["modality", "caption", "source_caption_index"])
        assert views.modality == stored["modality"].to_pylist() and views.caption == stored["caption"].to_pylist()
        assert views.caption_index.tolist() == stored["source_caption_index"].to_pylist()
    assert sum(data.plan(0, 32).draws.values()) == 32


def test_pool_views_show_each_modalitys_own_content_and_pools_are_drawn_by_weight(tmp_path, source, pools):
    """Guards MAT+'s views (a pair row: its own image AND caption; a text row: the source image) and the
    pool choice in proportion to --pool-weights (mutation audit)."""
    import numpy as np
    from PIL import ImageOps

    from augment.pool import load_pool
    from train.data import TrainData

    train = pools["train"]
    pair_rows = [_pool_row("q", row["image_id"], 0, 0, "pair", caption="a very different caption",
                           image=ImageOps.flip(row["image"])) for row in train]
    pair_pool = load_pool(_write_pool(tmp_path / "own-pair-pool", pair_rows, pools["fingerprint"], "q"))
    data = TrainData(source, [load_pool(pools["text"]), pair_pool], p_original=0.0, seed=0, pool_weights=[1, 1])
    seen = set()
    for step in range(4):
        for view in data.plan(step, 16).views:
            image, caption, name = data.view_content(view)
            source_image = data.source_image(view.key).convert("RGB")
            if name == "own-pair-pool":
                assert caption == "a very different caption"
                assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(ImageOps.flip(source_image)))
            else:
                assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(source_image))
            seen.add(name)
    assert seen == {"text-pool", "own-pair-pool"}
    # items tied to caption 0 have views in both pools: weights 9:1 draw the text pool ~90% of the time
    weighted = TrainData(source, [load_pool(pools["text"]), pair_pool], p_original=0.0, seed=0, pool_weights=[9, 1])
    names = [weighted.pools[v.pool].name for step in range(30) for v in weighted.plan(step, 16).views if v.caption == 0]
    share = names.count("text-pool") / len(names)
    assert len(names) > 50 and 0.8 < share < 0.98, (share, len(names))


def test_pool_images_follow_the_sources_decoding_rule_and_a_bad_one_names_its_pool_row(tmp_path, source, pools):
    """A pool image is decoded as source images are (EXIF orientation ignored) and an unreadable one
    is a SourceError naming the pool and the row, not a library traceback."""
    import io

    from PIL import Image

    from augment.errors import SourceError
    from augment.pool import load_pool
    from train.data import TrainData

    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 on display
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    image_id = pools["train"][0]["image_id"]
    rows = [_pool_row("x", image_id, -1, 0, "image", image={"bytes": buffer.getvalue(), "path": None}),
            _pool_row("x", image_id, -1, 1, "image", image={"bytes": b"not an image", "path": None})]
    folder = _write_pool(tmp_path / "odd-pool", rows, pools["fingerprint"], "x")
    views = TrainData(source, [load_pool(folder)], seed=0).pools[0]
    assert views.image(0).size == (40, 20) and views.image(0).mode == "RGB"
    with pytest.raises(SourceError, match=rf"^pool odd-pool row 1 \(x:{image_id}:-1:1\): unreadable or corrupt image"):
        views.image(1)


def test_pools_that_do_not_fit_the_source_are_refused_before_training(tmp_path, sample_world_dir, source, pools):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from augment.sources import select_split
    from train.cli import main
    from train.trainer import train_run

    fingerprint = pools["fingerprint"]
    _write_pool(tmp_path / "unknown", [_pool_row("t", "no-such-image", 0, 0, "text", caption="a cat")], fingerprint, "t")
    test_id = select_split(source, "test")[0]["image_id"]
    _write_pool(tmp_path / "leak", [_pool_row("t", test_id, 0, 0, "text", caption="a cat")], fingerprint, "t")
    train_id = pools["train"][0]["image_id"]
    _write_pool(tmp_path / "foreign", [_pool_row("t", train_id, 0, 0, "text", caption="a cat")], "0123456789abcdef", "t")
    _write_pool(tmp_path / "badindex", [_pool_row("t", train_id, 9, 0, "text", caption="a cat")], fingerprint, "t")
    _write_pool(tmp_path / "unfingerprinted", [_pool_row("t", train_id, 0, 0, "text", caption="a cat")], None, "t")
    # wrong schema: a shard with a column too many
    schema_dir = tmp_path / "schema"
    (schema_dir / "data").mkdir(parents=True)
    meta = json.loads((Path(pools["text"]) / "pool.json").read_text())
    (schema_dir / "pool.json").write_text(json.dumps(meta))
    table = pq.read_table(next((Path(pools["text"]) / "data").glob("*.parquet")))
    pq.write_table(table.append_column("score", pa.array([0.5] * table.num_rows)), schema_dir / "data" / "shard-00000.parquet")

    cases = {"unknown": "not in the source", "leak": "leak", "foreign": "another source", "badindex": r"row 0 \(t:.+:9:0\) ties to caption 9",
             "schema": "unexpected columns", "unfingerprinted": "records no source fingerprint"}
    for name, message in cases.items():
        out = tmp_path / f"run-{name}"
        with pytest.raises(MatPlusError, match=message):
            train_run({"method": "mat+", "train_data": str(sample_world_dir), "out": str(out),
                       "pools": [str(tmp_path / name)], **FAST})
        assert not out.exists()  # refused before anything was written
    # through the command line: one line, exit code 2
    code = main(["mat+", "--train-data", str(sample_world_dir), "--out", str(tmp_path / "cli"), "--pools",
                 str(tmp_path / "unknown"), "--no-progress"])
    assert code == 2 and not (tmp_path / "cli").exists()
    # a foreign fingerprint is accepted when asked for
    from augment.pool import load_pool
    from train.data import TrainData

    TrainData(source, [load_pool(tmp_path / "foreign")], allow_pool_mismatch=True)


def test_a_pool_row_tied_to_one_caption_past_the_images_last_is_refused(tmp_path, source, pools):
    """Guards the caption-index check's bound (audit BU): an image of 5 captions has indices 0..4, so 5 is refused
    (a `>` for `>=` let it through: in sample mode a row never drawn, in expand mode an IndexError mid-run)."""
    from augment.errors import PoolError
    from augment.pool import load_pool
    from train.data import TrainData

    row = pools["train"][0]
    count = len(row["captions"])
    folder = _write_pool(tmp_path / "one-past", [_pool_row("t", row["image_id"], count, 0, "text", caption="a cat")],
                         pools["fingerprint"], "t")
    with pytest.raises(PoolError, match=rf"ties to caption {count} of image .* which has {count} captions"):
        TrainData(source, [load_pool(folder)])


def test_expand_mode_gives_an_untied_image_row_a_caption_drawn_per_epoch(source, pools):
    """Guards expand mode's untied image rows (audit BU): each epoch draws one of the image's captions, not caption 0."""
    from augment.pool import load_pool
    from train.data import TrainData

    data = TrainData(source, [load_pool(pools["image"])], pool_mode="expand", seed=0)
    per_epoch = data.micro_steps_per_epoch(16)
    captions = {view.caption for step in range(3 * per_epoch) for view in data.plan(step, 16).views if view.pool == 0}
    assert len(captions) > 1


def test_each_epoch_draws_its_pool_views_and_crops_afresh(source, pools):
    """Guards the seeds of a slot's pool draw and random crop (audit BU): (seed, epoch, slot), so a slot keeps or
    replaces its item, and crops it, independently in each epoch, not identically every epoch."""
    from augment.pool import load_pool
    from train.data import TrainData

    data = TrainData(source, [load_pool(pools["text"])], p_original=0.5, seed=0)
    per_epoch = data.micro_steps_per_epoch(8)
    plans = [data.plan(epoch * per_epoch, 8) for epoch in range(4)]
    kept = [[view.pool < 0 for view in plan.views] for plan in plans]  # slots 0..7 of each epoch
    assert any(len({epoch[slot] for epoch in kept}) > 1 for slot in range(8))
    crops = [data.materialise(plan, 0, 8, lambda image: torch.rand(1)) for plan in plans[:2]]
    assert not torch.equal(crops[0].pixels, crops[1].pixels)


def test_each_slot_of_a_batch_gets_its_own_crop(source):
    """Guards a mutation (audit BX): the crop seed without its slot passed every test (they compared epochs); every
    image of an epoch was then cropped and flipped alike."""
    from train.data import TrainData

    data = TrainData(source, seed=0)
    draws = data.materialise(data.plan(0, 8), 0, 8, lambda image: torch.rand(1)).pixels.flatten().tolist()
    assert len(set(draws)) == 8


def test_each_epoch_goes_through_the_items_in_its_own_order(source):
    """Guards a mutation (audit BX): the epoch order's seed without its epoch passed every test; each epoch then
    went through the items in one order, the same batches every epoch."""
    from train.data import TrainData

    data = TrainData(source, seed=0)
    per_epoch = data.micro_steps_per_epoch(4)
    orders = [[(view.key, view.caption) for step in range(epoch * per_epoch, (epoch + 1) * per_epoch)
               for view in data.plan(step, 4).views] for epoch in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_an_epochs_views_are_the_same_whatever_the_batch_size(source, pools):
    """Guards a mutation (audit CH): a slot counted from each batch's start (not the epoch's) passed every test;
    every batch of an epoch then drew its pool views and crops from the same seeds, and the views changed with
    --batch-size (the module's promise: a function of (seed, epoch, slot) only)."""
    from augment.pool import load_pool
    from train.data import TrainData

    data = TrainData(source, [load_pool(pools["text"])], p_original=0.5, seed=0)
    assert data.plan(0, 16).views == data.plan(0, 8).views + data.plan(1, 8).views


def test_a_pool_of_weight_0_is_never_drawn_and_leaves_the_items_only_it_augments_original(source, pools):
    """Guards a mutation (audit CH): the weight-0 filter of the pool draw dropped passed every test; an item whose
    only views were in a pool of --pool-weights 0 then stopped the run (probabilities of 0/0)."""
    from augment.pool import load_pool
    from train.data import ORIGINAL, TrainData

    data = TrainData(source, [load_pool(pools["text"]), load_pool(pools["pair"])], p_original=0.0, seed=0,
                     pool_weights=[0, 1])
    views = [view for step in range(4) for view in data.plan(step, 16).views]
    assert {data.pool_names[v.pool] if v.pool >= 0 else ORIGINAL for v in views} == {"pair-pool", ORIGINAL}
    assert all((v.pool >= 0) == (v.caption == 0) for v in views)  # the pair pool ties caption 0 alone


def test_a_pool_given_twice_counts_its_draws_under_two_names(source, pools):
    """Guards a mutation (audit CH): the second copy's name `NAME#2` numbered from 0 (`NAME#1`) passed every test."""
    from augment.pool import load_pool
    from train.data import TrainData

    data = TrainData(source, [load_pool(pools["text"])] * 3, seed=0)
    assert data.pool_names == ["text-pool", "text-pool#2", "text-pool#3"]
    assert set(data.plan(0, 8).draws) == {"original", "text-pool", "text-pool#2", "text-pool#3"}


def test_a_pool_row_tied_to_a_caption_index_below_untied_is_refused(tmp_path, source, pools):
    """Guards a mutation (audit CH): the caption index's lower bound dropped passed every test; a row of index -2
    was then taken for an untied row (-1) and drawn for every caption of its image."""
    from augment.errors import PoolError
    from augment.pool import load_pool
    from train.data import TrainData

    row = pools["train"][0]
    folder = _write_pool(tmp_path / "below", [_pool_row("t", row["image_id"], -2, 0, "text", caption="a cat")],
                         pools["fingerprint"], "t")
    with pytest.raises(PoolError, match=r"row 0 \(t:.+:-2:0\) ties to caption -2 of image"):
        TrainData(source, [load_pool(folder)])


def test_a_pool_of_val_images_is_refused_as_a_leak_not_sent_to_join_val(tmp_path, source, pools):
    """Guards a mutation (audit CH, its one left open): the leak check reading the test split alone passed every
    test; a pool of val images was then told to join val to --train-split, i.e. to train on evaluation data."""
    from augment.errors import PoolError
    from augment.pool import load_pool
    from augment.sources import select_split
    from train.data import TrainData

    val_id = select_split(source, "val")[0]["image_id"]
    folder = _write_pool(tmp_path / "val-pool", [_pool_row("t", val_id, 0, 0, "text", caption="a cat")],
                         pools["fingerprint"], "t")
    with pytest.raises(PoolError, match=r"split\(s\) \['val'\].*would leak evaluation data") as refused:
        TrainData(source, [load_pool(folder)])
    assert "--train-split" not in str(refused.value)


def test_train_split_all_is_refused_for_a_source_with_val_images_and_no_test_ones(source):
    """Guards a mutation (audit CH): `--train-split all` refused for the test images alone passed every test (the
    sample world has both); a source of train and val rows was then trained on whole, its val images among them."""
    from train.config import ConfigError
    from train.data import TrainData

    without_test = source.filter(lambda split: split != "test", input_columns="split")
    with pytest.raises(ConfigError, match=r"--train-split all would train on the source's \d+ val/test images"):
        TrainData(without_test, split="all")


def test_the_data_settings_of_a_run_reach_its_training_data(tmp_path, sample_world_dir, source, pools):
    """Guards mutations (audit CH) of `load_train_data` that passed every test: --csv-separator, --source-split,
    --pool-weights and --grad-accum left out of what it passes on (the CSV then read with commas, its rows labelled
    train, the pools drawn alike, an epoch's end no longer a whole optimizer step)."""
    from augment.sources import select_split, undecoded
    from train.config import resolve_config
    from train.data import load_train_data

    train = undecoded(select_split(source, "train"))
    lines = ["filepath;title"] + [f"{Path(row['image']['path']).relative_to(sample_world_dir)};{row['captions'][0]}"
                                  for row in train]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    csv = load_train_data(resolve_config({
        "method": "clean", "train_data": str(tmp_path / "train.csv"), "out": str(tmp_path / "csv-run"),
        "image_root": str(sample_world_dir), "csv_img_key": "filepath", "csv_caption_key": "title",
        "csv_separator": ";", "source_split": "restval", "train_split": "restval"}))
    assert csv.num_items == len(lines) - 1 and csv.captions[0] == [train[0]["captions"][0]]
    pooled = load_train_data(resolve_config({
        "method": "mat+", "train_data": str(sample_world_dir), "out": str(tmp_path / "pooled-run"),
        "pools": [pools["text"], pools["pair"]], "pool_weights": [0, 1], "grad_accum": 3, "p_original": 0.25,
        "seed": 5}))
    assert pooled.pool_weights.tolist() == [0, 1] and pooled.grad_accum == 3
    assert (pooled.p_original, pooled.seed) == (0.25, 5)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path, sample_world_dir, monkeypatch):
    """FARE's loss is a per-sample mean, so 2 x 4 accumulated equals one batch of 8 (same crops).

    What is checked is the accumulation's arithmetic, not numerics that differ with a matmul's row
    count: the attack is a fixed smooth perturbation of each pixel (PGD's sign step flips on gradient
    elements near zero, which batches of 8 and 4 round differently with some torch builds), and
    Adam's epsilon is 1e-4 (at 1e-6 Adam blows that rounding up in parameters whose gradient is near
    zero, such as the class embedding)."""
    import train.attacks

    monkeypatch.setattr(train.attacks, "pgd_linf", lambda pixels, loss, eps, *rest: pixels + eps * torch.cos(pixels * 1000))
    common = dict(method="fare", pgd_steps=1, random_start=False, seed=2, eps=1e-4)
    _run(tmp_path, "whole", sample_world_dir, batch_size=8, **common)
    _run(tmp_path, "accumulated", sample_world_dir, batch_size=4, grad_accum=2, **common)
    losses = [[r["loss"] for r in _metrics(tmp_path / name) if "loss" in r] for name in ("whole", "accumulated")]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    whole, accumulated = _checkpoint_state(tmp_path / "whole"), _checkpoint_state(tmp_path / "accumulated")
    for name in whole:
        assert torch.allclose(whole[name], accumulated[name], atol=1e-5), name


def test_an_epoch_is_whole_optimizer_steps_under_gradient_accumulation(source):
    """The micro-batches an epoch cannot fill a step with are dropped (open_clip_train drops an epoch's
    partial batches): the next epoch starts at an optimizer step, so --epochs and --val-frequency
    count passes over the data (they used to drift by one micro-batch per epoch)."""
    from train.data import TrainData

    whole = TrainData(source, seed=0).micro_steps_per_epoch(8)
    accum = next(a for a in (2, 3, 4, 5, 7) if whole % a)
    data = TrainData(source, seed=0, grad_accum=accum)
    per_epoch = data.micro_steps_per_epoch(8)
    assert per_epoch == whole - whole % accum and per_epoch % accum == 0
    assert (data.plan(per_epoch - 1, 8).epoch, data.plan(per_epoch, 8).epoch) == (0, 1)
    assert data.plan(per_epoch, 8).views == TrainData(source, seed=0).plan(whole, 8).views  # epoch 1's first batch


def test_the_task_is_told_the_optimizer_step_under_gradient_accumulation(tmp_path, sample_world_dir, monkeypatch):
    """Guards `Task.on_step`'s step (audit BU): the optimizer step, not the micro step, so ALBEF's alpha ramp
    and captioning's reference window move once per update whatever --grad-accum is."""
    from tasks.retrieval import RetrievalTask

    steps = []
    monkeypatch.setattr(RetrievalTask, "on_step", lambda self, model, step, steps_per_epoch: steps.append(step))
    _run(tmp_path, "accumulated", sample_world_dir, method="clean", batch_size=4, grad_accum=2)
    assert steps == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- resume


def test_resume_continues_a_killed_run_to_the_same_weights(tmp_path, sample_world_dir, capsys):
    common = dict(method="tecoa", pgd_steps=1, seed=5, warmup=1)
    _run(tmp_path, "straight", sample_world_dir, max_steps=4, **common)
    # "killed" after 2 steps: same schedule, stops early
    _run(tmp_path, "resumed", sample_world_dir, max_steps=2, schedule_steps=4, **common)
    state = json.loads((tmp_path / "resumed" / "ckpt" / "train_state" / "state.json").read_text())
    assert state["step"] == 2
    capsys.readouterr()
    summary, records = _run(tmp_path, "resumed", sample_world_dir, max_steps=4, resume="latest", **common)
    assert [r.step for r in records] == [2, 3] and summary["resumed_from_step"] == 2
    assert f"resuming from {tmp_path / 'resumed' / 'ckpt'} at step 2 of 4" in capsys.readouterr().err  # said, in one line
    straight, resumed = _checkpoint_state(tmp_path / "straight"), _checkpoint_state(tmp_path / "resumed")
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name
    assert [m["step"] for m in _metrics(tmp_path / "resumed")] == [1, 2, 3, 4]
    assert [m["loss"] for m in _metrics(tmp_path / "resumed")] == pytest.approx([m["loss"] for m in _metrics(tmp_path / "straight")], abs=1e-5)
    # a finished run is not silently replaced, and resuming with other settings is refused
    with pytest.raises(MatPlusError, match="--resume"):
        _run(tmp_path, "resumed", sample_world_dir, max_steps=4, **common)
    with pytest.raises(MatPlusError, match="lr"):
        _run(tmp_path, "resumed", sample_world_dir, max_steps=6, resume="latest", **{**common, "lr": 1e-3})
    # resuming the finished run trains and writes nothing: its summary, metrics and checkpoint stay as they are
    # (RUN/.train.lock aside: taking the lock may truncate it, as filelock 4.1, Python 3.10's newest, does)

    def outputs():
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "resumed").rglob("*")
                if p.is_file() and p.name != LOCK_FILE}

    files = outputs()
    capsys.readouterr()
    again, records = _run(tmp_path, "resumed", sample_world_dir, max_steps=4, resume="latest", **common)
    assert records == [] and again == summary
    assert "finished all 4 steps already: nothing to train" in capsys.readouterr().err
    assert outputs() == files
    # a checkpoint past --max-steps would be saved as step 2 holding step 4's weights: refused
    with pytest.raises(MatPlusError, match=r"the checkpoint is at step 4, past this run's 2 steps"):
        _run(tmp_path, "resumed", sample_world_dir, max_steps=2, resume="latest", **common)
    # another run's checkpoint resumed into a folder holding a run would replace that run: refused
    with pytest.raises(MatPlusError, match=r"already holds another run; pass --overwrite"):
        _run(tmp_path, "straight", sample_world_dir, max_steps=4, resume=str(tmp_path / "resumed" / "ckpt"), **common)
    assert _metrics(tmp_path / "straight")[-1]["step"] == 4
    # --overwrite deletes --out first: never the run --resume names
    for resume, message in (("latest", "--resume latest continues the run in --out and --overwrite deletes it first"),
                            (str(tmp_path / "straight" / "ckpt"), "is inside --out .*, which --overwrite deletes first")):
        with pytest.raises(MatPlusError, match=message):
            _run(tmp_path, "straight", sample_world_dir, max_steps=4, resume=resume, overwrite=True, **common)
    assert _metrics(tmp_path / "straight")[-1]["step"] == 4
    # ... and with another run's checkpoint it replaces this folder's run by the continued one, as the error said
    continued, _ = _run(tmp_path, "straight", sample_world_dir, max_steps=4, resume=str(tmp_path / "resumed" / "ckpt"),
                        overwrite=True, **common)
    assert continued["resumed_from_step"] == 4
    here, there = _checkpoint_state(tmp_path / "straight"), _checkpoint_state(tmp_path / "resumed")
    assert all(torch.equal(here[name], there[name]) for name in there)  # 4 of 4 steps: nothing left to train


@pytest.mark.parametrize("damage", [b'{"steps": 2, "fin', b"[1, 2]\n", b'{"method": "cl\xffean"}'])
def test_resuming_a_finished_run_with_a_damaged_summary_is_one_line(tmp_path, sample_world_dir, capsys, damage):
    """A finished run resumed reads RUN/summary.json back to return it: truncated, not an object or not
    UTF-8 it was a JSONDecodeError traceback (exit 1, audit AZ). Now one line naming it, exit 2, nothing
    written; deleted as the line says, the resume writes it again from the final checkpoint."""
    from train.cli import main

    _run(tmp_path, "done", sample_world_dir, method="clean", pgd_steps=10)  # the CLI default: clean has no --pgd-steps
    run = tmp_path / "done"
    whole = (run / "summary.json").read_bytes()
    (run / "summary.json").write_bytes(damage)
    argv = ["clean", "--train-data", str(sample_world_dir), "--out", str(run), "--max-steps", "2", "--batch-size", "8",
            "--lr", "1e-4", "--log-every", "1", "--workers", "0", "--no-progress",
            "--resume", "latest"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert f"{run / 'summary.json'}: damaged" in lines[0] and "delete it" in lines[0]
    assert (run / "summary.json").read_bytes() == damage  # nothing written over it
    (run / "summary.json").unlink()
    assert main(argv) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == json.loads(whole)["steps"] == 2


@pytest.mark.parametrize("warmup, total", [(1, 4), (3, 10), (10, 100), (0, 5)])
def test_cosine_with_warmup_equals_open_clip_train_cosine_lr(warmup, total):
    import torch
    from open_clip_train.scheduler import cosine_lr

    from train.trainer import cosine_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    theirs = cosine_lr(optimizer, 0.5, warmup, total)
    ours = cosine_with_warmup(warmup, total)
    assert [0.5 * ours(step) for step in range(total)] == pytest.approx([theirs(step) for step in range(total)])
    assert ours(total) == 0.0 and ours(total + 5) == 0.0  # past the schedule: stays at 0


def test_albef_with_momentum_distillation_resumes_to_the_same_weights(tmp_path, sample_world_dir):
    """The checkpoint holds the momentum encoders and queues: they must exist before it is loaded."""
    from safetensors.torch import load_file

    common = dict(method="clean", model="tiny-albef", seed=2, batch_size=4, momentum_distillation=True)
    _run(tmp_path, "straight", sample_world_dir, max_steps=3, **common)
    _run(tmp_path, "resumed", sample_world_dir, max_steps=2, schedule_steps=3, **common)
    summary, records = _run(tmp_path, "resumed", sample_world_dir, max_steps=3, resume="latest", **common)
    assert [r.step for r in records] == [2] and summary["resumed_from_step"] == 2
    straight, resumed = (load_file(str(tmp_path / run / "ckpt" / "albef_model.safetensors")) for run in ("straight", "resumed"))
    assert "image_queue" in straight and straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_resume_with_a_longer_schedule_uses_it_from_the_first_resumed_step(tmp_path, sample_world_dir, caplog):
    """The optimizer state holds the lr the checkpoint's schedule set for the next step; a resume
    with another --max-steps takes its own schedule's lr from that step on, not one step late."""
    from train.trainer import cosine_with_warmup

    common = dict(method="clean", seed=3, warmup=1, lr=1e-3)
    _run(tmp_path, "run", sample_world_dir, max_steps=2, schedule_steps=4, **common)
    with caplog.at_level("WARNING", logger="train.trainer"):
        _run(tmp_path, "run", sample_world_dir, max_steps=6, resume="latest", **common)
    assert "the LR schedule now spans 6 steps (the run planned 4), from step 2 on" in caplog.text
    rates = [m["lr"] for m in _metrics(tmp_path / "run")]
    assert rates[:2] == pytest.approx([1e-3 * cosine_with_warmup(1, 4)(s) for s in (0, 1)])
    assert rates[2:] == pytest.approx([1e-3 * cosine_with_warmup(1, 6)(s) for s in range(2, 6)])
    assert cosine_with_warmup(1, 4)(2) != pytest.approx(cosine_with_warmup(1, 6)(2))  # the case tells them apart


def test_resume_refuses_another_source_at_the_same_path(tmp_path, sample_world_dir):
    """The source is compared by its rows, not its path: a dataset replaced in place would train on."""
    import shutil

    world = tmp_path / "world"
    shutil.copytree(sample_world_dir, world, symlinks=True)
    _run(tmp_path, "run", world, method="clean", max_steps=1, schedule_steps=2)
    document = next(world.glob("dataset_*.json"))
    data = json.loads(document.read_text())
    data["images"][0]["sentences"][0]["raw"] = "a caption that was not there"
    document.write_text(json.dumps(data))
    with pytest.raises(MatPlusError, match=r"--resume: the source's rows \(ids, splits, captions\) differ"):
        _run(tmp_path, "run", world, method="clean", max_steps=2, resume="latest")


def test_a_damaged_checkpoint_is_one_line_naming_its_file(tmp_path, sample_world_dir, capsys):
    import shutil

    from train.cli import main

    argv = ["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--batch-size", "4", "--workers", "0",
            "--no-progress", "--max-steps", "2"]
    assert main([*argv, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    for damaged, expected in (("train_state/optimizer.pt", "optimizer.pt: unreadable ("),
                              ("train_state/state.json", "state.json: unreadable ("),
                              ("open_clip_model.safetensors", "ckpt: its weights file is unreadable (")):
        copy = tmp_path / damaged.replace("/", "-")
        shutil.copytree(tmp_path / "run", copy)
        (copy / "ckpt" / damaged).write_bytes(b"garbage")
        capsys.readouterr()
        assert main([*argv, "--out", str(copy), "--resume", "latest"]) == 2, damaged
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and expected in err, err


@pytest.mark.parametrize("change, expected", [
    ({"step": -1}, "'step' must be a whole number >= 0, got -1"),
    ({"draws_total": -1}, "'draws_total' must map each source to a whole number of rows drawn, got -1"),
    ({"draws_total": "original"}, "'draws_total' must map each source"),
    ({"draws_total": {"original": float("nan")}}, "'draws_total' must map each source"),
    ({"elapsed_seconds": "x"}, "'elapsed_seconds' must be a number of seconds, got 'x'"),
])
def test_a_state_json_of_impossible_counters_is_one_line_naming_it(tmp_path, sample_world_dir, capsys, change, expected):
    """state.json's 'step' was checked to be an integer only: -1 was resumed "from step -1", exit 0; a
    draws_total that is a number was a TypeError traceback from Counter, a string was counted letter by
    letter, a NaN count a ValueError once the run had trained, an elapsed_seconds of text a ValueError (audit AZ)."""
    def damage(state_dir):
        path = state_dir / "state.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        return f"{path}: not a training state ({expected}"

    _resume_after_damage_is_one_line(tmp_path, sample_world_dir, capsys, damage)


def _resume_after_damage_is_one_line(tmp_path, sample_world_dir, capsys, damage) -> None:
    """A 1-step clean run, `damage(RUN/ckpt/train_state)` (which returns what the error line must say),
    then `--resume latest`: one `error:` line saying it, exit 2, no traceback, nothing in RUN written."""
    from train.cli import main

    run = tmp_path / "run"
    argv = ["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--batch-size", "4", "--workers", "0",
            "--no-progress", "--out", str(run)]
    assert main([*argv, "--max-steps", "1"]) == 0
    said = damage(run / "ckpt" / "train_state")
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    capsys.readouterr()
    assert main([*argv, "--max-steps", "2", "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert said in lines[0], lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE} == files  # nothing written


@pytest.mark.parametrize("lose", ["delete", "folder"])
def test_a_lost_rng_file_of_a_process_the_run_had_is_one_line(tmp_path, sample_world_dir, capsys, lose):
    """train_state/rng-<rank>.pt is absent only when resuming with more processes than the run had; one the
    run's own process saved, deleted or replaced by a folder, was skipped without a word and the resume
    drew other random numbers than the run would have, exit 0 (audit AZ)."""
    def damage(state_dir):
        rng = state_dir / "rng-0.pt"
        rng.unlink()
        if lose == "folder":
            rng.mkdir()
        return f"{rng}: missing (the run's process 0 saved its random states there)"

    _resume_after_damage_is_one_line(tmp_path, sample_world_dir, capsys, damage)


def test_a_lost_rng_file_of_another_process_stops_every_process_before_anything_is_written(tmp_path, sample_world_dir):
    """Under torchrun each process checked only its own rng-<rank>.pt: with rng-1.pt lost, process 0 went on,
    rewrote config.yaml, and was stopped by torchrun for process 1's failure, printing "interrupted: ... add
    --resume latest to the same command" after the error line. Every process now checks every file of the
    processes both runs have, before anything is written (audit BD)."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATPLUS_LOGLEVEL": "WARNING", "PYTHONPATH": str(repo)}
    run = tmp_path / "run"

    def train(steps):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   "train.cli", "clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--max-steps",
                   str(steps), "--batch-size", "8", "--workers", "0", "--no-progress", "--resume", "latest",
                   "--out", str(run)]
        return subprocess.run(command, cwd=repo, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=300)

    done = train(1)
    assert done.returncode == 0, done.stderr[-3000:]
    (run / "ckpt" / "train_state" / "rng-1.pt").unlink()
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    done = train(2)
    assert done.returncode != 0
    lines = {line for line in done.stderr.splitlines() if line.startswith(("error:", "interrupted:"))}
    assert lines == {f"error: {run / 'ckpt' / 'train_state' / 'rng-1.pt'}: missing (the run's process 1 saved its "
                     "random states there); copy the checkpoint again, resume from another one, or start over with "
                     "--overwrite"}, done.stderr[-3000:]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE} == files


def test_a_diverged_run_stops_in_one_line_before_saving(tmp_path, sample_world_dir):
    """A loss that is not finite stops the run instead of training on NaN weights (open_clip_train has
    no such check). metrics.jsonl stays strict JSON: the diverged line's loss is null, its value named
    in "nonfinite" (a bare NaN, as Python's json writes it, is refused by jq and JavaScript)."""
    with pytest.raises(MatPlusError, match=r"^step 2: the loss is nan: training diverged; stopped \(lower --lr"):
        _run(tmp_path, "diverged", sample_world_dir, method="clean", lr=1e12, max_steps=3, log_every=1)
    assert [m["step"] for m in _metrics(tmp_path / "diverged")] == [1, 2]

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    lines = [json.loads(line, parse_constant=refuse)
             for line in (tmp_path / "diverged" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] is None and lines[-1]["nonfinite"]["loss"] == "nan" and "nonfinite" not in lines[0]
    assert not (tmp_path / "diverged" / "ckpt").exists() and not (tmp_path / "diverged" / "summary.json").exists()


def test_an_update_that_leaves_nan_weights_stops_before_its_checkpoint(tmp_path, sample_world_dir):
    """A finite loss whose gradient overflows leaves NaN weights: the loss check saw them only a step
    later, after the step's checkpoint (or the final one, exit status 0) had saved them.

    The overflow is made here (an infinite gradient in the second update): `--lr 1e3` alone overflowed
    at step 2 on the machine that found this, but on another host (AVX-512; Python 3.11 and 3.12 alike)
    its step-2 gradients peaked at 2e9-7e9, varying from run to run, the weights stayed finite and the
    run finished with exit status 0, failing this test."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    updates, overflowed = [], []

    def overflow_second_update(optimizer, args, kwargs):
        updates.append(optimizer)
        if len(updates) == 2:
            param = next(p for group in optimizer.param_groups for p in group["params"] if p.grad is not None)
            param.grad.view(-1)[0] = float("inf")
            overflowed.append(param)

    handle = register_optimizer_step_pre_hook(overflow_second_update)
    try:
        with pytest.raises(MatPlusError, match=r"^step 2: its update left \S+ NaN or infinite \(the step's loss was 2\.0"):
            _run(tmp_path, "nanweights", sample_world_dir, method="clean", lr=1e3, max_steps=3, save_every=1)
    finally:
        handle.remove()
    assert len(updates) == 2 and torch.isnan(overflowed[0]).any()  # it stopped after the update that left NaN
    assert [m["step"] for m in _metrics(tmp_path / "nanweights")] == [1, 2]
    state = json.loads((tmp_path / "nanweights" / "ckpt" / "train_state" / "state.json").read_text())
    assert state["step"] == 1  # the last good checkpoint is kept
    weights = _checkpoint_state(tmp_path / "nanweights")
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


# ----------------------------------------------------------------------------- two processes


def test_two_process_cpu_run_equals_one_process_with_the_global_batch(tmp_path, sample_world_dir, source):
    """DDP over gloo: gathered embeddings and keys give the single-process update exactly."""
    from train.data import TrainData

    seed = 16  # its first global batch holds two captions of one image, one on each process
    first = [view.key for view in TrainData(source, seed=seed).plan(0, 8).views]
    assert set(first[:4]) & set(first[4:])
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATPLUS_LOGLEVEL": "ERROR"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train.cli",
        "clean", "--train-data", str(sample_world_dir), "--out", str(out), "--max-steps", "2", "--batch-size", "4",
        "--lr", "1e-4", "--cpu", "--no-progress", "--seed", str(seed),
    ]
    # own process group, so a hang kills the launcher's workers too
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        output, _ = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        raise
    assert launcher.returncode == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 8
    _run(tmp_path, "single", sample_world_dir, method="clean", batch_size=8, seed=seed)
    two, one = _checkpoint_state(out), _checkpoint_state(tmp_path / "single")
    for name in one:
        assert torch.allclose(two[name], one[name], atol=1e-5), name
    assert [m["loss"] for m in _metrics(out)] == pytest.approx([m["loss"] for m in _metrics(tmp_path / "single")], abs=1e-4)


# ----------------------------------------------------------------------------- open_clip_train's flags, loader workers


def test_workers_give_bit_identical_weights(tmp_path, sample_world_dir):
    """Batches decoded by 2 DataLoader workers train to exactly the weights of decoding in-process."""
    common = dict(method="tecoa", pgd_steps=1, seed=4, max_steps=3)
    _, inline = _run(tmp_path, "inline", sample_world_dir, **{**common, "workers": 0})
    _, workers = _run(tmp_path, "workers", sample_world_dir, **{**common, "workers": 2})
    assert [r.plan.views for r in inline] == [r.plan.views for r in workers]
    zero, two = _checkpoint_state(tmp_path / "inline"), _checkpoint_state(tmp_path / "workers")
    assert zero.keys() == two.keys()
    for name in zero:
        assert torch.equal(zero[name], two[name]), name


def test_metrics_report_the_time_each_step_waited_for_its_batch(tmp_path, sample_world_dir, monkeypatch):
    """`data_seconds` (open_clip_train's data time) is the loader's share of `seconds`: a loader made
    0.3 s slower per batch shows up there, and the step's seconds include it."""
    import time

    from train import data

    decode = data.MicroBatches.__getitem__

    def slow(self, micro_step):
        time.sleep(0.3)
        return decode(self, micro_step)

    monkeypatch.setattr(data.MicroBatches, "__getitem__", slow)
    _run(tmp_path, "slow", sample_world_dir, method="clean", workers=0)
    metrics = _metrics(tmp_path / "slow")
    assert [m["step"] for m in metrics] == [1, 2]
    for record in metrics:
        assert 0.3 <= record["data_seconds"] <= record["seconds"]


def test_open_clip_train_flag_names(tmp_path, sample_world_dir, capsys):
    import yaml

    from train.cli import build_parser, config_from_args, main
    from train.config import ACCELERATE_PRECISION, ConfigError, read_yaml_config, report_targets

    args = build_parser().parse_args([
        "tecoa", "--train-data", "data.tsv", "--out", "run", "--wd", "0.2", "--warmup", "10", "--eps", "1e-8",
        "--precision", "amp_bf16", "--workers", "0", "--report-to", "tensorboard,wandb", "--wandb-project-name", "p",
        "--lock-image", "--no-lock-text", "--grad-checkpointing", "--attack-eps", "4/255", "--resume", "latest",
        "--val-frequency", "2", "--val-attack", "sga", "--csv-img-key", "filepath", "--csv-caption-key", "title",
        "--csv-separator", ";",
    ])
    config = config_from_args(args)
    assert (config.wd, config.warmup, config.eps, config.attack_eps) == (0.2, 10, 1e-8, pytest.approx(4 / 255))
    assert ACCELERATE_PRECISION[config.precision] == "bf16" and config.workers == 0
    assert report_targets(config) == {"tensorboard", "wandb"} and config.wandb_project_name == "p"
    assert config.lock_image and config.lock_text is False and config.grad_checkpointing and config.resume == "latest"
    assert (config.csv_img_key, config.csv_caption_key, config.csv_separator) == ("filepath", "title", ";")
    assert config.pgd_step_size == pytest.approx(1 / 255)

    def fails(argv, *expected):
        out = tmp_path / "refused"
        assert main([*argv, "--train-data", str(sample_world_dir), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(e in err for e in expected), err
        assert not out.exists()

    # the old PGD spelling names the new flag; a budget-sized Adam epsilon too
    fails(["tecoa", "--eps", "2/255"], "AdamW's epsilon", "--attack-eps")
    fails(["tecoa", "--eps", "0.0078"], "AdamW's epsilon", "--attack-eps")
    fails(["clean", "--precision", "pure_bf16"], "--precision pure_bf16", "amp_bf16")
    fails(["clean", "--report-to", "mlflow"], "--report-to")
    if not torch.cuda.is_available():  # accelerate runs no fp16 autocast on a CPU: amp trained in fp32, recorded amp
        fails(["clean", "--precision", "amp"], "--precision amp (fp16 autocast) runs on a GPU; on a CPU use amp_bf16 or fp32")
    fails(["fare", "--lock-image"], "nothing to train")
    fails(["clean", "--wd", "inf"], "--wd must be non-negative and finite, got inf")  # trained to NaN before
    fails(["mat", "--clean-weight", "inf"], "--clean-weight must be non-negative and finite")
    fails(["clean", "--resume", str(tmp_path / "nowhere")], "--resume", "checkpoint folder")
    # a bad value from a --config file names the file (the same flag on the command line needs no pointer)
    (tmp_path / "bad.yaml").write_text("lr: -1\n")
    fails(["clean", "--config", str(tmp_path / "bad.yaml")],
          f"--lr must be positive and finite, got -1.0 (lr from {tmp_path / 'bad.yaml'})")
    fails(["clean", "--lr", "inf"], "--lr must be positive and finite, got inf")  # said "must be positive"
    fails(["clean", "--seed", "-1"], "--seed must be non-negative, got -1")
    # past torch's seed range: "ValueError: Overflow when unpacking long long" traceback until audit AZ
    fails(["clean", "--seed", str(2**64)], f"--seed must be at most 2**64 - 1 (torch's largest seed), got {2**64}")
    (tmp_path / "seed.yaml").write_text(f"seed: {10**30}\n")
    fails(["clean", "--config", str(tmp_path / "seed.yaml")], "--seed must be at most 2**64 - 1")
    # the truth filter judges captions, not whether an expression still singles out its object
    fails(["mat", "--task", "grounding", "--model", "tiny-albef", "--text-attack-filter", "truth"],
          "--text-attack-filter truth judges captions of a scene", "not for --task grounding")
    fails(["mat", "--task", "captioning", "--model", "tiny-captioner", "--albef-config", "x.json"],  # was ignored
          "--albef-config applies to --task retrieval and grounding (ALBEF/TCL), not captioning")
    # old flags are gone (argparse's error), abbreviations are refused
    for old in (["--weight-decay", "0.1"], ["--warmup-steps", "1"], ["--tensorboard"], ["--freeze-text"],
                ["--source", "x"], ["--warm", "10"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["tecoa", *old])
    for old in (["--mlm-top-k", "5"], ["--text-attack", "wordnet"]):  # mat has the text attack's options
        with pytest.raises(SystemExit):
            build_parser().parse_args(["mat", *old])
    # a YAML file of the old keys names the new ones
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"source": "s", "weight_decay": 0.1, "eps": "2/255", "mlm_top_k": 5,
                                                       "text_attack": "mlm"}))
    with pytest.raises(ConfigError, match="mlm_top_k is now top_k; source is now train_data; "
                                          "text_attack is now text_candidates; weight_decay is now wd"):
        read_yaml_config(tmp_path / "old.yaml")
    # substitutes per word, and where they come from: one name each in training and in train eval
    args = build_parser().parse_args(["mat", "--top-k", "5", "--text-candidates", "wordnet"])
    assert args.top_k == 5 and args.text_candidates == "wordnet"


def test_a_config_file_setting_the_method_does_not_offer_is_refused(tmp_path, capsys):
    """`train clean --config` with attack settings used to record them in config.yaml, read by nothing."""
    from train.cli import main

    (tmp_path / "c.yaml").write_text("pgd_steps: 7\nword_budget: 3\nlr: 0.001\n")
    assert main(["clean", "--config", str(tmp_path / "c.yaml"), "--model", "tiny-clip", "--train-data", "d",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'c.yaml'}: train clean does not read pgd_steps (read by tecoa, fare, mat, mat+); "
                   "word_budget (read by mat, mat+): leave them out")
    assert not (tmp_path / "run").exists()
    # a value equal to what the method resolves anyway (a saved config.yaml of the same method) passes
    from train.cli import build_parser, config_from_args
    from train.config import resolve_config, save_config

    saved = save_config(resolve_config({"method": "clean", "train_data": "d", "out": "o", "model": "tiny-clip"}), tmp_path / "saved")
    config = config_from_args(build_parser().parse_args(["clean", "--config", str(saved), "--out", str(tmp_path / "again")]))
    assert config.method == "clean" and config.pgd_steps == 10


def test_a_run_saved_under_older_names_still_resumes(tmp_path):
    """RUN/config.yaml written before a rename that kept the meaning is read under the new names
    (nothing to conflict with); a user's --config file of those names is still refused (above)."""
    import yaml

    from train.config import ConfigError, load_saved_config, read_yaml_config, resolve_config, resume_conflicts, save_config

    config = resolve_config({"method": "mat", "train_data": "d", "out": str(tmp_path), "top_k": 4, "wd": 0.2,
                             "text_candidates": "wordnet", "warmup": 3})
    path = save_config(config, tmp_path)
    old_names = {"top_k": "mlm_top_k", "text_candidates": "text_attack", "wd": "weight_decay", "warmup": "warmup_steps",
                 "train_data": "source"}
    written = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({old_names.get(k, k): v for k, v in written.items()}, sort_keys=False))
    saved = load_saved_config(tmp_path)
    assert saved["text_candidates"] == "wordnet" and saved["top_k"] == 4 and "text_attack" not in saved
    assert resume_conflicts(saved, config) == []
    # the record of the version before open_clip_train's names, as it wrote it (f852f0a^): logger
    # switches, `eps` the PGD budget, accelerate's precision names, Adam's epsilon not recorded
    before = {old_names.get(k, k): v for k, v in written.items() if k not in ("attack_eps", "eps", "report_to", "precision")}
    path.write_text(yaml.safe_dump({**before, "eps": config.attack_eps, "precision": "no", "tensorboard": False,
                                    "wandb": False, "resume": False}, sort_keys=False))
    saved = load_saved_config(tmp_path)
    assert (saved["attack_eps"], saved["precision"], saved["report_to"]) == (config.attack_eps, "fp32", "none")
    assert "eps" not in saved and resume_conflicts(saved, config) == []
    path.write_text(yaml.safe_dump({**before, "eps": 4 / 255, "precision": "bf16", "tensorboard": True, "wandb": True}))
    saved = load_saved_config(tmp_path)
    assert (saved["attack_eps"], saved["precision"], saved["report_to"]) == (4 / 255, "amp_bf16", "all")
    assert resume_conflicts(saved, config) == ["attack_eps", "precision"]  # loggers may change on resuming
    # a --config file of the user's with those keys is refused, naming the new one
    path.write_text(yaml.safe_dump({**written, "tensorboard": True}))
    with pytest.raises(ConfigError, match="unknown settings \\['tensorboard'\\]"):
        read_yaml_config(path)


def test_an_absent_validation_split_stops_before_the_run_is_written(tmp_path, sample_world_dir):
    from augment.errors import SourceError

    # was: config.yaml written, then the first validation (step 0, or an epoch in) failed
    with pytest.raises(SourceError, match=r"validation \(--val-frequency\): .*'restval'.*--val-split or --val-data"):
        _run(tmp_path, "badval", sample_world_dir, method="clean", val_frequency=1, val_split="restval")
    assert not (tmp_path / "badval").exists()


def test_validation_under_the_synonym_attack_without_wordnet_stops_before_the_run_is_written(
        tmp_path, sample_world_dir, monkeypatch):
    """was: config.yaml and validation.jsonl written, then the first validation failed, and the same
    command was refused as a run already there."""
    import augment.wordnet
    from augment.errors import MissingDependencyError

    def absent():
        raise MissingDependencyError("WordNet for nltk is not installed")

    monkeypatch.setattr(augment.wordnet, "require_wordnet", absent)
    with pytest.raises(MissingDependencyError, match="WordNet"):
        _run(tmp_path, "nownet", sample_world_dir, method="clean", val_frequency=1, val_attack="synonym")
    assert not (tmp_path / "nownet").exists()


def test_the_source_options_every_command_takes(tmp_path, sample_world_dir, source, monkeypatch):
    """--allow-outside-root (an open_clip TSV's absolute paths), --skip-bad (report beside --out),
    and a bad image met in training named by its record; --val-attack clean, validation sent to
    the loggers, --report-to '' and --precision amp_bfloat16, open_clip_train's spellings."""
    import shutil

    from train.run_log import MetricsLog

    reported = []
    monkeypatch.setattr(MetricsLog, "report", lambda self, step, scalars: reported.append((step, scalars)))

    from augment.errors import SourceError
    from augment.sources import select_split, undecoded
    from train.config import resolve_config

    train = undecoded(select_split(source, "train"))
    lines = ["filepath\ttitle"] + [f"{Path(row['image']['path']).resolve()}\t{row['captions'][0]}" for row in train]
    tsv = tmp_path / "absolute.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    common = dict(method="clean", train_data=str(tsv), csv_img_key="filepath", csv_caption_key="title", max_steps=1)
    with pytest.raises(SourceError, match="--allow-outside-root"):
        _run(tmp_path, "refused", sample_world_dir, **common)
    summary, _ = _run(tmp_path, "absolute", sample_world_dir, allow_outside_root=True, val_frequency=1,
                      val_attack="clean", val_limit=4, val_data=str(sample_world_dir), **common)
    assert summary["train_items"] == len(lines) - 1 and summary["validation"]["last"]["attack"] == "clean"
    assert summary["validation"]["last"]["robust"] == summary["validation"]["last"]["clean"]
    last = summary["validation"]["last"]
    assert [step for step, _ in reported] == [0, 1] and reported[-1][1] == {"val/robust_r1": last["robust"],
                                                                           "val/clean_r1": last["clean"]}

    world = tmp_path / "world"
    shutil.copytree(sample_world_dir, world)
    images = sorted((world / "images").iterdir())
    images[0].unlink()
    images[0].write_bytes(b"not an image")
    summary, _ = _run(tmp_path, "skipping", world, method="clean", skip_bad=True)
    report = json.loads((tmp_path / "skipping.skipped.json").read_text())
    assert len(report["skipped"]) == 1 and summary["train_items"] > 0
    for image in images:  # every training image bad: the first batch meets one, named by its record
        image.unlink()
        image.write_bytes(b"not an image")
    with pytest.raises(SourceError, match=r"^image '\w+' \(.*\.png\): unreadable or corrupt image"):
        _run(tmp_path, "bad", world, method="clean")

    assert resolve_config({"precision": "amp_bfloat16", "report_to": ""}, {
        "method": "clean", "train_data": "x", "out": "y"}).precision == "amp_bf16"  # one spelling per precision


def test_tsv_train_data_locked_image_tower_validation_and_resume_from_a_checkpoint(tmp_path, sample_world_dir, source,
                                                                                   capsys):
    """open_clip's TSV with its column names; --lock-image keeps the image tower; --val-frequency
    validates at the start and after the last step; --resume CKPT continues another run's checkpoint."""
    from augment.sources import select_split
    from models import load_model

    train = select_split(source, "train")
    lines = ["filepath\ttitle"] + [f"{Path(row['image']['path']).relative_to(sample_world_dir)}\t{caption}"
                                   for row in train.cast_column("image", train.features["image"].__class__(decode=False))
                                   for caption in row["captions"]]
    tsv = tmp_path / "train.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    common = dict(method="clean", csv_img_key="filepath", csv_caption_key="title", image_root=str(sample_world_dir),
                  lock_image=True, grad_checkpointing=True, seed=1)
    summary, _ = _run(tmp_path, "tsv", sample_world_dir, train_data=str(tsv), val_frequency=1,
                      val_data=str(sample_world_dir), val_limit=4, val_attack="pgd", **common)
    assert summary["train_items"] == len(lines) - 1
    original, trained = load_model("tiny-clip").model.state_dict(), _checkpoint_state(tmp_path / "tsv")
    assert torch.equal(trained["visual.conv1.weight"], original["visual.conv1.weight"])
    assert not torch.equal(trained["token_embedding.weight"], original["token_embedding.weight"])
    curve = [json.loads(line) for line in (tmp_path / "tsv" / "validation.jsonl").read_text().splitlines()]
    assert [line["step"] for line in curve] == [0, 2]
    best = json.loads((tmp_path / "tsv" / "best" / "validation.json").read_text())
    # summary.json and the run's output say how validation went, not only validation.jsonl
    assert summary["validation"]["last"] == curve[-1] and summary["validation"]["best"] == best
    assert summary["validation"]["best_weights"] == str(tmp_path / "tsv" / "best")
    out, err = capsys.readouterr()
    assert [line.split(":")[0].strip() for line in err.splitlines() if "val robust R@1" in line] == ["step    0", "step    2"]
    assert f"validation (pgd): best robust R@1 {best['robust']:.1f} at step {best['step']}" in out
    resumed, records = _run(tmp_path, "continued", sample_world_dir, train_data=str(tsv), max_steps=3,
                            resume=str(tmp_path / "tsv" / "ckpt"), **common)
    assert resumed["resumed_from_step"] == 2 and [r.step for r in records] == [2]


def test_summary_line_names_what_validation_ranked():
    """--val-attack clean ranks clean R@1: the run's last lines must not call it robust."""
    from train.trainer import _summary_line

    def line(attack):
        best = {"attack": attack, "robust": 41.0, "clean": 55.0, "step": 4}
        return _summary_line({"method": "mat", "steps": 4, "pool_draws": {}, "final": {"loss": 1.0}, "checkpoint": "ckpt",
                              "validation": {"best": best, "last": best, "best_weights": "best"}})

    assert "validation (pgd): best robust R@1 41.0 at step 4 (clean 55.0), weights in best" in line("pgd")
    assert "validation (clean): best clean R@1 41.0 at step 4, weights in best" in line("clean")
    assert "robust" not in line("clean")
