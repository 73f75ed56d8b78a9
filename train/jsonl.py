"""Reading the run's appended JSON-lines logs (`metrics.jsonl`, `validation.jsonl`)."""
from __future__ import annotations

import json
from pathlib import Path

from augment.errors import MatPlusError


def read_jsonl(path: Path) -> list[dict]:
    """The lines of an appended JSON-lines file. An incomplete last line (a kill or a full disk
    during the append) is left out: the resumed run rewrites it. A damaged line elsewhere is one line."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise MatPlusError(f"{path}: line {number} is not JSON ({exc.msg}); repair or delete the line, or start "
                               "over with --overwrite") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise MatPlusError(f"{path}: line {number} is not a record with an integer 'step'; repair or delete the "
                               "line, or start over with --overwrite")
        records.append(record)
    return records
