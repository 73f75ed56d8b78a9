"""Each `augment` flag reaches the code that reads it (audit CG): a flag that parses but never arrives
leaves the default in force without a word, which no end-to-end test run at the defaults can see.
The commands run in-process with the work they start replaced by a recorder; no model is loaded."""
from __future__ import annotations

import argparse
import types

import pytest

from augment.cli import build_parser, main


class _Stop(Exception):
    """Raised by a recorder: the command has handed over what it was given, nothing more to run."""


def _recorder(calls: list):
    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Stop

    return record


# ----------------------------------------------------------------------------- argument types


@pytest.mark.parametrize("text, accepted", [("0", False), ("1", False), ("0.5", True), ("1e-9", True),
                                            ("0.999999", True)])
def test_a_confidence_level_lies_strictly_between_0_and_1(text, accepted):
    """Guards a mutation (audit CG): `0 <= value <= 1` passed every test (only 2 was tried); a 0 or 1 level
    gives an interval of one point or of the whole range."""
    from augment.arguments import confidence_level

    if accepted:
        assert confidence_level(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="strictly between 0 and 1"):
            confidence_level(text)


@pytest.mark.parametrize("type_name, lowest, below", [
    ("positive_int", "1", "0"), ("non_negative_int", "0", "-1"), ("non_negative_number", "0", "-0.001"),
    ("positive_number", "1e-9", "0"), ("probability", "0", "-0.001"), ("positive_fraction", "1e-9", "0"),
    ("byte_size", "1", "0"),
])
def test_each_bounded_argument_type_takes_its_lowest_value_and_refuses_the_one_below(type_name, lowest, below):
    """Guards mutations (audit CG): probability refusing 0 (`--flip-p 0` refused) and positive_fraction taking 0
    (`--alpha-sr 0`, `--top-p 0` taken) passed the tests of their flags; each bounded type's lowest value and the
    one below it, as the flags meet them."""
    from augment import arguments

    check = getattr(arguments, type_name)
    assert check(lowest) == float(lowest)
    with pytest.raises(argparse.ArgumentTypeError):
        check(below)


# ----------------------------------------------------------------------------- score


@pytest.mark.parametrize("given, report", [([], "pool/source.skipped.json"), (["--skip-report", "mine.json"], "mine.json")])
def test_a_pool_made_with_skip_bad_writes_its_report_where_skip_report_says(given, report):
    """A pool made with --skip-bad is read so again by `augment score POOL`; a --skip-report given then was
    replaced by POOL/source.skipped.json without a word (audit CG). It is the user's now; the pool's folder
    stays the default."""
    from pathlib import Path

    from augment.commands.score import source_reading

    pool = types.SimpleNamespace(path=Path("pool"), meta={"source": "src", "skip_bad": True})
    reading = source_reading(pool, build_parser().parse_args(["score", "pool", *given]))
    assert (reading["skip_bad"], reading["skip_report"]) == (True, str(Path(report)))


def test_score_hands_every_scoring_setting_to_the_scoring(tmp_path, monkeypatch):
    """Guards mutations (audit CG): --seed and --chunk-bytes each replaced by its default passed every test (the
    end-to-end runs keep them at their defaults; a chunk's bytes move a score at float32 rounding only)."""
    from augment.scoring import pool_scores

    calls = []
    monkeypatch.setattr(pool_scores, "ScoreSettings", _recorder(calls))
    with pytest.raises(_Stop):
        main(["score", str(tmp_path / "pool"), "--bootstrap", "11", "--gap-bootstrap", "22", "--confidence", "0.8",
              "--seed", "3", "--gap-samples", "44", "--chunk-rows", "55", "--chunk-bytes", "2M"])
    assert calls[0] == ((), {"bootstrap": 11, "gap_bootstrap": 22, "confidence": 0.8, "seed": 3, "gap_samples": 44,
                             "chunk_rows": 55, "chunk_bytes": 2 * 2 ** 20})


def test_score_defaults_are_the_readmes():
    """Guards mutations (audit CG): --confidence's default 0.9 and --gap-samples' 1,000 passed every test. The
    README's `augment score` defaults: --bootstrap 1,000, --gap-bootstrap 200, --confidence 0.95, --gap-samples
    2,000 per side, --chunk-rows 1,024, --chunk-bytes 1G, --batch-size 64, --seed 0."""
    args = build_parser().parse_args(["score", "pool"])
    assert (args.bootstrap, args.gap_bootstrap, args.confidence, args.gap_samples, args.chunk_rows, args.chunk_bytes,
            args.batch_size, args.seed) == (1000, 200, 0.95, 2000, 1024, 2 ** 30, 64, 0)


