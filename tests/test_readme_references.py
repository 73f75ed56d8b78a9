"""Every concrete thing README.md and docs/*.md name resolves: a repository path or link target,
a Python name under the project's packages (`Class.attribute` of the project's classes too), a
command-line flag and a value from its choices, a test, a make target, a MATPLUS_ variable, and the
README's Python example of a model family. A file, function, flag or test renamed or removed while
the documentation still names it fails here, not for a reader.

tests/test_readme_commands.py parses the README's fenced commands; this reads the prose: every
inline code span (`...`), and beside them the project paths with a file suffix, the dotted names
and the test names written without backticks, and markdown link targets. Nothing is built: modules
are imported and the CLIs' parsers constructed, no model is loaded.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import re
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

PACKAGES = ("augment", "train", "models", "tasks", "analysis", "bench", "data_cards")
TOP_FOLDERS = (*PACKAGES, "tests", "docs", ".ci")
SUFFIXES = ("py", "md", "json", "yaml", "txt", "toml")

# not the repository's: a path under a placeholder for the user's own folder (RUN/, OUT/, POOL/,
# DIR/), under a folder the documented commands write or read (outputs/, data/, runs/), or relative
# to a user's file (./, ../)
USER_PATH = re.compile(r"^(?:[A-Z][A-Z_]*|outputs|data|runs|\.|\.\.)/")
# paths that look like the repository's but are not, each with what it is
NOT_REPOSITORY_PATHS = {
    "models/blip_retrieval.py": "salesforce/BLIP's file, read for BLIP's ITC/ITM",
    "train/1": "an image-folder source's image id (README, Sources)",
    "train/1.png": "an image-folder source's image file (README, Sources)",
}

# flags of other programs the documents discuss; the project's own come from its parsers
OTHER_PROGRAMS_FLAGS = {
    "--no-deps", "--exclude-editable",  # pip (pip install --no-deps, pip freeze --exclude-editable)
    "--max-worker-restart",  # pytest-xdist
    "--adv", "--cls",  # the Co-Attack code's RetrievalEval.py
    "--num_processes",  # accelerate launch
    "--resolution",  # uv (uv pip install --resolution lowest-direct: constraints-lowest.txt's versions)
}
# flags the README names as refused: open_clip_train-era spellings that are gone (its "was" column:
# "argparse refuses them"), the text attack's former names, an abbreviation; none may be a parser's
REFUSED_FLAGS = {
    "--weight-decay", "--warmup-steps", "--tensorboard", "--wandb", "--wandb-project", "--freeze-text",
    "--text-attack", "--mlm-top-k",
    "--lim",  # "No augment or analysis command accepts abbreviated flags (`--lim 8` is an error)"
}

# markdown's inline code: a run of backticks to the next run of as many, within a paragraph
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", flags=re.S)
_SUFFIX = rf"\.(?:{'|'.join(SUFFIXES)})\b"
PROSE_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(map(re.escape, TOP_FOLDERS))})/[\w./<>*+-]*?{_SUFFIX})")
SUFFIXED_PATH = re.compile(rf"(?<![\w./~$-])([\w.+-]+/[\w./<>*+-]*?{_SUFFIX})")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
NAME = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*-?)((?:/-[a-z0-9]+)+)?")
TEST = re.compile(r"\b(test_\w+)\b(\.py)?")
CHOICE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)[ =]([\w.+|-]+)")  # `--protocol sga`, `--policy a|b`
MEMBER = re.compile(r"(?<![\w.])([A-Z]\w*[a-z]\w*)\.([a-z_]\w*)")  # `Trainer.train_step`
MAKE = re.compile(r"^make ([a-z][\w-]*)")
ENVIRONMENT = re.compile(r"\b(MATPLUS_[A-Z_]*[A-Z])\b")


def _blank_fences(text: str) -> str:
    """The text with fenced code blocks' lines blanked (line numbers kept)."""
    lines, inside = [], False
    for line in text.splitlines():
        fence = line.startswith("```")
        lines.append("" if fence or inside else line)
        inside ^= fence
    return "\n".join(lines)


