"""Raw ids (strings) <-> dense ids 1..n, 0 being padding and the answer for an unknown raw id.

One class for both ends: ``prepare`` builds a dataset's vocabularies from id counts and writes
them (``users.parquet``, ``items.parquet``); CF bundles and scoring read them back from those
tables. Scoring meets every bundle at the raw ids: a CF bundle refreshed on newer logs, the
reranker and the interaction data may each number users and items differently.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Vocabulary"]


def _sort_key(ids: pa.Array) -> np.ndarray:
    """Numeric order when every id is an integer ("2" < "10"), text order otherwise."""
    if len(ids) and pc.all(pc.match_substring_regex(ids, r"^-?\d{1,18}$")).as_py():
        return np.argsort(pc.cast(ids, pa.int64()).to_numpy(), kind="stable")
    return pc.sort_indices(ids).to_numpy()


def _strings(values) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(pa.string())
    return pa.array(np.asarray(values, dtype=object).astype(str), pa.string())


class Vocabulary:
    """The pairs (``raw_ids[i]``, ``dense_ids[i]``), kept in dense-id order."""

    def __init__(self, raw_ids: pa.Array | pa.ChunkedArray | np.ndarray, dense_ids: np.ndarray):
        raw = _strings(raw_ids)
        dense = np.asarray(dense_ids, np.int64)
        if len(dense) > 1 and not (np.diff(dense) > 0).all():
            order = np.argsort(dense, kind="stable")
            raw, dense = raw.take(pa.array(order)), dense[order]
        self.ids = raw  # raw ids in dense-id order (of dense ids 1..n when built by from_counts)
        self._dense = dense

    @classmethod
    def from_counts(cls, counts: pa.Table) -> Vocabulary:
        """Dense ids 1..n over the ``id`` column of ``data.indexing.id_counts``'s table, in
        numeric order when every id is an integer, text order otherwise."""
        raw = _strings(counts["id"])
        raw = raw.take(pa.array(_sort_key(raw)))
        return cls(raw, np.arange(1, len(raw) + 1, dtype=np.int64))

    def extended(self, raw_ids: pa.Array | pa.ChunkedArray) -> tuple[Vocabulary, pa.Array]:
        """This vocabulary with the ids of ``raw_ids`` it lacks appended (the next dense ids, in
        the order ``from_counts`` would give them), and those new raw ids: every id it had keeps
        its dense id (an appended dataset version)."""
        raw = _strings(raw_ids)
        new = raw.filter(pc.invert(pc.is_in(raw, value_set=self.ids)))
        new = pc.unique(new)
        new = new.take(pa.array(_sort_key(new)))
        start = int(self._dense[-1]) + 1 if len(self._dense) else 1
        dense = np.r_[self._dense, np.arange(start, start + len(new), dtype=np.int64)]
        return Vocabulary(pa.concat_arrays([self.ids, new]), dense), new

    @classmethod
    def from_table(cls, table: pa.Table, raw_column: str, dense_column: str) -> Vocabulary:
        """A vocabulary as ``to_table`` wrote it (a dataset's or a bundle's users/items table)."""
        return cls(table[raw_column], table[dense_column].to_numpy(zero_copy_only=False))

    def __len__(self) -> int:
        return len(self._dense)

    @property
    def size(self) -> int:
        """Embedding-table size: the largest dense id plus one (padding row 0 included)."""
        return int(self._dense[-1]) + 1 if len(self._dense) else 1

    def to_table(self, raw_name: str, dense_name: str) -> pa.Table:
        return pa.table({raw_name: self.ids, dense_name: pa.array(self._dense, pa.int64())})

    @cached_property
    def raw(self) -> np.ndarray:
        """``raw[dense]``: the raw id of each dense id (None at 0 and at unused dense ids)."""
        out = np.empty(self.size, dtype=object)
        out[self._dense] = self.ids.to_numpy(zero_copy_only=False)
        return out

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.ids.to_numpy(zero_copy_only=False))

    def lookup(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Dense ids of Arrow string ids (computed in Arrow); 0 for ids the vocabulary lacks."""
        if not len(self):
            return np.zeros(len(ids), np.int64)
        position = pc.index_in(ids, value_set=self.ids).fill_null(-1)
        position = position.to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(position >= 0, self._dense[position], 0)

    def dense_map(self, other: Vocabulary) -> np.ndarray:
        """``map[dense]``: the dense id in ``other`` of each of this vocabulary's dense ids (0 where
        ``other`` lacks the raw id, and at 0): a whole list of ids moves between two numberings
        in one numpy take, never through raw ids."""
        out = np.zeros(self.size, np.int64)
        out[self._dense] = other.lookup(self.ids)
        return out

    def to_dense(self, raw: np.ndarray | list) -> np.ndarray:
        """Dense ids of raw ids given as numpy or a list (each compared as a string); 0 where one
        is unknown."""
        if not len(self):
            return np.zeros(len(raw), np.int64)
        position = self._index.get_indexer(np.asarray(raw, dtype=object).astype(str))
        return np.where(position >= 0, self._dense[position], 0)

    def to_raw(self, dense: np.ndarray) -> np.ndarray:
        return self.raw[np.asarray(dense, np.int64)]