def test_the_scorer_is_loaded_with_the_flags_given(monkeypatch):
    """Guards mutations (audit CG): --batch-size and --pretrained of `augment score` never reaching the scorer
    passed every test (the tiny scorer scores the same at any batch size)."""
    from augment.commands.score import load_scorer_or_fail
    from augment.scoring import scorers

    calls = []
    monkeypatch.setattr(scorers, "load_scorer", lambda *args, **kwargs: calls.append((args, kwargs)) or "scorer")
    args = build_parser().parse_args(["score", "pool", "--scorer", "ViT-B-32", "--pretrained", "laion2b",
                                      "--batch-size", "5", "--device", "cpu"])
    assert load_scorer_or_fail(args) == "scorer"
    assert calls == [(("ViT-B-32",), {"pretrained": "laion2b", "device": "cpu", "batch_size": 5})]


def test_a_source_given_is_read_as_given_not_as_the_pool_recorded_its_own():
    """Guards a mutation (audit CG): `augment score POOL --source OTHER` reading OTHER with the pool's recorded
    --image-root, --source-split and --skip-bad passed every test; those are the recorded source's, not OTHER's."""
    from pathlib import Path

    from augment.commands.score import source_reading

    pool = types.SimpleNamespace(path=Path("pool"), meta={"source": "src", "image_root": "recorded-images",
                                                          "source_split": "val", "skip_bad": True})
    given = source_reading(pool, build_parser().parse_args(["score", "pool", "--source", "other"]))
    assert given["image_root"] is None and given["source_split"] is None and "skip_bad" not in given
    recorded = source_reading(pool, build_parser().parse_args(["score", "pool"]))
    assert (recorded["image_root"], recorded["source_split"], recorded["skip_bad"]) == ("recorded-images", "val", True)


@pytest.mark.parametrize("force", [False, True])
def test_score_hands_force_cache_dir_and_plot_to_the_scoring(force, tmp_path, monkeypatch):
    """Guards a mutation (audit CG): --no-plot left out of the hand-over to `score_and_save` (scores.png drawn
    anyway) passed every test. --cache-dir, and --force skipping the stored scores' look-up, checked with it."""
    from augment import pool as pools, sources
    from augment.commands import score
    from augment.scoring import pool_scores, scorers

    (tmp_path / "pool").mkdir()
    (tmp_path / "src.json").write_text("{}")
    looked_up, calls = [], []
    monkeypatch.setattr(pools, "load_pool", lambda path: types.SimpleNamespace(
        path=tmp_path / "pool", name="pool", meta={"source": str(tmp_path / "src.json")}))
    monkeypatch.setattr(score, "read_source_named", lambda args, name, reading: "the source")
    monkeypatch.setattr(sources, "source_fingerprint", lambda dataset: "fingerprint")
    monkeypatch.setattr(sources, "image_files_fingerprint", lambda dataset, root: "image files")
    monkeypatch.setattr(scorers, "scorer_identity", lambda name, pretrained: "scorer id")
    monkeypatch.setattr(pool_scores, "inputs_keys", lambda *args: "inputs")
    monkeypatch.setattr(pool_scores, "reuse_stored", lambda *args, **kwargs: looked_up.append(kwargs))
    monkeypatch.setattr(score, "load_scorer_or_fail", lambda args: "the scorer")
    monkeypatch.setattr(pool_scores, "score_and_save", _recorder(calls))
    with pytest.raises(_Stop):
        main(["score", str(tmp_path / "pool"), "--cache-dir", str(tmp_path / "cache"), "--no-plot", "--no-progress",
              *(["--force"] if force else [])])
    assert looked_up == ([] if force else [{"plot": False, "source_name": str(tmp_path / "src.json")}])
    (pool, source, scorer, _), kwargs = calls[0]
    assert (source, scorer) == ("the source", "the scorer")
    assert {key: kwargs[key] for key in ("cache_dir", "plot", "progress", "force")} == \
        {"cache_dir": str(tmp_path / "cache"), "plot": False, "progress": False, "force": True}


# ----------------------------------------------------------------------------- generate


