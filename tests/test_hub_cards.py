"""Data cards and `augment push`: card rendering per method family, the --to-dir repository,
and every failure path of a Hub push. Offline throughout: the Hub is mocked or unreachable."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

from augment.pool import write_pool

SECRET = "hf_secret_test_value"
REQUIRED_KEYS = {
    "license", "source_datasets", "task_categories", "tags", "annotations_creators",
    "size_categories", "configs", "pretty_name",
}


# ----------------------------------------------------------------------------- helpers


def png_bytes(i: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (30 * i % 256, 10, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def pool_meta(method="t2i-sd", modality="image", model="stabilityai/stable-diffusion-2-1-base", **extra) -> dict:
    return {
        "method": method, "modality": modality, "model": model, "model_revision": "abc123",
        "params": {"steps": 20, "guidance_scale": 7.5}, "seed": 7, "n": 1, "split": "train",
        "limit": None, "source": "/data/sample-world", "source_fingerprint": "fp-123",
        "source_items": 4, **extra,
    }


def selection_of(generated: dict) -> dict:
    """pool.json of `augment select` (10 rows kept) over the pool whose pool.json is `generated`, at /p/NAME."""
    return {**pool_meta("select", generated["modality"], None,
                        parent={"path": f"/p/{generated['name']}", "meta": generated}), "num_rows": 10}


def make_pool(path: Path, method="t2i-sd", modality="image", rows=4, scores=None, **meta) -> Path:
    """A small complete pool; image rows carry real PNG bytes."""
    records = []
    for i in range(rows):
        with_image = modality in ("image", "pair")
        records.append({
            "row_id": f"{method}:{i}:0:0", "source_image_id": f"img{i}", "source_caption_index": 0,
            "split": "train", "modality": modality,
            "image": {"bytes": png_bytes(i), "path": None} if with_image else None,
            "caption": f"a caption number {i}", "method": method, "seed": 100 + i,
            "provenance": json.dumps({"k": i}),
        })
    from augment.progress import quiet_progress_bars

    # the pool is a test's setup: its parquet write's progress bar is no output of the command under test (a test
    # counting stderr lines failed when it ran before any CLI call had turned datasets' bars off)
    with quiet_progress_bars(("datasets",)):
        write_pool(path, records, pool_meta(method, modality, **meta))
    if scores is not None:
        (path / "scores.json").write_text(json.dumps(scores))
    return path


def header_of(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n")[1])


def cli(*argv: str) -> int:
    from augment.cli import main

    return main(list(argv))


# ----------------------------------------------------------------------------- cards

FAMILY_CASES = [
    # method, modality, model, expected text in the body, model license, task categories
    ("eda", "text", "wordnet", "EDA can change a caption's meaning", "WordNet 3.0 license", ["image-to-text"], "wei-zou-2019-eda"),
    ("t2t-flan", "text", "google/flan-t5-base", "Paraphrasers can drop or add details", "apache-2.0", ["image-to-text"], None),
    ("i2t-human", "text", "human", "No new information", "source dataset's own captions", ["image-to-text"], None),
    ("i2t-blip", "text", "Salesforce/blip-image-captioning-base", "Captioners hallucinate", "bsd-3-clause", ["image-to-text"], "li2022blip"),
    ("i2t-scene", "text", "sample-world-describer", "Templated language", "rule-based, no model (mat-plus's", ["image-to-text"], None),
    ("t2i-sd", "image", "stabilityai/stable-diffusion-2-1-base", "misaligned with their caption", "openrail++", ["text-to-image"], "rombach2022high"),
    ("t2i-render", "image", "sample-world-renderer", "Synthetic look", "rule-based, no model (mat-plus's", ["text-to-image"], None),
    ("t-i2i-sd", "image", "runwayml/stable-diffusion-v1-5", "Low strength gives near-copies", "creativeml-openrail-m", ["image-to-image", "text-to-image"], "meng2022sdedit"),
    ("img-aug", "image", "torchvision.transforms.v2", "Flips break captions", "rule-based, no model (torchvision's", ["image-to-image", "text-to-image"], None),
    ("shuffle", "text", "none", "never use these rows as positive", "rule-based", ["image-to-text"], None),
    ("select", "text", None, "Inherits all limitations of the parent", "rule-based", ["image-to-text"], None),
    ("adversarial", "pair", "tiny-clip", "specific to the attacked model", "random-weight test model", ["image-to-text", "text-to-image"], None),
]


def test_the_family_cases_name_the_model_each_generator_records():
    """The cases above pass the `model` each generator writes to pool.json: a rule-based generator's
    name (torchvision's transforms, the sample world's renderer) once fell through to "unknown,
    check the model card" while the cases passed None."""
    from augment.generators import available_modules
    from augment.generators.base import Generator
    from data_cards.catalog import UNKNOWN_MODEL_LICENSE, model_license

    recorded = {cls.method: cls.model for module in available_modules() for cls in vars(module).values()
                if isinstance(cls, type) and issubclass(cls, Generator) and isinstance(getattr(cls, "model", None), str)}
    assert {"img-aug", "t2i-render", "i2t-scene", "shuffle", "i2t-human"} <= set(recorded)
    cases = {method: model for method, _, model, *_ in FAMILY_CASES}
    for method, model in recorded.items():
        if method in cases:
            assert cases[method] == model, method
            assert model_license(model) != UNKNOWN_MODEL_LICENSE, method


@pytest.mark.parametrize("method, modality, model, limitation, license_text, tasks, paper", FAMILY_CASES)
def test_card_for_every_method_family(method, modality, model, limitation, license_text, tasks, paper):
    from huggingface_hub import DatasetCard

    from data_cards.render import CardOptions, render_card_text

    meta = {**pool_meta(method, modality, model, parent="pools/eda-full"), "num_rows": 2500,
            "schema_version": 1, "created": "2026-03-01T00:00:00+00:00",
            "package_versions": {"mat-plus": "0.1.0"}}
    text = render_card_text(meta, None, CardOptions(license="cc-by-4.0", source_license="cc-by-4.0", repo_id="org/pool"))

    header = header_of(text)
    assert REQUIRED_KEYS <= set(header)
    assert header["license"] == "cc-by-4.0"
    assert header["size_categories"] == ["1K<n<10K"]
    assert header["task_categories"] == tasks
    assert {"mat-plus", "data-augmentation", "adversarial-robustness", method} <= set(header["tags"])
    assert header["annotations_creators"] == (["found"] if method == "i2t-human" else ["machine-generated"])
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert method in header["pretty_name"] and "sample-world" in header["pretty_name"]
    assert DatasetCard(text).data.license == "cc-by-4.0"  # the Hub's own parser reads it too

    body = text.split("---\n", 2)[2]
    assert "**2500 rows** of method" in body  # the pool's rows, not its `n` (guards a mutation, audit CK)
    assert f"`{model or 'none'}`" in body
    assert license_text in body
    assert "| model revision | `abc123` |" in body
    for name, value in (("steps", "20"), ("guidance_scale", "7.5")):
        assert f"| `{name}` | {value} |" in body
    assert "| seed (pool) | 7 |" in body
    assert limitation in body
    assert "Known limitations" in body and "Intended use" in body and "MAT+" in body
    assert "@software{mat_plus" in body
    if paper:
        assert paper in body
    assert 'load_dataset("org/pool", split="train")' in body
    assert "/data/sample-world" not in text  # a local path is named by its last part only
    if method == "select":
        assert "pools/eda-full" in body
    assert "{{ " not in text and "{%" not in text  # no template syntax left unrendered


