"""tests/conftest.py's cache of built fixtures (sample worlds, trained twins) when pytest runs without its
cache (`-p no:cacheprovider`, as audits on other Pythons run the suite): the fixtures still build."""
import os
from types import SimpleNamespace

from tests.conftest import cached_folder


def test_cached_folder_without_pytest_cache(tmp_path_factory):
    """With no `config.cache` the folder is built in the session's temporary folder, and found built
    the second time (was: AttributeError: 'Config' object has no attribute 'cache' in every fixture)."""
    builds = []

    def build(folder):
        builds.append(folder)
        folder.mkdir()
        (folder / "made").write_text("yes")

    request = SimpleNamespace(config=SimpleNamespace(),
                              getfixturevalue=lambda name: {"tmp_path_factory": tmp_path_factory}[name])
    first = cached_folder(request, "no-cacheprovider-probe", build)
    second = cached_folder(request, "no-cacheprovider-probe", build)
    assert first == second and (first / "made").read_text() == "yes"
    assert len(builds) == 1
    run_folder = tmp_path_factory.getbasetemp()  # a pytest-xdist worker's is popen-gwN inside the run's
    assert (run_folder.parent if os.environ.get("PYTEST_XDIST_WORKER") else run_folder) in first.parents


def test_pytest_xdist_workers_without_pytest_cache_build_each_folder_once(tmp_path, monkeypatch):
    """Two pytest-xdist workers (each with its own temporary folder, popen-gwN inside the run's) find the
    folder the first built (was: each built its own, the trained twins twice under `-n 2 -p no:cacheprovider`)."""
    builds = []

    def build(folder):
        builds.append(folder)
        folder.mkdir()

    def worker(name):
        factory = SimpleNamespace(getbasetemp=lambda: (tmp_path / name).resolve())
        (tmp_path / name).mkdir()
        return SimpleNamespace(config=SimpleNamespace(), getfixturevalue=lambda fixture: {"tmp_path_factory": factory}[fixture])

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = cached_folder(worker("popen-gw0"), "shared-probe", build)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    second = cached_folder(worker("popen-gw1"), "shared-probe", build)
    assert first == second and len(builds) == 1
    assert tmp_path.resolve() in first.parents
