"""``raylrec data prepare --append``: the next version of a ``rolling_days`` dataset, made from
the source's new rows only.

A nightly job's log grows by a day at a time; re-preparing all of it every night costs the whole
history. An append reads only what ``data.source`` names (the new date partitions), and:

- validates and quarantines its rows as a full preparation does, and quarantines a **late event**
  (a timestamp at or before the dataset's last committed event, its *watermark*): it would
  change histories and splits already committed;
- keeps every user's and item's dense id, and gives new ones the next ids (in the order a full
  preparation would sort them among themselves);
- continues each user's point-in-time histories from the **tails** the previous version wrote
  (``raylrec.data.tails``): the new rows' histories are exactly those a full preparation of the
  whole log computes;
- writes the new rows as day files (``days/<YYYY-MM-DD>/``) and moves the split forward by
  listing the days under their new splits (``raylrec.data.days``), copying nothing;
- commits a new ``meta.json`` (version n+1) that lists the previous version's files plus the new
  ones, after saving the previous one as ``versions/<n>.json``. Until that write, readers see
  version n whole; a crash leaves unlisted files that no reader opens and the rerun ignores.

What differs from a full preparation of the same log: dense ids of users and items that first
appear in an appended day follow every earlier id (a full run sorts all ids together), so
content hashes differ while rows, histories and splits agree once mapped to raw ids
(``tests/test_append.py``); and the quarantine keeps late events a full run would have placed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylrec import storage
from raylrec.artifacts import ArtifactDir
from raylrec.config import DataConfig
from raylrec.data.days import add_hash, assemble, day_name
from raylrec.data.files import SourceError
from raylrec.data.indexing import id_counts
from raylrec.data.output import (
    DATASET,
    commit,
    input_paths,
    new_write_id,
    read_table,
    refuse_overlap,
)
from raylrec.data.pipeline import (
    OUTPUT_COLUMNS,
    PipelineError,
    dataset_counts,
    events_by_user,
    keep_valid,
    split_bounds,
    validated,
    with_metadata,
    write_parts,
    write_quarantine,
    write_tails,
)
from raylrec.data.tails import carried_rows, of_users
from raylrec.data.validate import REASON
from raylrec.data.vocab import Vocabulary

__all__ = ["AppendError", "append", "check_appendable"]

Progress = Callable[[str], None]
# What must be equal between the committed dataset and the append's config: the rows of the two
# would otherwise not be one dataset.
_SAME = ("split", "label", "history", "validation")


class AppendError(ValueError):
    """The dataset cannot take an append of this config (named, with the difference)."""


def check_appendable(config: DataConfig) -> dict[str, Any]:
    """The committed ``meta.json`` of ``config.output``, checked to take this append; reads only
    (the CLI calls it before Ray starts)."""
    refuse_overlap(config.output, input_paths(config.source))
    storage.check_reachable(config.output)
    meta = ArtifactDir(config.output, DATASET).read()
    if "watermark" not in meta:
        raise AppendError(
            f"{config.output} was prepared with split.protocol {meta['protocol']['split']['protocol']!r}: "
            "only a rolling_days dataset takes appends (prepare it once with that split)"
        )
    for key in _SAME:
        committed = meta["protocol"][key]
        asked = getattr(config, key).model_dump(mode="json")
        if committed != asked:
            raise AppendError(
                f"{config.output}: data.{key} is {asked}, the committed dataset was prepared with "
                f"{committed}; an append must use the same"
            )
    return meta


def _mark_late(batch: pa.Table, watermark: int) -> pa.Table:
    """A valid row at or before the watermark gets the late-event reason."""
    late = pc.and_(pc.is_null(batch[REASON]), pc.less_equal(batch["timestamp"], watermark))
    if not pc.any(late).as_py():
        return batch
    reason = f"late event: at or before the dataset's last committed event ({_iso(watermark)})"
    reasons = pc.if_else(late, pa.scalar(reason), batch[REASON])
    return batch.set_column(batch.schema.get_field_index(REASON), REASON, reasons)


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _merge_days(previous: dict[str, dict], new: dict[str, dict]) -> dict[str, dict]:
    """Day records of both versions; a day in both (rows after the watermark on its own day)
    is one record whose files and sums are both parts'."""
    days = {name: dict(record) for name, record in previous.items()}
    for name, record in new.items():
        if name not in days:
            days[name] = record
            continue
        old = days[name]
        days[name] = {
            "rows": old["rows"] + record["rows"],
            "positives": old["positives"] + record["positives"],
            "hash": add_hash(old["hash"], record["hash"]),
            "files": old["files"] + record["files"],
        }
    return days