def _generation_handover(monkeypatch, tmp_path, method: str, *flags: str):
    """What `augment generate --method METHOD FLAGS` hands `run_generation`, the source and the generator stood in
    for: its (generator, source, out) and its keyword arguments."""
    from augment.commands import generate

    calls = []
    monkeypatch.setattr(generate, "read_source", lambda args: ("the source", types.SimpleNamespace(format="karpathy")))
    monkeypatch.setattr(generate, "build_generator", lambda method, args: ("generator", method))
    monkeypatch.setattr(generate, "run_generation", _recorder(calls))
    with pytest.raises(_Stop):
        main(["generate", "--method", method, "--source", str(tmp_path / "src"), "--out", str(tmp_path / "pool"),
              *flags])
    return calls[0]


def test_generate_hands_every_run_setting_to_the_writer(tmp_path, monkeypatch):
    """Guards a mutation (audit CG): --shard-size left out of `augment generate`'s hand-over to `run_generation`
    (256 always) passed every test that covers it; --seed, --split, --limit, --n and --overwrite checked with it."""
    (generator, source, out), kwargs = _generation_handover(
        monkeypatch, tmp_path, "eda", "--n", "3", "--seed", "7", "--split", "val", "--limit", "5", "--shard-size", "9",
        "--overwrite", "--no-progress")
    assert (generator, source, out) == (("generator", "eda"), "the source", str(tmp_path / "pool"))
    assert {key: kwargs[key] for key in ("n", "seed", "split", "limit", "shard_size", "overwrite", "progress")} == \
        {"n": 3, "seed": 7, "split": "val", "limit": 5, "shard_size": 9, "overwrite": True, "progress": False}


@pytest.mark.parametrize("method, device_type", [("eda", None), ("t2t-tiny-paraphraser", "cpu")])
def test_generate_records_the_device_kind_of_a_model_method_only(method, device_type, tmp_path, monkeypatch):
    """Guards a mutation (audit CG's leftover G7): the device kind left out of the hand-over passed every test; a
    model's pool then kept no device_type, and a resume on another kind of device (which samples other rows) was
    no longer refused. A method without a model records none."""
    _, kwargs = _generation_handover(monkeypatch, tmp_path, method, "--device", "cpu", "--no-progress")
    assert kwargs["device_type"] == device_type


@pytest.mark.parametrize("overwrite, recorded, expected", [(False, "meta", "meta"), (True, "meta", "default"),
                                                           (False, None, "default")])
def test_a_model_pool_resumes_on_the_device_kind_it_was_sampled_on(overwrite, recorded, expected, monkeypatch):
    """Guards a mutation (audit CG's leftover G6): the resume branch of the default device taken under --overwrite
    instead of without it. A pool at --out goes on where it was sampled; a replaced one (or none) takes the
    machine's default; a method without a model runs on the CPU."""
    from augment import devices, pool
    from augment.commands.generate import generation_device

    monkeypatch.setattr(devices, "default_device", lambda: "default")
    monkeypatch.setattr(pool, "holds_pool", lambda folder: recorded is not None)
    monkeypatch.setattr(pool, "read_pool_meta", lambda folder: {"device_type": recorded})
    args = types.SimpleNamespace(overwrite=overwrite, out="pool")
    assert generation_device(args, model_method=True) == expected
    assert generation_device(args, model_method=False) == "cpu"


