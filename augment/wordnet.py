"""WordNet through nltk, available offline: setting it up, and cached synonym look-ups.

`setup_wordnet()` (the `augment setup-wordnet` command) makes `nltk.corpus.wordnet` load, in
this order of preference:

1. it already loads: nothing to do;
2. `nltk.download("wordnet")` into the target folder (online users);
3. build nltk's `corpora/wordnet` folder from the files of Debian's `wordnet-base` package
   (WordNet 3.0, `apt-get install wordnet-base`). The files are *copied*: nltk refuses
   symlinks that leave its data root. Debian lacks one file nltk's reader opens at start-up,
   `lexnames` (the fixed table of the 45 lexicographer files), written from `LEXNAMES`
   below; and it lacks `index.sense` (sense key -> synset), which nltk's reader also reads at
   start-up (to map WordNet versions), so it is derived from the data and index files by the
   rules of senseidx(5WN).

The default target is `sys.prefix/nltk_data`, a folder nltk searches by itself, so a virtual
environment finds its WordNet with no environment variable.

`synonyms(word, pos)` and `STOP_WORDS` are shared by EDA and the trainer's synonym attack.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import socket
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from augment.atomic import atomic_write_text
from augment.errors import MatPlusError, MissingDependencyError

WORDNET_SUBDIR = Path("corpora") / "wordnet"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
# the files of a WordNet 3.0 database that nltk's reader uses (Debian's names, nltk's too)
DEBIAN_WORDNET_FILES = (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
)
# nltk.download must fail fast when there is no network instead of hanging on a socket
DOWNLOAD_TIMEOUT_S = 15

MISSING_MESSAGE = "WordNet for nltk is not installed: run `augment setup-wordnet`"
HOW_TO_GET_WORDNET = (
    "WordNet is not available: nltk.download('wordnet') failed (offline?) and Debian's wordnet-base "
    "is not installed; run `apt-get install wordnet-base` then `augment setup-wordnet` again, "
    "or run `augment setup-wordnet` online"
)

# lexnames(5WN): file number, lexicographer file, syntactic category (1 noun 2 verb 3 adj 4 adv)
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)

# English stop words (nltk's list, shipped here because nltk's stopwords corpus is another
# download); words EDA and the synonym attack never replace.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves what which who whom this that
these those am is are was were be been being have has had having do does did doing a an the and
but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here
there when where why how all any both each few more most other some such no nor not only own
same so than too very s t can will just don should now
""".split())


def lexnames_text() -> str:
    return "".join(f"{number:02d}\t{name}\t{pos}\n" for number, (name, pos) in enumerate(LEXNAMES))


def default_data_dir() -> Path:
    """`sys.prefix/nltk_data`: inside the virtual environment, and on nltk's search path."""
    return Path(sys.prefix) / "nltk_data"


# ----------------------------------------------------------------------------- loading


def wordnet_loads() -> bool:
    """Whether `nltk.corpus.wordnet` loads from nltk's search path."""
    try:
        _wordnet_corpus()
    except LookupError:
        return False
    return True


def add_to_search_path(data_dir: str | Path) -> None:
    """Put `data_dir` first on nltk's search path (nltk >= 3.9 reads no corpus outside it)."""
    import nltk

    path = str(Path(data_dir).resolve())
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)


def load_wordnet_dir(data_dir: str | Path):
    """A WordNet reader for `<data_dir>/corpora/wordnet` (raises if the folder does not load).

    Adds `data_dir` to nltk's search path for this process, as reading requires.
    """
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    add_to_search_path(data_dir)
    with warnings.catch_warnings():  # "multilingual functions are not available": not needed
        warnings.simplefilter("ignore", UserWarning)
        return WordNetCorpusReader(str(Path(data_dir).resolve() / WORDNET_SUBDIR), None)


def _wordnet_corpus():
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