def _repository_path(path: str) -> bool:
    return not USER_PATH.match(path) and path not in NOT_REPOSITORY_PATHS


KINDS = ("path", "link", "name", "member", "flag", "choice", "test", "make", "environment", "unpaired")


@functools.cache  # the README is read by several tests
def references(text: str) -> dict[str, list[tuple[int, str]]]:
    """kind -> [(line number, reference)] in the text's prose. Kinds: "path" (from the repository's
    root), "link" (a markdown link's target, from the document's folder), "name", "member" (a
    `Class.attribute`, checked where the class is the project's), "flag", "choice" (`--flag value`),
    "test", "make" (a `make TARGET`), "environment" (a MATPLUS_ variable, code blocks too) and
    "unpaired": a backtick that opens no code span in its paragraph."""
    prose = _blank_fences(text)
    found: dict[str, set[tuple[int, str]]] = {kind: set() for kind in KINDS}

    def line_of(offset: int) -> int:
        return prose.count("\n", 0, offset) + 1

    spans = [(line_of(m.start()), m.group(2)) for m in CODE_SPAN.finditer(prose)]
    # the prose outside code spans, newlines kept for the line numbers
    outside = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
    for line, span in spans:
        for word in span.split():
            word, _, member = word.strip("\"'(),;:").rstrip(".").partition("::")  # pytest's path::name
            if "/" in word and word.split("/", 1)[0] in TOP_FOLDERS:
                found["path"].add((line, word))
                if member and word.endswith(".py"):
                    found["name"].add((line, word[:-3].replace("/", ".") + "." + member))
        found["path"].update((line, m.group(1)) for m in SUFFIXED_PATH.finditer(span))
        for match in FLAG.finditer(span):
            flag, others = match.groups()
            found["flag"].add((line, flag))
            for other in (others or "").split("/-")[1:]:  # `--val-data/-split`: --val-split too
                found["flag"].add((line, flag.rsplit("-", 1)[0] + "-" + other))
        found["name"].update((line, m.group(1)) for m in NAME.finditer(span))
        found["test"].update((line, "".join(m.groups(""))) for m in TEST.finditer(span))
        found["make"].update((line, m.group(1)) for m in MAKE.finditer(span))
        found["choice"].update((line, " ".join(m.groups())) for m in CHOICE.finditer(span.replace("\\|", "|")))
        found["member"].update((line, ".".join(m.groups())) for m in MEMBER.finditer(span))
    found["path"].update((line_of(m.start()), m.group(1)) for m in PROSE_PATH.finditer(outside))
    found["link"].update((line_of(m.start()), m.group(1)) for m in LINK.finditer(outside) if "://" not in m.group(1))
    found["name"].update((line_of(m.start()), m.group(1)) for m in NAME.finditer(outside))
    found["test"].update((line_of(m.start()), "".join(m.groups(""))) for m in TEST.finditer(outside))
    found["environment"].update((text.count("\n", 0, m.start()) + 1, m.group(1)) for m in ENVIRONMENT.finditer(text))
    found["unpaired"].update((line_of(m.start()), "`") for m in re.finditer("`", outside))  # renders as text
    found["path"] = {(line, path) for line, path in found["path"] if _repository_path(path)}
    return {kind: sorted(refs) for kind, refs in found.items()}


def _path_exists(path: str, base: Path) -> bool:
    """`train/evaluate_<task>.py` and `docs/study/regime-1to1*/` are patterns: one match will do."""
    pattern = re.sub(r"<[^>]*>", "*", path).rstrip("/")
    if "*" in pattern:
        return any(base.glob(pattern))
    return (base / pattern).exists()


PLACEHOLDER = re.compile(r"_[A-Z]+$")  # `bench.bench_NAME`: any bench module


def _resolve(name: str) -> object:
    """The object a dotted name names: its longest importable module prefix, then attributes."""
    parts = name.split(".")
    if PLACEHOLDER.search(parts[-1]) and parts[-1][0].islower():
        pattern = PLACEHOLDER.sub("_*", "/".join(parts)) + ".py"
        if not any(ROOT.glob(pattern)):
            raise ModuleNotFoundError(f"no module matches {pattern}")
        return pattern
    for count in range(len(parts), 0, -1):
        module_name = ".".join(parts[:count])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
                raise  # a dependency missing, not the name
            continue
        for attribute in parts[count:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


@functools.cache
def _project_code() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@functools.cache
def project_classes() -> dict[str, list[str]]:
    """Class name -> the modules of the project's packages that define it at their top level."""
    classes: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, []).append(module)
    return classes


