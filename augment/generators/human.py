"""`i2t-human`: the 1:N relation already in the data, as a pool.

For each caption c of an image, the image's other human captions become rows keyed by c
(`--n` caps how many per caption, taken in the data's order). Read by image, the pool gives
every image all its captions (1:N); read by caption, each caption the other captions of its
image (N:1).
"""
from __future__ import annotations

from augment.generators.base import Generator

METHODS = ["i2t-human"]


class HumanCaptionsGenerator(Generator):
    method = "i2t-human"
    modality = "text"
    model = "human"

    def generate(self, items: list[dict], n: int, seed: int) -> list[dict]:
        rows = []
        for item in items:
            captions = item["captions"]
            for c in range(len(captions)):
                others = [j for j in range(len(captions)) if j != c][:n]
                for j in others:
                    rows.append(self.row(item, c, j, seed, caption=captions[j], human_caption_index=j))
        return rows


def add_arguments(parser) -> None:
    """No options beyond the common ones."""


def options_read(method: str, args) -> set[str]:
    return set()


def build(method: str, args) -> Generator:
    return HumanCaptionsGenerator()