@pytest.mark.parametrize("model, revision_cell", [
    ("torchvision.transforms.v2", "n/a: no model weights (the package versions under Provenance)"),
    ("sample-world-renderer", "n/a: no model weights (the package versions under Provenance)"),
    ("wordnet", "n/a: no model weights (the package versions under Provenance)"),
    (None, "n/a: no model weights (the package versions under Provenance)"),
    ("runwayml/stable-diffusion-v1-5", "`not recorded`"), ("tiny-sd", "`not recorded`")])
def test_a_pool_without_a_revision_says_why(model, revision_cell):
    """A revision belongs to weights: a rule-based generator's card says it has none (it said `not
    recorded`, as if something were missing); a model's says its revision was not recorded."""
    from data_cards.render import CardOptions, render_card_text

    meta = {**pool_meta("img-aug", "image", model), "model_revision": None, "num_rows": 4, "schema_version": 1}
    body = render_card_text(meta, None, CardOptions(repo_id="org/pool")).split("---\n", 2)[2]
    assert f"| model revision | {revision_cell} |" in body


def test_card_of_a_selected_pool_names_its_parent_as_select_records_it():
    """`augment select` records {"path": absolute, "meta": the parent's pool.json}: the card names the parent by
    its folder and method, never the absolute path or the parent's whole pool.json."""
    from data_cards.render import CardOptions, render_card_text

    parent = {"path": "/home/someone/pools/eda-full", "meta": {"name": "eda-full", "method": "eda",
                                                                "package_versions": {"mat-plus": "0.1.0"}}}
    meta = {**pool_meta("select", "text", None, parent=parent), "num_rows": 10, "schema_version": 1,
            "created": "2026-03-01T00:00:00+00:00", "package_versions": {"mat-plus": "0.1.0"}}
    body = render_card_text(meta, None, CardOptions(license="cc-by-4.0", repo_id="org/pool")).split("---\n", 2)[2]
    assert "Parent pool: eda-full (method `eda`)." in body
    assert "/home/someone" not in body and "package_versions" not in body
    assert "wei-zou-2019-eda" in body  # the generator's paper, not mat-plus's alone


def test_card_of_a_selected_pool_keeps_its_generators_model_license_and_papers():
    """A selection of Stable Diffusion images (of a selection, even) is still SD's outputs: its card
    said "n/a: rule-based, no model" and dropped the OpenRAIL terms and the papers."""
    from data_cards.render import CardOptions, render_card_text

    generated = {"name": "sd", "method": "t2i-sd", "model": "stabilityai/stable-diffusion-2-1-base",
                 "modality": "image"}
    first = {"name": "sd-aligned", "method": "select", "model": None, "parent": {"path": "/p/sd", "meta": generated}}
    meta = {**pool_meta("select", "image", None, parent={"path": "/p/sd-aligned", "meta": first}), "num_rows": 10,
            "schema_version": 1, "created": "2026-03-01T00:00:00+00:00", "package_versions": {"mat-plus": "0.1.0"}}
    text = render_card_text(meta, None, CardOptions(license="cc-by-4.0", repo_id="org/pool"))
    body = text.split("---\n", 2)[2]
    assert "openrail++" in body and "rule-based, no model" not in body
    assert "| method | `select` of a `t2i-sd` pool" in body and "`stabilityai/stable-diffusion-2-1-base`" in body
    assert "rombach2022high" in body
    assert "| augmentations per item (`n`, the `t2i-sd` pool's setting) |" in body  # not the selection's
    header = header_of(text)
    assert {"select", "t2i-sd"} <= set(header["tags"]) and header["task_categories"] == ["text-to-image"]


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (12_345, "10K<n<100K"),
                                          (999_999, "100K<n<1M"), (10**6, "1M<n<10M"), (10**13, "n>1T")])
def test_size_categories_follow_the_hub_buckets(rows, bucket):
    from data_cards.render import size_category

    assert size_category(rows) == bucket


def test_unknown_model_license_points_to_the_model_card_and_hub_source_is_extended():
    from data_cards.render import CardOptions, render_card_text

    meta = {**pool_meta("i2t-mycap", "text", "someone/my-captioner", source="org/coco-captions"), "num_rows": 3}
    text = render_card_text(meta, None, CardOptions())
    assert "unknown, check the model card" in text
    assert "(https://huggingface.co/someone/my-captioner)" in text
    header = header_of(text)
    assert header["source_datasets"] == ["extended|org/coco-captions"]
    assert header["license"] == "unknown"
    assert 'load_dataset("ORG/NAME"' in text


def test_scores_summary_only_when_scores_exist():
    from data_cards.render import render_card_text

    meta = {**pool_meta(), "num_rows": 4}
    scores = {"alignment": {"mean": 0.312345, "ci": [0.3, 0.33], "n": 400}, "diversity": {"mean": 0.8, "ci": 0.05},
              "gap": 0.125, "per_row": [1, 2], "scorer": "tiny-clip"}
    with_scores = render_card_text(meta, scores)
    assert "## Scores" in with_scores
    assert "| `alignment` | 0.3123 | [0.3, 0.33] | n: 400 |" in with_scores
    assert "| `diversity` | 0.8 | ± 0.05 |" in with_scores
    assert "| `gap` | 0.125 |" in with_scores
    assert "per_row" not in with_scores and "`scorer`" not in with_scores
    assert "## Scores" not in render_card_text(meta, None)


def test_merge_keeps_the_hub_managed_metadata_and_hand_added_keys():
    from huggingface_hub import DatasetCard

    from data_cards.render import CardOptions, merge_cards, render_card

    existing = DatasetCard(
        "---\nlicense: mit\nfoo: kept\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 4\n"
        "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\nold text\n"
    )
    ours = render_card({**pool_meta(), "num_rows": 4}, None, CardOptions(license="cc-by-4.0"))
    merged = merge_cards(existing, ours).data.to_dict()
    assert merged["dataset_info"] == {"splits": [{"name": "train", "num_examples": 4}]}
    assert merged["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert merged["foo"] == "kept"
    assert merged["license"] == "cc-by-4.0"
    assert "old text" not in str(merge_cards(existing, ours))


# ----------------------------------------------------------------------------- --to-dir


def test_to_dir_writes_the_hub_layout_and_round_trips(tmp_path, capsys):
    from datasets import Image, load_dataset

    from augment.pool import load_pool
    from augment.schema import POOL_FEATURES

    pool = make_pool(tmp_path / "pool", scores={"alignment": {"mean": 0.3, "ci": [0.2, 0.4]}})
    out = tmp_path / "repo"
    assert cli("push", str(pool), "--to-dir", str(out), "--license", "cc-by-4.0", "--repo-id", "org/sd-pool") == 0

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "data/train-00000-of-00001.parquet", "pool.json", "scores.json"]
    # the provenance as it is, but a local absolute path published by its last part only
    published, kept = json.loads((out / "pool.json").read_text()), json.loads((pool / "pool.json").read_text())
    assert kept["source"] == "/data/sample-world" and published["source"] == "sample-world"
    assert published == {**kept, "source": "sample-world"}
    readme = (out / "README.md").read_text()
    header = header_of(readme)
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_bytes": header["dataset_info"]["splits"][0]["num_bytes"], "num_examples": 4}]
    assert header["license"] == "cc-by-4.0" and "| `alignment` | 0.3 |" in readme

    original = load_pool(pool).dataset.cast_column("image", Image(decode=False))
    pushed = load_dataset(str(out), split="train")
    assert pushed.features == POOL_FEATURES
    pushed = pushed.cast_column("image", Image(decode=False))
    assert pushed.column_names == original.column_names
    for mine, theirs in zip(original, pushed):
        assert theirs["image"]["bytes"] == mine["image"]["bytes"]
        assert {k: v for k, v in theirs.items() if k != "image"} == {k: v for k, v in mine.items() if k != "image"}

    again = load_pool(out)  # load_pool reads the published layout too
    assert len(again) == 4 and again.meta == published


