"""The one reader of the project's own JSON records (augment/json_records.py): what each kind of damage
reads as, and that every record reader names it in one line."""
import json

import pytest

from augment.json_records import DamagedRecord, json_kind, parse_json_object, read_json_object


@pytest.mark.parametrize("data, phrase", [
    (b'{"step": 3', "corrupt JSON at line 1 column 11: Expecting ',' delimiter"),
    (b'{"a": 1}\n{"b": 2}', "corrupt JSON at line 2 column 1: Extra data"),
    (b"", "corrupt JSON at line 1 column 1: Expecting value"),
    (b'{"caption": "\xff"}', "not UTF-8 text (byte 0xff at 13)"),
    (b"[1, 2]", "a JSON object expected, got list"),
    (b"null", "a JSON object expected, got null"),
    (b"true", "a JSON object expected, got bool"),
    (b"3.5", "a JSON object expected, got number"),
    (b'"done"', "a JSON object expected, got str"),
])
def test_each_damage_is_one_phrase(tmp_path, data, phrase):
    path = tmp_path / "record.json"
    path.write_bytes(data)
    with pytest.raises(DamagedRecord) as caught:
        read_json_object(path)
    assert str(caught.value) == phrase



@pytest.mark.parametrize("data, phrase", [
    ('{"step": ' + "1" * 5000 + "}", "unreadable JSON (Exceeds the limit (4300 digits) for integer string conversion"),
    ('{"a": ' + "[" * 100000 + "]" * 100000 + "}", "unreadable JSON (maximum recursion depth exceeded"),
])
def test_json_that_python_refuses_past_its_grammar_is_damage_too(tmp_path, data, phrase):
    """json.loads refuses an integer of over 4,300 digits with a plain ValueError and deep nesting with a
    RecursionError, neither a JSONDecodeError: they went past DamagedRecord, a traceback in every reader."""
    path = tmp_path / "record.json"
    path.write_text(data)
    with pytest.raises(DamagedRecord) as caught:
        read_json_object(path)
    assert str(caught.value).startswith(phrase) and "\n" not in str(caught.value)

def test_an_object_reads_back_with_or_without_a_byte_order_mark(tmp_path):
    record = {"method": "eda", "caption": "f\u00e4hrt"}
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    assert read_json_object(path) == record
    path.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8-sig")  # an editor on Windows
    assert read_json_object(path) == record
    assert parse_json_object("\ufeff" + json.dumps(record)) == record


def test_a_missing_file_is_left_to_the_caller(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_json_object(tmp_path / "absent.json")


def test_json_kind_names_values_as_json_does():
    assert [json_kind(v) for v in (None, True, 1, 1.5, "x", [], {})] == ["null", "bool", "number", "number", "str",
                                                                        "list", "object"]


@pytest.mark.parametrize("text", ['{"step": 3', "[1]", "null"])
def test_every_record_reader_names_the_file_and_the_damage(tmp_path, text):
    """Each reader of a record the project writes turns a damaged one into its own error naming the file
    and the damage, never a traceback (they shared no code before: each wrote its own try/except)."""
    from analysis.study import read_study_record
    from augment.errors import MatPlusError
    from augment.pool import read_pool_meta
    from augment.scoring.store import read_scores_json
    from models.base import read_model_info
    from train.checkpoint import read_state
    from train.trainer import _read_finished_summary

    with pytest.raises(DamagedRecord) as damage:
        parse_json_object(text)
    expected = str(damage.value)
    (tmp_path / "pool.json").write_text(text)
    (tmp_path / "scores.json").write_text(text)
    (tmp_path / "matplus_model.json").write_text(text)
    (tmp_path / "train_state").mkdir()
    (tmp_path / "train_state" / "state.json").write_text(text)
    readers = [(read_pool_meta, tmp_path, "pool.json"), (read_scores_json, tmp_path, "scores.json"),
               (read_model_info, tmp_path, "matplus_model.json"), (read_state, tmp_path, "train_state/state.json"),
               (_read_finished_summary, tmp_path / "pool.json", "pool.json"),
               (read_study_record, tmp_path / "pool.json", "pool.json")]
    for reader, argument, name in readers:
        with pytest.raises(MatPlusError) as caught:
            reader(argument)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / name)) and expected in message and "\n" not in message, reader


def test_is_number_is_a_json_number_and_no_bool():
    from augment.json_records import is_number

    assert [is_number(v) for v in (0, -2, 1.5, float("nan"), True, False, None, "1", [1])] == [
        True, True, True, True, False, False, False, False, False]
