"""The steps of the preparation pipeline on Ray Data, shared by a full preparation
(``raylrec.data.prepare``) and an append (``raylrec.data.append``): the per-block functions
that run inside Ray tasks, and the driver-side steps that chain them.

Events stream through Ray; the driver holds only per-id tables (vocabularies, counts) and
per-block summaries.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylrec import storage
from raylrec.config import DataConfig
from raylrec.data.config import DAY
from raylrec.data.days import BULK, day_name
from raylrec.data.files import FILE_COLUMN, RAW_COLUMN, REASON_COLUMN, ROW_COLUMN, SourceError
from raylrec.data.hashing import row_hashes
from raylrec.data.history import point_in_time_histories
from raylrec.data.indexing import id_counts
from raylrec.data.loaded import LoadedSource
from raylrec.data.output import (
    SHUFFLE_DIR,
    new_write_id,
    write_dataset,
)
from raylrec.data.shuffle import shuffle_by_key
from raylrec.data.splits import SPLIT_NAMES, assign_splits
from raylrec.data.tails import CARRIED, DENSE_SCHEMA, user_tails
from raylrec.data.validate import RAW, REASON, validate_batch
from raylrec.data.vocab import Vocabulary

__all__ = [
    "OUTPUT_COLUMNS",
    "PipelineError",
    "dataset_counts",
    "events_by_user",
    "history_items_bound",
    "shuffle_partitions",
    "keep_valid",
    "split_bounds",
    "validated",
    "with_metadata",
    "write_parts",
    "write_quarantine",
    "write_tails",
]

log = logging.getLogger(__name__)
OUTPUT_COLUMNS = ["uid", "iid", "timestamp", "rating", "label", "history"]
QUARANTINE_COLUMNS = [
    FILE_COLUMN,
    ROW_COLUMN,
    REASON,
    RAW,
    "user_id",
    "item_id",
    "timestamp",
    "rating",
    "label",
]
# The by-user shuffle's partitions are sized by what one reduce task holds, not by rows alone: a
# row's own columns and its history, whose width grows with the log (histories fill to max_len
# as users gather events: 7.2 items per row on average at 5M events of 200k users, 17.3 at 50M).
# The weights are what a reduce task holds per row and per history item at its peak (the rows,
# their sort, the histories, their Parquet write), with some room: stop 49 measured ~300 bytes
# per row with full histories of 20.
BYTES_PER_PARTITION = 96 * 2**20
ROW_BYTES = 64
HISTORY_ITEM_BYTES = 16
DUPLICATE = "duplicate event (same user, item and timestamp as an earlier row)"


class PipelineError(RuntimeError):
    """The pipeline's own invariants failed (a bug, never bad input)."""


Progress = Callable[[str], None]


# --- per-block functions (run inside Ray tasks) -----------------------------------------------


def _validate(batch: pa.Table, config, threshold: float, unit: str, files: list[str]) -> pa.Table:
    try:
        return validate_batch(batch, config, threshold, unit)
    except SourceError:
        raise
    except Exception as e:
        names = sorted({files[i] for i in set(batch[FILE_COLUMN].to_pylist())})
        internal = (FILE_COLUMN, ROW_COLUMN, REASON_COLUMN, RAW_COLUMN)
        fields = [f"{f.name} ({f.type})" for f in batch.schema if f.name not in internal]
        raise SourceError(
            f"{', '.join(names) or 'input'}: column types cannot be read as an interaction log: "
            f"{', '.join(fields)}: {e}"
        ) from None


def keep_valid(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch[REASON]))


def _bad(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch[REASON])).select(QUARANTINE_COLUMNS)


