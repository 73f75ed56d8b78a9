"""Shared plumbing of the `augment`, `train` and `analysis` command lines."""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Sequence

from augment.errors import MatPlusError, first_line

# an echoed HTTP header or a token-looking word: what debug logs of HTTP clients may print
_AUTH_HEADER = re.compile(r"(?i)(\bauthorization\b['\"]?\s*[:=,]\s*['\"]?)(bearer\s+|basic\s+|token\s+)?[^\s'\",}\]]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_known_tokens: list[str] | None = None


def _hub_error_types() -> tuple[type[BaseException], ...]:
    """Hub/network failures that should read as one line, not a traceback."""
    types: list[type[BaseException]] = []
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        types += [HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # older huggingface_hub
        pass
    try:
        from datasets.exceptions import DatasetNotFoundError

        types.append(DatasetNotFoundError)
    except ImportError:
        pass
    return tuple(types)


def _tokens() -> list[str]:
    """The Hub tokens this process could send (read once; never printed)."""
    global _known_tokens
    if _known_tokens is None:
        found = [os.environ.get(name) for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")]
        try:
            from huggingface_hub import get_token

            found.append(get_token())
        except Exception:  # no huggingface_hub, unreadable token file: nothing more to hide
            pass
        _known_tokens = [t for t in found if t and len(t) >= 8]
    return _known_tokens


def scrub_secrets(text: str) -> str:
    """`text` with Hub tokens and Authorization header values replaced by <redacted>."""
    for token in _tokens():
        text = text.replace(token, "<redacted>")
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}<redacted>", text)
    return _HF_TOKEN.sub("hf_<redacted>", text)


def one_line(exc: BaseException) -> str:
    return scrub_secrets(first_line(exc))


def install_log_redaction() -> None:
    """Every log record, of any library and through any handler, leaves with its secrets scrubbed.

    Done in the record factory, not a handler filter: libraries such as transformers log through
    handlers of their own that a root-handler filter would not see. Records below a logger's level
    are never created, so this costs nothing unless debug logging is on.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "matplus_redacting", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error report
            return record
        cleaned = scrub_secrets(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return record

    factory.matplus_redacting = True
    logging.setLogRecordFactory(factory)


def _scrubbed_excepthook(kind, value, traceback) -> None:
    """Python's traceback print-out, its secrets scrubbed: an unexpected error (or MATPLUS_TRACEBACK's
    re-raise) may carry a request's Authorization header or a token in its message."""
    import traceback as tb

    sys.stderr.write(scrub_secrets("".join(tb.format_exception(kind, value, traceback))))


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command `args` ran: its subcommands' choice is stored under their `dest`."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _command_parser(action.choices[getattr(args, action.dest)], args)
    return parser


# mat-plus's top-level packages (pyproject.toml's packages.find): generic names, which a user's own folder
# or module of the same name hides when it comes first on the path
OWN_PACKAGES = ("augment", "models", "tasks", "train", "analysis", "data_cards")


def check_own_packages(names: Sequence[str] = OWN_PACKAGES) -> None:
    """Refuse to run when one of mat-plus's packages `names` (those the command imports) would be imported
    from somewhere else. Under
    `python -m` (torchrun's and accelerate's `-m train.cli` too) the current folder is first on the path,
    and a user's models/ there was imported in mat-plus's place: an ImportError deep in a traceback. Under
    an editable install (`pip install -e`, `make setup`) even a models/ folder without __init__.py (of
    checkpoints, say) was: the path's namespace package is found before the editable finder is asked."""
    import importlib.util
    from pathlib import Path

    # this package's folder resolved, not this file: an install of linked files (setuptools' strict editable mode)
    # holds real folders of links, and the file's target is the checkout, where the path finds none of them
    home = Path(__file__).parent.resolve().parent
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue  # importing it will say what is wrong
        if spec is None:
            continue
        # a package's folders (a namespace package, a folder without __init__.py, has no origin), else the module's file
        places = [Path(place).resolve() for place in spec.submodule_search_locations or []]
        if not places and spec.origin:
            places = [Path(spec.origin).resolve()]
        if places and (home / name).resolve() not in places:
            found = places[0]
            raise MatPlusError(f"'{name}' is imported from {found}, not mat-plus's {home / name}: a folder or module "
                               f"named {name} in the current folder (first on the path under python -m, torchrun and "
                               "accelerate launch) or on PYTHONPATH hides it; run from another folder, or start the "
                               "console script by its path")


def run_main(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None,
             packages: Sequence[str] = OWN_PACKAGES) -> int:
    """Parse `argv` and run its command; `packages`: those of mat-plus's packages the commands import, which
    `check_own_packages` checks first (a user's folder named like one they never import stops nothing)."""
    # "warning: ..." as the commands' own "error: ..." lines (logging's default is "WARNING:name:...")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        logging.addLevelName(level, logging.getLevelName(level).lower())
    logging.basicConfig(level=os.environ.get("MATPLUS_LOGLEVEL", "WARNING").upper(), format="%(levelname)s: %(message)s")
    # stdout line by line in a log file or a pipe too, as on a terminal: block-buffered there, a study's "[eval] ..."
    # line reached its log only at the next flush (a worker's start), after stderr's later lines, and a killed run
    # (SIGKILL, the OOM killer) lost the lines still held
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        sys.stdout.reconfigure(line_buffering=True)
    install_log_redaction()
    sys.excepthook = _scrubbed_excepthook
    try:  # datasets' per-shard bars drown our own progress bars
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse names them under the top-level usage; the command's usage shows what it takes
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    expected: tuple[type[BaseException], ...] = (MatPlusError, FileNotFoundError) + _hub_error_types()
    global _terminated, _interrupt_arrived
    _terminated = _interrupt_arrived = False
    try:
        check_own_packages(packages)
        with _interrupts_recorded(), _sigterm_as_interrupt(getattr(args, "sigterm_interrupts", False)):
            code = args.func(args)
    except expected as exc:
        if os.environ.get("MATPLUS_TRACEBACK"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`| head`): nothing left to say, and no one to say it to
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as exc:  # a path the user gave cannot be written or read: permission, a file as a folder, a full disk
        if os.environ.get("MATPLUS_TRACEBACK"):
            raise
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {getattr(args, 'interrupted', None) or INTERRUPTED}", file=sys.stderr)
        return 143 if _terminated else 130
    return int(code or 0)


# what an interrupted command says unless its parser sets its own (`set_defaults(interrupted=...)`)
INTERRUPTED = "finished shards are kept; re-run the same command to resume"
_terminated = False
_interrupt_arrived = False


def interrupt_arrived() -> bool:
    """Whether Ctrl-C (or a SIGTERM raised as one) reached this command: a DataLoader worker that died
    of the same Ctrl-C is then no failure of its own (`augment.loading.worker_death`)."""
    return _interrupt_arrived


@contextmanager
def _interrupts_recorded():
    """Ctrl-C raises KeyboardInterrupt as always, and is recorded first: torch may report the worker
    processes it stopped as dead workers while the main process unwinds, replacing the interrupt."""
    global _interrupt_arrived
    own_handler = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    def interrupt(signum, frame):
        global _interrupt_arrived
        _interrupt_arrived = True
        signal.default_int_handler(signum, frame)

    if own_handler:
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        if own_handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _interrupt_arrived = False  # this command's: a later one in the same process (tests, the study) starts clean


def os_error_line(exc: OSError) -> str:
    """`PATH: reason` of an OSError (its file names, its strerror), scrubbed; its first line when it names no file."""
    if exc.filename is None or not exc.strerror:
        return one_line(exc)
    names = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return scrub_secrets(f"{names}: {exc.strerror}".replace("\n", "\\n"))


@contextmanager
def _sigterm_as_interrupt(enabled: bool):
    """SIGTERM (kill's, timeout's, docker stop's and schedulers' default) raised as KeyboardInterrupt
    while a command that cleans up after Ctrl-C runs, so it cleans up after that too (exit 143)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        global _terminated, _interrupt_arrived
        _terminated = _interrupt_arrived = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
