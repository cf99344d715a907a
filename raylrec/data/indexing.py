"""Distinct-ID counting on Ray Data (the counts ``data.vocab.Vocabulary.from_counts`` numbers)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray

__all__ = ["id_counts"]

_COMPACT_EVERY = 32


def _block_counts(batch: pa.Table, columns: list[str]) -> pa.Table:
    parts = []
    for column in columns:
        counts = batch.group_by(column).aggregate([([], "count_all")])
        parts.append(
            pa.table(
                {
                    "column": pa.array([column] * counts.num_rows, pa.string()),
                    "id": counts[column].cast(pa.string()),
                    "count": counts["count_all"].cast(pa.int64()),
                }
            )
        )
    return pa.concat_tables(parts)


def id_counts(ds: ray.data.Dataset, columns: list[str]) -> dict[str, pa.Table]:
    """Events per distinct value of each of ``columns``, in one pass: counted per block by Ray,
    merged on the driver, which holds one row per distinct id (never the events themselves)."""
    partial = ds.map_batches(
        _block_counts, batch_format="pyarrow", batch_size=None, fn_kwargs={"columns": columns}
    )
    merged: list[pa.Table] = []
    for batch in partial.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2):
        merged.append(batch)
        if len(merged) >= _COMPACT_EVERY:
            merged = [_merge(merged)]
    table = _merge(merged) if merged else None
    out = {}
    for column in columns:
        if table is None:
            out[column] = pa.table({"id": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        else:
            out[column] = table.filter(pc.equal(table["column"], column)).select(["id", "count"])
    return out


def _merge(tables: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(tables)
    return (
        # Single-threaded: Acero's threaded group-by can fail on the driver, which Ray's own
        # threads share ("thread index N is out of range"), and this table is small.
        table.group_by(["column", "id"], use_threads=False)
        .aggregate([("count", "sum")])
        .rename_columns(["column", "id", "count"])
    )