def require_wordnet():
    """nltk's WordNet, or a one-line `MissingDependencyError` saying how to install it."""
    try:
        return _wordnet_corpus()
    except ModuleNotFoundError as exc:  # a partial install: nltk itself, or a package nltk imports
        missing = exc.name or "a package"
        if missing == "nltk" or missing.startswith("nltk."):
            raise MissingDependencyError("WordNet needs nltk, which is not installed: pip install nltk, then augment "
                                         "setup-wordnet") from None
        raise MissingDependencyError(f"nltk needs {missing}, which is not installed: pip install {missing.split('.')[0]}") from None
    except LookupError:
        raise MissingDependencyError(MISSING_MESSAGE) from None


@lru_cache(maxsize=None)
def _synonyms(word: str, pos: str | None) -> tuple[str, ...]:
    wordnet = require_wordnet()
    found: dict[str, str] = {}  # lower case -> WordNet's spelling, in WordNet's sense order
    for synset in wordnet.synsets(word, pos=pos):
        for lemma in synset.lemmas():
            name = lemma.name().replace("_", " ")
            key = name.lower()
            if key != word and key not in found and all(ch.isalpha() or ch in " -'" for ch in name):
                found[key] = name
    return tuple(found.values())


def synonyms(word: str, pos: str | None = None) -> list[str]:
    """WordNet synonyms of `word`, most frequent sense first, never `word` itself. Cached.

    Multi-word synonyms come with spaces ("domestic dog"); WordNet's spelling is kept, so proper
    nouns stay capitalised ("Canis familiaris"). Only letters, spaces, hyphens and apostrophes.
    `pos` is one of nltk's "n", "v", "a" (satellites included), "r"; None: every part of speech.
    """
    return list(_synonyms(word.lower(), pos))


# ----------------------------------------------------------------------------- set-up


@dataclass
class SetupResult:
    how: str  # "present" | "downloaded" | "built"
    path: Path | None
    message: str


def build_from_debian(data_dir: str | Path, debian_dir: str | Path = DEBIAN_WORDNET_DIR) -> Path:
    """Copy Debian's WordNet files into `<data_dir>/corpora/wordnet` and add `lexnames`.

    Files are written under a temporary name and renamed, so an interrupted build never leaves
    a folder nltk half-reads. Raises `MissingDependencyError` when the Debian files are absent.
    """
    debian_dir = Path(debian_dir)
    missing = [name for name in DEBIAN_WORDNET_FILES if not (debian_dir / name).is_file()]
    if missing:
        raise MissingDependencyError(f"{debian_dir}: no Debian WordNet files ({', '.join(missing[:3])}...); {HOW_TO_GET_WORDNET}")
    target = Path(data_dir) / WORDNET_SUBDIR
    target.mkdir(parents=True, exist_ok=True)
    for name in DEBIAN_WORDNET_FILES:
        tmp = target / f".{name}.tmp"
        shutil.copyfile(debian_dir / name, tmp)  # a copy, never a symlink (nltk refuses those)
        tmp.replace(target / name)
    atomic_write_text(target / "lexnames", lexnames_text())
    write_index_sense(target)
    return target


# ----------------------------------------------------------------------------- index.sense

# ss_type letters of the data files to the numbers of sense keys (5: adjective satellite)
SS_TYPE_NUMBERS = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
DATA_POS = ("noun", "verb", "adj", "adv")


@dataclass
class _Synset:
    offset: str
    ss_type: str
    lex_filenum: int
    words: list[tuple[str, int]]  # (lemma in lower case, lex_id)
    head_offset: str | None  # a satellite's head synset (its "&" pointer)


def _parse_data_line(line: str) -> _Synset:
    """One synset line of a data.* file (wndb(5WN)); the gloss after "|" is ignored."""
    fields = line.split(" | ", 1)[0].split()
    offset, lex_filenum, ss_type, w_cnt = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
    words = []
    for i in range(w_cnt):
        word, lex_id = fields[4 + 2 * i], int(fields[5 + 2 * i], 16)
        words.append((word.split("(", 1)[0].lower(), lex_id))  # drop adjective markers: "(p)"
    head_offset = None
    pointers_at = 4 + 2 * w_cnt
    for p in range(int(fields[pointers_at])):
        symbol, target, pos = fields[pointers_at + 1 + 4 * p: pointers_at + 4 + 4 * p]
        if symbol == "&" and pos == "a" and head_offset is None:
            head_offset = target
    return _Synset(offset, ss_type, lex_filenum, words, head_offset)


