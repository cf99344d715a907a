"""Per-user scoring inputs from a prepared dataset, on Ray Data.

A profile is one row per requested user: ``user_id`` (raw), ``history`` (their most recent
positive items, oldest first; ties in time ordered by item id) and ``seen`` (every item they
interacted with), item ids in the dataset's dense numbering. Requested users join their
interactions in one hash shuffle: the user table's rows go in as markers beside the events, and
a user gets a profile only if they have a marker, so a requested user with no events still gets
a (cold) profile and events of users nobody asked for are dropped.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import ray

from raylrec import storage
from raylrec.data.output import read_meta, read_split, read_table
from raylrec.data.vocab import Vocabulary

__all__ = ["user_profiles", "profile_partitions", "profiles_of_block", "item_popularity", "PROFILE_SCHEMA"]

PROFILE_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("history", pa.list_(pa.int64())), ("seen", pa.list_(pa.int64()))]
)
_EVENT_COLUMNS = ["uid", "iid", "timestamp", "label"]
_MARKER = -1


@functools.lru_cache(maxsize=4)
def _user_vocabulary(dataset: str) -> Vocabulary:
    return Vocabulary.from_table(read_table(dataset, "users.parquet"), "user_id", "uid")


def _events_with_raw_users(batch: pa.Table, dataset: str) -> pa.Table:
    raw = _user_vocabulary(dataset).to_raw(batch["uid"].to_numpy())
    return pa.table(
        {
            "user_id": pa.array(raw.tolist(), pa.string()),
            "iid": batch["iid"].cast(pa.int64()),
            "timestamp": batch["timestamp"].cast(pa.int64()),
            "label": batch["label"].cast(pa.int8()),
        }
    )


def _markers(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    return pa.table(
        {
            "user_id": batch["user_id"].cast(pa.string()),
            "iid": pa.array(np.full(n, _MARKER, np.int64)),
            "timestamp": pa.array(np.zeros(n, np.int64)),
            "label": pa.array(np.zeros(n, np.int8)),
        }
    )


def _offsets(owner: np.ndarray, groups: int) -> np.ndarray:
    """List offsets for values already sorted by ``owner`` (group ids in ``[0, groups)``)."""
    return np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=groups))]).astype(np.int32)


def profiles_of_block(block: pa.Table, history_len: int) -> pa.Table:
    """The profiles of the requested users in ``block``, vectorised over users. The block must
    hold all rows of each of its users (events and markers), as a shuffle by ``user_id`` leaves
    them; users without a marker are dropped, markers without events give cold profiles."""
    encoded = block["user_id"].combine_chunks().dictionary_encode()
    users = encoded.dictionary
    user = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    iid = block["iid"].to_numpy()
    timestamp = block["timestamp"].to_numpy()
    label = block["label"].to_numpy()
    requested = np.zeros(len(users), bool)
    requested[user[iid == _MARKER]] = True
    event = (iid != _MARKER) & requested[user]
    user, iid, timestamp, positive = user[event], iid[event], timestamp[event], label[event] > 0

    # seen: each user's distinct items, ascending
    order = np.lexsort((iid, user))
    seen_user, seen_item = user[order], iid[order]
    first = np.ones(len(order), bool)
    first[1:] = (seen_user[1:] != seen_user[:-1]) | (seen_item[1:] != seen_item[:-1])
    seen_user, seen_item = seen_user[first], seen_item[first]

    # history: each user's newest positives, oldest first; ties in time ordered by item id
    order = np.lexsort((iid[positive], timestamp[positive], user[positive]))
    history_user, history_item = user[positive][order], iid[positive][order]
    ends = np.cumsum(np.bincount(history_user, minlength=len(users)))
    keep = ends[history_user] - np.arange(len(history_user)) <= history_len
    history_user, history_item = history_user[keep], history_item[keep]

    wanted = pa.array(np.flatnonzero(requested))
    return pa.table(
        {
            "user_id": users.cast(pa.string()).take(wanted),
            "history": pa.ListArray.from_arrays(
                _offsets(history_user, len(users)), pa.array(history_item, pa.int64())
            ).take(wanted),
            "seen": pa.ListArray.from_arrays(
                _offsets(seen_user, len(users)), pa.array(seen_item, pa.int64())
            ).take(wanted),
        },
        schema=PROFILE_SCHEMA,
    )


def _read_users(users: str | None, dataset: str) -> ray.data.Dataset:
    if users is None:
        fs, root = storage.arrow_filesystem(dataset)
        return ray.data.read_parquet(storage.join(root, "users.parquet"), filesystem=fs, columns=["user_id"])
    fs, root = storage.arrow_filesystem(users)
    lower = users.lower()
    if lower.endswith((".csv", ".tsv")):
        ds = ray.data.read_csv(root, filesystem=fs)
    elif lower.endswith((".json", ".jsonl")):
        ds = ray.data.read_json(root, filesystem=fs)
    else:
        ds = ray.data.read_parquet(root, filesystem=fs)
    if "user_id" not in ds.columns():
        raise ValueError(f"score.users {users}: no 'user_id' column (has {ds.columns()})")
    return ds.select_columns(["user_id"])


def known_splits(dataset: str, splits: list[str] | None) -> list[str]:
    present = sorted(read_meta(dataset)["counts"]["splits"])
    if splits is None:
        return present
    unknown = sorted(set(splits) - set(present))
    if unknown:
        raise ValueError(f"score.splits: {unknown} not in dataset {dataset} (it has {present})")
    return splits


def _read_events(dataset: str, splits: list[str]) -> ray.data.Dataset:
    return read_split(dataset, splits, columns=_EVENT_COLUMNS)


# Events per profile block: a block holds all rows of its users and is profiled at once, so the
# number of blocks grows with the log and a profiling task's memory does not (~100 MB a block).
EVENTS_PER_PROFILE_BLOCK = 1_000_000


def profile_partitions(dataset: str, splits: list[str]) -> int:
    """How many hash partitions the profiles of ``splits`` take: at least 8, one per
    ``EVENTS_PER_PROFILE_BLOCK`` events."""
    counts = read_meta(dataset)["counts"]["splits"]
    events = sum(int(counts.get(split, 0)) for split in splits)
    return max(8, -(-events // EVENTS_PER_PROFILE_BLOCK))


def user_profiles(
    dataset: str, splits: list[str], users: str | None, history_len: int, partitions: int | None = None
) -> ray.data.Dataset:
    """One profile row per distinct requested user (see the module docstring); ``partitions``
    defaults to ``profile_partitions``."""
    partitions = partitions or profile_partitions(dataset, splits)
    events = _read_events(dataset, splits).map_batches(
        _events_with_raw_users, batch_format="pyarrow", fn_kwargs={"dataset": dataset}
    )
    markers = _read_users(users, dataset).map_batches(_markers, batch_format="pyarrow")
    # One block per partition holds all rows of its users (a hash shuffle on user_id), so each
    # block's profiles are computed at once, vectorised, instead of one Python call per user.
    return (
        events.union(markers)
        .repartition(partitions, keys=["user_id"], sort=False)
        .map_batches(
            profiles_of_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"history_len": history_len}
        )
    )


def item_popularity(dataset: str, splits: list[str], top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` items by positive interactions in ``splits``: (dense ids, share of positives).
    Counted per block by Ray, merged on the driver (one row per item)."""
    from raylrec.data.indexing import id_counts

    positives = _read_events(dataset, splits).filter(expr="label > 0")
    counts = id_counts(positives, ["iid"])["iid"]
    ids = counts["id"].to_numpy(zero_copy_only=False).astype(np.int64)
    count = counts["count"].to_numpy()
    order = np.lexsort((ids, -count))[:top]  # ties: lower id first, so runs agree
    total = max(int(count.sum()), 1)
    return ids[order], (count[order] / total).astype(np.float32)
