"""Review fixes of `train`: derived settings of a saved config.yaml derived again when it is fed
back; a validation source without splits, or with its images elsewhere; a checkpoint without its
training state; spellings of one setting on resume; open_clip_train's option names; a killed
DataLoader worker. Runs are one or two steps of the tiny CLIP on the sample world."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

FAST = ["--batch-size", "8", "--no-progress", "--workers", "0", "--model", "tiny-clip"]


def _args(*argv):
    from train.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args([str(a) for a in argv]))


def _saved(tmp_path, name, **settings) -> Path:
    """RUN/config.yaml of a run of `settings`, as the trainer writes it."""
    from train.config import config_path, resolve_config, save_config

    save_config(resolve_config({"train_data": "s.json", "out": str(tmp_path / name), **settings}), tmp_path / name)
    return config_path(tmp_path / name)


def _main(capsys, *argv) -> tuple[int, str]:
    from train.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, sample_world_dir) -> Path:
    """A clean run of one step (a checkpoint with its train_state/), copied by the tests that change it."""
    from train.cli import main

    run = tmp_path_factory.mktemp("runs") / "clean"
    assert main(["clean", "--train-data", str(sample_world_dir), "--out", str(run), "--max-steps", "1", *FAST]) == 0
    return run


# ----------------------------------------------------------------------------- 1. derived settings


def test_a_fed_back_config_derives_the_pgd_step_from_the_new_budget(tmp_path):
    """was: pgd_step_size stayed (old eps)/4: `--attack-eps 4/255` attacked with the old, weaker step."""
    saved = _saved(tmp_path, "v4", method="tecoa", attack_eps="2/255")
    assert yaml.safe_load(saved.read_text())["pgd_step_size"] is None
    config = _args("tecoa", "--config", saved, "--attack-eps", "4/255", "--out", tmp_path / "x")
    assert config.pgd_step_size == pytest.approx(4 / 255 / 4)
    # a step the user gave is kept
    given = _saved(tmp_path, "given", method="tecoa", pgd_step_size="1/255")
    config = _args("tecoa", "--config", given, "--attack-eps", "4/255", "--out", tmp_path / "x")
    assert config.pgd_step_size == pytest.approx(1 / 255)


def test_a_fed_back_config_derives_the_masked_lm_and_the_locked_tower_again(tmp_path):
    from augment.registry import DEFAULT_MODELS

    mat = _saved(tmp_path, "tiny", method="mat")
    config = _args("mat", "--config", mat, "--model", "ViT-B-32", "--pretrained", "openai", "--out", tmp_path / "x")
    assert config.mlm == DEFAULT_MODELS["mlm"] != "tiny-mlm"  # was: tiny-mlm, the old model's
    tecoa = _saved(tmp_path, "tecoa", method="tecoa")
    # was: "--lock-image and --lock-text together", the stored lock_text being tecoa's default
    config = _args("tecoa", "--config", tecoa, "--lock-image", "--out", tmp_path / "x")
    assert config.lock_image and config.lock_text is False
    # and pools: equal weights were stored for the old number of pools
    pooled = _saved(tmp_path, "pooled", method="mat+", pools=["p", "q"])
    config = _args("mat+", "--config", pooled, "--pools", "p", "q", "r", "--out", tmp_path / "x")
    assert config.pool_weights == [1.0, 1.0, 1.0]


def test_the_run_record_keeps_the_derived_values_for_resume(tmp_path):
    from train.config import load_saved_config, resolve_config, resume_conflicts

    saved = _saved(tmp_path, "run", method="mat", attack_eps="2/255")
    written = yaml.safe_load(saved.read_text())
    assert written["derived"]["pgd_step_size"] == pytest.approx(2 / 255 / 4) and written["derived"]["mlm"] == "tiny-mlm"
    record = load_saved_config(tmp_path / "run")
    assert record["pgd_step_size"] == pytest.approx(2 / 255 / 4) and "derived" not in record
    same = resolve_config({"method": "mat", "train_data": "s.json", "out": str(tmp_path / "run"), "attack_eps": "2/255"})
    assert resume_conflicts(record, same) == []
    other_step = resolve_config({"method": "mat", "train_data": "s.json", "out": "o", "attack_eps": "2/255",
                                 "pgd_step_size": "1/255"})
    assert resume_conflicts(record, other_step) == ["pgd_step_size"]


def test_a_run_resumed_with_its_own_config_gets_the_same_settings(tmp_path, trained_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, err = _main(capsys, "clean", "--config", run / "config.yaml", "--resume", "latest", "--max-steps", "2",
                      "--out", run)
    assert code == 0, err
    assert f"resuming from {run / 'ckpt'} at step 1 of 2" in err
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


# ----------------------------------------------------------------------------- 2, 3. validation data


def _open_clip_tsv(path: Path, world: Path, split: str) -> Path:
    """An open_clip-style TSV (no split column) of one split of the world, image paths relative to it."""
    data = json.loads(next(world.glob("dataset_*.json")).read_text())
    lines = ["filepath\ttitle"] + [f"images/{entry['filename']}\t{entry['sentences'][0]['raw']}"
                                   for entry in data["images"] if entry["split"] == split]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_validation_tsv_without_splits_is_validated_on_whole_with_its_own_image_root(tmp_path, sample_world_dir,
                                                                                          capsys):
    """was: read wholly as "train" and refused for having no "val" rows unless --val-split train; and its
    images, in another folder than the TSV, could not be found (--image-root is the train data's)."""
    val = _open_clip_tsv(tmp_path / "val.tsv", sample_world_dir, "val")
    assert not (tmp_path / "images").exists()  # the paths lead nowhere from the TSV's own folder
    common = ["clean", "--train-data", sample_world_dir, "--max-steps", "1", "--val-frequency", "1",
              "--val-data", val, "--val-attack", "clean", "--val-limit", "4", "--csv-img-key", "filepath",
              "--csv-caption-key", "title", *FAST]
    code, err = _main(capsys, *common, "--out", tmp_path / "elsewhere")
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: --val-data {val}: "), err
    assert not (tmp_path / "elsewhere").exists()
    code, err = _main(capsys, *common, "--val-image-root", sample_world_dir, "--out", tmp_path / "run")
    assert code == 0, err
    curve = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert [line["step"] for line in curve] == [0, 1] and curve[0]["settings"]["split"] == "val"


def test_a_validation_source_with_splits_still_takes_val_split(tmp_path, sample_world_dir, capsys):
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--max-steps", "1", "--val-frequency", "1",
                      "--val-data", sample_world_dir, "--val-split", "test", "--val-limit", "2", "--val-attack", "clean",
                      *FAST, "--out", tmp_path / "test")
    assert code == 0, err
    (tmp_path / "tagged.tsv").write_text("filepath\ttitle\tsplit\nimages/x.png\ta cat\ttrain\n")
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--val-frequency", "1",
                      "--val-data", tmp_path / "tagged.tsv", "--csv-img-key", "filepath", "--csv-caption-key", "title",
                      *FAST, "--out", tmp_path / "refused")
    assert code == 2 and err.startswith(f"error: --val-data {tmp_path / 'tagged.tsv'}: "), err
    # a file that names its split (ALBEF's flickr30k_test.json) keeps it: not validated on as "val" (model
    # selection on test data), refused unless --val-split test asks for it
    data = json.loads(next(sample_world_dir.glob("dataset_*.json")).read_text())
    entries = [{"image": f"images/{entry['filename']}", "caption": entry["sentences"][0]["raw"]}
               for entry in data["images"] if entry["split"] == "test"][:4]
    test_file = tmp_path / "flickr30k_test.json"
    test_file.write_text(json.dumps(entries))
    common = ["clean", "--train-data", sample_world_dir, "--max-steps", "1", "--val-frequency", "1", "--val-data",
              test_file, "--val-image-root", sample_world_dir, "--val-attack", "clean", "--val-limit", "2", *FAST]
    code, err = _main(capsys, *common, "--out", tmp_path / "on-test")
    assert code == 2 and "no 'val' rows" in err and "'test'" in err, err
    code, err = _main(capsys, *common, "--val-split", "test", "--out", tmp_path / "on-test-asked")
    assert code == 0, err