def test_an_export_of_images_held_as_bytes_is_not_copied_into_memory_to_embed_them(tmp_path, capsys, monkeypatch):
    """datasets' embedding (path -> bytes) mapped a whole shard into memory even when every image was bytes
    already, changing nothing: `push --to-dir` of 800 rows of 640x480 (497 MB) peaked at 2.6 GB (0.7 GB without).
    The shard is now written as it is read: the same file; a shard with a path-stored image is still embedded."""
    import datasets
    from datasets import Image, load_dataset

    from augment import hub
    from augment.pool import load_pool

    pool = make_pool(tmp_path / "pool", rows=6)
    embedded = tmp_path / "embedded.parquet"  # the file the map to embed writes
    shard = load_pool(pool).dataset
    shard.with_format("arrow").map(datasets.table.embed_table_storage, batched=True, keep_in_memory=True) \
        .with_format(None).to_parquet(str(embedded), batch_size=hub._writer_batch_size(shard))

    def no_map(*args, **kwargs):
        raise AssertionError("the shard was mapped (copied) to embed images that are bytes already")

    with monkeypatch.context() as patched:
        patched.setattr(datasets.Dataset, "map", no_map)
        assert cli("push", str(pool), "--to-dir", str(tmp_path / "repo")) == 0
    assert (tmp_path / "repo" / "data" / "train-00000-of-00001.parquet").read_bytes() == embedded.read_bytes()

    # an image stored as its file's path: read into the export, named by its file name (as push_to_hub does)
    picture = tmp_path / "picture.png"
    picture.write_bytes(png_bytes(9))
    records = load_pool(pool).dataset.cast_column("image", Image(decode=False)).to_list()
    records[2]["image"] = {"bytes": None, "path": str(picture)}
    write_pool(tmp_path / "paths", records, pool_meta())
    assert hub._any_image_path(load_pool(tmp_path / "paths").dataset)
    assert cli("push", str(tmp_path / "paths"), "--to-dir", str(tmp_path / "repo2")) == 0
    pushed = load_dataset(str(tmp_path / "repo2"), split="train").cast_column("image", Image(decode=False))
    assert pushed[2]["image"] == {"bytes": png_bytes(9), "path": "picture.png"}
    assert [row["image"] for row in pushed.select([0, 1, 3, 4, 5])] == [r["image"] for k, r in enumerate(records) if k != 2]


def test_to_dir_splits_a_pool_over_the_shard_size_into_contiguous_shards(tmp_path, monkeypatch):
    """Guards mutations (audit BZ): the shard count as `max(1, bytes // limit)` (one shard fewer, each over
    the limit) and shards of every n-th row (`contiguous=False`: the rows reordered) passed every test (each
    pool fitted one shard). A pool of 2.5 times the limit is 3 shards, as datasets' push_to_hub counts."""
    import pyarrow.parquet as pq

    from augment import hub
    from augment.pool import load_pool

    pool = make_pool(tmp_path / "pool", rows=5)
    monkeypatch.setattr(hub, "MAX_SHARD_BYTES", load_pool(pool).dataset.data.nbytes / 2.5)
    out = tmp_path / "repo"
    assert cli("push", str(pool), "--to-dir", str(out)) == 0
    shards = sorted((out / "data").iterdir())
    assert [p.name for p in shards] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    row_ids = [row_id for shard in shards for row_id in pq.read_table(shard, columns=["row_id"])["row_id"].to_pylist()]
    assert row_ids == [f"t2i-sd:{i}:0:0" for i in range(5)]


