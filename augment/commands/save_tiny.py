"""`augment save-tiny DIR [--names ...]`: write the tiny offline models into DIR/<name>/."""
from __future__ import annotations

from augment.tiny import TINY_NAMES


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "save-tiny", allow_abbrev=False, usage="%(prog)s [-h] DIR [--names NAME [NAME ...]]", help="write the tiny random-weight models (tiny-clip, tiny-sd, ...) to a folder",
        description=(
            "Build the tiny offline twins of every model role (seeded random weights, same classes as "
            "the real models) and save each into DIR/<name>/ with the libraries' own save_pretrained "
            "(tiny-clip in open_clip's local-dir layout). Any loader accepts the folder as a model name."
        ),
    )
    # optional to argparse only so that a DIR swallowed by --names (which takes every word after it) is named in run
    parser.add_argument("dir", metavar="DIR", nargs="?", help="folder to write into (one sub-folder per model)")
    parser.add_argument(
        "--names", nargs="+", default=None, metavar="NAME",
        help=f"subset to write, space or comma separated (default: all of {', '.join(TINY_NAMES)})",
    )
    parser.set_defaults(func=run, interrupted="the models finished before it are in DIR, the unfinished one is removed; "
                                              "re-run the same command to write them all")


def run(args) -> int:
    from augment.errors import MatPlusError
    from augment.tiny import save_tiny

    names = [name for item in args.names for name in _names(item)] if args.names is not None else None
    if args.dir is None:
        taken = [name for name in names or () if name not in TINY_NAMES]
        hint = (f": --names takes every word after it, so {taken[-1]!r} was read as a model name; write DIR first, "
                f"`augment save-tiny {taken[-1]} --names ...`" if taken else "")
        raise MatPlusError(f"save-tiny: the folder to write into (DIR) is missing{hint}")
    if names == []:  # `--names ""` or `--names ,` would write nothing and say nothing
        raise MatPlusError(f"--names lists no model: name one or more of {', '.join(TINY_NAMES)}, or leave it out for all")
    from pathlib import Path

    from augment.atomic import output_folder_problem

    problem = output_folder_problem(Path(args.dir).expanduser())
    if problem:
        raise MatPlusError(f"save-tiny {args.dir}: {problem}; choose another folder")
    for name, folder in save_tiny(args.dir, names).items():
        print(f"{name}: {folder}")
    return 0
