"""`--device` checked before anything loads (one line naming it, exit status 2, not blamed on the model),
the trainer's log step making no float64 tensor on its device (MPS has none), the validator's masked LM
running where the validated model is, and seeded CPU draws leaving CUDA's generators alone."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


@pytest.mark.parametrize("text, available, count, message", [
    ("gpu", False, 0, "--device gpu: not a torch device (cpu, cuda, cuda:1, mps, ...)"),
    ("cuda", False, 0, "--device cuda: torch sees no CUDA device here"),
    ("cuda:1", True, 1, "--device cuda:1: torch sees 1 CUDA device here (cuda:0)"),
    ("cuda:2", True, 2, "--device cuda:2: torch sees 2 CUDA devices here (cuda:0 to cuda:1)"),
    ("mps", False, 0, "--device mps: torch sees no MPS device here (Apple silicon, with a torch built for it)"),
])
def test_an_unavailable_device_is_one_line_naming_it(text, available, count, message, monkeypatch):
    from augment.devices import check_device
    from augment.errors import MatPlusError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(MatPlusError) as raised:
        check_device(text)
    assert str(raised.value) == message


def test_devices_this_machine_has_pass(monkeypatch):
    from augment.devices import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cpu:0") == torch.device("cpu", 0)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    assert check_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize("command", ["generate", "score"])
def test_augment_names_the_device_not_the_model(command, tmp_path, capsys):
    """Was "error: cannot load CLIP model 'tiny-clip': RuntimeError: Expected one of cpu, cuda, ..."."""
    from augment.cli import main

    args = (["generate", "--method", "i2t-tiny-captioner", "--source", str(tmp_path / "missing"), "--out",
             str(tmp_path / "pool")] if command == "generate" else ["score", str(tmp_path / "pool"), "--scorer", "tiny-clip"])
    assert main([*args, "--device", "gpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: --device gpu: not a torch device (cpu, cuda, cuda:1, mps, ...)"


def test_a_single_process_reduce_makes_no_device_tensor():
    """The trainer's log step made a float64 tensor on its device: MPS has no float64 (every log step
    would fail there), and one process has nothing to reduce."""
    from train.trainer import Trainer

    stub = SimpleNamespace(world_size=1, accelerator=SimpleNamespace(device=torch.device("meta")))
    assert Trainer._reduce(stub, [2.5, None, 1.25]) == [2.5, None, 1.25]


@pytest.mark.parametrize("command", ["generate", "score"])
def test_augment_runs_where_train_eval_does_by_default(command, tmp_path, capsys, monkeypatch):
    """`generate` and `score` defaulted to cpu, `train eval` to cuda when available: a GPU machine scored
    on its CPU unless told. One default now (`default_device`): here a GPU torch sees is checked, then used."""
    from augment.cli import build_parser, main
    from augment.devices import default_device

    args = (["generate", "--method", "i2t-tiny-captioner", "--source", str(tmp_path / "missing"), "--out",
             str(tmp_path / "pool")] if command == "generate" else ["score", str(tmp_path / "pool")])
    assert build_parser().parse_args(args).device is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # "available" yet none counted: the check speaks
    assert default_device() == "cuda"
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == "error: --device cuda: torch sees no CUDA device here"


def test_generate_methods_without_a_model_default_to_the_cpu(tmp_path, capsys, monkeypatch):
    """eda, i2t-human, imgaug ... use no device: a GPU default made a torchrun launch of them a NCCL
    group, one GPU per process (more processes than GPUs refused), where they ran over gloo."""
    from augment.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a cuda default would be refused: it is not taken
    assert main(["generate", "--method", "eda", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "pool")]) == 2
    assert "--device" not in capsys.readouterr().err


def test_generate_under_torchrun_past_the_gpus_names_its_own_cpu_option(tmp_path, capsys, monkeypatch):
    """More processes than GPUs: the hint was the trainer's `--cpu`, which `generate` does not take."""
    from augment.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}.items():
        monkeypatch.setenv(name, value)
    assert main(["generate", "--method", "i2t-tiny-captioner", "--source", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "pool")]) == 2
    assert capsys.readouterr().err.strip() == ("error: LOCAL_RANK 1 but only 1 GPU(s) visible: start at most 1 processes "
                                               "per machine, or pass --device cpu to run on the CPU (gloo)")


