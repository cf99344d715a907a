"""Each user's items (CSR ``ItemSets``) built from a prepared dataset's split files in two
streaming passes, without ever holding the split's rows: what BPR's negative sampler rejects
and what top-K evaluation masks and hits, on the Ray path.

Memory: the result (8 bytes per user + 4 per kept row) plus one Parquet batch. On the Ray path
one task builds it and its result lives once per node in the object store; workers read it
zero-copy (``ray.get`` of numpy arrays maps the node's shared memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from raylrec.data.output import read_meta, split_paths
from raylrec.eval.ranking import ItemSets

__all__ = ["build_item_sets", "build_latest_positives", "latest_positives", "split_pairs"]

_BATCH_ROWS = 1 << 20
_SORT_CHUNK = 1 << 22  # pairs sorted at a time inside users' rows


def _split_batches(
    dataset: str, splits: Sequence[str], columns: list[str], positives_only: bool, batch_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    """``columns`` of ``splits`` as numpy, read with pyarrow batch by batch; ``positives_only``
    keeps label-1 rows."""
    meta = read_meta(dataset)
    read = [*columns, "label"] if positives_only and "label" not in columns else columns
    for split in splits:
        fs, files = split_paths(dataset, split, meta)
        source = pads.dataset(files, filesystem=fs, format="parquet")
        for batch in source.to_batches(columns=read, batch_size=batch_rows):
            if positives_only:
                batch = batch.filter(pc.equal(batch["label"], 1))
            yield {name: batch[name].to_numpy(zero_copy_only=False) for name in columns}


def split_pairs(
    dataset: str, splits: Sequence[str], positives_only: bool, batch_rows: int = _BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uid, iid) batches of ``splits``, read with pyarrow batch by batch; ``positives_only``
    keeps label-1 rows."""
    for batch in _split_batches(dataset, splits, ["uid", "iid"], positives_only, batch_rows):
        yield batch["uid"].astype(np.int64, copy=False), batch["iid"].astype(np.int32, copy=False)


def build_item_sets(
    dataset: str,
    splits: Sequence[str],
    num_users: int,
    positives_only: bool,
    distinct: bool = False,
    only: np.ndarray | None = None,
) -> ItemSets:
    """The users' items of ``splits``, each row sorted ascending so ``ItemSets.contains`` can
    search it; a (user, item) pair logged several times is kept once with ``distinct`` (what
    BPR's sampler and the evaluation masks need: on a Zipf log the heaviest users repeat most
    of theirs), every time otherwise (recall's denominators count them, as
    ``ItemSets.from_pairs``). Pass 1 counts rows per user, pass 2 writes each item at its user's
    cursor; rows are then sorted (and de-duplicated) a few million pairs at a time. ``only``
    (a boolean per user): the other users' rows stay empty and take no memory."""
    counts = np.zeros(num_users, np.int64)
    for users, _ in _kept_pairs(split_pairs(dataset, splits, positives_only), only):
        counts += np.bincount(users, minlength=num_users)
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    indices = np.empty(int(indptr[-1]), np.int32)
    cursor = indptr[:-1].copy()
    for users, items in _kept_pairs(split_pairs(dataset, splits, positives_only), only):
        order = np.argsort(users, kind="stable")
        ordered = users[order]
        first = np.r_[True, ordered[1:] != ordered[:-1]]
        run_start = np.maximum.accumulate(np.where(first, np.arange(len(ordered)), 0))
        indices[cursor[ordered] + (np.arange(len(ordered)) - run_start)] = items[order]
        cursor += np.bincount(users, minlength=num_users)
    indptr, indices = _sort_rows(indptr, indices, distinct)
    return ItemSets(indptr, indices, distinct)