def test_val_image_root_without_val_data_is_refused(tmp_path):
    from train.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match="^--val-image-root is not read without --val-frequency and --val-data"):
        resolve_config({"train_data": "s.json", "out": "o", "val_frequency": 1, "val_image_root": "imgs"})


# ----------------------------------------------------------------------------- 4. weights without train_state/


def test_resume_latest_on_weights_without_their_train_state_is_refused(tmp_path, trained_run, capsys):
    """was: "has no checkpoint yet; starting from step 0", then a run from scratch replaced RUN/ckpt."""
    run = tmp_path / "shared"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "ckpt" / "train_state")  # the README's way of sharing only the model
    before = {p.name: p.stat().st_mtime_ns for p in (run / "ckpt").iterdir()}
    code, err = _main(capsys, "clean", "--config", run / "config.yaml", "--out", run, "--resume", "latest",
                      "--max-steps", "2", "--no-progress")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --resume latest: {run / 'ckpt'} has weights but no train_state/: it cannot be resumed")
    assert "--overwrite" in err and "--model" in err
    assert {p.name: p.stat().st_mtime_ns for p in (run / "ckpt").iterdir()} == before  # nothing retrained over it
    code, err = _main(capsys, "clean", "--config", run / "config.yaml", "--out", tmp_path / "other",
                      "--resume", run / "ckpt", "--no-progress")
    assert code == 2 and "has weights but no train_state/" in err and f"--model {run / 'ckpt'}" in err, err