def _member_exists(reference: str) -> bool | None:
    """Whether the project's class has the attribute (inherited ones too); None: not the project's class."""
    name, attribute = reference.split(".")
    modules = project_classes().get(name)
    if not modules:
        return None
    return any(hasattr(getattr(importlib.import_module(module), name), attribute) for module in modules)


def _study_key(name: str) -> bool:
    """`train.mlm` in the study's prose is a key of its config (train: {mlm: ...}), not a module."""
    from analysis.config import DEFAULTS

    settings = DEFAULTS
    for key in name.split("."):
        if not isinstance(settings, dict) or key not in settings:
            return False
        settings = settings[key]
    return True


class _Built(Exception):
    pass


def _parser_of(parse_args) -> argparse.ArgumentParser:
    """The parser a bench module's parse_args(argv) builds, caught before it parses."""
    def caught(self, *args, **kwargs):
        raise _Built(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", caught):
        try:
            parse_args([])
        except _Built as built:
            return built.args[0]
    raise AssertionError(f"{parse_args.__module__}.parse_args parsed without an ArgumentParser")


def _options(parser: argparse.ArgumentParser, options: dict[str, set[str] | None]) -> None:
    """Each --flag of the parser and its sub-commands into `options`, with the values it may take
    (its choices; None: any value, or a switch, in at least one parser)."""
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                choices = None if action.choices is None or action.nargs == 0 else {str(c) for c in action.choices}
                earlier = options.get(option, set())
                options[option] = None if earlier is None or choices is None else earlier | choices
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _options(sub, options)


def project_flags() -> dict[str, set[str] | None]:
    """Every --flag of the augment, train and analysis CLIs, the demo and the benchmarks, with its
    choices where every parser that has it limits its values."""
    from analysis.cli import build_parser as analysis_parser
    from analysis.demo import build_parser as demo_parser
    from augment.cli import build_parser as augment_parser
    from train.cli import build_parser as train_parser

    options: dict[str, set[str] | None] = {}
    for parser in (augment_parser(), train_parser(), analysis_parser(), demo_parser()):
        _options(parser, options)
    for bench in sorted((ROOT / "bench").glob("[!_]*.py")):
        module = importlib.import_module(f"bench.{bench.stem}")
        if hasattr(module, "parse_args"):
            _options(_parser_of(module.parse_args), options)
    return options


def defined_tests() -> set[str]:
    """The test functions and test modules under tests/ (a module as `test_x.py`)."""
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.add(path.name)
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)\(", path.read_text(encoding="utf-8"), flags=re.M))
    return names


def unresolved(text: str, document: Path, flags: dict[str, set[str] | None], tests: set[str]) -> list[str]:
    """One line per reference in the text that names nothing in the repository."""
    refs, problems = references(text), []
    for line, path in refs["path"]:
        if not _path_exists(path, ROOT):
            problems.append(f"{line}: path `{path}` is not in the repository")
    for line, path in refs["link"]:
        if not _path_exists(path, document.parent):
            problems.append(f"{line}: link ({path}) is not in the repository")
    for line, name in refs["name"]:
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            if not _study_key(name):
                problems.append(f"{line}: name `{name}` does not resolve ({type(exc).__name__}: {exc})")
    for line, member in refs["member"]:
        if _member_exists(member) is False:
            problems.append(f"{line}: `{member}`: the class has no such attribute")
    for line, flag in refs["flag"]:
        known = set(flags) | OTHER_PROGRAMS_FLAGS | REFUSED_FLAGS
        if not (flag in known or flag.endswith("-") and any(option.startswith(flag) for option in known)):
            problems.append(f"{line}: flag `{flag}` is no parser's")
    for line, choice in refs["choice"]:
        flag, values = choice.split(" ")
        allowed = flags.get(flag)
        if allowed is not None:
            problems.extend(f"{line}: `{flag} {value}`: not one of {flag}'s choices"
                            for value in values.split("|") if value not in allowed)
    for line, test in refs["test"]:
        if test not in tests:
            problems.append(f"{line}: test `{test}` is not under tests/")
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M))
    problems.extend(f"{line}: `make {target}`: the Makefile has no such target"
                    for line, target in refs["make"] if target not in targets)
    problems.extend(f"{line}: {variable} is read nowhere in the code"
                    for line, variable in refs["environment"] if variable not in _project_code())
    problems.extend(f"{line}: a backtick opens no code span in its paragraph" for line, _ in refs["unpaired"])
    return problems


