"""The package as users install it: what the sdist and the wheel hold, built from a copy of the
tracked files (the repository is not written into: setuptools leaves build/ and *.egg-info/ behind)."""
from __future__ import annotations

import re
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


@pytest.fixture(scope="module")
def built_wheel(source_copy, tmp_path_factory) -> Path:
    return _build(source_copy, "build_wheel", tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_file_of_the_packages(built_wheel, tracked):
    """Every tracked file of the packages (the study configs, data-card templates and tiny models'
    configs the code opens) is in the wheel, and nothing from outside them: package data is matched by
    pyproject.toml's patterns, so a new kind of data file would be left out of installs silently."""
    with zipfile.ZipFile(built_wheel) as archive:
        held = {name for name in archive.namelist() if ".dist-info/" not in name}
    assert held == {name for name in tracked if name.split("/", 1)[0] in PACKAGES}
    with zipfile.ZipFile(built_wheel) as archive:
        entry_points = next(archive.read(name).decode() for name in archive.namelist()
                            if name.endswith(".dist-info/entry_points.txt"))
    for script in ("augment = augment.cli:main", "train = train.cli:main", "analysis = analysis.cli:main"):
        assert script in entry_points


def test_the_wheel_carries_the_license_it_declares(built_wheel):
    """was: pyproject.toml declared Apache-2.0 and the repository had no LICENSE file, so no install
    carried the license's text, which Apache-2.0 asks every copy to carry."""
    with zipfile.ZipFile(built_wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
        licenses = [name for name in names if re.search(r"\.dist-info/licenses/LICENSE$", name)]
        assert licenses, names
        text = archive.read(licenses[0]).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text


@pytest.mark.parametrize("shadow", ["models/__init__.py", "tasks.py"])
def test_a_folder_of_the_users_named_like_a_package_is_one_line_not_a_wrong_import(tmp_path, shadow):
    """mat-plus's top-level packages have generic names (models, tasks, train, ...). Under `python -m`,
    as README's torchrun and accelerate launches run `-m train.cli`, the current folder comes first on
    the path, so a user's own models/ package there was imported in mat-plus's place: `train eval`
    stopped on `ImportError: cannot import name 'load_model' from 'models' (.../models/__init__.py)`
    deep in a traceback, `augment score` named the scorer as unloadable. Now one line naming both."""
    import os

    (tmp_path / shadow).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / shadow).write_text("# the user's own\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "augment.cli", "inspect", "--source", "missing.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    name = shadow.split("/")[0].removesuffix(".py")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: '{name}' is imported from {tmp_path / shadow.split('/')[0]}, not mat-plus's {ROOT / name}: a folder or "
        f"module named {name} in the current folder (first on the path under python -m, torchrun and accelerate "
        "launch) or on PYTHONPATH hides it; run from another folder, or start the console script by its path")


def test_a_folder_without_init_found_before_an_editable_install_is_refused_too(tmp_path, monkeypatch):
    """Under an editable install (make setup) mat-plus's packages are found by setuptools' finder, which
    is asked after the path: `python -m train.cli` from a folder holding a models/ folder of checkpoints
    (no __init__.py) imported it as a namespace package (`cannot import name 'load_model' from 'models'
    (unknown location)`). The path's finder is stood in for here, as this checkout is on PYTHONPATH."""
    import importlib.machinery
    import importlib.util

    from augment.cli_common import check_own_packages
    from augment.errors import MatPlusError

    (tmp_path / "models" / "some-checkpoint").mkdir(parents=True)
    real = importlib.util.find_spec

    def path_first(name, *args, **kwargs):
        if name != "models":
            return real(name, *args, **kwargs)
        spec = importlib.machinery.ModuleSpec("models", None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path / "models")]
        return spec

    check_own_packages()  # this checkout's own packages pass
    monkeypatch.setattr(importlib.util, "find_spec", path_first)
    with pytest.raises(MatPlusError, match="^" + re.escape(f"'models' is imported from {tmp_path / 'models'}, not mat-plus's ")):
        check_own_packages()


