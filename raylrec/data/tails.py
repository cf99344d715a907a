"""User tails: each user's last ``max_len`` positive events, the state an appended day's
point-in-time histories continue from.

An event's history is the user's last ``max_len`` positives strictly before it
(``raylrec.data.history``). An appended day only holds events after every committed one (later
events are quarantined as late), so the positives its histories need from the past are exactly
each user's last ``max_len``: the tail. A ``rolling_days`` dataset writes its tails with every
version (``tails/``, one row per user: O(users x max_len), never O(events)); the next append
reads them back as *carried* rows that take part in the history computation and are never
written as rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylrec.data.files import FILE_COLUMN, ROW_COLUMN
from raylrec.data.validate import REASON

__all__ = ["CARRIED", "DENSE_SCHEMA", "TAIL_SCHEMA", "carried_rows", "of_users", "user_tails"]

CARRIED = "_carried"  # 1 on a tail's positive carried into an append: it is history, not a row
DENSE_SCHEMA = pa.schema(
    [
        ("uid", pa.int64()),
        ("iid", pa.int64()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
        ("label", pa.int8()),
        (FILE_COLUMN, pa.int32()),
        (ROW_COLUMN, pa.int64()),
        (CARRIED, pa.int8()),  # 0/1 (the row hash of the staged shuffle takes integers)
    ]
)
TAIL_SCHEMA = pa.schema(
    [("uid", pa.int64()), ("items", pa.list_(pa.int64())), ("timestamps", pa.list_(pa.int64()))]
)


def user_tails(batch: pa.Table, max_len: int) -> pa.Table:
    """The tail of every user of ``batch`` (rows of whole users, sorted by user, timestamp and
    item, as the per-user step leaves them): kept positives, carried ones included."""
    keep = pc.and_(pc.is_null(batch[REASON]), pc.equal(batch["label"], 1))
    positives = batch.select(["uid", "iid", "timestamp"]).filter(keep)  # not the histories
    uid = positives["uid"].to_numpy()
    n = len(uid)
    if n == 0:
        return TAIL_SCHEMA.empty_table()
    new_user = np.r_[True, uid[1:] != uid[:-1]]
    starts = np.flatnonzero(new_user)
    ends = np.r_[starts[1:], n]
    first = np.maximum(starts, ends - max_len)  # the last max_len of each user
    lengths = ends - first
    take = np.repeat(first - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))
    offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    items = positives["iid"].to_numpy()[take]
    times = positives["timestamp"].to_numpy()[take]
    return pa.table(
        {
            "uid": pa.array(uid[starts], pa.int64()),
            "items": pa.ListArray.from_arrays(offsets, pa.array(items, pa.int64())),
            "timestamps": pa.ListArray.from_arrays(offsets, pa.array(times, pa.int64())),
        },
        schema=TAIL_SCHEMA,
    )


def of_users(batch: pa.Table, users_ref, keep: bool) -> pa.Table:
    """The tails of the users in the object-store array ``users_ref`` (``keep``), or of the
    others: an append carries only the tails of the users its day touches through the
    shuffle, and writes the others' again as they were."""
    import ray

    inside = pc.is_in(batch["uid"], value_set=pa.array(ray.get(users_ref), pa.int64()))
    return batch.filter(inside if keep else pc.invert(inside))


def carried_rows(batch: pa.Table) -> pa.Table:
    """Tails exploded into positive events in ``DENSE_SCHEMA``, flagged ``_carried``."""
    lengths = pc.list_value_length(batch["items"]).to_numpy(zero_copy_only=False)
    n = int(lengths.sum())
    return pa.table(
        {
            "uid": pa.array(np.repeat(batch["uid"].to_numpy(), lengths), pa.int64()),
            "iid": pc.list_flatten(batch["items"]).cast(pa.int64()),
            "timestamp": pc.list_flatten(batch["timestamps"]).cast(pa.int64()),
            "rating": pa.nulls(n, pa.float64()),
            "label": pa.array(np.ones(n, np.int8)),
            FILE_COLUMN: pa.array(np.full(n, -1, np.int32)),
            ROW_COLUMN: pa.array(np.full(n, -1, np.int64)),
            CARRIED: pa.array(np.ones(n, np.int8)),
        },
        schema=DENSE_SCHEMA,
    )