def test_a_folder_of_neither_weights_nor_train_state_is_not_said_to_hold_weights(tmp_path):
    """Guards a mutation (audit BX, BW's un-run M47): a folder holding any file taken for one with weights (the
    glob for *.safetensors widened), so `--resume` of a folder of a model's config alone advised training on
    from its weights, unnoticed; only a folder with weights is told so."""
    from types import SimpleNamespace

    from train.checkpoint import unresumable_reason
    from train.config import ConfigError
    from train.run_folder import check_run_folder

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert unresumable_reason(folder) == f"{folder} has no train_state/state.json: it cannot be resumed"
    with pytest.raises(ConfigError, match=r"not a checkpoint folder \(no train_state/state.json\)$"):
        check_run_folder(tmp_path / "out", SimpleNamespace(resume=str(folder), overwrite=False))
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    assert unresumable_reason(folder) == f"{folder} has weights but no train_state/: it cannot be resumed"


# ----------------------------------------------------------------------------- 5. spellings on resume


def test_spellings_of_one_setting_are_one_setting(tmp_path):
    from train.config import load_saved_config, resolve_config, resume_conflicts

    def resolved(**settings):
        return resolve_config({"method": "clean", "out": str(tmp_path / "run"), **settings})

    assert resolved(train_data="s.json", precision="amp_bfloat16").precision == "amp_bf16"
    assert resolved(train_data="s.json", precision="amp_fp16").precision == "amp"
    assert resolved(train_data="t.tsv", csv_separator="\\t").csv_separator is None  # the .tsv default, typed as open_clip's
    assert resolved(train_data="t.csv", csv_separator=",").csv_separator is None
    assert resolved(train_data="t.csv", csv_separator="\\t").csv_separator == "\t"
    assert resolved(train_data="t.csv", csv_separator=";").csv_separator == ";"
    # a tab for a .tsv and a .csv: not the .csv's default, so kept
    assert resolved(train_data="t.tsv", csv_separator="\t", val_frequency=1, val_data="v.csv").csv_separator == "\t"

    # runs saved with the other spelling (before this fix: as typed) resume
    started = resolved(train_data="t.tsv", precision="amp_bf16")
    from train.config import save_config

    path = save_config(started, tmp_path / "run")
    old = yaml.safe_load(path.read_text())
    old.update(old.pop("derived"), precision="amp_bfloat16", csv_separator="\\t")
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    record = load_saved_config(tmp_path / "run")
    assert resume_conflicts(record, resolved(train_data="t.tsv", precision="amp_bf16")) == []
    assert resume_conflicts(record, resolved(train_data="t.tsv", precision="amp_bfloat16", csv_separator="\t")) == []
    assert resume_conflicts(record, resolved(train_data="t.tsv", precision="amp_bf16", csv_separator=",")) == ["csv_separator"]
    assert resume_conflicts(record, resolved(train_data="t.tsv", precision="fp32")) == ["precision"]


