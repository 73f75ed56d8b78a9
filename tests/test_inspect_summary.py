"""`augment inspect`'s summary, checked value by value on a source built here with uneven splits, caption
counts and image sizes (the expected numbers are counted by hand below, not by the code under test)."""
from __future__ import annotations

import json
import re

from augment.cli import main as augment_main
from tests.conftest import write_image

# 12 images: 0-6 train, 7-8 val, 9-11 test; image i has i % 3 + 1 captions; images 0 and 1 share a size,
# every other image has a size of its own (11 distinct sizes, one more than the 10 most common listed)
SPLITS = ["train"] * 7 + ["val"] * 2 + ["test"] * 3


def _uneven_source(folder):
    entries = []
    for i, split in enumerate(SPLITS):
        size = (16, 12) if i < 2 else (16 + i, 12)
        write_image(folder / "images" / f"{i}.png", size=size)
        entries.append({"filename": f"{i}.png", "split": split,
                        "sentences": [{"raw": f"caption {j} of image {i}"} for j in range(i % 3 + 1)]})
    path = folder / "dataset_uneven.json"
    path.write_text(json.dumps({"images": entries}))
    return path


def test_inspect_counts_each_split_and_lists_the_ten_most_common_sizes(tmp_path, capsys):
    """Found by a mutation audit (audit CS): the text table printing each split's captions under images (and its
    images under captions), `most_common(1)` for the listed sizes, and the distinct count taken from the listed
    sizes passed every test: the only summary checked had one size, and its table was never read."""
    source = _uneven_source(tmp_path / "src")
    capsys.readouterr()
    assert augment_main(["inspect", "--source", str(source), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": {"images": 7, "captions": 13}, "val": {"images": 2, "captions": 5},
                                 "test": {"images": 3, "captions": 6}}
    assert summary["images"] == 12 and summary["captions"] == 24
    assert summary["captions_per_image"] == {"1": 4, "2": 4, "3": 4}
    assert summary["distinct_image_sizes"] == 11
    assert len(summary["image_sizes"]) == 10 and summary["image_sizes"]["16x12"] == 2
    assert set(summary["image_sizes"].values()) == {2, 1}
    assert summary["image_modes"] == {"RGB": 12}  # counted, not just named (a mutation setting it to 1 survived)

    assert augment_main(["inspect", "--source", str(source)]) == 0
    out = capsys.readouterr().out
    table = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^  (\w+)\s+(\d+) images\s+(\d+) captions$", out, re.M)}
    assert table == {"train": (7, 13), "val": (2, 5), "test": (3, 6)}
    assert "captions per image: 1: 4, 2: 4, 3: 4\n" in out
    assert "image sizes (11 distinct, most common): 16x12: 2, " in out
