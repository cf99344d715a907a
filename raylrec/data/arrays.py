"""Numpy arrays from a processed dataset's Arrow columns, shared by the CF encoders' and the LLM
methods' sample builders (``cf.data``, ``llm.samples``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["list_rows", "pad_histories"]


def pad_histories(history: pa.ListArray | pa.ChunkedArray, length: int) -> np.ndarray:
    """``[rows, length]`` int64, the newest item last, left-padded with 0 (vectorised)."""
    if isinstance(history, pa.ChunkedArray):
        history = history.combine_chunks()
    n = len(history)
    out = np.zeros((n, length), np.int64)
    if n == 0:
        return out
    offsets = history.offsets.to_numpy().astype(np.int64)
    values = history.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = np.diff(offsets)
    kept = np.minimum(sizes, length)
    # For each row, its last `kept` values go to the last `kept` columns.
    rows = np.repeat(np.arange(n), kept)
    within = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    source = np.repeat(offsets[1:] - offsets[0] - kept, kept) + within
    out[rows, length - kept[rows] + within] = values[source]
    return out


def list_rows(column: pa.ListArray | pa.ChunkedArray, mapping: np.ndarray | None = None) -> list[np.ndarray]:
    """The rows of a list<int> column as int64 arrays, without a Python object per value: views
    of the column's values, or of ``mapping[values]`` (one take for every row)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if mapping is not None:
        values = mapping[values]
    offsets = offsets - offsets[0]
    return [values[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
