"""Progress bars for every command: tqdm on a terminal; on a log file or a pipe (a scheduler's
`> out 2> err`, `nohup`, `| tee`), a plain line now and then instead of a bar redrawn in place.

tqdm redraws its bar with a carriage return up to ten times a second (and at every `set_postfix`,
which the training bar calls each logged step): on a terminal that is one line moving; in a file it
is one "line" of megabytes that `tail`, `grep` and an editor see whole. Off a terminal `progress_bar`
writes the bar's state as a line of its own, at most every `LOG_INTERVAL_S` seconds, plus its first
and last state, with no carriage returns or cursor moves."""
from __future__ import annotations

import contextlib
import sys
from typing import Any

LOG_INTERVAL_S = 30.0  # off a terminal: one progress line at most this often per bar


def writes_to_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Lines:
    """A bar's output off a terminal: each state the bar prints becomes a line of its own, and what only
    moves the cursor or clears (carriage returns, blank padding, `ESC[A`) is dropped."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> None:
        text = text.replace("\x1b[A", "").replace("\r", "").rstrip()
        if text.strip("\n"):
            self.stream.write(text.strip("\n") + "\n")

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


_LINE_BAR = None


def _line_bar_class():
    """tqdm whose display is a line at most every `mininterval` seconds, however it was asked to refresh."""
    global _LINE_BAR
    if _LINE_BAR is None:
        from tqdm.auto import tqdm

        class LineBar(tqdm):
            def refresh(self, nolock=False, lock_args=None):
                # `update` calls this only after its own interval; `set_postfix`, `tqdm.write` and tqdm's monitor
                # thread call it whenever: off a terminal each would be a line
                now = self._time()
                if hasattr(self, "last_print_t") and now - self.last_print_t < self.mininterval:
                    return False
                shown = super().refresh(nolock=nolock, lock_args=lock_args)
                if shown and hasattr(self, "last_print_t"):
                    self.last_print_t, self.last_print_n = now, self.n
                return shown

            def clear(self, nolock=False):  # a line written stays: nothing to clear
                pass

            def close(self):
                # every bar ends with its last state, one a terminal would clear too (leave=False, or leave=None below
                # another bar: a validation's under the training bar), which tqdm would write as an empty redraw
                self.leave = True
                super().close()

            def moveto(self, n):  # lines, not positions on the screen
                pass

        _LINE_BAR = LineBar
    return _LINE_BAR


def progress_bar(*args, **kwargs):
    """`tqdm(*args, **kwargs)` on a terminal (its `file`, default stderr); off one, the same bar as lines
    every `LOG_INTERVAL_S` seconds (`mininterval`), its first and last state included."""
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    stream = kwargs.get("file") or sys.stderr
    # a notebook's stderr is no terminal either, but tqdm.auto draws its bar as a widget there
    if kwargs.get("disable") or writes_to_terminal(stream) or issubclass(tqdm, notebook_tqdm):
        return tqdm(*args, **kwargs)
    kwargs.update(file=_Lines(stream), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, dynamic_ncols=False)
    return _line_bar_class()(*args, **kwargs)


@contextlib.contextmanager
def quiet_progress_bars(libraries: tuple[str, ...] = ("transformers",)):
    """Hide the named Hugging Face libraries' per-call progress bars (transformers' "Loading weights" and
    "Writing model shards", diffusers' "Loading pipeline components", datasets' "Saving the dataset"):
    tiny models load in milliseconds, often many times, and a study writes and reads pools by the
    hundred. Each library's `utils.logging` switch (datasets keeps it there for backward compatibility);
    the previous settings are restored afterwards."""
    import importlib

    restore = []
    for library in libraries:
        try:
            hf_logging = importlib.import_module(f"{library}.utils.logging")
        except ImportError:
            continue
        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging)
    try:
        yield
    finally:
        for hf_logging in restore:
            hf_logging.enable_progress_bar()