@pytest.fixture(scope="module")
def flags():
    return project_flags()


@pytest.fixture(scope="module")
def tests():
    return defined_tests()


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_every_reference_resolves(document, flags, tests):
    problems = unresolved(document.read_text(encoding="utf-8"), document, flags, tests)
    assert not problems, f"{document.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_flags_the_readme_calls_refused_are_no_parsers(flags):
    """REFUSED_FLAGS may stand in the README only while no parser takes them, as it says."""
    assert not REFUSED_FLAGS & set(flags)
    readme_flags = {flag for _, flag in references((ROOT / "README.md").read_text(encoding="utf-8"))["flag"]}
    assert REFUSED_FLAGS <= readme_flags, "no longer in the README: drop them here"
    assert OTHER_PROGRAMS_FLAGS <= readme_flags | {
        flag for document in DOCUMENTS[1:] for _, flag in references(document.read_text(encoding="utf-8"))["flag"]}


def test_the_readme_has_references_of_every_kind():
    """A much smaller count means the extraction broke, not that the README lost its references."""
    refs = references((ROOT / "README.md").read_text(encoding="utf-8"))
    counts = {kind: len({ref for _, ref in found}) for kind, found in refs.items()}
    assert counts["path"] >= 100 and counts["name"] >= 50 and counts["flag"] >= 150 and counts["test"] >= 10, counts
    assert counts["link"] >= 10 and counts["make"] >= 4 and counts["environment"] >= 4 and not counts["unpaired"], counts


def test_a_missing_reference_is_caught(flags, tests):
    """The check itself can fail: each kind's missing reference is reported, and none of those beside
    them that exist, a user's own paths, another program's class or a fenced block's line."""
    text = (
        "Run `train eval RUN/ckpt --attack-eps 2/255 --no-such-flag` (see `train/attacks/no_such.py`,\n"
        "`train.attacks.base.NoSuchAttack`, `test_no_such_test` and tests/test_no_such_module.py).\n"
        "Fine: `train/attacks/base.py::words_changed_of`, `train.attacks.base.Attack.__call__`, `--val-data/-split`,\n"
        "`test_a_wrong_flag_is_caught`, `OUT/.progress/clean.pt`, [the runs](test-runs.md), `models.no_such`,\n"
        "[gone](study/gone.md), `--val-data/-nosuch`, `make test`, `make no-such-target`, MATPLUS_NO_SUCH,\n"
        "`--protocol sga|co-attack|no-such`, MATPLUS_TRACEBACK, `Trainer.train_step`, `Trainer.no_such_step`, `BlipProcessor.from_pretrained`, and a stray ` here.\n"
        "```bash\ntrain eval --inside-a-fence-is-test_readme_commands-job\n```\n"
    )
    problems = unresolved(text, ROOT / "docs" / "x.md", flags, tests)
    assert [problem.split(" (")[0] for problem in problems] == [
        "1: path `train/attacks/no_such.py` is not in the repository",
        "2: path `tests/test_no_such_module.py` is not in the repository",
        "5: link",
        "2: name `train.attacks.base.NoSuchAttack` does not resolve",
        "4: name `models.no_such` does not resolve",
        "6: `Trainer.no_such_step`: the class has no such attribute",
        "1: flag `--no-such-flag` is no parser's",
        "5: flag `--val-nosuch` is no parser's",
        "6: `--protocol no-such`: not one of --protocol's choices",
        "2: test `test_no_such_module.py` is not under tests/",
        "2: test `test_no_such_test` is not under tests/",
        "5: `make no-such-target`: the Makefile has no such target",
        "5: MATPLUS_NO_SUCH is read nowhere in the code",
        "6: a backtick opens no code span in its paragraph",
    ], problems