def _mark_kcore(batch: pa.Table, users: pa.Array, items: pa.Array, k: int) -> pa.Table:
    """Give rows of too-rare users/items a reason (rows already bad keep theirs)."""
    live = pc.is_null(batch[REASON]).to_numpy(zero_copy_only=False)
    rare_user = pc.is_in(batch["user_id"], value_set=users).to_numpy(zero_copy_only=False) & live
    rare_item = pc.is_in(batch["item_id"], value_set=items).to_numpy(zero_copy_only=False) & live & ~rare_user
    reasons = batch[REASON].to_numpy(zero_copy_only=False).astype(object)
    reasons[rare_user] = f"k-core: user has fewer than {k} events"
    reasons[rare_item] = f"k-core: item has fewer than {k} events"
    return batch.set_column(batch.schema.get_field_index(REASON), REASON, pa.array(reasons, pa.string()))


def _to_dense(batch: pa.Table, vocab_refs: tuple[ray.ObjectRef, ray.ObjectRef]) -> pa.Table:
    """Good rows with raw ids replaced by dense indices: the narrow rows the user shuffle moves."""
    users, items = (ray.get(ref) for ref in vocab_refs)
    good = batch.filter(pc.is_null(batch[REASON]))
    uid = pc.add(pc.index_in(good["user_id"], value_set=users), 1)
    iid = pc.add(pc.index_in(good["item_id"], value_set=items), 1)
    if uid.null_count or iid.null_count:
        raise PipelineError("an id is missing from the vocabulary")
    return pa.table(
        {
            "uid": uid.cast(pa.int64()),
            "iid": iid.cast(pa.int64()),
            **{c: good[c] for c in ("timestamp", "rating", "label", FILE_COLUMN, ROW_COLUMN)},
            CARRIED: pa.array(np.zeros(good.num_rows, np.int8)),
        },
        schema=DENSE_SCHEMA,
    )


def _per_user(
    batch: pa.Table,
    split_config: Any,
    cutoffs: tuple[int, int] | None,
    end: int | None,
    max_len: int,
) -> pa.Table:
    """All events of a set of users: de-duplicate, split, build histories."""
    columns = {c: batch[c].to_numpy() for c in ("uid", "timestamp", "iid", FILE_COLUMN, ROW_COLUMN)}
    order = np.lexsort(
        (columns[ROW_COLUMN], columns[FILE_COLUMN], columns["iid"], columns["timestamp"], columns["uid"])
    )
    table = batch.take(order)
    u, t, i = (columns[c][order] for c in ("uid", "timestamp", "iid"))
    n = len(u)
    duplicate = np.zeros(n, bool)
    if n > 1:
        duplicate[1:] = (u[1:] == u[:-1]) & (t[1:] == t[:-1]) & (i[1:] == i[:-1])
    late = (t >= end) if end is not None else np.zeros(n, bool)
    reasons = np.full(n, None, dtype=object)
    reasons[duplicate] = DUPLICATE
    reasons[late & ~duplicate] = f"timestamp: at or after the split's end ({end})"
    keep = ~duplicate & ~late

    split = np.full(n, -1, np.int8)
    split[keep] = assign_splits(split_config, u[keep], i[keep], t[keep], cutoffs)
    # an appended day's carried tail (raylrec.data.tails): history for the rows, never a row
    split[table[CARRIED].to_numpy(zero_copy_only=False) == 1] = -1
    label = table["label"].to_numpy(zero_copy_only=False)
    history_kept = point_in_time_histories(u[keep], t[keep], i[keep], label[keep] == 1, max_len)
    # Scatter kept rows' histories back; rows that leave (duplicates) get an empty history.
    lengths = np.zeros(n, np.int64)
    lengths[keep] = np.diff(history_kept.offsets.to_numpy())
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    history = pa.ListArray.from_arrays(pa.array(offsets), history_kept.values)
    split_names = np.array([None, *SPLIT_NAMES], dtype=object)[split.astype(np.int64) + 1]
    return (
        table.append_column("history", history)
        .append_column("split", pa.array(split_names, pa.string()))
        .append_column(REASON, pa.array(reasons, pa.string()))
    )


