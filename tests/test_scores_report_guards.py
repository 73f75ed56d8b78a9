"""Guards from mutation audit CQ of the scores reports (augment/scoring/report.py): the comparison table's
columns, digits and intervals, the file it may replace, and the plot's gap whiskers. Each test fails under a
plausible bug that every earlier test let pass (named in its docstring); plain dicts, no model, no plot file."""
from __future__ import annotations

import pytest

from augment.scoring import report


def _interval(centre: float, spread: float, key: str = "mean") -> dict:
    return {key: centre, "low": centre - spread, "high": centre + 2 * spread, "n": 10}


def scored_entry(confidence: float = 0.9) -> dict:
    """A scores.json entry whose every measure has numbers of its own (no two columns could be confused)."""
    return {
        "scorer": {"name": "tiny-clip"}, "settings": {"confidence": confidence},
        "pool": {"name": "pool-a", "method": "eda", "num_rows": 12},
        "alignment": {"all": _interval(0.31234, 0.01), "text": _interval(0.5, 0.1)},
        "clipscore": {"all": _interval(77.7777, 1.5)},
        "diversity": {
            "text": {"mean_pairwise_distance": _interval(0.41111, 0.02), "vendi": _interval(2.34567, 0.1)},
            "image": {"mean_pairwise_distance": _interval(0.62222, 0.03), "vendi": _interval(3.45678, 0.2)},
        },
        "gap": {
            "text": {"frechet": _interval(1.23456, 0.1, "value"), "mmd2": _interval(0.012345, 0.001, "value")},
            "image": {"frechet": _interval(4.56789, 0.2, "value"), "mmd2": _interval(0.054321, 0.002, "value")},
        },
    }


def test_each_column_of_the_comparison_table_holds_its_own_measure_and_digits_low_before_high():
    """A table's columns took each other's numbers (text diversity in the image column, Vendi of the other
    modality, Frechet and MMD² swapped, the text alignment for all), its digits (CLIPScore 1, Vendi 2, MMD² 4)
    changed, or its intervals written [high, low]: every earlier test passed (audit CQ)."""
    cells = dict(zip(report.TABLE_COLUMNS, report.table_row(scored_entry())))
    assert cells == {
        "pool": "pool-a", "method": "eda", "rows": "12",
        "alignment": "0.312 [0.302, 0.332]", "CLIPScore": "77.8 [76.3, 80.8]",
        "text diversity": "0.411 [0.391, 0.451]", "text Vendi": "2.35 [2.25, 2.55]",
        "image diversity": "0.622 [0.592, 0.682]", "image Vendi": "3.46 [3.26, 3.86]",
        "Frechet text": "1.235 [1.135, 1.435]", "MMD² text": "0.0123 [0.0113, 0.0143]",
        "Frechet image": "4.568 [4.368, 4.968]", "MMD² image": "0.0543 [0.0523, 0.0583]",
    }


def test_the_tables_note_names_the_first_entrys_confidence_level():
    """Intervals computed at 90% were noted as 95% bootstrap intervals when the level was not read (audit CQ)."""
    table = report.comparison_table([scored_entry(0.9), scored_entry(0.99)])
    assert "Brackets: 90% bootstrap CI." in table
    assert table.splitlines()[2] == "| " + " | ".join(report.table_row(scored_entry())) + " |"


def test_a_table_whose_header_goes_on_past_the_columns_is_not_a_comparison_table(tmp_path):
    """A user's table that starts with our header and adds a column of its own was taken for one
    `augment score --table` writes, and replaced, when only the header's length was compared (audit CQ)."""
    header = "| " + " | ".join(report.TABLE_COLUMNS) + " |"
    ours, theirs = tmp_path / "ours.md", tmp_path / "theirs.md"
    ours.write_text(report.comparison_table([scored_entry()]), encoding="utf-8")
    theirs.write_text(header + " my notes |\n", encoding="utf-8")
    assert report.is_comparison_table(ours) and not report.is_comparison_table(theirs)


class RecordingAxis:
    """The matplotlib axis calls `_gap_bars` makes, recorded."""

    def __init__(self):
        self.bars = None

    def bar(self, names, values, **kwargs):
        self.bars = (names, values, kwargs)

    def set_title(self, *args, **kwargs):
        pass

    def axhline(self, *args, **kwargs):
        pass


def test_the_gap_bars_whiskers_are_the_distances_down_to_low_and_up_to_high_clipped_at_the_bar():
    """yerr is [below, above]: the two rows swapped drew each interval upside down (audit CQ). A bootstrap
    interval of a distance above its point estimate gets no whisker below the bar."""
    gap = {"text": {"frechet": {"value": 2.0, "low": 1.5, "high": 3.0}},
           "image": {"frechet": {"value": 1.0, "low": 1.2, "high": 1.1}}}
    axis = RecordingAxis()
    report._gap_bars(axis, gap, "frechet", "Frechet distance")
    names, values, kwargs = axis.bars
    assert names == ["text", "image"] and values == [2.0, 1.0]
    assert kwargs["yerr"] == [pytest.approx([0.5, 0.0]), pytest.approx([1.0, 0.1])]


def test_a_hub_scorer_is_named_whole_and_a_local_folder_by_its_last_part(tmp_path):
    """The table's "Scorer:" note: a Hub id holds a "/" too, and was cut to its model name like a folder when
    the name was not checked to be a folder here (audit CQ)."""
    (tmp_path / "my-clip").mkdir()
    assert report.scorer_label({"scorer": {"name": "openai/clip-vit-base-patch32"}}) == "openai/clip-vit-base-patch32"
    assert report.scorer_label({"scorer": {"name": f"{tmp_path / 'my-clip'}/"}}) == "my-clip"
