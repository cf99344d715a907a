"""Per-user scoring inputs from a prepared dataset, on Ray Data.

A profile is one row per requested user: ``user_id`` (raw), ``history`` (their most recent
positive items, oldest first; ties in time ordered by item id) and ``seen`` (every item they
interacted with), item ids in the dataset's dense numbering. Two Ray tasks stream the splits'
files once each and put every user's seen items and history in the object store as CSR arrays
(``raylrec.data.item_sets``: 4 bytes per distinct (user, item) pair, 4 per history slot); the
requested users then look theirs up in a plain Ray Data map, zero-copy. No shuffle of the events:
a process holds at most one batch of them, whatever the size of the log (the earlier join by a
hash shuffle grew its reduce tasks with the log). A requested user with no events in the splits
gets a cold profile (empty lists); a user file listing someone twice gives one profile.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from raylrec import storage
from raylrec.data.output import read_meta, read_split, read_table, table_path
from raylrec.data.vocab import Vocabulary
from raylrec.eval.ranking import ItemSets

__all__ = [
    "user_profiles",
    "profile_sets",
    "profiles_of_users",
    "requested_users",
    "item_popularity",
    "PROFILE_SCHEMA",
]

PROFILE_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("history", pa.list_(pa.int64())), ("seen", pa.list_(pa.int64()))]
)
# A user file's ids are made distinct by a hash shuffle of the ids alone (a few bytes per user).
_DISTINCT_USER_PARTITIONS = 8


@functools.lru_cache(maxsize=4)
def _user_vocabulary(dataset: str) -> Vocabulary:
    return Vocabulary.from_table(read_table(dataset, "users.parquet"), "user_id", "uid")


def _list_column(rows: ItemSets) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(rows.indptr.astype(np.int32)), pa.array(rows.indices.astype(np.int64, copy=False))
    )


def profiles_of_users(
    raw_users: pa.Array | pa.ChunkedArray, dense: np.ndarray, seen: ItemSets, history: ItemSets
) -> pa.Table:
    """The profiles of the users ``raw_users`` (dense ids ``dense``, 0 for a user the dataset
    does not know) from every user's ``seen`` items and ``history``."""
    return pa.table(
        {
            "user_id": raw_users.cast(pa.string()),
            "history": _list_column(history.take(dense)),
            "seen": _list_column(seen.take(dense)),
        },
        schema=PROFILE_SCHEMA,
    )


def _profiles_task(batch: pa.Table, dataset: str, sets: list[Any]) -> pa.Table:
    """A Ray Data task: a batch of requested users' profiles, read from the object store."""
    seen, history = ray.get(sets)
    raw = batch["user_id"].cast(pa.string())
    dense = _user_vocabulary(dataset).to_dense(raw.to_numpy(zero_copy_only=False))
    return profiles_of_users(raw, dense, seen, history)


def _distinct_users(block: pa.Table) -> pa.Table:
    """One row per user id of a block that holds every row of its ids (after a hash shuffle)."""
    return pa.table({"user_id": block["user_id"].cast(pa.string()).unique()})


def _users_format(users: str) -> str:
    """A user file's format by its extension, for Ray Data's and pyarrow's readers alike."""
    lower = users.lower()
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    return "json" if lower.endswith((".json", ".jsonl")) else "parquet"


def _read_users(users: str | None, dataset: str) -> ray.data.Dataset:
    if users is None:
        fs, _ = storage.arrow_filesystem(dataset)
        return ray.data.read_parquet(table_path(dataset, "users.parquet"), filesystem=fs, columns=["user_id"])
    fs, root = storage.arrow_filesystem(users)
    read = {"csv": ray.data.read_csv, "json": ray.data.read_json, "parquet": ray.data.read_parquet}
    # the file's user_id column was checked by profile_sets (_user_file) before any Ray work
    return read[_users_format(users)](root, filesystem=fs).select_columns(["user_id"])


