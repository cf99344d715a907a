"""Each user's items (CSR ``ItemSets``) built from a prepared dataset's split files in two
streaming passes, without ever holding the split's rows: what BPR's negative sampler rejects
and what top-K evaluation masks and hits, on the Ray path.

Memory: the result (8 bytes per user + 4 per kept row) plus one Parquet batch. On the Ray path
one task builds it and its result lives once per node in the object store; workers read it
zero-copy (``ray.get`` of numpy arrays maps the node's shared memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from raylrec.data.output import read_meta, split_paths
from raylrec.eval.ranking import ItemSets

__all__ = ["build_item_sets", "split_pairs"]

_BATCH_ROWS = 1 << 20
_SORT_CHUNK = 1 << 22  # pairs sorted at a time inside users' rows


def split_pairs(
    dataset: str, splits: Sequence[str], positives_only: bool, batch_rows: int = _BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uid, iid) batches of ``splits``, read with pyarrow batch by batch; ``positives_only``
    keeps label-1 rows."""
    meta = read_meta(dataset)
    columns = ["uid", "iid", "label"] if positives_only else ["uid", "iid"]
    for split in splits:
        fs, files = split_paths(dataset, split, meta)
        source = pads.dataset(files, filesystem=fs, format="parquet")
        for batch in source.to_batches(columns=columns, batch_size=batch_rows):
            if positives_only:
                batch = batch.filter(pc.equal(batch["label"], 1))
            yield (
                batch["uid"].to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
                batch["iid"].to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
            )


def build_item_sets(dataset: str, splits: Sequence[str], num_users: int, positives_only: bool) -> ItemSets:
    """The users' items of ``splits`` (duplicates kept, as ``ItemSets.from_pairs``), each row
    sorted ascending so ``ItemSets.contains`` can search it. Pass 1 counts rows per user, pass 2
    writes each item at its user's cursor; rows are then sorted a few million pairs at a time."""
    counts = np.zeros(num_users, np.int64)
    for users, _ in split_pairs(dataset, splits, positives_only):
        counts += np.bincount(users, minlength=num_users)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    indices = np.empty(int(indptr[-1]), np.int32)
    cursor = indptr[:-1].copy()
    for users, items in split_pairs(dataset, splits, positives_only):
        order = np.argsort(users, kind="stable")
        ordered = users[order]
        first = np.r_[True, ordered[1:] != ordered[:-1]]
        run_start = np.maximum.accumulate(np.where(first, np.arange(len(ordered)), 0))
        indices[cursor[ordered] + (np.arange(len(ordered)) - run_start)] = items[order]
        cursor += np.bincount(users, minlength=num_users)
    _sort_rows(indptr, indices)
    return ItemSets(indptr, indices)


def _sort_rows(indptr: np.ndarray, indices: np.ndarray) -> None:
    """Sort each user's row in place, a bounded number of pairs at a time."""
    num_users = len(indptr) - 1
    start = 0
    while start < num_users:
        # the users whose rows fit in one chunk (at least one user, however long its row)
        stop = int(np.searchsorted(indptr, indptr[start] + _SORT_CHUNK, side="right")) - 1
        stop = min(max(stop, start + 1), num_users)
        lo, hi = indptr[start], indptr[stop]
        if hi > lo:
            rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
            part = indices[lo:hi]
            indices[lo:hi] = part[np.lexsort((part, rows))]
        start = stop
