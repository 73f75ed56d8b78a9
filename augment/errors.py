"""Errors that the command line turns into one clear line and a non-zero exit (no traceback)."""


class MatPlusError(Exception):
    """Base of every expected, user-facing failure."""


class SourceError(MatPlusError):
    """A source dataset is missing, malformed, or has a bad record (the message names it)."""


class PoolError(MatPlusError):
    """A pool is missing, incomplete, or does not fit the source or the request."""


class PoolIdentityError(PoolError):
    """A folder holds a pool made with other settings; `changed`: the identity keys that differ
    (as `params [batch_size]` for parameters), for a caller to name them in its own words."""

    def __init__(self, message: str, changed: list[str]):
        super().__init__(message)
        self.changed = changed


class ModelLoadError(MatPlusError):
    """A model name cannot be resolved or loaded (unknown name, offline without a cache...)."""


class MissingDependencyError(MatPlusError):
    """An optional dependency or data package is missing; the message says how to install it."""


def _escaped(text: str) -> str:
    """`text` with control characters (a newline in a file name) written as escapes: still one line."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none.

    Third-party errors often carry multi-line reports (HTTP bodies, load reports); a user-facing
    error shows one line. A SourceError's message is one line built by this project, where a line
    break can only come from a name it quotes (a file called "a\nb.png"): it is shown whole, escaped.
    """
    if isinstance(exc, SourceError) and str(exc).strip():
        return _escaped(str(exc).strip())
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def did_you_mean(name: str, known) -> str:
    """' (did you mean X?)' for the known name closest to a mistyped one (difflib's ratio >= 0.75), else ''."""
    import difflib

    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
