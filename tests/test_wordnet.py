"""WordNet set-up (`augment setup-wordnet`) and the shared synonym look-up."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from augment import wordnet
from augment.cli import main as augment_main
from augment.errors import MissingDependencyError

LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")


def _require_debian_wordnet() -> None:
    # not a skip: the Makefile installs wordnet-base before tests (make wordnet)
    assert (wordnet.DEBIAN_WORDNET_DIR / "data.noun").is_file(), (
        "Debian's wordnet-base is not installed: apt-get install wordnet-base (or run `make wordnet`)"
    )


@pytest.fixture(scope="session")
def built_wordnet(tmp_path_factory) -> Path:
    """WordNet built from Debian's files into a temp nltk data folder, through the CLI."""
    _require_debian_wordnet()
    data_dir = tmp_path_factory.mktemp("nltk_data")
    assert augment_main(["setup-wordnet", "--dir", str(data_dir), "--no-download"]) == 0
    return data_dir


def test_setup_builds_a_loadable_wordnet_from_debian_files(built_wordnet, capsys):
    folder = built_wordnet / "corpora" / "wordnet"
    files = {p.name for p in folder.iterdir()}
    assert set(wordnet.DEBIAN_WORDNET_FILES) | {"lexnames", "index.sense"} <= files
    assert not any(p.is_symlink() for p in folder.iterdir())  # nltk refuses links leaving its root
    reader = wordnet.load_wordnet_dir(built_wordnet)
    assert reader.get_version() == "3.0"
    dog = reader.synset("dog.n.01")
    assert "domestic_dog" in dog.lemma_names()
    assert reader.synsets("squares")  # morphology (noun.exc and friends) works
    # sense keys resolve through the derived index.sense, including an adjective satellite
    for lemma in dog.lemmas() + reader.synset("small.s.02").lemmas():
        assert reader.lemma_from_key(lemma.key()) == lemma


def test_setup_reports_an_existing_install(built_wordnet, capsys):
    assert augment_main(["setup-wordnet", "--dir", str(built_wordnet), "--no-download"]) == 0
    assert "already installed" in capsys.readouterr().out


def test_index_sense_matches_wordnet_3_0(built_wordnet):
    folder = built_wordnet / "corpora" / "wordnet"
    text = (folder / "index.sense").read_text()
    # lines of Princeton's WordNet 3.0 index.sense (key, offset, sense number, tag count)
    for line in ("dog%1:05:00:: 02084071 1 42", "dog%2:38:00:: 02001876 1 2"):
        assert f"\n{line}\n" in text
    lines = text.splitlines()
    assert lines == sorted(lines)
    # a satellite's key names its head; its offset points at a synset holding the lemma
    line = next(l for l in lines if l.startswith("0%5:00:00:cardinal:00 "))
    offset = int(line.split()[1])
    with open(folder / "data.adj", "rb") as fp:
        fp.seek(offset)
        fields = fp.readline().split()
    assert fields[0] == line.split()[1].encode() and fields[2] == b"s"
    assert b"0" in fields[4:4 + 2 * int(fields[3], 16):2]  # the synset's words


def test_lexnames_table_matches_the_debian_man_page():
    _require_debian_wordnet()
    assert LEXNAMES_MAN_PAGE.is_file(), "wordnet-base ships lexnames(5WN)"
    page = gzip.decompress(LEXNAMES_MAN_PAGE.read_bytes()).decode()
    rows = re.findall(r"^(\d\d)\t(\S+)\s*\t", page, flags=re.M)
    ours = [line.split("\t") for line in wordnet.lexnames_text().splitlines()]
    assert len(ours) == 45
    assert [(number, name) for number, name, _pos in ours] == rows
    names_by_pos = {"1": "noun", "2": "verb", "3": "adj", "4": "adv"}
    assert all(name.split(".")[0] == names_by_pos[pos] for _n, name, pos in ours)


def test_setup_without_any_source_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wordnet, "try_download", lambda data_dir: False)
    empty = tmp_path / "no-debian"
    empty.mkdir()
    with pytest.raises(MissingDependencyError, match="apt-get install wordnet-base"):
        wordnet.setup_wordnet(tmp_path / "data", debian_dir=empty)
    code = augment_main(["setup-wordnet", "--dir", str(tmp_path / "data"), "--debian-dir", str(empty)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "wordnet-base" in err
    # --no-download: nothing was downloaded, so the line does not blame the network
    code = augment_main(["setup-wordnet", "--dir", str(tmp_path / "data"), "--debian-dir", str(empty), "--no-download"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--no-download" in err and "offline" not in err, err


def test_offline_download_fails_fast_and_quietly(tmp_path, monkeypatch, capsys):
    import nltk

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(nltk, "download", offline)
    assert wordnet.try_download(tmp_path) is False
    assert capsys.readouterr().err == ""


def test_missing_wordnet_is_a_one_line_error(monkeypatch):
    def missing():
        raise LookupError("Resource wordnet not found.\n  Please use the NLTK Downloader ...")

    monkeypatch.setattr(wordnet, "_wordnet_corpus", missing)
    with pytest.raises(MissingDependencyError) as caught:
        wordnet.require_wordnet()
    assert "augment setup-wordnet" in str(caught.value) and "\n" not in str(caught.value)


def test_synonyms_are_wordnet_lemmas_without_the_word(built_wordnet):
    found = wordnet.synonyms("dog")
    assert "domestic dog" in found and "dog" not in found
    assert wordnet.synonyms("Dog") == found  # case-insensitive, cached
    assert "straight" in wordnet.synonyms("square", pos="a")
    assert "straight" not in wordnet.synonyms("square", pos="n")
    assert "foursquare" in wordnet.synonyms("square", pos="n")
    assert wordnet.synonyms("zzzxq") == []
    assert all("_" not in s for s in wordnet.synonyms("red"))
    assert "Canis familiaris" in found  # WordNet's spelling: proper nouns keep their capitals
    # letters, spaces, hyphens and apostrophes only: WordNet's "5" for five is no word (a mutation dropping the
    # filter passed every test, audit CH)
    assert "5" not in wordnet.synonyms("five") and {"quintet", "five-spot"} <= set(wordnet.synonyms("five"))


def test_nltk_itself_missing_is_one_install_line(monkeypatch):
    """require_wordnet promised a one-line MissingDependencyError but caught only nltk's LookupError:
    without nltk it was a ModuleNotFoundError traceback."""
    import sys

    import augment.wordnet as wordnet_module
    from augment.errors import MissingDependencyError

    for name in [n for n in sys.modules if n == "nltk" or n.startswith("nltk.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nltk", None)  # what an environment without nltk imports
    with pytest.raises(MissingDependencyError, match="WordNet needs nltk, which is not installed: pip install nltk"):
        wordnet_module.require_wordnet()