def known_splits(dataset: str, splits: list[str] | None) -> list[str]:
    present = sorted(read_meta(dataset)["counts"]["splits"])
    if splits is None:
        return present
    unknown = sorted(set(splits) - set(present))
    if unknown:
        raise ValueError(f"score.splits: {unknown} not in dataset {dataset} (it has {present})")
    return splits


def _user_file(users: str):
    """The user file as a pyarrow dataset (nothing read but its schema), checked for a
    ``user_id`` column."""
    import pyarrow.dataset as pads

    fs, root = storage.arrow_filesystem(users)
    source = pads.dataset(root, filesystem=fs, format=_users_format(users))
    if "user_id" not in source.schema.names:
        raise ValueError(f"score.users {users}: no 'user_id' column (has {source.schema.names})")
    return source


def requested_users(users: str, dataset: str, num_users: int) -> np.ndarray:
    """A boolean per dense user id: whether the user file ``users`` lists that user (read with
    pyarrow in one process: one id per requested user, never the events)."""
    ids = _user_file(users).to_table(columns=["user_id"])["user_id"]
    dense = _user_vocabulary(dataset).to_dense(ids.cast(pa.string()).to_numpy(zero_copy_only=False))
    wanted = np.zeros(num_users, bool)
    wanted[dense[dense > 0]] = True
    return wanted


def profile_sets(
    dataset: str, splits: list[str], history_len: int, users: str | None = None
) -> list[ray.ObjectRef]:
    """[seen, history]: the distinct items and ``history_len`` latest positives of ``splits``
    (``ItemSets``) of every user, or of those the user file ``users`` lists (the others' rows
    stay empty, so a sample costs what its users hold), built by Ray tasks side by side and
    finished when this returns: the results are in the object store, not in this process."""
    from raylrec.data.item_sets import build_item_sets, build_latest_positives

    num_users = int(read_meta(dataset)["counts"]["num_users"])
    only = None
    if users is not None:
        _user_file(users)  # a file without user ids fails here, not inside a Ray task
        only = ray.remote(num_cpus=1, max_retries=2)(requested_users).remote(users, dataset, num_users)
    seen = ray.remote(num_cpus=1, max_retries=2)(build_item_sets).remote(
        dataset, splits, num_users, False, True, only
    )
    history = ray.remote(num_cpus=1, max_retries=2)(build_latest_positives).remote(
        dataset, splits, num_users, history_len, only
    )
    # Built before the scoring actors start: actors holding every CPU while waiting on them
    # would leave the tasks none to run on. Nothing is fetched here.
    ray.wait([seen, history], num_returns=2, fetch_local=False)
    return [seen, history]


def user_profiles(dataset: str, splits: list[str], users: str | None, history_len: int) -> ray.data.Dataset:
    """One profile row per distinct requested user (see the module docstring): every user of
    the dataset when ``users`` is None, else the ids of that file."""
    sets = profile_sets(dataset, splits, history_len, users)
    requested = _read_users(users, dataset)
    if users is not None:
        requested = requested.repartition(
            _DISTINCT_USER_PARTITIONS, keys=["user_id"], sort=False
        ).map_batches(_distinct_users, batch_format="pyarrow", batch_size=None)
    return requested.map_batches(
        _profiles_task, batch_format="pyarrow", fn_kwargs={"dataset": dataset, "sets": sets}
    )


def item_popularity(dataset: str, splits: list[str], top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` items by positive interactions in ``splits``: (dense ids, share of positives).
    Counted per block by Ray, merged on the driver (one row per item)."""
    from raylrec.data.indexing import id_counts

    positives = read_split(dataset, splits, columns=["iid", "label"]).filter(expr="label > 0")
    counts = id_counts(positives, ["iid"])["iid"]
    ids = counts["id"].to_numpy(zero_copy_only=False).astype(np.int64)
    count = counts["count"].to_numpy()
    order = np.lexsort((ids, -count))[:top]  # ties: lower id first, so runs agree
    total = max(int(count.sum()), 1)
    return ids[order], (count[order] / total).astype(np.float32)
