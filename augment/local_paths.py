"""Local file-system paths inside recorded strings, shortened to their last part where a string
leaves this machine (a pushed pool's provenance and scores) or names a folder (a scorer's slug):
the user's name and folder layout stay private."""
from __future__ import annotations

import re
from pathlib import Path

# an absolute or home-relative path, the whole string or after ':', '=' or a space
# (`local-dir:/home/u/clip`, `ViT-B-32:/home/u/ckpt.pt`); a URL's `//host` is not one
_LOCAL_PATH = re.compile(r"(?:^|(?<=[:=\s]))(~[^\s:]*|/(?!/)[^\s:]*)")


def shorten_local_paths(text: str) -> str:
    """`text` with every local absolute path in it replaced by the path's last part."""
    return _LOCAL_PATH.sub(lambda match: Path(match.group(1).rstrip("/")).name or match.group(1), text)
