"""Every `augment`, `train` and `analysis` command in the README's code blocks is accepted by the
parser it names, and a `train METHOD` command resolves to a valid training config: a renamed or
removed flag, a dropped choice or a wrong value in the README fails here, not for a user.

Only parsing is checked (no file is read, no model loaded); commands that elide arguments with
`...` are fragments and left out.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PROGRAMS = ("augment", "train", "analysis")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each program command in a fenced code block, continuation
    lines (`\\`) joined and a trailing `# comment` dropped."""
    commands, inside, pending, first = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        first = first if pending else number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command, pending = (pending + stripped).strip(), ""
        if command.startswith("$ "):
            command = command[2:]
        if command.split(" ", 1)[0] in PROGRAMS:
            commands.append((first, command))
    return commands


def split_command(command: str) -> list[str]:
    # bash's $'\t' (ANSI-C quoting) is the README's way to pass a tab; shlex knows only POSIX quoting
    return shlex.split(command.replace("$'\\t'", "'\t'"), comments=True)


def _parsers():
    from analysis.cli import build_parser as analysis_parser
    from augment.cli import build_parser as augment_parser
    from train.cli import build_parser as train_parser

    return {"augment": augment_parser(), "train": train_parser(), "analysis": analysis_parser()}


ALL_COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
# fragments: the README elides their arguments with `...` (`train tecoa ... --resume latest`)
COMMANDS = [(line, command) for line, command in ALL_COMMANDS if "..." not in split_command(command)]


def test_the_readme_has_commands_of_every_program():
    programs = {command.split(" ", 1)[0] for _, command in COMMANDS}
    assert programs == set(PROGRAMS), programs
    assert len(COMMANDS) >= 40  # the README's walkthroughs; a much smaller count means the extraction broke
    assert len(ALL_COMMANDS) - len(COMMANDS) <= 3, "more elided fragments (...) than the README has: check the extraction"


def test_extraction_joins_continuations_and_drops_comments():
    text = "```bash\ntrain eval ckpt --source s \\\n   --out o   # a note\n```\ntrain mat --not-in-a-block\n"
    (line, command), = readme_commands(text)
    assert line == 2 and split_command(command) == ["train", "eval", "ckpt", "--source", "s", "--out", "o"]
    assert split_command("train tecoa --csv-separator $'\\t'")[-1] == "\t"


@pytest.fixture(scope="module")
def parsers():
    return _parsers()


@pytest.mark.parametrize("line,command", [pytest.param(n, c, id=f"README:{n}") for n, c in COMMANDS])
def test_readme_command_parses(parsers, line, command, capsys):
    program, *argv = split_command(command)
    try:
        args = parsers[program].parse_args(argv)
    except SystemExit:
        pytest.fail(f"README.md:{line}: `{command}` is refused by {program}'s parser: "
                    f"{capsys.readouterr().err.strip().splitlines()[-1]}")
    if program == "train" and args.command != "eval" and getattr(args, "config", None) is None:
        from train.cli import config_from_args

        from augment.errors import MatPlusError

        try:
            config_from_args(args)  # the resolved settings: ranges, combinations, settings left unread
        except MatPlusError as exc:
            pytest.fail(f"README.md:{line}: `{command}` is refused: {exc}")


def test_a_wrong_flag_is_caught(parsers, capsys):
    """The check itself can fail: a flag the parser lacks, and a train setting the method refuses."""
    with pytest.raises(SystemExit):
        parsers["train"].parse_args(split_command("eval ckpt --source s --out o --no-such-flag 1"))
    from augment.errors import MatPlusError
    from train.cli import config_from_args

    args = parsers["train"].parse_args(split_command("mat --model tiny-clip --train-data d --out o --lr -1"))
    with pytest.raises((MatPlusError, ValueError)):
        config_from_args(args)



def test_the_contents_list_every_section_in_order():
    """The README's Contents links each `## ` section by GitHub's anchor: a section added, renamed or
    moved without it fails here."""
    import re

    text = README.read_text(encoding="utf-8")
    sections = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    contents = text.split("**Contents**", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- \[(.+)\]\(#([\w-]+)\)$", contents, flags=re.M)

    def anchor(heading: str) -> str:  # GitHub's: lower case, punctuation dropped, spaces to hyphens
        return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")

    assert listed == [(heading.replace("`", ""), anchor(heading)) for heading in sections]
