"""Model-ready arrays from a processed dataset: ids, labels, left-padded histories, warm flags.

``to_arrays`` is the one conversion, used on whole splits in a plain process and on Ray Data
batches inside Ray Train workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raylrec.data.arrays import pad_histories
from raylrec.data.output import read_meta, read_table

if TYPE_CHECKING:
    import torch

    from raylrec.cf.graph import GraphRows

__all__ = ["Split", "positives", "load_split", "to_arrays", "sample_negatives"]


def to_arrays(table: pa.Table, history_len: int = 0) -> dict[str, np.ndarray]:
    """The columns a CF encoder trains and scores on, as numpy arrays."""
    out = {
        "uid": table["uid"].to_numpy().astype(np.int64),
        "iid": table["iid"].to_numpy().astype(np.int64),
        "label": table["label"].to_numpy().astype(np.float32),
    }
    if history_len:
        out["history"] = pad_histories(table["history"], history_len)
    if "not_cold" in table.schema.names:
        out["warm"] = table["not_cold"].to_numpy().astype(bool)
    return out


def sample_negatives(
    rng: np.random.Generator, num_items: int, size: int, users: np.ndarray | None = None, seen=None
) -> np.ndarray:
    """Uniform item ids in 1..num_items-1 (0 is padding); given ``users`` and ``seen`` (a
    ``raylrec.eval.ItemSets`` with sorted rows), never an item the user interacted with, as
    RecBole's sampler (a sampled "negative" that is a real positive teaches the wrong thing).

    With ``distinct`` rows the draw is exact and takes one pass: a rank below the number of
    items the user has not seen, mapped to that item (``ItemSets.nth_absent``), so a user who
    has seen most of the catalogue costs no more than any other. RecBole redraws instead, which
    on a Zipf log's heaviest users (at 50M events the top users have seen almost every item)
    runs out of its rounds and keeps positives. A user who has seen every item gets a uniform
    item either way. Without ``distinct`` rows, clashes are redrawn (up to 100 rounds)."""
    if seen is not None and users is not None and seen.distinct:
        users = np.asarray(users, np.int64)
        unseen = (num_items - 1) - seen.sizes_of(users)
        ranks = rng.integers(0, np.maximum(unseen, 1), dtype=np.int64)
        items = np.where(unseen > 0, seen.nth_absent(users, ranks), 0)
        full = unseen <= 0
        if full.any():
            items[full] = rng.integers(1, num_items, size=int(full.sum()), dtype=np.int64)
        return items
    items = rng.integers(1, num_items, size=size, dtype=np.int64)
    if seen is None or users is None:
        return items
    clash = seen.contains(users, items)
    for _ in range(100):  # each round redraws only the clashes; a user with every item is absurd
        if not clash.any():
            break
        items[clash] = rng.integers(1, num_items, size=int(clash.sum()), dtype=np.int64)
        clash[clash] = seen.contains(users[clash], items[clash])
    return items


@dataclass
class Split:
    arrays: dict[str, np.ndarray]
    num_users: int
    num_items: int

    def __len__(self) -> int:
        return len(self.arrays["uid"])

    def users_with_rows(self) -> np.ndarray:
        """One flag per dense user id: whether the user has a row in this split (a CF bundle's
        users without training rows hold an untrained embedding: scoring serves them the
        popularity fallback instead)."""
        return np.bincount(self.arrays["uid"], minlength=self.num_users)[: self.num_users] > 0

    def graph(self, rows: GraphRows) -> torch.Tensor:
        """The normalised interaction graph of this split's pairs (``rows``: every row, or the
        label-1 ones), for a graph encoder (``CFEncoder.graph_rows``)."""
        from raylrec.cf.graph import normalized_adjacency

        users, items = positives(self, implicit=rows == "all")
        return normalized_adjacency(users, items, self.num_users, self.num_items)


def load_split(path: str, split: str, history_len: int = 0) -> Split:
    """One split of a prepared dataset, whole, for a plain process (tests, small data, GPU boxes
    without Ray). Ray workers read the same files through Ray Data instead."""
    counts = read_meta(path)["counts"]
    table = read_table(path, split)
    return Split(to_arrays(table, history_len), counts["num_users"], counts["num_items"])


def positives(split: Split, implicit: bool) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) a top-K model learns from: every row if implicit, else label-1 rows."""
    keep = np.ones(len(split), bool) if implicit else split.arrays["label"] > 0.5
    return split.arrays["uid"][keep], split.arrays["iid"][keep]
