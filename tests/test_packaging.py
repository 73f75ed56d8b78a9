"""The package as users install it: what the sdist and the wheel hold, built from a copy of the
tracked files (the repository is not written into: setuptools leaves build/ and *.egg-info/ behind)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("augment", "models", "tasks", "train", "analysis", "data_cards")


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout (the tracked files are the reference)")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return sorted(name for name in listed.decode().split("\0") if name and (ROOT / name).is_file())


@pytest.fixture(scope="module")
def source_copy(tracked, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("source")
    for name in tracked:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    return copy


def _build(source: Path, hook: str, out: Path) -> Path:
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=source, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def test_the_sdist_is_the_whole_source_tree(source_copy, tracked, tmp_path):
    """was: setuptools alone put the packages and tests/test_*.py into the sdist, not the tests'
    conftest.py and albef_reference.py, nor the Makefile, constraints.txt, bench/, docs/ and .ci/run the
    suite reads: in an unpacked sdist 16 test files failed to collect (No module named 'tests.conftest',
    'bench')."""
    sdist = _build(source_copy, "build_sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        top = f"{sdist.name[:-len('.tar.gz')]}/"
        held = {member.name[len(top):] for member in archive.getmembers() if member.isfile()}
    assert sorted(set(tracked) - held) == []


def test_the_wheel_holds_every_file_of_the_packages(source_copy, tracked, tmp_path):
    """Every tracked file of the packages (the study configs, data-card templates and tiny models'
    configs the code opens) is in the wheel, and nothing from outside them: package data is matched by
    pyproject.toml's patterns, so a new kind of data file would be left out of installs silently."""
    wheel = _build(source_copy, "build_wheel", tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        held = {name for name in archive.namelist() if ".dist-info/" not in name}
    assert held == {name for name in tracked if name.split("/", 1)[0] in PACKAGES}
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(archive.read(name).decode() for name in archive.namelist()
                            if name.endswith(".dist-info/entry_points.txt"))
    for script in ("augment = augment.cli:main", "train = train.cli:main", "analysis = analysis.cli:main"):
        assert script in entry_points
