"""Reading back the JSON records the project writes (pool.json, scores.json, a run's summary.json and
state.json, matplus_model.json, the study's records): the object, or `DamagedRecord` saying in one
phrase what is wrong with it, for the caller to name the file and the way out in its own line.

A record damaged by a hand edit, a copy cut short or another tool was, reader by reader, a traceback
(a JSONDecodeError, an AttributeError on a list); this is the one check they share.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class DamagedRecord(ValueError):
    """The record is not a JSON object; str() is the phrase: "not UTF-8 text (...)", "corrupt JSON at
    line 3 column 5: Expecting ',' delimiter", "a JSON object expected, got list"."""


def is_number(value) -> bool:
    """An int or float as JSON reads one (a bool is no number, though Python counts it an int): what the
    readers of records check a number field by."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_kind(value) -> str:
    """The JSON name of a parsed value's type, as a message says it ("null", not "NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "list", str: "str", int: "number", float: "number"}.get(type(value),
                                                                                           type(value).__name__)


def parse_json_object(text: str | bytes) -> dict:
    """`text` parsed as a JSON object; DamagedRecord otherwise. Bytes are read as UTF-8, a byte-order mark
    (an editor on Windows writes one) allowed."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        value = json.loads(text.removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise DamagedRecord(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DamagedRecord(f"corrupt JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # json's other refusals: a number of over 4,300 digits, deep nesting
        raise DamagedRecord(f"unreadable JSON ({str(exc).split(';')[0].splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise DamagedRecord(f"a JSON object expected, got {json_kind(value)}")
    return value


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in the file `path`; DamagedRecord (one phrase) when it is not one. OSError (a missing
    file, a folder in its place) is left to the caller, which knows whether the file must be there."""
    return parse_json_object(Path(path).read_bytes())