def _parsed_lines(path: Path, parse) -> list:
    """`parse(line)` of each line of a WordNet file but its license header; a damaged line (or a
    file that is not UTF-8) is one MissingDependencyError naming the file and line."""
    results = []
    number = 0
    try:
        with open(path, encoding="utf-8") as fp:
            for number, line in enumerate(fp, start=1):
                if not line.startswith("  "):  # license header
                    results.append(parse(line))
    except (ValueError, IndexError, KeyError) as exc:  # UnicodeDecodeError is a ValueError
        raise MissingDependencyError(f"{path}: line {number + isinstance(exc, UnicodeDecodeError)}: not a WordNet "
                                     f"database line ({type(exc).__name__}); reinstall wordnet-base") from None
    return results


def _read_synsets(wordnet_dir: Path, pos_name: str) -> list[_Synset]:
    return _parsed_lines(wordnet_dir / f"data.{pos_name}", _parse_data_line)


def _sense_numbers(wordnet_dir: Path, pos_name: str) -> dict[tuple[str, str], int]:
    """(lemma, offset) -> sense number: the offset's 1-based place in the lemma's index entry."""
    numbers = {}

    def parse(line: str) -> None:
        fields = line.split()
        synset_cnt = int(fields[2])
        for number, offset in enumerate(fields[-synset_cnt:], start=1):
            numbers[fields[0], offset] = number

    _parsed_lines(wordnet_dir / f"index.{pos_name}", parse)
    return numbers


def _tag_counts(wordnet_dir: Path) -> dict[str, int]:
    """sense key -> tag count, from cntlist.rev (0 for keys it does not list)."""
    counts = {}
    path = wordnet_dir / "cntlist.rev"
    if path.is_file():
        def parse(line: str) -> None:
            key, _number, count = line.split()
            counts[key] = int(count)

        _parsed_lines(path, parse)
    return counts


def index_sense_lines(wordnet_dir: str | Path) -> list[str]:
    """The lines of WordNet's index.sense, sorted as nltk's binary search expects.

    A line is `sense_key synset_offset sense_number tag_cnt`; a sense key is
    `lemma%ss_type:lex_filenum:lex_id:head_word:head_id`, head_word/head_id set only for
    adjective satellites (the first word of the head synset and its lex_id).
    """
    wordnet_dir = Path(wordnet_dir)
    tag_counts = _tag_counts(wordnet_dir)
    lines = []
    for pos_name in DATA_POS:
        synsets = _read_synsets(wordnet_dir, pos_name)
        by_offset = {s.offset: s for s in synsets}
        numbers = _sense_numbers(wordnet_dir, pos_name)
        for synset in synsets:
            head_word, head_id = "", ""
            if synset.ss_type == "s" and synset.head_offset in by_offset:
                head_lemma, head_lex_id = by_offset[synset.head_offset].words[0]
                head_word, head_id = head_lemma, f"{head_lex_id:02d}"
            for lemma, lex_id in synset.words:
                key = (f"{lemma}%{SS_TYPE_NUMBERS[synset.ss_type]}:{synset.lex_filenum:02d}:"
                       f"{lex_id:02d}:{head_word}:{head_id}")
                number = numbers.get((lemma, synset.offset), 0)
                lines.append(f"{key} {synset.offset} {number} {tag_counts.get(key, 0)}\n")
    # nltk compares `key + " "` with line prefixes, so plain string order of the lines is right
    return sorted(set(lines))  # a synset may list one lemma twice, in two cases ("A", "a")


