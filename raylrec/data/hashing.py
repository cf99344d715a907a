"""Order-independent content hashing of processed rows.

Ray writes blocks in no fixed order and with random file names, so the dataset's hash is the
sum (mod 2**64) of per-row hashes: the same rows give the same hash however they are laid out.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

__all__ = ["ROWS_PER_SLICE", "splitmix64", "row_hashes", "table_digest", "json_digest", "arrow_digest"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixer (Steele et al.), vectorised; wraps around by design."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _column_words(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_floating(arr.type):
        values = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        return values.view(np.uint64)
    if pa.types.is_string(arr.type) or pa.types.is_dictionary(arr.type):
        text = arr.cast(pa.string()).fill_null("\x00").to_pylist()
        return np.array(
            [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in text],
            dtype=np.uint64,
        )
    values = arr.fill_null(0).to_numpy(zero_copy_only=False)
    return values.astype(np.int64, copy=False).view(np.uint64)


def _list_words(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    offsets = arr.offsets.to_numpy().astype(np.int64)
    flat = arr.flatten()
    if pa.types.is_integer(flat.type) and flat.null_count == 0:
        values = flat.to_numpy().astype(np.uint64)  # the common case: item ids
    else:
        values = _column_words(flat)
    lengths = np.diff(offsets)
    position = np.arange(len(values), dtype=np.uint64)
    position -= np.repeat((offsets[:-1] - offsets[0]).astype(np.uint64), lengths)
    # Elements are many, rows few: a cheap position-aware word per element, the strong mixer
    # once per row after summing.
    with np.errstate(over="ignore"):
        words = (values * _M1) ^ (position * _M2 + _GOLDEN)
    # Per-row sum; rows with empty lists get 0, then the length is folded in.
    csum = np.concatenate([np.zeros(1, np.uint64), np.cumsum(words, dtype=np.uint64)])
    rel = offsets - offsets[0]
    with np.errstate(over="ignore"):
        sums = csum[rel[1:]] - csum[rel[:-1]]
    return splitmix64(sums ^ lengths.astype(np.uint64)) if n else np.zeros(0, np.uint64)


ROWS_PER_SLICE = 1 << 15  # rows hashed per step: a list column's temporaries cost ~56 bytes per element


def row_hashes(table: pa.Table, rows_per_slice: int = ROWS_PER_SLICE) -> np.ndarray:
    """A 64-bit hash per row over all columns (column order fixed by name), computed a slice of
    rows at a time so that the temporaries stay bounded however large the table."""
    hashes = np.empty(table.num_rows, np.uint64)
    for start in range(0, table.num_rows, rows_per_slice):
        hashes[start : start + rows_per_slice] = _slice_hashes(table.slice(start, rows_per_slice))
    return hashes


def _slice_hashes(table: pa.Table) -> np.ndarray:
    h = np.full(table.num_rows, np.uint64(len(table.schema)), dtype=np.uint64)
    for name in sorted(table.schema.names):
        column = table[name]
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            words = _list_words(column)
        else:
            words = _column_words(column)
        seed = np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))
        h = splitmix64(h ^ splitmix64(words ^ seed))
    return h


def table_digest(table: pa.Table) -> str:
    """Hex digest of a table's rows, independent of row order."""
    total = np.uint64(0)
    with np.errstate(over="ignore"):
        total = np.sum(row_hashes(table), dtype=np.uint64) if table.num_rows else total
    return f"{int(total):016x}-{table.num_rows}"


def json_digest(obj: object) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def arrow_digest(table: pa.Table) -> str:
    """sha256 of a (small, ordered) table's Arrow IPC bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