def test_a_model_pool_records_its_device_and_a_resume_goes_on_there(sample_world_dir, tmp_path, capsys):
    """A model samples other rows on another kind of device: with generate's GPU default, a pool begun on a
    CPU and resumed on a GPU machine mixed both silently. The pool records `device_type`; a re-run without
    --device goes on there; another kind is refused naming the way on; an older pool without the key resumes."""
    import json

    from augment.cli import main

    out = tmp_path / "i2t"
    argv = ["generate", "--method", "i2t-tiny-captioner", "--source", str(sample_world_dir), "--out", str(out),
            "--n", "1", "--limit", "2", "--max-new-tokens", "4", "--no-progress"]
    assert main([*argv, "--device", "cpu"]) == 0
    meta_path = out / "pool.json"
    assert json.loads(meta_path.read_text())["device_type"] == "cpu"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "device_type": "cuda"}))  # as if begun on a GPU machine
    capsys.readouterr()
    assert main(argv) == 2  # no --device: it goes on where the pool was begun, here a device torch lacks
    assert capsys.readouterr().err.strip() == "error: --device cuda: torch sees no CUDA device here"
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "made with different device_type (made on cuda, now cpu" in err and "--device cuda resumes it" in err
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "device_type"}))  # an older pool
    assert main(argv) == 0
    assert json.loads(meta_path.read_text())["device_type"] == "cpu"
    # a method that loads no model records none (it uses no device)
    assert main(["generate", "--method", "img-aug", "--source", str(sample_world_dir), "--out", str(tmp_path / "aug"),
                 "--n", "1", "--limit", "2", "--no-progress"]) == 0
    assert "device_type" not in json.loads((tmp_path / "aug" / "pool.json").read_text())


@pytest.mark.parametrize("task, module, function", [("retrieval", "train.evaluate", "evaluate"),
                                                    ("captioning", "train.evaluate_captioning", "evaluate_captioning"),
                                                    ("grounding", "train.evaluate_grounding", "evaluate_grounding")])
def test_validation_runs_its_masked_lm_on_the_models_device(task, module, function, tmp_path, monkeypatch):
    """Was: the validator loaded its masked LM once, on the CPU (before the trainer's device is known), and handed
    it to every validation as it was: on a GPU run every substitute search of a validation ran the masked LM on
    the host. A model on the meta device stands for the GPU here."""
    import importlib

    from torch import nn

    import augment.registry as registry
    from train.validation import ValidationSettings, Validator

    class Snapshot(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2, device="meta")

        @property
        def device(self) -> torch.device:
            return next(self.parameters()).device

    class Measured(Exception):
        """The devices are all this test reads: the evaluation stops there."""

    monkeypatch.setattr(registry, "load_mlm", lambda name, device="cpu", **_: (nn.Linear(2, 2).to(device), "tokenizer"))
    seen = []

    def evaluation(model, source, **options):
        seen.append((next(options["attack_options"]["mlm"][0].parameters()).device, model.device))
        raise Measured

    monkeypatch.setattr(importlib.import_module(module), function, evaluation)
    validator = Validator(tmp_path, None, ValidationSettings(task=task, attack="bert-attack",
                                                             attack_options={"mlm": "tiny-mlm"}))
    with pytest.raises(Measured):
        validator._measure(Snapshot())
    assert seen == [(torch.device("meta"), torch.device("meta"))]


def test_seeded_pool_rows_and_tiny_models_leave_the_cuda_generators_alone(monkeypatch):
    """img-aug's rows, its transforms' dry run and the tiny twins seed torch's CPU generator only:
    `torch.manual_seed` reseeded every CUDA device's generator too, which `fork_rng(devices=[])` does not
    restore, so on a GPU each pool row reset the CUDA draws of the process. The CPU draws are those of
    `torch.manual_seed` (the same rows as before)."""
    from PIL import Image

    from augment import tiny
    from augment.generators.imgaug import ImageAugmentGenerator
    from augment.seeds import cpu_torch_seeded

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    image = Image.new("RGB", (40, 30), (120, 60, 200))
    generator = ImageAugmentGenerator("crop-flip", {"crop_scale": (0.3, 1.0), "flip_p": 0.5})
    row_image = generator.augment(image, seed=11)
    with tiny._seeded("tiny-clip"):
        tiny_draw = torch.rand(3)
    state = torch.random.get_rng_state()
    with cpu_torch_seeded(5):
        ours = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's CPU state is back
    assert reseeded == []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        assert torch.equal(ours, torch.rand(4))
        torch.manual_seed(tiny._seed_for("tiny-clip"))
        assert torch.equal(tiny_draw, torch.rand(3))
        torch.manual_seed(11)
        transform = generator.transform_for(image)
        assert transform(image).convert("RGB").tobytes() == row_image.tobytes()