def write_index_sense(wordnet_dir: str | Path) -> Path:
    target = Path(wordnet_dir) / "index.sense"
    tmp = target.with_name(".index.sense.tmp")
    with open(tmp, "w", encoding="utf-8") as fp:
        fp.writelines(index_sense_lines(wordnet_dir))
    tmp.replace(target)
    return target


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def try_download(data_dir: str | Path) -> bool:
    """`nltk.download("wordnet")` into `data_dir`; False (quietly) when it cannot."""
    import nltk

    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            ok = nltk.download("wordnet", download_dir=str(data_dir), quiet=True, raise_on_error=True,
                               print_error_to=io.StringIO())
    except Exception:  # offline, DNS, HTTP errors: all mean "use the Debian files instead"
        return False
    if not ok:
        return False
    try:
        load_wordnet_dir(data_dir)
    except (LookupError, OSError):
        # nltk downloads a zip; the reader also reads it, but only through nltk's search path
        return wordnet_loads()
    return True


def _on_search_path(data_dir: Path) -> bool:
    import nltk

    return any(Path(p).resolve() == data_dir.resolve() for p in nltk.data.path if isinstance(p, str))


def setup_wordnet(data_dir: str | Path | None = None, debian_dir: str | Path = DEBIAN_WORDNET_DIR,
                  download: bool = True, force: bool = False) -> SetupResult:
    """Make WordNet loadable for nltk; see the module docstring for the order tried.

    Without `data_dir`, "already present" means nltk loads WordNet from its search path; with
    one, that the folder holds every file nltk's reader opens. `force` builds again regardless.
    """
    chosen = Path(data_dir) if data_dir is not None else default_data_dir()
    searched = _on_search_path(chosen)  # before loading from it adds it for this process
    if not force:
        if data_dir is None and wordnet_loads():
            return SetupResult("present", None, "WordNet already loads in nltk; nothing to do")
        if data_dir is not None and _installed_in(chosen):
            return SetupResult("present", chosen, f"WordNet already installed in {chosen / WORDNET_SUBDIR} (--force rebuilds it)")
    from augment.atomic import output_folder_problem

    problem = output_folder_problem(chosen)
    if problem:
        raise MatPlusError(f"cannot write WordNet into {chosen}: {problem}; choose a folder with --dir")
    try:
        chosen.mkdir(parents=True, exist_ok=True)
        if download and try_download(chosen):
            how, message = "downloaded", f"downloaded WordNet with nltk into {chosen}"
        elif Path(debian_dir, "data.noun").is_file():
            how, message = "built", _build_and_check(chosen, Path(debian_dir))
        elif download:
            raise MissingDependencyError(HOW_TO_GET_WORDNET)
        else:  # nothing was downloaded: do not blame the network
            raise MissingDependencyError(f"WordNet is not available: --no-download, and Debian's wordnet-base is not in "
                                         f"{debian_dir}; run `apt-get install wordnet-base` then `augment setup-wordnet` "
                                         "again, or leave out --no-download when online")
    except OSError as exc:  # permission, a full disk, a path through a file: one line naming the file
        where = f"{exc.filename}: " if exc.filename and Path(exc.filename) != chosen else ""
        raise MatPlusError(f"cannot write WordNet into {chosen} ({where}{exc.strerror or exc}); "
                           "choose a folder with --dir") from None
    if not searched:  # absolute: a relative path would be right only in this folder
        message += f"; nltk does not search this folder: set NLTK_DATA={chosen.resolve()}"
    return SetupResult(how, chosen, message)


def _build_and_check(chosen: Path, debian_dir: Path) -> str:
    build_from_debian(chosen, debian_dir)
    if not _loads_from(chosen):
        raise MissingDependencyError(f"built {chosen / WORDNET_SUBDIR} from {debian_dir} but nltk cannot read it")
    return f"built WordNet for nltk in {chosen / WORDNET_SUBDIR} from Debian's wordnet-base ({debian_dir})"


def _installed_in(data_dir: Path) -> bool:
    """Every file nltk's reader opens is there (cheap: loading WordNet takes seconds)."""
    folder = data_dir / WORDNET_SUBDIR
    return all((folder / name).is_file() for name in (*DEBIAN_WORDNET_FILES, "lexnames", "index.sense"))


def _loads_from(data_dir: Path) -> bool:
    try:
        load_wordnet_dir(data_dir)
    except (LookupError, OSError):  # PermissionError (nltk's path check) is an OSError
        return False
    return True