def test_a_folder_named_like_a_package_the_command_never_imports_does_not_stop_it(tmp_path):
    """train's commands import augment, models, tasks and train, never analysis or data_cards: a user's
    analysis/ (of notebooks, of results) or data_cards/ in the current folder hid nothing they read, yet
    `python -m train.cli` (README's torchrun and accelerate launches) stopped on "'analysis' is imported
    from ..." where it ran before. The packages a command reads are still checked."""
    import os

    for name in ("analysis", "data_cards"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("# the user's own\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "train.cli", "clean", "--model", "tiny-clip", "--train-data",
                           "missing.json", "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: missing.json"), done.stderr
    done = subprocess.run([sys.executable, "-m", "augment.cli", "inspect", "--source", "missing.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "'data_cards' is imported from" in done.stderr, done.stderr  # push reads it
    (tmp_path / "data_cards" / "__init__.py").unlink()
    (tmp_path / "data_cards").rmdir()
    done = subprocess.run([sys.executable, "-m", "augment.cli", "inspect", "--source", "missing.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "analysis" not in done.stderr and "missing.json" in done.stderr, done.stderr
    (tmp_path / "tasks.py").write_text("# the user's own\n")
    done = subprocess.run([sys.executable, "-m", "train.cli", "clean", "--model", "tiny-clip", "--train-data",
                           "missing.json", "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "error: 'tasks' is imported from" in done.stderr, done.stderr


def test_an_install_of_linked_files_runs(tmp_path):
    """setuptools' strict editable install (`pip install -e . --config-settings editable_mode=strict`) and other
    link farms put real folders of linked files on the path: check_own_packages resolved this module's own file
    into the checkout and compared the folders found on the path with it, so every command of such an install
    stopped on "'augment' is imported from BUILD/augment, not mat-plus's CHECKOUT/augment"."""
    import os

    farm = tmp_path / "farm"
    for name in ("augment", "models", "tasks", "train", "analysis", "data_cards"):
        for path in (ROOT / name).rglob("*.py"):
            link = farm / path.relative_to(ROOT)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    env = {**os.environ, "PYTHONPATH": str(farm)}
    done = subprocess.run([sys.executable, "-m", "augment.cli", "inspect", "--source", "missing.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is imported from" not in done.stderr and "missing.json" in done.stderr, done.stderr
    (tmp_path / "models").mkdir()  # a folder of the user's that hides one is still named
    (tmp_path / "models" / "__init__.py").write_text("# the user's own\n")
    done = subprocess.run([sys.executable, "-m", "augment.cli", "inspect", "--source", "missing.json"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert f"error: 'models' is imported from {tmp_path / 'models'}, not mat-plus's {farm / 'models'}" in done.stderr, \
        done.stderr


def _lower_bounds() -> dict[str, list[str]]:
    """pyproject.toml's `dependencies`: each one's `>=` versions, by canonical name."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own tomli
        import tomli as tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    bounds = {}
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        bounds[canonicalize_name(requirement.name)] = [spec.version for spec in requirement.specifier
                                                      if spec.operator == ">="]
    return bounds


def test_constraints_lowest_pins_each_dependency_at_its_lower_bound():
    """constraints-lowest.txt holds the oldest releases pyproject.toml's ranges allow, those the suite's main
    files were run on (README, Set-up): one `name==version` line per dependency, at its `>=` bound. A bound
    raised or lowered without that file (or a dependency added) fails here, so what the file says was
    checked is what pyproject.toml promises (audit AV: filelock 3.12.0 and transformers 4.45 were allowed,
    untested, and broke every new pool folder and the tiny Stable Diffusion)."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pinned = {}
    for line in (ROOT / "constraints-lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints-lowest.txt: {line!r} is not NAME==VERSION"
            assert canonicalize_name(name) not in pinned, f"constraints-lowest.txt: {name} twice"
            pinned[canonicalize_name(name)] = version.strip()
    bounds = _lower_bounds()
    assert sorted(pinned) == sorted(bounds)
    for name, lows in bounds.items():
        assert len(lows) == 1, f"pyproject.toml: {name} needs one >= bound (has {lows})"
        assert Version(pinned[name]) == Version(lows[0]), \
            f"{name}: pyproject.toml says >={lows[0]}, constraints-lowest.txt pins {pinned[name]}"
