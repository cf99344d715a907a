"""Statistics of a prepared dataset, computed by streaming its splits through Ray."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylrec.data.output import read_meta, read_split
from raylrec.data.splits import SPLITS

__all__ = ["dataset_stats", "format_stats"]

_HISTORY_BINS = np.array([0, 1, 5, 10, 20, 50, 100, 200, np.iinfo(np.int64).max])


def _block_stats(batch: pa.Table) -> pa.Table:
    lengths = pc.list_value_length(batch["history"]).to_numpy(zero_copy_only=False)
    hist, _ = np.histogram(lengths, bins=_HISTORY_BINS)
    ts = batch["timestamp"]
    return pa.table(
        {
            "rows": [batch.num_rows],
            "positives": [int(pc.sum(batch["label"]).as_py() or 0)],
            "ts_min": [pc.min(ts).as_py()],
            "ts_max": [pc.max(ts).as_py()],
            "history_sum": [int(lengths.sum())],
            "history_hist": [hist.tolist()],
        }
    )


def dataset_stats(path: str) -> dict[str, Any]:
    """Per split: rows, positive rate, time range, history lengths; plus meta.json's counts."""
    meta = read_meta(path)
    splits: dict[str, Any] = {}
    for split in sorted(meta["counts"]["splits"], key=SPLITS.index):
        parts = pa.concat_tables(
            list(
                read_split(path, split)
                .map_batches(_block_stats, batch_format="pyarrow", batch_size=None)
                .iter_batches(batch_format="pyarrow", batch_size=None)
            )
        )
        rows = int(pc.sum(parts["rows"]).as_py())
        hist = np.sum(np.array(parts["history_hist"].to_pylist()), axis=0)
        splits[split] = {
            "rows": rows,
            "positive_rate": int(pc.sum(parts["positives"]).as_py()) / max(rows, 1),
            "first_timestamp": pc.min(parts["ts_min"]).as_py(),
            "last_timestamp": pc.max(parts["ts_max"]).as_py(),
            "mean_history": int(pc.sum(parts["history_sum"]).as_py()) / max(rows, 1),
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