def _fenced_python(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block."""
    blocks, lines, start = [], text.splitlines(), None
    for number, line in enumerate(lines, 1):
        if start is None and line.startswith("```python"):
            start = number
        elif start is not None and line.startswith("```"):
            blocks.append((start + 1, "\n".join(lines[start:number - 1])))  # its first line's number
            start = None
    return blocks


def _signature_mismatch(written: ast.FunctionDef, real) -> list[str]:
    """The parameters the README writes that the real function lacks."""
    parameters = inspect.signature(real).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return []
    arguments = [*written.args.posonlyargs, *written.args.args, *written.args.kwonlyargs]
    return [a.arg for a in arguments if a.arg not in ("self", "cls") and a.arg not in parameters]


def snippet_problems(source: str, first_line: int) -> list[str]:
    """A README code example of modules' contents (each part headed `# path/to/module.py`) against
    the modules: every class, function, method, parameter and constant it writes exists, and a
    `TABLE[key] = value` line holds in the module's table."""
    problems = []
    headers = {number: match.group(1) for number, line in enumerate(source.splitlines(), 1)
               if (match := re.fullmatch(r"# ([\w/]+\.py)", line))}

    for node in ast.parse(source).body:
        path = headers[max(number for number in headers if number < node.lineno)]
        module = importlib.import_module(path[:-3].replace("/", ".").removesuffix(".__init__"))

        def check(owner, name, member, written=None, where=""):
            line = first_line + member.lineno - 1
            if not hasattr(owner, name):
                problems.append(f"{line}: {path}: {where}{name} does not exist")
            elif written is not None:
                problems.extend(f"{line}: {path}: {where}{name} has no parameter {p}"
                                for p in _signature_mismatch(written, getattr(owner, name)))

        if isinstance(node, ast.ClassDef):
            check(module, node.name, node)
            owner = getattr(module, node.name, None)
            for member in node.body if owner is not None else []:
                if isinstance(member, ast.FunctionDef):
                    check(owner, member.name, member, member, f"{node.name}.")
                elif isinstance(member, ast.Assign):
                    for target in member.targets:
                        for name in (target.elts if isinstance(target, ast.Tuple) else [target]):
                            check(owner, name.id, member, where=f"{node.name}.")
        elif isinstance(node, ast.FunctionDef):
            check(module, node.name, node, node)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            table, key = node.targets[0].value.id, ast.literal_eval(node.targets[0].slice)
            value = ast.literal_eval(node.value)
            if getattr(module, table, {}).get(key) != value:
                problems.append(f"{first_line + node.lineno - 1}: {path}: {table}[{key!r}] is not {value!r}")
        elif isinstance(node, ast.Assign):
            check(module, node.targets[0].id, node)
    return problems


def test_the_readme_python_examples_match_the_code():
    """`Adding a family` shows models/blip.py's parts: each must be there, as written."""
    blocks = _fenced_python((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks
    problems = [problem for line, source in blocks for problem in snippet_problems(source, line)]
    assert not problems, "\n".join(problems)


def test_a_python_example_of_something_gone_is_caught():
    """A method, parameter or function the example writes but the module lacks, and a table entry that differs."""
    source = ("# models/blip.py\nclass BlipRetrievalModel:\n    def encode_image(self, pixels, no_such_parameter): ...\n"
              "    def no_such_method(self): ...\ndef no_such_function(): ...\n"
              "# models/__init__.py\nFAMILIES[\"blip\"] = \"models.no_such\"\n")
    assert [problem.split(":", 1)[1] for problem in snippet_problems(source, 1)] == [
        " models/blip.py: BlipRetrievalModel.encode_image has no parameter no_such_parameter",
        " models/blip.py: BlipRetrievalModel.no_such_method does not exist",
        " models/blip.py: no_such_function does not exist",
        " models/__init__.py: FAMILIES['blip'] is not 'models.no_such'",
    ]