def test_to_dir_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys):
    pool = make_pool(tmp_path / "pool", method="eda", modality="text", model=None)
    out = tmp_path / "repo"
    out.mkdir()
    (out / "scores.json").write_text("{}")  # left by another pool: --force must drop it
    assert cli("push", str(pool), "--to-dir", str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli("push", str(pool), "--to-dir", str(out), "--force") == 0
    assert not (out / "scores.json").exists()
    assert cli("push", str(pool), "--to-dir", str(pool / "export")) == 2
    assert "overlaps the pool folder" in capsys.readouterr().err
    (out / "dataset_sample.json").write_text("{}")  # someone's data: --force never writes among it
    assert cli("push", str(pool), "--to-dir", str(out), "--force") == 2
    assert "holds files that are not a pool export (dataset_sample.json)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- failures in a subprocess


# runs `augment` with every connection and host-name lookup appended to the file $CONNECTIONS_LOG first
RECORDING_CLI = """
import os, runpy, socket
log = os.environ["CONNECTIONS_LOG"]
def recording(kind, call):
    def recorded(*args, **kwargs):
        with open(log, "a") as out:
            out.write(kind + " " + repr(args[1:] if kind == "connect" else args[:2]) + "\\n")
        return call(*args, **kwargs)
    return recorded
socket.socket.connect = recording("connect", socket.socket.connect)
socket.getaddrinfo = recording("lookup", socket.getaddrinfo)
runpy.run_module("augment.cli", run_name="__main__", alter_sys=True)
"""


def connections(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def run_cli(args: list[str], env_changes: dict[str, str | None], cwd: Path) -> subprocess.CompletedProcess:
    """`augment ARGS` in a subprocess (60 s at most: a hang guard, not a speed target); its
    connections and lookups recorded in cwd/connections.log."""
    env = dict(os.environ, CONNECTIONS_LOG=str(cwd / "connections.log"))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE"):
        env.pop(name, None)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, "-c", RECORDING_CLI, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def assert_one_clean_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout


def test_offline_push_fails_at_once(tmp_path):
    pool = make_pool(tmp_path / "pool")
    result = run_cli(["push", str(pool), "--repo-id", "org/pool"],
                     {"HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET, "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert_one_clean_line(result, "HF_HUB_OFFLINE")
    assert connections(tmp_path / "connections.log") == []  # at once: nothing tried, nothing to time out


def test_push_without_token_fails_at_once(tmp_path):
    pool = make_pool(tmp_path / "pool")
    result = run_cli(["push", str(pool), "--repo-id", "org/pool"],
                     {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_TOKEN": None,
                      "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert_one_clean_line(result, "no Hugging Face token found")
    assert "HF_TOKEN" in result.stderr
    assert connections(tmp_path / "connections.log") == []  # the token is checked before any request


def closed_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_push_without_network_fails_fast_and_never_shows_the_token(tmp_path):
    pool = make_pool(tmp_path / "pool")
    port = closed_local_port()
    endpoint = f"http://127.0.0.1:{port}"
    result = run_cli(["push", str(pool), "--repo-id", "org/pool"],
                     {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_TOKEN": SECRET,
                      "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert_one_clean_line(result, "cannot reach the Hub")
    tried = connections(tmp_path / "connections.log")
    # only the endpoint it was given, and few times: a refused connection is not retried for long
    assert tried and all(f"'127.0.0.1', {port}" in line for line in tried) and len(tried) <= 10, tried


def test_token_is_never_written_into_the_repository(tmp_path):
    pool = make_pool(tmp_path / "pool", scores={"gap": 0.1})
    out = tmp_path / "repo"
    result = run_cli(["push", str(pool), "--to-dir", str(out), "--repo-id", "org/pool"],
                     {"HF_TOKEN": SECRET, "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) == 4
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path


# ----------------------------------------------------------------------------- a mocked Hub


def http_error(cls, status: int):
    """A huggingface_hub HTTP error as the client raises it for `status`."""
    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub 1.x
        import httpx
    request = httpx.Request("GET", "https://hub.test/api/x")
    return cls(f"{status} Client Error", response=httpx.Response(status, request=request))


@pytest.fixture
def online(monkeypatch):
    """The Hub client believes it is online and has a token; no request can leave the process."""
    from huggingface_hub import constants

    import augment.hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(augment.hub, "require_reachable", lambda *a, **k: None)


@pytest.fixture
def hub(online, tmp_path):
    """HfApi and Dataset.push_to_hub replaced by mocks; `hub.files` is what hf_hub_download serves."""
    import datasets
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    served: dict[str, Path] = {}

    def download(repo_id, filename, **kwargs):
        if filename not in served:
            raise EntryNotFoundError(filename)
        return str(served[filename])

    with mock.patch.object(HfApi, "whoami", return_value={"name": "me"}) as whoami, \
         mock.patch.object(HfApi, "repo_info", side_effect=http_error(RepositoryNotFoundError, 404)) as repo_info, \
         mock.patch.object(HfApi, "repo_exists", return_value=False) as repo_exists, \
         mock.patch.object(HfApi, "hf_hub_download", side_effect=download) as hf_hub_download, \
         mock.patch.object(HfApi, "list_repo_files", return_value=["README.md", "data/train-00000-of-00001.parquet"]) as list_files, \
         mock.patch.object(HfApi, "create_branch") as create_branch, \
         mock.patch.object(HfApi, "create_commit") as create_commit, \
         mock.patch.object(datasets.Dataset, "push_to_hub") as push_to_hub:
        yield SimpleNamespace(whoami=whoami, repo_info=repo_info, repo_exists=repo_exists, served=served,
                              hf_hub_download=hf_hub_download, list_files=list_files, create_branch=create_branch,
                              create_commit=create_commit, push_to_hub=push_to_hub, dir=tmp_path / "served")


def serve(hub, name: str, text: str) -> None:
    hub.dir.mkdir(exist_ok=True)
    path = hub.dir / name
    path.write_text(text)
    hub.served[name] = path


def repo_with(*files: str):
    return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in files], private=False)


def test_push_uploads_data_then_merged_card_and_provenance(hub, tmp_path, capsys):
    pool = make_pool(tmp_path / "pool", scores={"alignment": {"mean": 0.3}})
    serve(hub, "README.md", "---\ndataset_info:\n  splits:\n  - name: train\n    num_examples: 4\n"
                           "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n")
    assert cli("push", str(pool), "--repo-id", "org/pool", "--license", "cc-by-4.0", "--private") == 0

    (repo_id,), kwargs = hub.push_to_hub.call_args
    assert repo_id == "org/pool" and kwargs["split"] == "train" and kwargs["num_shards"] == 1
    assert kwargs["private"] is True and kwargs["token"] == SECRET
    operations = {op.path_in_repo: op for op in hub.create_commit.call_args.kwargs["operations"]}
    assert set(operations) == {"README.md", "pool.json", "scores.json"}
    readme = operations["README.md"].path_or_fileobj.decode()
    header = header_of(readme)
    assert header["dataset_info"] == {"splits": [{"name": "train", "num_examples": 4}]}
    assert header["license"] == "cc-by-4.0" and "t2i-sd" in header["tags"]
    published = json.loads(operations["pool.json"].path_or_fileobj)  # the local source path by its last part
    assert published == {**json.loads((pool / "pool.json").read_text()), "source": "sample-world"}
    for op in operations.values():
        assert SECRET.encode() not in op.path_or_fileobj
    out = capsys.readouterr()
    assert "pushed 4 rows to" in out.out and SECRET not in out.out + out.err


def test_push_prints_its_result_alone_on_stdout_and_its_notes_on_stderr(hub, tmp_path, capsys):
    """was: its two notes (the license left 'unknown', an existing public repository) went to stdout beside the
    'pushed N rows to URL' line, where the other commands' notes (push's own, from hub.py) go to stderr."""
    pool = make_pool(tmp_path / "pool")
    hub.repo_exists.return_value = True
    hub.repo_info.side_effect = None
    hub.repo_info.return_value = repo_with("README.md", "pool.json")
    serve(hub, "pool.json", (pool / "pool.json").read_text())
    assert cli("push", str(pool), "--repo-id", "org/pool", "--private") == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"pushed 4 rows to {out.split(' to ', 1)[1].strip()}"], out
    assert "license as 'unknown'" in err and "stays public" in err, err


def test_local_paths_are_published_by_their_last_part_wherever_they_stand():
    """After a scorer prefix or a model name too (`local-dir:/home/u/clip` went out whole); Hub ids,
    URLs and relative paths stay as they are."""
    from augment.hub import published_document
    from augment.scoring.scorers import scorer_slug

    document = {"scorer": {"name": "local-dir:/home/u/clip", "pretrained": "ViT-B-32:/home/u/ckpt.pt"},
                "source": "/data/world", "model": "org/name", "card": "https://hf.co/org/name", "rel": "pools/eda"}
    assert published_document(document) == {
        "scorer": {"name": "local-dir:clip", "pretrained": "ViT-B-32:ckpt.pt"}, "source": "world", "model": "org/name",
        "card": "https://hf.co/org/name", "rel": "pools/eda"}
    # was: ...-home-u-clip-; and local-dir:DIR is DIR (one scorer, one folder of scores)
    assert scorer_slug("local-dir:/home/u/clip", "x") == scorer_slug("/home/u/clip", "x")
    assert scorer_slug("/home/u/clip", "x").startswith("clip-")


def _repush(hub, pool: Path) -> list:
    """Push `pool` to a repository holding this pool and a scores.json; the card commit's operations."""
    from augment.hub import published_json

    hub.repo_info.side_effect = None
    hub.repo_info.return_value = repo_with("README.md", "pool.json", "scores.json", "data/train-00000-of-00001.parquet")
    serve(hub, "pool.json", published_json(pool / "pool.json").decode())
    hub.list_files.return_value = ["README.md", "pool.json", "scores.json"]
    assert cli("push", str(pool), "--repo-id", "org/pool") == 0
    return hub.create_commit.call_args.kwargs["operations"]


def test_repush_of_the_same_pool_updates_it_and_drops_stale_scores(hub, tmp_path):
    # a generator model in a local folder: published by its last part, and still the same pool on a re-push
    operations = _repush(hub, make_pool(tmp_path / "pool", model=str(tmp_path / "my-captioner")))
    deleted = [op.path_in_repo for op in operations if not hasattr(op, "path_or_fileobj")]
    assert deleted == ["scores.json"]
    [meta] = [json.loads(op.path_or_fileobj) for op in operations if op.path_in_repo == "pool.json"]
    assert meta["model"] == "my-captioner" and str(tmp_path) not in json.dumps(meta)


def test_repush_of_a_scored_pool_replaces_its_scores_and_deletes_nothing(hub, tmp_path):
    """Guards the stale-scores rule (audit BY): only a scores.json the push does not upload is deleted; one it
    uploads again is replaced, never also deleted in the same commit."""
    operations = _repush(hub, make_pool(tmp_path / "pool", scores={"alignment": {"mean": 0.3}}))
    assert sorted(op.path_in_repo for op in operations) == ["README.md", "pool.json", "scores.json"]
    assert all(hasattr(op, "path_or_fileobj") for op in operations)  # additions only


def test_a_repository_created_empty_on_the_hub_takes_the_pool_without_force(hub, tmp_path):
    """Guards the empty-repository rule (audit BY): a dataset repository made on the website holds only
    .gitattributes and a README: no pool to clash with, so the push goes ahead without --force."""
    hub.repo_info.side_effect = None
    hub.repo_info.return_value = repo_with(".gitattributes", "README.md")
    assert cli("push", str(make_pool(tmp_path / "pool")), "--repo-id", "org/pool") == 0
    hub.push_to_hub.assert_called_once()
    hub.create_commit.assert_called_once()  # the card and provenance only: nothing deleted first


def test_401_is_one_clear_line(hub, tmp_path, capsys):
    from huggingface_hub.errors import HfHubHTTPError

    hub.whoami.side_effect = http_error(HfHubHTTPError, 401)
    assert cli("push", str(make_pool(tmp_path / "pool")), "--repo-id", "org/pool") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "401 Unauthorized" in err and "hf auth login" in err
    assert SECRET not in err
    hub.push_to_hub.assert_not_called()


@pytest.mark.parametrize("call, status, expected", [
    ("whoami", 404, "{endpoint} answered 404 Not Found while checking the token: is HF_ENDPOINT a Hugging Face Hub?"),
    ("repo_info", 403, "the token may not write to org/pool (403 Forbidden) while checking the repository"),
    ("create_commit", 429, "the Hub is rate-limiting requests (429) while uploading the data card: wait"),
])
def test_each_push_step_names_its_own_record_in_a_refusal(hub, tmp_path, capsys, call, status, expected):
    """Guards mutations (audit BZ): the token check naming the repository, and the repository check naming
    none, and the card's upload named as the data's, passed every test; a 404 from whoami (HF_ENDPOINT not a
    Hub) read "org/pool: not found", sending the user to fix a correct --repo-id, a 403 on the repository named
    the endpoint, and a card refused after the rows were up read as if the rows had not gone."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    getattr(hub, call).side_effect = http_error(HfHubHTTPError, status)
    assert cli("push", str(make_pool(tmp_path / "pool")), "--repo-id", "org/pool") == 2
    assert expected.format(endpoint=constants.ENDPOINT) in capsys.readouterr().err


@pytest.mark.parametrize("status, expected", [
    (404, "org/pool: not found on the Hub (404) while uploading the data"),
    (403, "may not write to org/pool (403 Forbidden)"),
    # guards mutations (audit BZ): 409 naming the endpoint instead of the repository, its advice swapped,
    # 429 falling through to the generic refusal, and HTTP 500 left out of the server failures all passed
    (409, "org/pool: conflict on the Hub (409) while uploading the data: the name may be taken by a repository "
          "you cannot see; choose another --repo-id"),
    (429, "the Hub is rate-limiting requests (429) while uploading the data: wait a few minutes and push again"),
    (500, "the Hub failed (HTTP 500) while uploading the data: try again later"),
])
def test_hub_refusals_during_upload(hub, tmp_path, capsys, status, expected):
    from huggingface_hub.errors import HfHubHTTPError

    hub.push_to_hub.side_effect = http_error(HfHubHTTPError, status)
    assert cli("push", str(make_pool(tmp_path / "pool")), "--repo-id", "org/pool") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    hub.create_commit.assert_not_called()


def test_a_different_pool_in_the_repo_is_a_clash(hub, tmp_path, capsys):
    pool = make_pool(tmp_path / "pool")
    hub.repo_info.side_effect = None
    hub.repo_info.return_value = repo_with(".gitattributes", "README.md", "pool.json", "data/train-00000-of-00001.parquet")
    other = {**json.loads((pool / "pool.json").read_text()), "method": "eda", "seed": 1}
    serve(hub, "pool.json", json.dumps(other))

    assert cli("push", str(pool), "--repo-id", "org/pool") == 2
    err = capsys.readouterr().err
    assert "holds a different pool (method 'eda'" in err and "--revision" in err and "--force" in err
    hub.push_to_hub.assert_not_called()

    assert cli("push", str(pool), "--repo-id", "org/pool", "--force") == 0
    hub.push_to_hub.assert_called_once()


def test_a_new_branch_never_clashes(hub, tmp_path):
    from huggingface_hub.errors import RevisionNotFoundError

    hub.repo_info.side_effect = http_error(RevisionNotFoundError, 404)
    assert cli("push", str(make_pool(tmp_path / "pool")), "--repo-id", "org/pool", "--revision", "sd-v2") == 0
    assert hub.push_to_hub.call_args.kwargs["revision"] == "sd-v2"
    assert hub.create_commit.call_args.kwargs["revision"] == "sd-v2"


def test_a_model_or_a_foreign_dataset_of_that_name_is_a_clash(hub, tmp_path, capsys):
    pool = make_pool(tmp_path / "pool")
    hub.repo_exists.return_value = True  # no dataset org/pool, but a model org/pool
    assert cli("push", str(pool), "--repo-id", "org/pool") == 2
    assert "is a model repository" in capsys.readouterr().err
    assert hub.repo_exists.call_args.kwargs["repo_type"] == "model"

    hub.repo_info.side_effect = None
    hub.repo_info.return_value = repo_with("README.md", "train.csv")
    assert cli("push", str(pool), "--repo-id", "org/pool") == 2
    assert "not a mat-plus pool" in capsys.readouterr().err
    hub.push_to_hub.assert_not_called()


class FakeRepo:
    """A Hub dataset repository behind the mocked client: its files by path, changed by commits, and
    a push_to_hub that does what datasets' does to it: this split's shards replaced, the other
    splits, configs and files kept, and the card's configs extended by this split."""

    def __init__(self, hub, files: dict[str, str]):
        self.files = dict(files)
        self.hub = hub
        hub.repo_info.side_effect = None
        hub.repo_info.return_value = repo_with(*files)
        hub.list_files.side_effect = lambda *args, **kwargs: sorted(self.files)
        hub.hf_hub_download.side_effect = self.download
        hub.create_commit.side_effect = self.commit
        hub.push_to_hub.side_effect = self.push_to_hub

    def download(self, repo_id, filename, **kwargs):
        from huggingface_hub.errors import EntryNotFoundError

        if filename not in self.files:
            raise EntryNotFoundError(filename)
        self.hub.dir.mkdir(exist_ok=True)
        path = self.hub.dir / filename.replace("/", "_")
        path.write_text(self.files[filename])
        return str(path)

    def commit(self, repo_id, operations, **kwargs):
        from huggingface_hub import CommitOperationAdd

        for operation in operations:
            if isinstance(operation, CommitOperationAdd):
                self.files[operation.path_in_repo] = operation.path_or_fileobj.decode()
            else:
                del self.files[operation.path_in_repo]

    def push_to_hub(self, repo_id, split, num_shards, **kwargs):
        for name in [name for name in self.files if name.startswith(f"data/{split}-")]:
            del self.files[name]
        self.files.update({f"data/{split}-{i:05d}-of-{num_shards:05d}.parquet": "rows" for i in range(num_shards)})
        configs = header_of(self.files["README.md"]).get("configs", []) if "README.md" in self.files else []
        default = next((config for config in configs if config["config_name"] == "default"), None)
        if default is None:
            default = {"config_name": "default", "data_files": []}
            configs.append(default)
        default["data_files"] = [files for files in default["data_files"] if files["split"] != split]
        default["data_files"].append({"split": split, "path": f"data/{split}-*"})
        self.files["README.md"] = f"---\n{yaml.safe_dump({'configs': configs})}---\n"


FOREIGN_DATASET = {
    ".gitattributes": "*.parquet filter=lfs", "train.csv": "a,b", "dataset_infos.json": "{}",
    "data/train-00000-of-00002.parquet": "old", "data/train-00001-of-00002.parquet": "old",
    "data/test-00000-of-00001.parquet": "old", "extra/part-0.parquet": "old",
    "README.md": "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
                 "  - split: test\n    path: data/test-*\n- config_name: extra\n  data_files: extra/*.parquet\n---\nOld.\n",
}


@pytest.mark.parametrize("revision", [None, "sd-v2"])
def test_force_leaves_the_pool_alone_in_the_repository(hub, tmp_path, capsys, revision):
    """push_to_hub keeps a repository's other splits, configs and files: `--force` over a dataset that is
    not a pool left the pool mixed with it (its test split, its `extra` config, its csv), under a card
    describing the pool alone. A new branch starts as a copy of main: the same there."""
    from huggingface_hub.errors import RevisionNotFoundError

    pool = make_pool(tmp_path / "pool")
    repo = FakeRepo(hub, FOREIGN_DATASET)
    where = ["--revision", revision] if revision else []
    assert cli("push", str(pool), "--repo-id", "org/pool", *where) == 2  # without --force: refused, untouched
    assert "not a mat-plus pool" in capsys.readouterr().err and repo.files == FOREIGN_DATASET

    if revision:
        hub.repo_info.side_effect = http_error(RevisionNotFoundError, 404)
    assert cli("push", str(pool), "--repo-id", "org/pool", "--force", *where) == 0
    assert sorted(repo.files) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet", "pool.json"]
    assert repo.files[".gitattributes"] == FOREIGN_DATASET[".gitattributes"]
    card = header_of(repo.files["README.md"])
    assert card["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert "t2i-sd" in card["tags"] and "Old." not in repo.files["README.md"]
    assert {call.kwargs["revision"] for call in hub.create_commit.call_args_list} == {revision}
    if revision:
        hub.create_branch.assert_called_once_with("org/pool", branch=revision, repo_type="dataset", exist_ok=True)
    assert SECRET not in capsys.readouterr().out


def test_force_repush_of_the_same_pool_updates_it_in_place(hub, tmp_path, capsys):
    """Scripts pass --force on every push: over this same pool nothing is deleted first (the repository
    was empty for the whole upload, and stayed empty when the upload failed)."""
    pool = make_pool(tmp_path / "pool")
    repo = FakeRepo(hub, FOREIGN_DATASET)
    assert cli("push", str(pool), "--repo-id", "org/pool", "--force") == 0
    pushed = dict(repo.files)
    hub.repo_info.return_value = repo_with(*repo.files)
    hub.push_to_hub.side_effect = ConnectionError("connection reset")
    assert cli("push", str(pool), "--repo-id", "org/pool", "--force") == 2
    assert repo.files == pushed  # the pool is still there, whole
    capsys.readouterr()


def test_push_arguments_are_checked(tmp_path, capsys):
    pool = str(make_pool(tmp_path / "pool"))
    assert cli("push", pool) == 2
    assert "--repo-id" in capsys.readouterr().err
    assert cli("push", pool, "--repo-id", "not a repo") == 2
    assert "ORG/NAME" in capsys.readouterr().err
    assert cli("push", pool, "--to-dir", str(tmp_path / "x"), "--revision", "b") == 2
    assert "uploads only" in capsys.readouterr().err


def test_a_local_source_given_as_a_relative_path_is_never_named_a_hub_dataset(tmp_path, monkeypatch, sample_world_dir):
    """`augment generate --source data/world` records the source's format, so the card pushed from
    another folder (where data/world does not exist) still names a local source, not Hub id data/world."""
    import shutil

    from augment.pool import read_pool_meta
    from data_cards.render import CardOptions, render_card_text

    work = tmp_path / "work"
    shutil.copytree(sample_world_dir, work / "data" / "world")
    monkeypatch.chdir(work)
    assert cli("generate", "--method", "img-aug", "--source", "data/world", "--split", "train", "--limit", "2",
               "--n", "1", "--out", str(tmp_path / "pool"), "--no-progress") == 0
    meta = read_pool_meta(tmp_path / "pool")
    assert meta["source"] == "data/world" and meta["source_format"] != "hub"
    monkeypatch.chdir(tmp_path)  # elsewhere: data/world is not here
    header = header_of(render_card_text(meta, None, CardOptions()))
    assert header["source_datasets"] == ["extended|world"] and header["pretty_name"].endswith("pool of world")
    # a pool from before the format was recorded: guessed from the spelling, as before
    older = {key: value for key, value in meta.items() if key != "source_format"}
    assert header_of(render_card_text(older, None, CardOptions()))["source_datasets"] == ["extended|data/world"]
    hub = {**meta, "source": "org/captions", "source_format": "hub"}
    assert header_of(render_card_text(hub, None, CardOptions()))["source_datasets"] == ["extended|org/captions"]


def test_the_cards_scores_table_names_a_local_scorer_by_its_last_part(tmp_path, sample_world_dir):
    """scores.json was published without the uploader's folders, but the card's table beside it named
    the scorer by its full local path (`scorer: /home/me/runs/pretrain/ckpt`)."""
    from models import load_model, save_model

    scorer = tmp_path / "private" / "scorer-ckpt"
    save_model(load_model("tiny-clip"), scorer)
    pool = tmp_path / "eda"
    assert cli("generate", "--method", "eda", "--source", str(sample_world_dir), "--out", str(pool), "--n", "1",
               "--limit", "4", "--no-progress") == 0
    assert cli("score", str(pool), "--scorer", str(scorer), "--source", str(sample_world_dir), "--no-progress") == 0
    assert str(scorer) in (pool / "scores.json").read_text()
    out = tmp_path / "repo"
    assert cli("push", str(pool), "--to-dir", str(out), "--license", "cc-by-4.0") == 0
    card = (out / "README.md").read_text()
    assert "scorer: scorer-ckpt" in card
    for published in (card, (out / "scores.json").read_text(), (out / "pool.json").read_text()):
        assert str(tmp_path) not in published
    # a selection's card lists its scorer by name and id (it showed the id alone, a digest no reader can look up)
    selection = tmp_path / "aligned"
    assert cli("select", str(pool), "--out", str(selection), "--top-k-per-item", "1") == 0
    scorer_id = json.loads((selection / "pool.json").read_text())["scorer"]["id"]
    assert cli("push", str(selection), "--to-dir", str(tmp_path / "repo2"), "--license", "cc-by-4.0") == 0
    card = (tmp_path / "repo2" / "README.md").read_text()
    assert f"| `scorer` | scorer-ckpt (id {scorer_id}) |" in card and str(tmp_path) not in card


def test_a_shuffle_pools_captions_are_found_language_with_machine_made_pairs():
    """The control's captions are other images' human captions: its card said they were machine-generated."""
    from data_cards.render import CardOptions, render_card_text

    options = CardOptions(license="cc-by-4.0", source_license="cc-by-4.0", repo_id="org/pool")
    for method, creators in (("shuffle", ["found"]), ("eda", ["machine-generated"]), ("i2t-human", ["found"])):
        meta = {**pool_meta(method, "text"), "num_rows": 10, "schema_version": 1}
        header = header_of(render_card_text(meta, None, options))
        assert header["language_creators"] == creators, method
        assert header["annotations_creators"] == (["found"] if method == "i2t-human" else ["machine-generated"])


def test_the_scores_tables_interval_heading_names_the_level_they_were_computed_at():
    """`augment score --confidence 0.8` was published under "95% CI"."""
    from data_cards.render import ci_label

    def document(*levels):
        return {"scorers": {f"s{k}": {"settings": {"confidence": level}} for k, level in enumerate(levels)}}

    assert ci_label(document(0.8)) == "80% CI"
    assert ci_label(document(0.95, 0.95)) == "95% CI"
    assert ci_label(document(0.8, 0.95)).startswith("CI (levels differ")
    # no level recorded (scores.json before --confidence, or another document): augment score's default 95%
    assert ci_label(None) == ci_label({"scorers": {"s0": {}}}) == "95% CI"  # guards a mutation (audit CK)


def test_the_card_says_how_a_row_joins_back_to_its_source():
    """A consumer could not tell what source_image_id was for each source format (audit P)."""
    from data_cards.render import COLUMN_MEANINGS

    meaning = COLUMN_MEANINGS["source_image_id"]
    assert "cocoid" in meaning and "join on it, with split" in meaning


@pytest.mark.parametrize("served", ['{"method": "t2i-sd", "num_ro', "[1, 2]", '"a pool"'])
def test_a_damaged_pool_json_in_the_repo_is_one_line(hub, tmp_path, capsys, served):
    """The repository's pool.json (an earlier push's, or a hand edit) was read with a bare json.loads:
    truncated it was a JSONDecodeError traceback, not an object an AttributeError one (audit AZ)."""
    pool = make_pool(tmp_path / "pool")
    hub.repo_info.side_effect = None
    hub.repo_info.return_value = repo_with(".gitattributes", "README.md", "pool.json", "data/train-00000-of-00001.parquet")
    serve(hub, "pool.json", served)
    capsys.readouterr()  # the pool's writing

    assert cli("push", str(pool), "--repo-id", "org/pool") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err[-2000:]
    assert "org/pool: its pool.json is damaged" in err and "--force" in err, err
    hub.push_to_hub.assert_not_called()
    hub.create_commit.assert_not_called()


def test_push_reads_a_scores_json_with_a_byte_order_mark_as_score_does(tmp_path):
    """augment score and its report read scores.json with a byte-order mark (an editor on Windows writes one) since
    they first read it, and f55d8bf made every reader of the project's records allow one; push's own reader
    (hub.read_scores) read it in the locale's encoding and refused the mark: "not valid JSON (Unexpected UTF-8 BOM
    ...)"."""
    from augment.hub import read_scores
    from augment.scoring.store import read_scores_json

    scores = {"scores_version": 1, "scorers": {}, "caf\u00e9": "\u00e9t\u00e9"}
    (tmp_path / "scores.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(scores, ensure_ascii=False).encode("utf-8"))
    assert read_scores(SimpleNamespace(path=tmp_path)) == scores
    assert read_scores_json(tmp_path) == scores  # score's reader, for comparison


def test_a_second_export_into_a_folder_an_export_is_writing_is_refused(tmp_path, capsys, monkeypatch):
    """Two `augment push --to-dir D` at once (a scheduler's retry, two pools sent to one folder): the second one,
    run while the first had written its rows but not yet its pool.json, took D for its own killed export, replaced
    the rows with its pool's, and the first then wrote its pool.json and card over them: D held one pool's
    provenance with another's rows. The first one's pool and lock stay; the second is refused in one line."""
    from augment import hub
    from augment.pool import load_pool

    first, second = make_pool(tmp_path / "first", rows=3), make_pool(tmp_path / "second", method="i2t-blip", rows=4)
    out = tmp_path / "repo"
    real, started, answers = hub.atomic_write_bytes, [], []

    def second_push_meanwhile(path, data, *args, **kwargs):  # the first push, its rows written, before its pool.json
        if not started:
            started.append(path)
            answers.append(cli("push", str(second), "--to-dir", str(out)))
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(hub, "atomic_write_bytes", second_push_meanwhile)
    assert cli("push", str(first), "--to-dir", str(out)) == 0
    assert answers == [2] and "another augment push, generate or select is writing" in capsys.readouterr().err
    exported = load_pool(out)
    assert exported.method == "t2i-sd" and exported.dataset["caption"] == load_pool(first).dataset["caption"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "pool.json"]


def test_an_export_killed_part_way_keeps_its_lock_file_and_the_same_command_finishes_it(tmp_path, capsys):
    """The export's lock (`.generate.lock`, gone from a finished export) stays after a kill; the re-run accepts it."""
    pool = make_pool(tmp_path / "pool", rows=3)
    out = tmp_path / "repo"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train-00000-of-00001.parquet").write_bytes(b"half")  # the killed export's rows
    (out / ".generate.lock").touch()
    assert cli("push", str(pool), "--to-dir", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "pool.json"]


def test_the_cards_scores_table_lists_the_latest_scorer_first():
    """scores.json keeps every scorer's entry; the card's table opens with the latest (`latest`), the one the pool's
    selection and summary read, whatever order the entries were written in."""
    from data_cards.render import score_rows

    entry = {"alignment": {"image": {"mean": 0.5, "ci": [0.4, 0.6]}}}
    document = {"scorers": {"clip-old": {**entry, "scorer": {"name": "old"}},
                            "clip-new": {**entry, "scorer": {"name": "new"}}}, "latest": "clip-new"}
    assert [row["details"] for row in score_rows(document)] == ["scorer: new", "scorer: old"]


def test_an_older_pools_source_present_here_is_named_as_a_local_folder(tmp_path, monkeypatch):
    """A pool from before the source's format was recorded, its card rendered where its source `data/world` is:
    a local folder (its last part), not the Hub dataset `data/world` its spelling alone would suggest."""
    from data_cards.render import source_datasets, source_name

    (tmp_path / "data" / "world").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert source_name("data/world") == "world"
    assert source_datasets("data/world") == ["extended|world"]


def test_a_hub_copy_pushed_before_the_recipe_was_recorded_is_the_same_pool():
    """`augment push` without --force over its own earlier copy: the Hub's pool.json written before `recipe` (or a
    key added since) was recorded is this pool, as a local resume takes it; a recipe both record that differs is
    another pool."""
    from augment.hub import same_pool

    ours = {"method": "m", "seed": 0, "n": 1, "recipe": 2, "source": "s", "source_images": "abc", "device_type": "cpu"}
    older = {key: value for key, value in ours.items() if key not in ("recipe", "source_images", "device_type")}
    assert same_pool(ours, older) and same_pool(older, ours)
    assert not same_pool(ours, {**ours, "recipe": 3})


def test_merge_keeps_the_configs_push_to_hub_wrote_over_the_ones_we_render():
    """Guards a mutation (audit CK): merge_cards without its HUB_MANAGED_KEYS loop (our `configs` over the
    Hub's) passed every test, whose Hub card held the very `configs` we render: the files really uploaded
    are what `push_to_hub` describes, and a card pointing at other files loads nothing."""
    from huggingface_hub import DatasetCard

    from data_cards.render import CardOptions, merge_cards, render_card

    uploaded = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    existing = DatasetCard("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                           "    path: data/train-*.parquet\n---\ntheirs\n")
    ours = render_card({**pool_meta(), "num_rows": 4}, None, CardOptions())
    assert ours.data.to_dict()["configs"] != uploaded  # else the test could not tell whose configs were kept
    assert merge_cards(existing, ours).data.to_dict()["configs"] == uploaded


def test_a_selection_of_human_captions_is_annotated_as_its_generator_found_them():
    """Guards a mutation (audit CK): the annotations read from the pool's own method (`select`), not its
    generator's, passed every test: a selection of i2t-human rows keeps the source's own image-caption
    pairs, which the Hub's `annotations_creators` then called machine-generated."""
    from data_cards.render import card_metadata, CardOptions

    human = {"name": "human", "method": "i2t-human", "model": "human", "modality": "text"}
    header = card_metadata(selection_of(human), CardOptions())
    assert header["annotations_creators"] == ["found"] and header["language_creators"] == ["found"]


def test_a_selections_task_categories_are_its_generators():
    """Guards a mutation (audit CK): task categories read from the pool's own method (`select`, whose
    categories follow its modality) passed every test, whose selection was of t2i-sd images: the same
    `text-to-image` either way. A selection of img2img images is still an image-to-image pool."""
    from data_cards.render import card_metadata, CardOptions

    img2img = {"name": "i2i", "method": "t-i2i-sd", "model": "runwayml/stable-diffusion-v1-5", "modality": "image"}
    assert card_metadata(selection_of(img2img), CardOptions())["task_categories"] == ["image-to-image", "text-to-image"]


def test_a_blip2_captioners_pool_does_not_cite_blip():
    """Guards a mutation (audit CK): the BLIP paper cited for any captioner whose name holds "blip" passed every
    test: a pool of Salesforce/blip2-opt-2.7b captions then cited BLIP (v1), another model's paper."""
    from data_cards.catalog import PAPERS, method_papers

    assert method_papers("i2t-blip", "Salesforce/blip-image-captioning-base") == [PAPERS["blip"]]
    assert method_papers("i2t-blip2", "Salesforce/blip2-opt-2.7b") == []
    assert method_papers("i2t-blip2", "some-org/BLIP-2-finetuned") == []


def test_a_source_dataset_naming_the_source_itself_is_no_local_copy():
    """Guards a mutation (audit CK): card_source naming a copy whenever --source-dataset is given passed every
    test: a pool of the Hub dataset itself then read "generated from `org/x` (read from `org/x`)"."""
    from data_cards.render import CardOptions, card_source

    options = CardOptions(source_dataset="org/coco-captions")
    assert card_source({**pool_meta(source="org/coco-captions"), "source_format": "hub"}, options) == \
        ("org/coco-captions", None)
    assert card_source(pool_meta(source="/data/coco"), options) == ("org/coco-captions", "coco")


def test_a_selections_card_names_its_generators_model_revision():
    """Guards a mutation (audit CK): the model revision read from the selection's own pool.json alone passed
    every test: a selection of Stable Diffusion images then said its model revision was `not recorded`."""
    from data_cards.render import CardOptions, render_card_text

    generated = {"name": "sd", "method": "t2i-sd", "model": "stabilityai/stable-diffusion-2-1-base",
                 "model_revision": "abc123", "modality": "image"}
    meta = selection_of(generated)
    del meta["model_revision"]
    assert "| model revision | `abc123` |" in render_card_text(meta, None, CardOptions())


def test_the_header_names_the_hub_dataset_a_local_source_is_a_copy_of():
    """Guards a mutation (audit CK): source_datasets ignoring --source-dataset passed every test: the Hub's
    `source_datasets` then named the local folder (`extended|coco`) instead of the dataset it copies."""
    from data_cards.render import CardOptions, card_metadata

    meta = {**pool_meta(source="/data/coco"), "num_rows": 4}
    assert card_metadata(meta, CardOptions())["source_datasets"] == ["extended|coco"]
    assert card_metadata(meta, CardOptions(source_dataset="org/coco"))["source_datasets"] == ["extended|org/coco"]


def test_a_local_folder_given_with_a_trailing_slash_gets_no_hub_link():
    """Guards a mutation (audit CK): model_url taking any two parts split by "/" for a Hub id passed every test:
    a model given as a relative folder `runs/` was linked to https://huggingface.co/runs/."""
    from data_cards.catalog import model_url

    assert model_url("org/name") == "https://huggingface.co/org/name"
    assert model_url("runs/") is None and model_url("/org") is None and model_url("tiny-clip") is None