# ----------------------------------------------------------------------------- 6. open_clip_train's names


def test_open_clip_train_names_of_clipping_and_logging_and_their_old_aliases(tmp_path):
    from train.cli import build_parser
    from train.config import ConfigError, read_yaml_config

    parse = build_parser().parse_args
    for flag in ("--grad-clip-norm", "--max-grad-norm"):
        assert parse(["clean", flag, "1.5"]).max_grad_norm == 1.5
    for flag in ("--log-every-n-steps", "--log-every"):
        assert parse(["clean", flag, "3"]).log_every == 3
    method_help = next(a for a in build_parser()._actions if a.dest == "command").choices["clean"].format_help()
    assert method_help.index("--grad-clip-norm") < method_help.index("--max-grad-norm")
    assert method_help.index("--log-every-n-steps") < method_help.index("--log-every ")
    # config.yaml keeps the setting's key (older runs resume); a YAML file may use open_clip's name
    saved = _saved(tmp_path, "run", method="clean", max_grad_norm=1.0, log_every=2)
    assert {"max_grad_norm", "log_every"} <= set(yaml.safe_load(saved.read_text()))
    (tmp_path / "open_clip.yaml").write_text("grad-clip-norm: 2.0\nlog_every_n_steps: 5\n")
    assert read_yaml_config(tmp_path / "open_clip.yaml") == {"max_grad_norm": 2.0, "log_every": 5}
    (tmp_path / "both.yaml").write_text("grad_clip_norm: 2.0\nmax_grad_norm: 1.0\n")
    with pytest.raises(ConfigError, match="grad_clip_norm and max_grad_norm are one setting"):
        read_yaml_config(tmp_path / "both.yaml")


def test_a_bad_clip_norm_from_a_config_file_names_the_file(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("max_grad_norm: -1\n")
    code, err = _main(capsys, "clean", "--config", tmp_path / "c.yaml", "--train-data", "d", "--out", tmp_path / "r")
    assert code == 2 and err == f"error: --grad-clip-norm must be positive and finite, got -1.0 (max_grad_norm from {tmp_path / 'c.yaml'})"


# ----------------------------------------------------------------------------- 7. a killed DataLoader worker


class _KilledInAWorker(torch.utils.data.Dataset):
    """Kills the worker process that reads it (as the OOM killer would); fine in the main process."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), 9)
        return index


def test_a_killed_loader_worker_is_one_error_naming_workers_and_resume():
    from augment.loading import DataWorkerDied
    from train.data import micro_batches

    with pytest.raises(DataWorkerDied, match=r"^a data-loading worker process died \(DataLoader worker \(pid.*likely out "
                                             r"of memory: use fewer --workers \(1 now.*\), then --resume latest continues"):
        list(micro_batches(_KilledInAWorker(), 0, 4, workers=1, pin_memory=False))
    assert list(micro_batches(_KilledInAWorker(), 0, 4, workers=0, pin_memory=False)) == [0, 1, 2, 3]


def test_train_with_a_killed_loader_worker_exits_2_in_one_line(tmp_path, sample_world_dir, capsys, monkeypatch):
    """was: a traceback of torch's `RuntimeError: DataLoader worker (pid N) is killed by signal: Killed.`, exit 1."""
    from train.data import MicroBatches

    original = MicroBatches.__getitem__

    def killed_in_a_worker(self, micro_step):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), 9)
        return original(self, micro_step)

    monkeypatch.setattr(MicroBatches, "__getitem__", killed_in_a_worker)
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--out", tmp_path / "run", "--max-steps", "1",
                      "--batch-size", "8", "--no-progress", "--workers", "1")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: a data-loading worker process died") and "--resume latest" in err