def _dropped(batch: pa.Table, vocab_refs: tuple[ray.ObjectRef, ray.ObjectRef]) -> pa.Table:
    """Rows the per-user step dropped, in the quarantine's schema (raw ids looked up again)."""
    users, items = (ray.get(ref) for ref in vocab_refs)
    bad = batch.filter(pc.is_valid(batch[REASON]))
    return pa.table(
        {
            FILE_COLUMN: bad[FILE_COLUMN],
            ROW_COLUMN: bad[ROW_COLUMN],
            REASON: bad[REASON],
            RAW: pa.nulls(bad.num_rows, pa.string()),
            "user_id": users.take(pc.subtract(bad["uid"], 1)),
            "item_id": items.take(pc.subtract(bad["iid"], 1)),
            **{c: bad[c] for c in ("timestamp", "rating", "label")},
        }
    ).select(QUARANTINE_COLUMNS)


def _name_files(batch: pa.Table, files: list[str]) -> pa.Table:
    """Quarantine rows carry a file index in flight; on disk they name the file. A row dropped
    after validation (k-core, duplicate, late event) no longer carries its line: its ``_raw``
    is its values as validated, the same JSON shape as a bad row's (the line is at
    ``_file``/``_row``)."""
    paths = pa.array(files, pa.string()).take(batch[FILE_COLUMN])
    batch = batch.set_column(batch.schema.get_field_index(FILE_COLUMN), FILE_COLUMN, paths)
    missing = np.flatnonzero(pc.is_null(batch[RAW]).to_numpy(zero_copy_only=False))
    if not len(missing):
        return batch
    raw = batch[RAW].to_numpy(zero_copy_only=False).astype(object)
    values = batch.select(["user_id", "item_id", "timestamp", "rating"]).take(missing).to_pylist()
    raw[missing] = [json.dumps({k: v for k, v in row.items() if v is not None}) for row in values]
    return batch.set_column(batch.schema.get_field_index(RAW), RAW, pa.array(raw, pa.string()))


