"""tests/conftest.py's cache of built fixtures (sample worlds, trained twins) when pytest runs without its
cache (`-p no:cacheprovider`, as audits on other Pythons run the suite): the fixtures still build."""
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
    assert tmp_path_factory.getbasetemp() in first.parents