def _kept_pairs(
    pairs: Iterator[tuple[np.ndarray, np.ndarray]], only: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for users, items in pairs:
        if only is not None:
            kept = only[users]
            users, items = users[kept], items[kept]
        yield users, items


def _sort_rows(indptr: np.ndarray, indices: np.ndarray, distinct: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sort each user's row in place, a bounded number of pairs at a time; with ``distinct``,
    repeats are dropped and the rows compacted towards the front (a chunk is written at or
    before where it was read), then the array shrunk in place."""
    num_users = len(indptr) - 1
    kept = indptr.copy()
    start = 0
    while start < num_users:
        # the users whose rows fit in one chunk (at least one user, however long its row)
        stop = int(np.searchsorted(indptr, indptr[start] + _SORT_CHUNK, side="right")) - 1
        stop = min(max(stop, start + 1), num_users)
        lo, hi = indptr[start], indptr[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
        part = indices[lo:hi]
        order = np.lexsort((part, rows))
        part, rows = part[order], rows[order]
        if distinct:
            first = np.r_[True, (rows[1:] != rows[:-1]) | (part[1:] != part[:-1])][: len(part)]
            part, rows = part[first], rows[first]
            kept[start + 1 : stop + 1] = kept[start] + np.cumsum(np.bincount(rows, minlength=stop - start))
        indices[kept[start] : kept[start] + len(part)] = part
        start = stop
    if distinct:
        indices.resize(int(kept[-1]), refcheck=False)  # in place: no second copy of the pairs
    return (kept if distinct else indptr), indices


def build_latest_positives(
    dataset: str,
    splits: Sequence[str],
    num_users: int,
    length: int,
    only: np.ndarray | None = None,
    batch_rows: int = _BATCH_ROWS,
) -> ItemSets:
    """``latest_positives`` of the label-1 rows of ``splits``, streamed from the files; with
    ``only`` (a boolean per user), of those users alone."""
    columns = ["uid", "iid", "timestamp"]
    batches = _split_batches(dataset, splits, columns, True, batch_rows) if length else iter(())
    return latest_positives(batches, num_users, length, only)


def latest_positives(
    batches: Iterable[dict[str, np.ndarray]], num_users: int, length: int, only: np.ndarray | None = None
) -> ItemSets:
    """Each user's ``length`` most recent items over ``batches`` (``uid``, ``iid``,
    ``timestamp``), oldest first, ties in time ordered by item id (an item logged twice counts
    twice): the history a scoring profile carries. One pass keeps at most ``length`` (time,
    item) pairs per user and merges each batch into them, so memory is 12 bytes per history slot
    of each user kept (every user, or those of ``only``, a boolean per user) plus one batch,
    whatever the number of events."""
    slot_of = np.arange(num_users) if only is None else np.cumsum(only) - 1  # user -> table row
    rows = num_users if only is None else int(np.count_nonzero(only))
    times = np.zeros((rows, length), np.int64)
    items = np.zeros((rows, length), np.int32)
    counts = np.zeros(num_users, np.int64)
    for batch in batches:
        users = np.asarray(batch["uid"], np.int64)
        kept = slice(None) if only is None else only[users]
        users = users[kept]
        if not len(users) or not length:
            continue
        touched, owner = np.unique(users, return_inverse=True)
        held = counts[touched]
        old_owner = np.repeat(np.arange(len(touched)), held)
        old_slot = np.arange(len(old_owner)) - np.repeat(np.cumsum(held) - held, held)
        owner = np.r_[old_owner, owner]
        row = slot_of[touched]
        when = np.r_[times[row[old_owner], old_slot], np.asarray(batch["timestamp"], np.int64)[kept]]
        what = np.r_[items[row[old_owner], old_slot], np.asarray(batch["iid"], np.int32)[kept]]
        order = np.lexsort((what, when, owner))
        owner, when, what = owner[order], when[order], what[order]
        ends = np.cumsum(np.bincount(owner, minlength=len(touched)))
        newest = ends[owner] - np.arange(len(owner)) <= length  # each user's last `length`
        owner, when, what = owner[newest], when[newest], what[newest]
        filled = np.bincount(owner, minlength=len(touched))
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(filled) - filled, filled)
        times[row[owner], slot] = when
        items[row[owner], slot] = what
        counts[touched] = filled
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    table_counts = counts if only is None else counts[only]
    return ItemSets(indptr, items[np.arange(length) < table_counts[:, None]], distinct=False)
