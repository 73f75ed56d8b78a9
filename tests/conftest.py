"""Shared fixtures. Tests never touch the network: the Hub is switched off before any import."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from augment.loading import available_cpus  # noqa: E402  (imports no torch)

# `make test` runs the suite in pytest-xdist workers (one per CPU): each gets its share of the CPUs
# as OpenMP threads, it and the CLI processes it starts. Two workers with torch's default of one
# thread per core each would spin against each other (`one_torch_thread`: up to ~40x slower).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // WORKERS)))

import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Keep datasets' cache, the tiny models and the source cache in a per-session folder."""
    if WORKERS > 1:  # torch may have been imported before the variable was set
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    root = tmp_path_factory.mktemp("caches")
    os.environ.setdefault("HF_DATASETS_CACHE", str(root / "datasets"))
    os.environ.setdefault("MATPLUS_TINY_DIR", str(root / "tiny"))
    os.environ.setdefault("MATPLUS_CACHE", str(root / "mat-plus"))  # the source cache
    yield


def evaluation_killed_at_batch(monkeypatch, batch: int, run) -> None:
    """Call `run()` with `train.evaluate`'s `batch`-th attacked batch (counted over all attacks, from 1)
    never finishing, as if the process were killed there; it must die there."""
    from train import evaluate as evaluation

    original = evaluation.AttackRecord.add_batch
    calls = {"n": 0}

    def dying(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == batch:
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    monkeypatch.setattr(evaluation.AttackRecord, "add_batch", dying)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(evaluation.AttackRecord, "add_batch", original)


ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from augment.loading import ordered_batches

def slow(value):  # the first batch at once; the worker is busy on the next one when its parent dies
    if value > 0:
        time.sleep(120)
    return os.getpid()

if __name__ == "__main__":
    if len(sys.argv) > 1:
        multiprocessing.set_start_method(sys.argv[1], force=True)
    for batch in ordered_batches(list(range(3)), [[0], [1], [2]], 1, slow, prefetch=1):
        print(batch[0], flush=True)
        time.sleep(120)
"""


def loader_worker_outlives_killed_parent(folder: Path, start_method: str | None = None, wait_s: float = 10) -> bool:
    """Run a command whose DataLoader worker is busy (`start_method`: the default when None), kill -9
    the command, and say whether its worker is still running `wait_s` seconds later (it is then killed)."""
    import signal
    import subprocess
    import time

    def running(pid: int) -> bool:
        try:
            return "(zombie)" not in open(f"/proc/{pid}/status").read()
        except FileNotFoundError:
            return False

    script = folder / "orphan.py"  # a file, not -c: spawned workers import its `slow` by name
    script.write_text(ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), *([start_method] if start_method else [])],
                              stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert worker != parent.pid and running(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + wait_s
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = running(worker)
    finally:
        parent.kill()
    if alive:
        os.kill(worker, signal.SIGKILL)  # under forkserver the server then sees its pipe's end and exits
    return alive


def without_model(cls, **settings):
    """An instance of `cls` made without `__init__` (no model loaded) that holds only `settings`: for a test of
    logic that reads those settings, with a stand-in (e.g. `sample`) where a model would answer."""
    instance = cls.__new__(cls)
    vars(instance).update(settings)
    return instance


def write_image(path: Path, mode: str = "RGB", size=(16, 12), colour=120) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.new("RGB", size, (colour, 10, 200)).convert("P")
    elif mode == "CMYK":
        image = Image.new("CMYK", size, (colour, 10, 20, 0))
    elif mode == "RGBA":
        image = Image.new("RGBA", size, (colour, 10, 20, 128))
    elif mode == "L":
        image = Image.new("L", size, colour)
    else:
        image = Image.new("RGB", size, (colour, 30, 60))
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        fmt = "PNG"
    image.save(path, format=fmt)
    return path


@pytest.fixture
def karpathy_dir(tmp_path) -> Path:
    """A tiny Karpathy-layout dataset with images in several modes."""
    modes = ["RGB", "L", "RGBA", "P", "CMYK", "RGB"]
    splits = ["train", "train", "train", "val", "test", "test"]
    images = []
    for i, (mode, split) in enumerate(zip(modes, splits)):
        name = f"{i:03d}.{'jpg' if mode in ('CMYK', 'RGB') else 'png'}"
        write_image(tmp_path / "images" / name, mode=mode, colour=20 * i)
        images.append({
            "filename": name, "imgid": i, "split": split,
            "sentences": [{"raw": f"caption {j} of image {i}"} for j in range(5)],
            "scene": {"objects": i},
        })
    (tmp_path / "dataset_toy.json").write_text(json.dumps({"images": images}))
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread while a module runs (`pytestmark = pytest.mark.usefixtures(...)`):
    on a busy 2-core machine 2 spinning OpenMP threads made tiny models up to ~40x slower (the
    tiny UNet: 0.17 s -> 6 s per image). Restored after the module."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@contextlib.contextmanager
def cache_entry(request, name: str):
    """The folder `name` in pytest's cache ("mat-plus"), held under a file lock while the block runs: each
    pytest-xdist worker runs the session fixtures, and the first builds what the others then find built.
    Under `-p no:cacheprovider` (no pytest cache) the folder is in this run's temporary folder instead:
    built afresh, as in a fresh clone; a pytest-xdist worker's temporary folder is its own (popen-gwN) inside
    the run's, so the workers share the run's folder (each built its own twins: ~3 min of training twice)."""
    from filelock import FileLock

    cache = getattr(request.config, "cache", None)
    if cache is not None:
        root = Path(cache.mkdir("mat-plus"))
    else:
        base = request.getfixturevalue("tmp_path_factory").getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            base = base.parent  # the run's folder, which pytest-xdist's controller removes after a passing run
        root = base / "mat-plus-cache"
        root.mkdir(exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        yield root / name


def cached_folder(request, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name` in pytest's cache, made by `build(folder)` in a sibling renamed into place when
    complete (a run killed while building leaves no half-written folder that looks finished)."""
    with cache_entry(request, name) as folder:
        if not folder.exists():
            building = folder.with_name(folder.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            build(building)
            building.rename(folder)
    return folder


# what else a cached fixture's bytes depend on: a checkout whose venv moved to another Python or other
# releases of these trained its twins and drew its worlds elsewhere (audit Y: one .pytest_cache, three Pythons)
CACHE_PACKAGES = ("torch", "numpy", "pillow", "transformers", "open_clip_torch")


def _code_key(*modules: str) -> str:
    """Hash of the source files a cached fixture depends on, the Python version and `CACHE_PACKAGES`'
    versions: edits or another environment invalidate the cache."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for module in modules:
        digest.update((root / module).read_bytes())
    for package in CACHE_PACKAGES:
        try:
            digest.update(f"{package}=={version(package)}".encode())
        except PackageNotFoundError:
            digest.update(f"{package} absent".encode())
    digest.update(f"python {sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()[:12]


# every module of the sample world: a cached fixture built from the world depends on all of them
WORLD_CODE = tuple(sorted(str(path.relative_to(Path(__file__).resolve().parent.parent))
                          for path in (Path(__file__).resolve().parent.parent / "augment" / "world").glob("*.py")))

SAMPLE_WORLD_SIZE = 400  # 300 train / 50 val / 50 test scenes, 5 captions each


@pytest.fixture(scope="session")
def sample_world_dir(request) -> Path:
    """A small sample world (Karpathy JSON + 64x64 PNGs), built once and cached across runs."""
    from augment.world.writer import write_sample

    return cached_folder(request, f"sample-world-{SAMPLE_WORLD_SIZE}-{_code_key(*WORLD_CODE)}",
                         lambda folder: write_sample(folder, n=SAMPLE_WORLD_SIZE, seed=0))


# the code a trained twin depends on: edits invalidate the cached fixture
TRAINER_CODE = (*WORLD_CODE, "augment/tiny.py", "train/trainer.py", "train/methods.py", "train/data.py",
                "tasks/retrieval.py", "models/base.py")


def train_twin(request, sample_world_dir: Path, twin: str, *family_code: str, steps: int = 150,
               batch_size: int = 64, lr: float = 1e-3, task: str = "retrieval") -> Path:
    """A tiny twin trained clean on the sample world with the trainer, cached across runs; its ckpt folder.

    `task` other than retrieval: trained for that task (`sample_world_dir` is then that task's world)."""
    from train.trainer import train_run

    key = _code_key(*TRAINER_CODE, *family_code)
    name = twin if task == "retrieval" else f"{twin}-{task}-{Path(sample_world_dir).name}"  # the world it learnt
    with cache_entry(request, f"trained-{name}-{steps}-{lr:g}-{key}") as run:
        if (run / "summary.json").exists():
            return run / "ckpt"
        resume = (run / "ckpt").is_dir()  # a killed run resumes from its last checkpoint
        train_run({"method": "clean", "task": task, "model": twin, "train_data": str(sample_world_dir), "out": str(run),
                   "max_steps": steps, "batch_size": batch_size, "lr": lr, "warmup": steps // 10,
                   "wd": 0.1, "seed": 0, "progress": False, "save_every": 50,
                   # from random weights the momentum model only distils noise (ALBEF fine-tunes from pre-training);
                   # the other families have no momentum encoders, and refuse the setting
                   **({"momentum_distillation": False} if twin == "tiny-albef" else {}),
                   "resume": "latest" if resume else None, "overwrite": not resume})
    return run / "ckpt"


@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Every connection and host-name lookup the test attempts, each refused: offline code must
    make none (what "fails fast offline" means, checked without a wall-clock threshold)."""
    import socket

    attempts: list = []

    def refuse(kind: str):
        def refused(*args, **kwargs):
            attempts.append((kind, args))
            raise OSError(f"network {kind} refused by the test")
        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("lookup"))
    return attempts


@pytest.fixture(scope="session")
def wordnet_ready(tmp_path_factory):
    """nltk's WordNet; built into a temp folder (and NLTK_DATA) when the venv has none. Not a skip:
    it fails clearly without Debian's wordnet-base, which `make test` installs."""
    from augment import wordnet

    if not wordnet.wordnet_loads():
        data_dir = tmp_path_factory.mktemp("nltk_data")
        wordnet.setup_wordnet(data_dir, download=False)  # fails clearly without wordnet-base
        os.environ["NLTK_DATA"] = str(data_dir)  # for the CLI subprocesses
    wordnet.require_wordnet()


@pytest.fixture(scope="session")
def trained_clip(request, sample_world_dir) -> Path:
    """tiny-clip trained on the sample world by `train clean` (150 steps of batch 64), cached across runs.

    TR@1 ~0.3 on the 50 test scenes (chance 0.02): enough for attacks to have something to break
    and for alignment to tell right captions from shuffled ones.
    """
    return train_twin(request, sample_world_dir, "tiny-clip", "models/open_clip_family.py",
                      "augment/model_configs/tiny-clip.json")


@pytest.fixture(scope="module")
def trained_bundle(trained_clip):
    """The trained tiny CLIP loaded with `models.load_model`, at most 2 torch threads while a module uses it."""
    import torch

    from models import load_model

    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield load_model(str(trained_clip))
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def twin_trainer(request, sample_world_dir):
    """`twin_trainer(twin, *family_code_files, steps=150, lr=1e-3)`: that twin trained clean on the sample world (cached)."""
    return lambda twin, *code, steps=150, lr=1e-3: train_twin(request, sample_world_dir, twin, *code, steps=steps, lr=lr)


GROUNDING_WORLD_SIZE = 400  # 300 train / 50 val / 50 test scenes, 2 expressions per object


@pytest.fixture(scope="session")
def grounding_world_dir(request) -> Path:
    """The sample world with referring expressions (`make-sample --expressions 2`), cached across runs."""
    from augment.world.writer import write_sample

    return cached_folder(request, f"grounding-world-{GROUNDING_WORLD_SIZE}-{_code_key(*WORLD_CODE)}",
                         lambda folder: write_sample(folder, n=GROUNDING_WORLD_SIZE, seed=0, expressions=2))
