"""Guards found by a hand mutation audit (CO) of the source readers (`augment.source_formats`): each test
kills a plausible bug that no other test caught.

Sources are a few tiny images and a short JSON / CSV written into tmp_path; every expected value is
written out here, not computed by the code under test.
"""
from __future__ import annotations

import pytest

from augment.errors import SourceError
from tests.conftest import write_image


# ----------------------------------------------------------------------------- source formats


def _write_json(path, value):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_a_json_rewritten_within_its_modification_time_is_parsed_again(tmp_path):
    """Guards the parsed-JSON cache's key (path, mtime and size): a file rewritten with its old mtime (a copy
    keeping times, a coarse file system) but another size is parsed again, not answered from the cache."""
    import os

    from augment.source_formats import detect_format

    path = _write_json(tmp_path / "captions.json", [{"image": "x.png", "caption": "a dog"}])
    assert detect_format(str(path)) == "albef"
    before = path.stat()
    _write_json(path, {"images": []})
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert detect_format(str(path)) == "karpathy"