def _day_codes(timestamp: np.ndarray, day_cut: int | None) -> np.ndarray:
    """Each row's part: its UTC day number at or after ``day_cut`` (a day file of a rolling_days
    dataset), ``BULK`` before it or when there is no cut."""
    if day_cut is None:
        return np.full(len(timestamp), BULK)
    return np.where(timestamp >= day_cut, timestamp // DAY, BULK)


def _one_split(batch: pa.Table, split: str, day: int = BULK, day_cut: int | None = None) -> pa.Table:
    """The rows of ``split`` in part ``day`` (``_day_codes``)."""
    mask = pc.and_(pc.is_null(batch[REASON]), pc.equal(batch["split"], split))
    if day_cut is not None:
        mask = pc.and_(mask, pa.array(_day_codes(batch["timestamp"].to_numpy(), day_cut) == day))
    return batch.filter(mask).select(OUTPUT_COLUMNS)


def _summarise(batch: pa.Table, day_cut: int | None) -> pa.Table:
    """Per block, split and part (``_day_codes``): rows, positives and the order-independent
    content hash; parts with no rows are left out. Rows are hashed where they lie (no filtered
    copies of the block: a heavy user's block is millions of rows with their histories)."""
    split_code = pc.index_in(batch["split"], value_set=pa.array(SPLIT_NAMES)).fill_null(-1)
    dropped = pc.is_valid(batch[REASON])  # quarantined by the per-user step: no split's row
    split = np.where(dropped.to_numpy(), -1, split_code.to_numpy())
    days = _day_codes(batch["timestamp"].to_numpy(), day_cut)
    hashes = row_hashes(batch.select(OUTPUT_COLUMNS))
    label = batch["label"].fill_null(0).to_numpy()
    rows = []
    for code, name in enumerate(SPLIT_NAMES):
        in_split = split == code
        for day in np.unique(days[in_split]):
            part = in_split & (days == day)
            with np.errstate(over="ignore"):
                digest = np.sum(hashes[part], dtype=np.uint64)
            rows.append((name, int(day), int(part.sum()), int(label[part].sum()), int(digest)))
    names = ["split", "day", "rows", "positives", "hash"]
    return pa.table(
        {k: [r[j] for r in rows] for j, k in enumerate(names)},
        schema=pa.schema(
            [
                ("split", pa.string()),
                ("day", pa.int64()),
                ("rows", pa.int64()),
                ("positives", pa.int64()),
                ("hash", pa.uint64()),
            ]
        ),
    )


# --- driver-side steps -------------------------------------------------------------------------


def _kth_timestamp(ds: ray.data.Dataset, total: int) -> Callable[[int], int]:
    """Exact k-th smallest timestamp in two streaming passes: an hourly histogram, then the
    timestamps of the one hour that holds rank k."""
    bucket = 3600

    def histogram(batch: pa.Table) -> pa.Table:
        hours, counts = np.unique(batch["timestamp"].to_numpy() // bucket, return_counts=True)
        return pa.table({"hour": hours, "count": counts})

    hist = (
        pa.concat_tables(
            list(
                ds.map_batches(histogram, batch_format="pyarrow", batch_size=None).iter_batches(
                    batch_format="pyarrow", batch_size=None
                )
            )
        )
        .group_by("hour", use_threads=False)  # on the driver: see indexing._merge
        .aggregate([("count", "sum")])
        .sort_by("hour")
    )
    hours = hist["hour"].to_numpy()
    cumulative = np.cumsum(hist["count_sum"].to_numpy())

    def at(k: int) -> int:
        b = int(np.searchsorted(cumulative, k, side="right"))
        before = int(cumulative[b - 1]) if b else 0
        hour = int(hours[b])

        def in_hour(batch: pa.Table) -> pa.Table:
            ts = batch["timestamp"]
            return pa.table({"timestamp": ts.filter(pc.equal(pc.divide(ts, bucket), hour))})

        parts = ds.map_batches(in_hour, batch_format="pyarrow").iter_batches(
            batch_format="numpy", batch_size=None
        )
        values = np.sort(np.concatenate([b["timestamp"] for b in parts] or [np.zeros(0, np.int64)]))
        return int(values[k - before])

    return at


def _kcore(checked: ray.data.Dataset, k: int, progress: Progress) -> ray.data.Dataset:
    for round_ in range(1, 100):
        good = checked.map_batches(keep_valid, batch_format="pyarrow")
        counts = id_counts(good, ["user_id", "item_id"])
        users, items = counts["user_id"], counts["item_id"]
        rare_users = users.filter(pc.less(users["count"], k))["id"].combine_chunks()
        rare_items = items.filter(pc.less(items["count"], k))["id"].combine_chunks()
        progress(f"k-core round {round_}: {len(rare_users)} users and {len(rare_items)} items below {k}")
        if len(rare_users) == 0 and len(rare_items) == 0:
            return checked
        checked = checked.map_batches(
            _mark_kcore,
            batch_format="pyarrow",
            fn_kwargs={"users": rare_users, "items": rare_items, "k": k},
        ).materialize()
    raise PipelineError("k-core filtering did not converge in 100 rounds")


def _sum_counts(table: pa.Table) -> dict[str, int]:
    return {str(r["id"]): int(r["count"]) for r in table.to_pylist()}


def with_metadata(vocab: Vocabulary, raw_name: str, dense_name: str, meta: pa.Table | None) -> pa.Table:
    table = vocab.to_table(raw_name, dense_name)
    if meta is None or meta.num_rows == 0:
        return table
    meta = (
        meta.group_by(raw_name, use_threads=False)
        .aggregate([(c, "first") for c in meta.schema.names if c != raw_name])
        .rename_columns([raw_name] + [c for c in meta.schema.names if c != raw_name])
    )
    joined = table.join(meta, raw_name, join_type="left outer")
    return joined.sort_by(dense_name)


def validated(config: DataConfig, source: LoadedSource, say: Progress) -> tuple[ray.data.Dataset, int]:
    """Every input row, typed, with ``_reason`` set on the bad ones (kept in the object store)."""
    say(f"reading {config.source.type} -> validating")
    validation = {
        "config": config.validation,
        "threshold": config.label.threshold,
        "unit": source.timestamp_unit,
        "files": source.files,
    }
    if source.sample is not None:
        _validate(source.sample, **validation)  # a file-level type error fails here, unwrapped
    checked = source.events.map_batches(_validate, batch_format="pyarrow", fn_kwargs=validation).materialize()
    rows_in = checked.count()
    say(f"read {rows_in:,} rows")
    if config.kcore:
        checked = _kcore(checked, config.kcore, say)
    return checked, rows_in


def split_bounds(
    config: DataConfig, good: ray.data.Dataset, rows: int, say: Progress, last: int | None = None
):
    """(cutoffs, end): global time bounds where the split protocol needs them (its ``bounds``).
    ``last``: the log's latest timestamp, which rolling_days counts back from (the caller
    computes it once: it is also the dataset's watermark)."""
    histogram = functools.cache(lambda: _kth_timestamp(good, rows))  # two passes, only if asked

    cutoffs, end, message = config.split.bounds(lambda k: histogram()(k), rows, last)
    if message:
        say(message)
    return cutoffs, end


def history_items_bound(events_per_user: np.ndarray, max_len: int) -> int:
    """History items of all rows if every event were positive: a user's k-th event (0-based)
    sees at most ``min(k, max_len)`` earlier ones."""
    n = np.asarray(events_per_user, np.int64)
    full = np.minimum(n, max_len + 1)
    return int((full * (full - 1) // 2 + (n - full) * max_len).sum())


def shuffle_partitions(rows: int, history_items: int) -> int:
    """Partitions of the by-user shuffle: one per ``BYTES_PER_PARTITION`` of estimated rows and
    history items, so a reduce task's memory stays flat as the log (and its histories) grows."""
    estimated = rows * ROW_BYTES + history_items * HISTORY_ITEM_BYTES
    return max(1, math.ceil(estimated / BYTES_PER_PARTITION))


def events_by_user(
    config: DataConfig,
    checked: ray.data.Dataset,
    vocab_refs,
    rows: int,
    cutoffs,
    end,
    say: Progress,
    carried: ray.data.Dataset | None = None,
    carried_rows: int = 0,
    history_items: int | None = None,
) -> ray.data.Dataset:
    """Every good event, grouped by user (all of a user's events in one block), de-duplicated,
    split and with its history: materialized in the object store. ``carried``: an append's
    tails (``raylrec.data.tails.carried_rows``), shuffled with the events as their history.
    ``history_items``: a bound on the history items of all rows (``history_items_bound``;
    default: every history full), which sizes the shuffle's partitions."""
    rows += carried_rows
    if history_items is None:  # every row's history full: an upper bound
        history_items = rows * config.history.max_len
    partitions = shuffle_partitions(rows, history_items)
    say(
        f"shuffling by user into {partitions} partition(s) of ~{rows // partitions:,} rows through "
        f"{SHUFFLE_DIR}/; splitting ({config.split.protocol}) and building histories"
    )
    staging = storage.join(config.output, SHUFFLE_DIR, new_write_id())
    dense = checked.map_batches(_to_dense, batch_format="pyarrow", fn_kwargs={"vocab_refs": vocab_refs})
    if carried is not None:
        dense = dense.union(carried)
    per_user_kwargs = {
        "split_config": config.split,
        "cutoffs": cutoffs,
        "end": end,
        "max_len": config.history.max_len,
    }
    events, staged = shuffle_by_key(dense, "uid", partitions, staging, _per_user, per_user_kwargs)
    if staged != rows:
        raise PipelineError(
            f"the shuffle staged {staged:,} rows, expected {rows:,} (valid rows and carried tails)"
        )
    events = events.materialize()
    fs, path = storage.filesystem(config.output)
    fs.rm(storage.join(path, SHUFFLE_DIR), recursive=True)  # the object store holds the events now
    return events


def write_parts(
    events: ray.data.Dataset, out: str, write_id: str, day_cut: int | None, say: Progress
) -> dict[tuple[str, int], dict[str, Any]]:
    """Parquet per split, and per UTC day from ``day_cut`` on (``days/<YYYY-MM-DD>/``); returns
    the rows, positives, content hash and files of each (split, day) part (``BULK``: the rows of
    the split written to ``<split>/``, whose files are listed by name; a day's by path)."""
    summary = (
        pa.concat_tables(
            list(
                events.map_batches(
                    _summarise, batch_format="pyarrow", batch_size=None, fn_kwargs={"day_cut": day_cut}
                ).iter_batches(batch_format="pyarrow", batch_size=None)
            )
        )
        .group_by(["split", "day"], use_threads=False)
        .aggregate([("rows", "sum"), ("positives", "sum"), ("hash", "list")])
    )
    parts: dict[tuple[str, int], dict[str, Any]] = {}
    for row in sorted(summary.to_pylist(), key=lambda r: (SPLIT_NAMES.index(r["split"]), r["day"])):
        split, day = row["split"], int(row["day"])
        with np.errstate(over="ignore"):
            digest = f"{int(np.sum(np.array(row['hash_list'], np.uint64), dtype=np.uint64)):016x}"
        where = split if day == BULK else f"days/{day_name(day)}"
        say(f"writing {split}{'' if day == BULK else ' ' + day_name(day)}: {row['rows_sum']:,} rows")
        rows = events.map_batches(
            _one_split, batch_format="pyarrow", fn_kwargs={"split": split, "day": day, "day_cut": day_cut}
        )
        names = write_dataset(rows, out, where, write_id, min_rows_per_file=100_000)
        parts[split, day] = {
            "rows": row["rows_sum"],
            "positives": row["positives_sum"],
            "hash": digest,
            "files": names if day == BULK else [f"{where}/{name}" for name in names],
        }
    return parts


def dataset_counts(
    rows_in: int,
    rows_out: int,
    rows_quarantined: int,
    reasons: dict[str, int],
    splits: dict[str, dict[str, Any]],
    users: Vocabulary,
    items: Vocabulary,
) -> dict[str, Any]:
    """``meta.json``'s counts: rows in, out and quarantined (with the count per reason), each
    split's rows and positives, and the users and items."""
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_quarantined,
        "quarantine_reasons": reasons,
        "splits": {s: v["rows"] for s, v in splits.items()},
        "positives": {s: v["positives"] for s, v in splits.items()},
        "users": len(users),
        "items": len(items),
        "num_users": users.size,  # embedding-table sizes, padding row 0 included
        "num_items": items.size,
    }


def write_tails(
    events: ray.data.Dataset, out: str, write_id: str, max_len: int, kept: ray.data.Dataset | None = None
) -> list[str]:
    """Each user's tail (``raylrec.data.tails``) under ``tails/``, and the tails of ``kept``
    (users an append did not touch) as they were; returns the files' paths."""
    tails = events.map_batches(
        user_tails, batch_format="pyarrow", batch_size=None, fn_kwargs={"max_len": max_len}
    )
    if kept is not None:
        tails = tails.union(kept)
    return [f"tails/{name}" for name in write_dataset(tails, out, "tails", write_id)]


def write_quarantine(
    checked: ray.data.Dataset,
    events: ray.data.Dataset,
    vocab_refs,
    files: list[str],
    out: str,
    write_id: str,
    say: Progress,
) -> tuple[int, dict[str, int], list[str]]:
    quarantine = (
        checked.map_batches(_bad, batch_format="pyarrow")
        .union(events.map_batches(_dropped, batch_format="pyarrow", fn_kwargs={"vocab_refs": vocab_refs}))
        .map_batches(_name_files, batch_format="pyarrow", fn_kwargs={"files": files})
        .materialize()
    )
    rows = quarantine.count()
    if not rows:
        return 0, {}, []
    reasons = _sum_counts(id_counts(quarantine, [REASON])[REASON])
    say(f"quarantined {rows:,} rows: {reasons}")
    return rows, reasons, write_dataset(quarantine, out, "quarantine", write_id)
