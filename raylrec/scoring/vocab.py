"""Raw ids <-> a bundle's dense ids. Scoring meets every bundle at the raw ids: a CF bundle
refreshed on newer logs, the reranker and the interaction data may each number users and
items differently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["Vocabulary"]


class Vocabulary:
    """``raw[dense]`` for dense ids 1..n (0 is padding)."""

    def __init__(self, raw_ids: np.ndarray, dense_ids: np.ndarray):
        size = int(dense_ids.max()) + 1 if len(dense_ids) else 1
        self.raw = np.empty(size, dtype=object)
        self.raw[dense_ids] = raw_ids.astype(str)
        self._index = pd.Index(raw_ids.astype(str))
        self._dense = dense_ids.astype(np.int64)

    @classmethod
    def from_table(cls, table: pa.Table, raw_column: str, dense_column: str) -> Vocabulary:
        return cls(
            table[raw_column].to_numpy(zero_copy_only=False),
            table[dense_column].to_numpy(zero_copy_only=False),
        )

    def __len__(self) -> int:
        return len(self._dense)

    def to_dense(self, raw: np.ndarray | list) -> np.ndarray:
        """Dense ids, 0 where a raw id is unknown."""
        position = self._index.get_indexer(np.asarray(raw, dtype=object).astype(str))
        return np.where(position >= 0, self._dense[position], 0)

    def to_raw(self, dense: np.ndarray) -> np.ndarray:
        return self.raw[np.asarray(dense, np.int64)]