def test_a_worker_dying_in_the_final_validation_is_one_line(tmp_path, sample_world_dir, capsys, monkeypatch):
    """The validation after the last step runs outside the training loop's conversion: a dead decoding
    worker of its evaluation (the OOM killer) was torch's traceback, exit 1 (review V)."""
    from train.validation import Validator

    original = Validator.validate

    def dies_at_the_end(self, step, *args, **kwargs):
        if step == 1:  # the final validation; step 0's runs as it does
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(Validator, "validate", dies_at_the_end)
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--out", tmp_path / "run", "--max-steps", "1",
                      "--batch-size", "8", "--no-progress", "--workers", "0", "--val-frequency", "1", "--val-limit", "2",
                      "--val-attack", "clean")
    last = err.strip().splitlines()[-1]  # after step 0's validation line
    assert code == 2 and last.startswith("error: a data-loading worker process died") and "--resume latest" in last, err
    # the final checkpoint was saved before that validation: --resume latest redoes the validation alone
    # (it retrained the steps after the last --save-every checkpoint)
    from train.checkpoint import checkpoint_dir, read_state

    assert read_state(checkpoint_dir(tmp_path / "run"))["step"] == 1
    saved = {p: p.stat().st_mtime_ns for p in checkpoint_dir(tmp_path / "run").rglob("*") if p.is_file()}
    monkeypatch.setattr(Validator, "validate", original)
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--out", tmp_path / "run", "--max-steps", "1",
                      "--batch-size", "8", "--no-progress", "--workers", "0", "--val-frequency", "1", "--val-limit", "2",
                      "--val-attack", "clean", "--resume", "latest")
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1]
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    # nor is the final checkpoint it resumed from written again (GBs at real size)
    assert {p: p.stat().st_mtime_ns for p in checkpoint_dir(tmp_path / "run").rglob("*") if p.is_file()} == saved


def test_grounding_training_refuses_a_sample_world_without_expressions(tmp_path, capsys):
    """was: trained on its whole-scene captions as expressions, exit 0, then evaluated on the per-object
    expressions `train eval` makes up for such a world."""
    from augment.world.writer import write_sample

    world = write_sample(tmp_path / "world", n=12, seed=0)
    code, err = _main(capsys, "clean", "--task", "grounding", "--model", "tiny-albef", "--train-data", world,
                      "--max-steps", "1", "--batch-size", "4", "--no-progress", "--out", tmp_path / "run")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--train-data is a sample world without referring expressions" in err and "--expressions N" in err
    assert not (tmp_path / "run").exists()


def test_training_on_held_out_rows_or_validating_on_trained_ones_is_refused(tmp_path, sample_world_dir, capsys):
    """was: --train-split all trained on the val/test images (pools made from them let through), and
    --val-split equal to --train-split picked the best checkpoint on training data, both silently."""
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--train-split", "all", "--max-steps", "1",
                      *FAST, "--out", tmp_path / "all")
    assert code == 2 and "--train-split all would train on the source's" in err and "val/test images" in err, err
    assert not (tmp_path / "all").exists()
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--train-split", "val", "--val-frequency", "1",
                      "--val-split", "val", "--max-steps", "1", *FAST, "--out", tmp_path / "same")
    assert code == 2 and "--val-split val validates on the rows --train-split val trains on" in err, err
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--train-split", "train", "--val-frequency", "1",
                      "--val-split", "all", "--max-steps", "1", *FAST, "--out", tmp_path / "all-val")
    assert code == 2 and "--val-split all validates on the rows --train-split train trains on" in err, err
    assert not (tmp_path / "all-val").exists()


