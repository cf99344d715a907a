"""Statistics of a prepared dataset, computed by streaming its splits through Ray."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylrec.data.output import read_meta, read_split
from raylrec.data.splits import SPLIT_NAMES

__all__ = ["dataset_stats", "format_stats"]

_HISTORY_BINS = np.array([0, 1, 5, 10, 20, 50, 100, 200, np.iinfo(np.int64).max])


_COLUMNS = ["timestamp", "label", "history"]


def _split_of(path: str, file_splits: dict[str, str]) -> str:
    """The split ``meta.json`` lists the file under (by its path relative to the dataset: a
    split folder's ``<split>/<name>``, or a day file's ``days/<date>/<name>``); a dataset
    written before the lists existed: its parent folder's name."""
    parts = path.split("/")
    for depth in (2, 3):
        found = file_splits.get("/".join(parts[-depth:]))
        if found:
            return found
    return parts[-2]


def _block_stats(batch: pa.Table, splits: list[str], file_splits: dict[str, str]) -> pa.Table:
    """One row per split present in the block (a read task may combine files of two splits)."""
    paths = batch["path"].combine_chunks()
    files = pc.unique(paths)
    named = pa.array([_split_of(p, file_splits) for p in files.to_pylist()], pa.string())
    split_of_row = named.take(pc.index_in(paths, value_set=files))
    lengths = pc.list_value_length(batch["history"]).to_numpy(zero_copy_only=False)
    rows = []
    for split in pc.unique(split_of_row).to_pylist():
        mask = pc.equal(split_of_row, split)
        part, part_lengths = batch.filter(mask), lengths[mask.to_numpy(zero_copy_only=False)]
        hist, _ = np.histogram(part_lengths, bins=_HISTORY_BINS)
        ts = part["timestamp"]
        rows.append(
            {
                "split": split,
                "rows": part.num_rows,
                "positives": int(pc.sum(part["label"]).as_py() or 0),
                "ts_min": pc.min(ts).as_py(),
                "ts_max": pc.max(ts).as_py(),
                "history_sum": int(part_lengths.sum()),
                "history_hist": hist.tolist(),
            }
        )
    unknown = {r["split"] for r in rows} - set(splits)
    if unknown:
        raise ValueError(f"files outside the splits {splits}: {sorted(unknown)}")
    return pa.Table.from_pylist(rows)


def dataset_stats(path: str) -> dict[str, Any]:
    """Per split: rows, positive rate, time range, history lengths; plus meta.json's counts.
    Every split is read in one Ray Data pass (one job start, not one per split)."""
    meta = read_meta(path)
    names = sorted(meta["counts"]["splits"], key=SPLIT_NAMES.index)
    file_splits = {
        (name if "/" in name else f"{split}/{name}"): split
        for split in names
        for name in meta.get("files", {}).get(split, [])
    }
    parts = pa.concat_tables(
        list(
            read_split(path, names, columns=_COLUMNS, include_paths=True)
            .map_batches(
                _block_stats,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"splits": names, "file_splits": file_splits},
            )
            .iter_batches(batch_format="pyarrow", batch_size=None)
        )
    )
    splits: dict[str, Any] = {}
    for split in names:
        part = parts.filter(pc.equal(parts["split"], split))
        rows = int(pc.sum(part["rows"]).as_py() or 0)
        hist = np.sum(np.array(part["history_hist"].to_pylist()).reshape(-1, len(_HISTORY_BINS) - 1), axis=0)
        splits[split] = {
            "rows": rows,
            "positive_rate": int(pc.sum(part["positives"]).as_py() or 0) / max(rows, 1),
            "first_timestamp": pc.min(part["ts_min"]).as_py(),
            "last_timestamp": pc.max(part["ts_max"]).as_py(),
            "mean_history": int(pc.sum(part["history_sum"]).as_py() or 0) / max(rows, 1),
            "history_lengths": dict(zip(_bin_labels(), hist.tolist(), strict=True)),
        }
    counts = meta["counts"]
    users, items = counts["users"], counts["items"]
    events = counts["rows_out"]
    return {
        "path": path,
        "source": meta["source"],
        "protocol": meta["protocol"]["split"],
        "content_hash": meta["content_hash"],
        "rows_in": counts["rows_in"],
        "rows_out": events,
        "rows_quarantined": counts["rows_quarantined"],
        "quarantine_reasons": counts["quarantine_reasons"],
        "users": users,
        "items": items,
        "density": events / max(users * items, 1),
        "events_per_user": events / max(users, 1),
        "events_per_item": events / max(items, 1),
        "splits": splits,
        # an appendable (rolling_days) dataset: which version, how many appends, its last event
        "version": {
            "version": meta["version"],
            "appends": len(meta.get("appended", [])),
            "watermark": meta["watermark"],
        }
        if "watermark" in meta
        else None,
    }


def _bin_labels() -> list[str]:
    edges = _HISTORY_BINS
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        labels.append(f"{lo}" if hi - lo == 1 else (f"{lo}+" if hi == edges[-1] else f"{lo}-{hi - 1}"))
    return labels


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"dataset   {stats['path']}",
        f"source    {stats['source'].get('type')}   split: {stats['protocol'].get('protocol')}",
        f"hash      {stats['content_hash']}",
        *(
            [
                f"version   {v['version']} ({v['appends']} append(s); last event "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(v['watermark']))})"
            ]
            if (v := stats.get("version"))
            else []
        ),
        f"rows      in {stats['rows_in']:,} = out {stats['rows_out']:,}"
        f" + quarantined {stats['rows_quarantined']:,}",
    ]
    for reason, n in sorted(stats["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"            {n:>9,}  {reason}")
    lines += [
        f"users     {stats['users']:,}   items {stats['items']:,}   density {stats['density']:.4%}",
        f"per user  {stats['events_per_user']:.1f} events   per item {stats['events_per_item']:.1f} events",
        "",
        f"{'split':<6} {'rows':>10} {'pos.rate':>9} {'mean hist':>10}  {'first ts':>11} {'last ts':>11}",
    ]
    for name, s in stats["splits"].items():
        lines.append(
            f"{name:<6} {s['rows']:>10,} {s['positive_rate']:>9.3f} {s['mean_history']:>10.1f}  "
            f"{s['first_timestamp']:>11} {s['last_timestamp']:>11}"
        )
    lines += ["", "history lengths (events per bin)"]
    for name, s in stats["splits"].items():
        lines.append(f"{name:<6} " + "  ".join(f"{k}:{v:,}" for k, v in s["history_lengths"].items()))
    return "\n".join(lines)
