"""A fixed-size uniform sample of a stream of embedding rows, with the item of each row: what the
gap statistics see of a pool and of its source, however large."""
from __future__ import annotations

import numpy as np


class Reservoir:
    """A uniform random sample of at most `capacity` rows of a stream (Vitter's algorithm R),
    seeded: memory stays fixed however long the stream is. Rows may come with ids (the item each
    row belongs to, for the gap's item-level bootstrap): an id is written to the slot its row is,
    by the same assignment, so the two stay aligned; ids take no draws, so the rows kept are the
    same with or without them."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.rows: np.ndarray | None = None
        self.item_ids: np.ndarray | None = None  # (capacity,) object array once ids are given

    def add(self, rows: np.ndarray, ids=None) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if len(rows) == 0:
            return
        if ids is not None:
            ids = np.asarray(ids, dtype=object).reshape(-1)
            if len(ids) != len(rows):
                raise ValueError(f"{len(ids)} ids for {len(rows)} rows")
        # a stream is either all with ids or all without: a row kept without its id would
        # silently be grouped with another item's
        if self.seen and (ids is None) != (self.item_ids is None):
            raise ValueError("rows were added with ids and without: give ids with every call or none")
        if self.rows is None:
            self.rows = np.empty((self.capacity, rows.shape[1]), dtype=np.float32)
            if ids is not None:
                self.item_ids = np.empty(self.capacity, dtype=object)
        positions = np.arange(self.seen, self.seen + len(rows))
        direct = positions < self.capacity
        self.rows[positions[direct]] = rows[direct]
        if ids is not None:
            self.item_ids[positions[direct]] = ids[direct]
        later = ~direct
        if later.any():
            slots = self.rng.integers(0, positions[later] + 1)  # slot j in [0, t] for stream index t
            keep = slots < self.capacity
            # a slot drawn twice in one call: the later row wins, for the ids as for the rows
            self.rows[slots[keep]] = rows[later][keep]
            if ids is not None:
                self.item_ids[slots[keep]] = ids[later][keep]
        self.seen += len(rows)

    def sample(self) -> np.ndarray:
        if self.rows is None:
            return np.empty((0, 0), dtype=np.float32)
        return self.rows[: min(self.seen, self.capacity)]

    def ids(self) -> np.ndarray | None:
        """The item id of each row of `sample()`, in its order; None when rows came without ids."""
        if self.item_ids is None:
            return None
        return self.item_ids[: min(self.seen, self.capacity)]