def test_inner_attacks_run_without_dropout_and_leave_the_modes_as_they_were():
    """With dropout (ALBEF's BERT: 0.1) an attack in training mode sees a new mask per candidate and
    per PGD step: its result followed the torch seed. The inner attacks run in eval mode."""
    from models import load_model
    from tasks.retrieval import RetrievalTask
    from train.config import TrainConfig
    from train.methods import MATMethod, StepContext, attacked_as_evaluated

    model = load_model("tiny-albef", device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    model.set_grad_checkpointing(True)
    model.train()
    frozen_layer = model.visual_encoder  # a tower kept in eval mode stays so
    frozen_layer.eval()
    config = TrainConfig(method="mat", model="tiny-albef", mlm="tiny-mlm", word_budget=1, top_k=10,
                         attack_eps=2 / 255, pgd_steps=3, pgd_step_size=0.5 / 255)
    method = MATMethod(StepContext(forward=None, model=model, task=RetrievalTask(), config=config,
                                   pgd_generator=torch.Generator()))
    pixels = torch.rand(6, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    texts = ["a red circle on the left", "a blue square", "a green star above a circle", "two small shapes",
             "a large red triangle", "a yellow star"]
    keys = torch.arange(6)
    modes = {name: module.training for name, module in model.named_modules()}

    def attacked(seed: int):
        torch.manual_seed(seed)
        method.ctx.pgd_generator.manual_seed(0)
        return method._attack_text(pixels, texts, keys), method._pgd(pixels, model.tokenize(texts), keys, texts)

    (texts_1, pixels_1), (texts_2, pixels_2) = attacked(1), attacked(2)
    assert texts_1 == texts_2
    assert torch.equal(pixels_1, pixels_2)
    assert {name: module.training for name, module in model.named_modules()} == modes
    with attacked_as_evaluated(model):
        layers = list(model.text_encoder.encoder.layer)
        assert all(layer.training for layer in layers)  # transformers checkpoints a layer in training mode only
        assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_siglip_keeps_a_learnt_scale_above_100_and_clip_is_clamped():
    """Released SigLIPs learned logit scales above 100 (112 for SO400M-14): clamping at 100 after the
    first step would change the model against its learnt bias. CLIP keeps CLIP's clamp."""
    import math

    from models import load_model

    siglip, clip = load_model("tiny-siglip", device="cpu"), load_model("tiny-clip", device="cpu")
    for model in (siglip, clip):
        with torch.no_grad():
            model.model.logit_scale.fill_(math.log(112.33))
        model.after_optimizer_step()
    assert siglip.model.logit_scale.exp().item() == pytest.approx(112.33, rel=1e-5)
    assert clip.model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)


def test_blips_class_token_is_not_decayed_as_in_every_other_family():
    from models import load_model

    for name, token in (("tiny-blip", "vision_model.embeddings.class_embedding"), ("tiny-albef", "cls_token"),
                        ("tiny-clip", "class_embedding")):
        model = load_model(name, device="cpu")
        no_decay, decay = model.parameter_groups(0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        assert any(names[id(p)].endswith(token) for p in no_decay["params"]), name
        assert not any(token in names[id(p)] for p in decay["params"]), name


def test_validate_and_skip_bad_cover_the_validation_data_and_a_named_skip_report_is_checked_first(tmp_path,
                                                                                                   sample_world_dir,
                                                                                                   capsys):
    """was: --val-data was read without --validate and --skip-bad: with --validate the run wrote RUN and
    stopped at its first validation, in the lazy read's words; --skip-bad did not skip its bad record;
    and a --skip-report naming a file that is no report was refused only when a record was bad."""
    val = tmp_path / "val-world"
    shutil.copytree(sample_world_dir, val)
    data = json.loads(next(val.glob("dataset_*.json")).read_text())
    broken = next(entry["filename"] for entry in data["images"] if entry["split"] == "val")
    image = next(val.rglob(broken))
    image.write_bytes(image.read_bytes()[:100])  # truncated
    common = ["clean", "--train-data", sample_world_dir, "--max-steps", "1", "--val-frequency", "1", "--val-data", val,
              "--val-attack", "clean", "--val-limit", "4", *FAST]
    code, err = _main(capsys, *common, "--validate", "--out", tmp_path / "validated")
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: --val-data {val}: "), err
    assert broken in err and not (tmp_path / "validated").exists()
    code, err = _main(capsys, *common, "--skip-bad", "--out", tmp_path / "skipped")
    assert code == 0, err
    report = json.loads((tmp_path / "skipped.val-data.skipped.json").read_text())
    assert [record["record"] for record in report["skipped"]] and broken in json.dumps(report["skipped"]), report
    assert f"skipped 1 bad records of --val-data; report: {tmp_path / 'skipped.val-data.skipped.json'}" in err
    # the train data is clean: a named report that would replace the source is refused all the same
    source_file = next(sample_world_dir.glob("dataset_*.json"))
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--max-steps", "1", "--skip-bad",
                      "--skip-report", source_file, *FAST, "--out", tmp_path / "refused")
    assert code == 2 and "--skip-report" in err and "the report would replace it" in err, err
    assert not (tmp_path / "refused").exists()


def test_mlm_is_read_by_an_mlm_validation_attack_whatever_the_text_candidates():
    """`--text-candidates wordnet --mlm M --val-attack bert-attack` was refused (--mlm "not read"), and
    without --mlm validation used a default masked LM that config.yaml did not record."""
    from train.config import ConfigError, default_mlm, resolve_config

    base = {"method": "mat", "train_data": "s", "out": "o", "model": "tiny-clip", "text_candidates": "wordnet"}
    config = resolve_config({**base, "mlm": "world-mlm", "val_frequency": 1, "val_attack": "bert-attack"})
    assert config.mlm == "world-mlm"
    with pytest.raises(ConfigError, match="--mlm is not read with --text-candidates wordnet .* and no --val-attack "
                                          "that reads one"):
        resolve_config({**base, "mlm": "world-mlm", "val_frequency": 1, "val_attack": "pgd"})
    for method, extra in (("mat", {"text_candidates": "wordnet"}), ("clean", {})):
        config = resolve_config({**base, **extra, "method": method, "val_frequency": 1, "val_attack": "sga"})
        assert config.mlm == default_mlm("tiny-clip") and "mlm" in config.derived_settings  # recorded as derived
    assert resolve_config({**base, "method": "clean", "text_candidates": "mlm"}).mlm is None  # nothing reads one


def test_a_process_other_than_the_main_one_resumes_a_validated_run(tmp_path):
    """was: under torchrun every resume of a run with --val-frequency (or a study's validator) stopped: the processes
    other than the main one validate nothing (their `validator` is None), so they took the resume for one without
    validation and refused it ("... was validated ... but this resume has no --val-frequency"), exit status 2."""
    from train.config import ConfigError
    from train.trainer import Trainer

    (tmp_path / "validation.jsonl").write_text(json.dumps({"step": 0, "robust": 1.0, "attack": "clean"}) + "\n")
    rank_1 = Trainer.__new__(Trainer)  # as `setup` leaves a process other than the main one, at the resume check
    rank_1.run_dir, rank_1.total_steps, rank_1.callbacks, rank_1.validator = tmp_path, 4, [], None
    rank_1.validation_record = {"attack": "clean"}  # this run validates (on the main process)
    rank_1._check_validation_resume(2)
    rank_1.validation_record = None  # a resume without validation is still refused, on every process
    with pytest.raises(ConfigError, match="no --val-frequency"):
        rank_1._check_validation_resume(2)


def test_a_finished_checkpoint_copied_inside_the_run_folder_resumes_into_run_ckpt(tmp_path, trained_run,
                                                                                   sample_world_dir, capsys):
    """was: the final save was skipped for any checkpoint at the last step whose parent is RUN, so `--resume
    RUN/backup` (a copy, RUN/ckpt lost, no summary.json) finished without RUN/ckpt, its summary naming it."""
    from train.checkpoint import checkpoint_dir, read_state

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.copytree(checkpoint_dir(run), run / "backup")
    shutil.rmtree(checkpoint_dir(run))
    (run / "summary.json").unlink()
    code, err = _main(capsys, "clean", "--train-data", sample_world_dir, "--out", run,
                      "--max-steps", "1", *FAST, "--resume", run / "backup")
    assert code == 0, err
    assert read_state(checkpoint_dir(run))["step"] == 1
    assert json.loads((run / "summary.json").read_text())["checkpoint"] == str(checkpoint_dir(run))