@dataclass
class _Ids:
    """One id table of an append: the committed table, its vocabulary extended by the ids the
    new rows bring, and those new raw ids."""

    committed: pa.Table
    vocab: Vocabulary
    new: pa.Array

    @classmethod
    def extended(cls, out: str, name: str, raw: str, dense: str, seen: pa.ChunkedArray) -> _Ids:
        committed = read_table(out, name)
        vocab, new = Vocabulary.from_table(committed, raw, dense).extended(seen)
        return cls(committed, vocab, new)

    def table(self, raw: str, dense: str, metadata: pa.Table | None) -> pa.Table:
        """The committed table with a row per new id, with its metadata when the source has it
        (an item's title, say; null otherwise)."""
        if not len(self.new):
            return self.committed
        added = with_metadata(Vocabulary(self.new, self.vocab.to_dense(self.new)), raw, dense, metadata)
        return pa.concat_tables([self.committed, added], promote_options="permissive")


def _carried_tails(
    out: str, tails: list[str], users: Vocabulary, seen: pa.ChunkedArray
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(carried, kept): the tails of the users the new rows touch, as carried rows for the
    shuffle (materialized), and the other users' tails, to be written again as they are. Only
    the touched users' tails go through the shuffle, so it moves the day, not the user base."""
    touched = ray.put(np.unique(users.to_dense(seen.to_numpy(zero_copy_only=False))))
    fs, root = storage.arrow_filesystem(out)
    read = ray.data.read_parquet([storage.join(root, p) for p in tails], filesystem=fs)
    carried = read.map_batches(
        of_users, batch_format="pyarrow", fn_kwargs={"users_ref": touched, "keep": True}
    ).map_batches(carried_rows, batch_format="pyarrow")
    kept = read.map_batches(of_users, batch_format="pyarrow", fn_kwargs={"users_ref": touched, "keep": False})
    return carried.materialize(), kept


def _counts(
    before: dict[str, Any],
    added: dict[str, Any],
    reasons: dict[str, int],
    splits: dict[str, dict[str, Any]],
    users: Vocabulary,
    items: Vocabulary,
) -> dict[str, Any]:
    """The dataset's counts after the append: the committed ones plus the appended rows'."""
    all_reasons = dict(before.get("quarantine_reasons", {}))
    for reason, n in reasons.items():
        all_reasons[reason] = all_reasons.get(reason, 0) + n
    rows_in, rows_out, rows_quarantined = (
        before[key] + added[key] for key in ("rows_in", "rows_out", "rows_quarantined")
    )
    return dataset_counts(rows_in, rows_out, rows_quarantined, all_reasons, splits, users, items)


def append(config: DataConfig, say: Progress) -> dict[str, Any]:
    """Append the source's rows to the dataset at ``config.output``; returns the new meta."""
    started = time.perf_counter()
    out = config.output
    # the committed version's token first: if another append commits after it, this one's
    # commit fails (CommitConflict) instead of replacing that version and losing its rows
    replaces = ArtifactDir(out, DATASET).version()
    previous = check_appendable(config)
    version = previous["version"] + 1
    watermark = int(previous["watermark"])
    say(
        f"appending to {out} (version {previous['version']}, last event {_iso(watermark)}) "
        f"as version {version}"
    )
    source = config.source.load(config.validation)
    checked, rows_in = validated(config, source, say)
    checked = checked.map_batches(_mark_late, batch_format="pyarrow", fn_kwargs={"watermark": watermark})
    checked = checked.materialize()

    good = checked.map_batches(keep_valid, batch_format="pyarrow")
    counts = id_counts(good, ["user_id", "item_id"])
    good_rows = int(pc.sum(counts["user_id"]["count"]).as_py() or 0)
    if good_rows == 0:
        raise SourceError(
            f"{config.source.type}: no valid rows after {_iso(watermark)} to append (nothing was written)"
        )
    users = _Ids.extended(out, "users.parquet", "user_id", "uid", counts["user_id"]["id"])
    items = _Ids.extended(out, "items.parquet", "item_id", "iid", counts["item_id"]["id"])
    say(f"{good_rows:,} new valid rows; {len(users.new):,} new users, {len(items.new):,} new items")

    last = max(watermark, int(good.max("timestamp")))
    cutoffs, _ = split_bounds(config, good, good_rows, say, last)
    carried, kept = _carried_tails(out, previous["tails"], users.vocab, counts["user_id"]["id"])
    vocab_refs = (ray.put(users.vocab.ids), ray.put(items.vocab.ids))
    events = events_by_user(
        config,
        checked,
        vocab_refs,
        good_rows,
        cutoffs,
        None,
        say,
        carried=carried,
        carried_rows=carried.count(),
    )
    write_id = new_write_id()
    parts = write_parts(events, out, write_id, 0, say)  # day 0 on: every appended row is in a day file
    days = _merge_days(previous["days"], {day_name(day): record for (_, day), record in parts.items()})
    splits = assemble(previous["bulk"], days, cutoffs)
    new_tails = write_tails(events, out, write_id, config.history.max_len, kept=kept)
    rows_quarantined, reasons, quarantine_files = write_quarantine(
        checked, events, vocab_refs, source.files, out, write_id, say
    )
    rows_out = sum(record["rows"] for record in parts.values())
    if rows_in != rows_out + rows_quarantined:
        raise PipelineError(f"rows in {rows_in} != rows out {rows_out} + quarantined {rows_quarantined}")

    appended = {
        "version": version,
        "write_id": write_id,
        "source": source.description,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_quarantined": rows_quarantined,
        "days": sorted({day_name(day) for (_, day) in parts}),
    }
    # the previous version, kept for lineage, before the commit replaces it
    storage.write_json(storage.join(out, "versions", f"{previous['version']:06d}.json"), previous)
    meta = commit(
        out,
        protocol={**previous["protocol"], "temporal_cutoffs": list(cutoffs)},
        counts=_counts(previous["counts"], appended, reasons, splits, users.vocab, items.vocab),
        split_hashes={s: v["hash"] for s, v in splits.items()},
        users=users.table("user_id", "uid", source.users),
        items=items.table("item_id", "iid", source.items),
        source=previous["source"],
        columns=OUTPUT_COLUMNS,
        files={s: v["files"] for s, v in splits.items()}
        | {"quarantine": previous["files"].get("quarantine", []) + quarantine_files},
        started=started,
        extra={
            "version": version,
            "watermark": last,
            "bulk": previous["bulk"],
            "days": days,
            "tails": new_tails,
            "appended": [*previous.get("appended", []), appended],
        },
        tables={
            "users.parquet": f"tables/{write_id}-users.parquet",
            "items.parquet": f"tables/{write_id}-items.parquet",
        },
        replaces=replaces,
    )
    _remove(out, [p for p in previous["tails"] if p not in new_tails])  # O(users x max_len) each: not kept
    say(
        f"committed version {version} of {out}: +{rows_out:,} rows, {rows_quarantined:,} quarantined "
        f"(content hash {meta['content_hash'][:16]}…) in {meta['elapsed_s']} s"
    )
    return meta


def _remove(out: str, paths: list[str]) -> None:
    fs, root = storage.filesystem(out)
    for path in paths:
        target = storage.join(root, path)
        if fs.exists(target):
            fs.rm(target)
