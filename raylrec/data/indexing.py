"""Distinct-ID counting on Ray Data and dense vocabularies (0 reserved for padding)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

__all__ = ["id_counts", "Vocabulary"]

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


def _sort_key(ids: pa.Array) -> np.ndarray:
    """Numeric order when every id is an integer ("2" < "10"), text order otherwise."""
    if len(ids) and pc.all(pc.match_substring_regex(ids, r"^-?\d{1,18}$")).as_py():
        return np.argsort(pc.cast(ids, pa.int64()).to_numpy(), kind="stable")
    return pc.sort_indices(ids).to_numpy()


class Vocabulary:
    """Raw id (string) <-> dense index 1..n; index 0 is padding."""

    def __init__(self, raw_ids: pa.Array):
        raw_ids = raw_ids.cast(pa.string())
        self.raw = raw_ids.take(pa.array(_sort_key(raw_ids)))

    @classmethod
    def from_counts(cls, counts: pa.Table) -> Vocabulary:
        return cls(counts["id"].combine_chunks())

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def size(self) -> int:
        """Embedding-table size: the ids plus padding row 0."""
        return len(self.raw) + 1

    def lookup(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Dense indices; 0 for ids the vocabulary does not hold."""
        index = pc.index_in(ids, value_set=self.raw)
        return pc.add(index, 1).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)

    def to_table(self, raw_name: str, dense_name: str) -> pa.Table:
        return pa.table(
            {raw_name: self.raw, dense_name: pa.array(np.arange(1, len(self.raw) + 1), pa.int64())}
        )
