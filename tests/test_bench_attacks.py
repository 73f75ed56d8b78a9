"""`bench.bench_attacks`' command line: what it refuses before loading anything."""
from __future__ import annotations

from bench.bench_attacks import main


def test_multimodal_comparisons_on_a_model_without_their_baseline_stop_in_one_line(capsys):
    # the loop "encoding as before" is open_clip's text path before the shortcuts: no ALBEF counterpart
    assert main(["--model", "tiny-albef", "--attacks", "pgd,bert-attack"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "open_clip models only, not albef" in err and "--attacks pgd" in err


def test_make_bench_starts_each_benchmark_at_torchs_default_threads(monkeypatch):
    """`python -m bench` runs them in one process: one benchmark's thread setting (text_generators: 1)
    used to carry into the next (image_generators then ran at 1 thread, not torch's default)."""
    import types

    import torch

    import bench.__main__ as runner

    default, seen = torch.get_num_threads(), []

    def fake(name):
        def main(argv):
            seen.append(torch.get_num_threads())
            torch.set_num_threads(1 if default > 1 else 2)
            return 0
        return types.SimpleNamespace(main=main)

    monkeypatch.setattr(runner.importlib, "import_module", fake)
    try:
        assert runner.main(["text_generators", "image_generators", "scoring"]) == 0
    finally:
        torch.set_num_threads(default)
    assert seen == [default] * 3


def test_a_speed_up_that_makes_other_adversarial_images_is_flagged():
    """A few flipped gradient signs (measured: 4 of 393,216 pixels) are the same attack; a share beyond
    `MAX_FLIPPED_SHARE` is another one, and PGD counts only pixels beyond float rounding."""
    from bench.bench_attacks import images_that_differ

    def entry(differing, before=0):
        return {"pixels_differing": differing, "pixels_differing_before": before, "pixels": 393216}

    report = {"multimodal": {"attacks": {"co-attack": entry(4), "sga": entry(0, before=5000), "sep": entry(0)}},
              "pgd": {"without_random_start": {"pixels_beyond_rounding": 1, "pixels_differing": 8556, "pixels": 393216}}}
    assert images_that_differ(report) == ["sga"]
    report["pgd"]["without_random_start"]["pixels_beyond_rounding"] = 2000
    assert images_that_differ(report) == ["pgd (against torchattacks, no random start)", "sga"]
    assert images_that_differ({"multimodal": {"attacks": {}}}) == []


def test_profile_adds_each_batched_attacks_tables_to_one_file(tmp_path, one_torch_thread):
    """`--profile`: after each attack's timing each side's aten calls are counted, its batched call
    runs once under torch.profiler, and the tables go to one file (the GPU run brings back at most
    eight files)."""
    import torch

    from augment.registry import load_mlm
    from bench.bench_attacks import bench_multimodal
    from models import load_model

    victim = load_model("tiny-clip")
    model, tokenizer = load_mlm("tiny-mlm", device="cpu")
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = torch.stack([victim.preprocess_eval(Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)))
                          for _ in range(2)])
    captions = ["a red cube on the left", "two blue spheres"]
    path = tmp_path / "attacks.profile.txt"
    out = bench_multimodal(victim, (model, tokenizer, "tiny-mlm"), pixels, captions, torch.tensor([0, 1]), repeats=1,
                           names=("bert-attack", "sep"), profile_out=tmp_path / "attacks.json")
    assert set(out["attacks"]) == {"bert-attack", "sep"}
    text = path.read_text(encoding="utf-8")
    assert text.index("== bert-attack, batched: 2 images, 2 captions, cpu") < text.index("== sep, batched")
    assert text.count("aten calls ") == 2 and text.count("== by self_cpu_time_total") == 2
    assert "aten::addmm" in text or "aten::mm" in text
    for entry in out["attacks"].values():  # each side's host calls, and the ratio a host-bound GPU would see
        calls = entry["aten_calls"]
        assert set(calls) == {"one_at_a_time_before", "one_at_a_time", "batched"} and min(calls.values()) > 0
        assert entry["aten_call_ratio_before_loop_over_batched"] == calls["one_at_a_time_before"] / calls["batched"] > 1