@pytest.mark.parametrize("flag, value", [("--model-revision", "v2"), ("--dtype", "bf16")])
def test_generate_refuses_a_model_option_its_method_does_not_read(flag, value, tmp_path, capsys):
    """Guards mutations (audit CG): --model-revision left out of the options checked against the method, or --dtype
    exempt from the check, passed every test; `--method eda --model-revision v2` (or `--dtype bf16`) then made an
    EDA pool as if it were not given."""
    out = tmp_path / "pool"
    assert main(["generate", "--method", "eda", "--source", str(tmp_path / "src"), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --method eda does not read {flag} (an option of other methods") and \
        "\n" not in err and not out.exists()


def test_generate_defaults_are_the_readmes():
    """Guards mutations (audit CG): --n's default 5 and --shard-size's 128 passed every test. The defaults the
    README and --help give: --n 4, --seed 0, --split train, --shard-size 256, --batch-size 16, --dtype fp32."""
    args = build_parser().parse_args(["generate", "--method", "eda", "--source", "s", "--out", "o"])
    assert (args.n, args.seed, args.split, args.limit, args.shard_size, args.batch_size, args.dtype, args.overwrite) == \
        (4, 0, "train", None, 256, 16, "fp32", False)


@pytest.mark.parametrize("module_name, class_name, method", [("paraphrase", "ParaphraseGenerator", "t2t-tiny-paraphraser"),
                                                              ("captioner", "CaptionerGenerator", "i2t-tiny-blip")])
def test_the_model_options_reach_the_text_generators(module_name, class_name, method, monkeypatch):
    """Guards mutations (audit CG): --model-revision (no test gave it), --dtype and --batch-size never reaching the
    paraphraser or the captioner passed every test; the model would load at main's head in fp32, batches of 16."""
    import importlib

    from augment.generators import build_generator

    module = importlib.import_module(f"augment.generators.{module_name}")
    monkeypatch.setattr(module, class_name, lambda *args, **kwargs: (args, kwargs))
    args = build_parser().parse_args(["generate", "--method", method, "--source", "s", "--out", "o",
                                      "--model", "tiny-other", "--model-revision", "v2", "--dtype", "bf16",
                                      "--batch-size", "3", "--device", "cpu"])
    (given_method, model), kwargs = build_generator(method, args)
    assert (given_method, model) == (method, "tiny-other")
    assert {key: kwargs[key] for key in ("revision", "dtype", "batch_size", "device")} == \
        {"revision": "v2", "dtype": "bf16", "batch_size": 3, "device": "cpu"}


def test_the_model_options_reach_the_diffusion_settings():
    """Guards a mutation (audit CG): the SD methods' --model-revision dropped (revision=None) passed every test, none
    giving it; their model options are checked the same way (the settings are built before the pipeline loads)."""
    from augment.generators.diffusion import settings_from_args

    args = build_parser().parse_args(["generate", "--method", "t2i-sd", "--source", "s", "--out", "o", "--model", "sd21",
                                      "--model-revision", "v2", "--dtype", "bf16", "--batch-size", "3", "--steps", "7"])
    settings = settings_from_args("t2i-sd", args)
    assert (settings.model, settings.revision, settings.dtype, settings.batch_size, settings.steps) == \
        ("sd21", "v2", "bf16", 3, 7)


@pytest.mark.parametrize("method", ["t2t-", "i2t-"])
def test_a_bare_method_prefix_names_no_method(method):
    """Guards a mutation (audit CG): `module_for` taking a prefix with no model after it passed every test;
    `--method t2t- --model X` then made a pool whose method names no model."""
    from augment.errors import MatPlusError
    from augment.generators import module_for

    with pytest.raises(MatPlusError, match=f"unknown method '{method}'"):
        module_for(method)
    assert module_for(method + "tiny-model").__name__.rsplit(".", 1)[-1] in ("paraphrase", "captioner")


def test_the_source_split_reaches_the_reader_and_the_pools_record(tmp_path, monkeypatch):
    """Guards mutations (audit CG's leftovers C5, C6): --source-split left out of the source's reading or of what
    the pool records passed every test (the sources used name their splits); a CSV's rows were then labelled with
    the default split, and `augment score POOL` read the source otherwise than generate did."""
    from augment import sources
    from augment.commands import common

    calls = []
    monkeypatch.setattr(sources, "load_source", _recorder(calls))  # read_source imports it when called
    args = build_parser().parse_args(["generate", "--method", "eda", "--source", str(tmp_path / "s.csv"),
                                      "--out", "o", "--source-split", "restval"])
    with pytest.raises(_Stop):
        common.read_source(args)
    assert calls[0][1]["split"] == "restval"
    assert common.source_meta(args, "csv")["source_split"] == "restval"


@pytest.mark.parametrize("given, shown", [({}, True), ({"no_progress": True}, False), ({"progress": False}, False),
                                          ({"progress": True}, True)])
def test_progress_bars_follow_either_commands_flag(given, shown):
    """Guards a mutation (audit CG's leftover C7): `train eval`'s --no-progress (its `progress` False) ignored by
    the shared check passed every test; its source reading then drew bars the user had turned off."""
    from augment.commands.common import shows_progress

    assert shows_progress(types.SimpleNamespace(**given)) is shown


# ----------------------------------------------------------------------------- select


def test_select_hands_each_filter_to_its_own_field(tmp_path, monkeypatch):
    """Guards a mutation (audit CG): --methods entries left unstripped passed every test (`--methods "eda, shuffle"`
    then kept no shuffle row: " shuffle" names no method); each other filter is checked on its own field with it."""
    from augment import pool, select

    calls = []
    monkeypatch.setattr(pool, "load_pool", lambda path: types.SimpleNamespace(name="parent", path=path))
    monkeypatch.setattr(select, "select_pool", _recorder(calls))
    with pytest.raises(_Stop):
        main(["select", str(tmp_path / "pool"), "--out", str(tmp_path / "out"), "--min-alignment", "0.1",
              "--max-alignment", "0.9", "--top-k-per-item", "2", "--max-per-item", "3", "--methods", "eda, shuffle,",
              "--modality", "text", "--scorer", "tiny-clip", "--overwrite", "--allow-empty"])
    (parent, out, filters), kwargs = calls[0]
    assert (parent.name, out) == ("parent", str(tmp_path / "out"))
    assert filters == select.SelectFilters(min_alignment=0.1, max_alignment=0.9, top_k_per_item=2, max_per_item=3,
                                           methods=["eda", "shuffle"], modality="text")
    assert kwargs == {"scorer": "tiny-clip", "overwrite": True, "allow_empty": True}


# ----------------------------------------------------------------------------- make-sample


def test_make_sample_hands_each_split_share_to_its_own_split(tmp_path, monkeypatch):
    """Guards a mutation (audit CG): --val-frac and --test-frac swapped passed every test (their defaults are
    equal); the defaults are the README's 4,000 images of 5 captions."""
    from augment.commands import make_sample

    calls = []
    monkeypatch.setattr(make_sample, "write_sample", _recorder(calls))
    with pytest.raises(_Stop):
        main(["make-sample", str(tmp_path / "world"), "--images", "40", "--seed", "2", "--val-frac", "0.2",
              "--test-frac", "0.3", "--captions-per-image", "3"])
    assert calls[0][1] == {"n": 40, "seed": 2, "val_frac": 0.2, "test_frac": 0.3, "n_captions": 3, "overwrite": False,
                           "expressions": 0}
    calls.clear()
    with pytest.raises(_Stop):
        main(["make-sample", str(tmp_path / "world")])
    assert {key: calls[0][1][key] for key in ("n", "n_captions")} == {"n": 4000, "n_captions": 5}


# ----------------------------------------------------------------------------- model aliases


def test_each_size_named_alias_loads_the_model_of_that_size():
    """Guards mutations (audit CG): clip-b32 naming ViT-B-16, blip-large naming the base captioner, passed every
    test; an alias that names a size must resolve to a model of that size."""
    from augment.registry import ALIASES

    clip = {alias: target for alias, target in ALIASES.items() if alias.startswith("clip-")}
    assert clip == {"clip-b16": ("ViT-B-16", "openai"), "clip-b32": ("ViT-B-32", "openai"),
                    "clip-l14": ("ViT-L-14", "openai")}
    for alias, size in (("blip-large", "-large"), ("blip-base", "-base"), ("sd21", "-2-1"), ("sd-turbo", "/sd-turbo"),
                        ("sdxl", "-xl-"), ("sdxl-turbo", "/sdxl-turbo")):
        assert size in ALIASES[alias], alias


def test_a_hub_model_is_loaded_at_the_revision_given():
    """Guards a mutation (audit CG): the Hub revision left out of the loaders' from_pretrained arguments passed every
    test (the twins are local folders, which take none); --model-revision then loaded main's head."""
    from augment.registry import ResolvedSource, _hub_kwargs

    assert _hub_kwargs(ResolvedSource("org/model", "org/model", is_local=False), "v2", False)["revision"] == "v2"
    assert "revision" not in _hub_kwargs(ResolvedSource("folder", "/models/folder", is_local=True), "v2", False)


# ----------------------------------------------------------------------------- push


@pytest.mark.parametrize("upload_only", [["--private"], ["--revision", "dev"]])
def test_push_refuses_the_upload_options_with_to_dir(upload_only, tmp_path, capsys):
    """Guards a mutation (audit CG): `--to-dir DIR --revision dev` no longer refused (the check kept --private only)
    passed every test; the export was written as if --revision were not given."""
    assert main(["push", str(tmp_path / "pool"), "--to-dir", str(tmp_path / "out"), *upload_only]) == 2
    assert capsys.readouterr().err.strip() == "error: --private and --revision apply to uploads only, not to --to-dir"
    assert not (tmp_path / "out").exists()


def test_a_missing_folder_named_by_a_nested_path_is_named_as_a_folder():
    """Guards a mutation (audit CG): a name of two slashes no longer read as a path (`count("/") > 2`) passed every
    test; `--model runs/a/ckpt` missing then said "not ... a valid Hub id", not that the folder does not exist."""
    from augment.errors import ModelLoadError
    from augment.registry import resolve_source

    with pytest.raises(ModelLoadError, match="folder runs/a/ckpt does not exist"):
        resolve_source("runs/a/ckpt", "captioner")
