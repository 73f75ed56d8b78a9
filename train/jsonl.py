"""Reading the run's appended JSON-lines logs (`metrics.jsonl`, `validation.jsonl`)."""
from __future__ import annotations

import json
from pathlib import Path

from augment.errors import MatPlusError


def read_jsonl(path: Path) -> list[dict]:
    """The lines of an appended JSON-lines file. An incomplete last line (a kill or a full disk
    during the append: no line break after it) is left out: the resumed run rewrites it. A damaged line
    elsewhere, or a damaged last line that was written whole (its line break there), is one line."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    cut_short = not text.endswith("\n")  # each record is appended with its line break in one write
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and cut_short:
                break
            raise MatPlusError(f"{path}: line {number} is not JSON ({exc.msg}); repair or delete the line, or start "
                               "over with --overwrite") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MatPlusError(f"{path}: line {number} is not a record with an integer 'step'; repair or delete the "
                               "line, or start over with --overwrite")
        records.append(record)
    return records
