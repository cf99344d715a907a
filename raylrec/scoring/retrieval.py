"""Candidate retrieval: each user's top-N items from a CF bundle.

Exact search is a matmul of a user chunk against the item table, one item chunk at a time,
keeping a running top-N, so memory is ``users x item_chunk`` for any catalogue size. Items a
user has seen are masked before the top-k (and item 0, the padding id, always). For catalogues
too large for exact search, ``FaissIndex`` searches an HNSW graph (faiss-cpu) and drops seen
items from an over-fetched list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raylrec.eval.topk import running_top_k

__all__ = ["exact_top_n", "FaissIndex"]


@torch.no_grad()
def exact_top_n(
    user_vectors: torch.Tensor,
    items: torch.Tensor,
    n: int,
    exclude: Sequence[np.ndarray] | None = None,
    item_chunk: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """``[users, dim]`` against ``[num_items, dim]`` (row 0 = padding) -> (scores, item ids),
    both ``[users, n]``, best first. Where fewer than ``n`` items remain, the tail has id 0
    and score -inf."""
    users = len(user_vectors)
    if len(items) == 0:  # nothing to rank: every slot is the empty tail
        return np.full((users, n), -np.inf, np.float32), np.zeros((users, n), np.int64)
    best_scores, best_ids = running_top_k(
        lambda start, stop: user_vectors @ items[start:stop].T,
        users,
        len(items),
        n,
        exclude,
        item_chunk,
    )
    return best_scores.cpu().numpy(), best_ids.cpu().numpy()


class FaissIndex:
    """Approximate inner-product search over the item table (``pip install raylrec[faiss]``)."""

    def __init__(self, items: torch.Tensor, neighbours: int = 32, ef_search: int = 256):
        try:
            import faiss
        except ImportError as e:
            raise ImportError("score.index: faiss needs faiss-cpu (pip install 'raylrec[faiss]')") from e
        table = items.detach().float().numpy()
        self.index = faiss.IndexHNSWFlat(table.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efSearch = ef_search
        self.index.add(np.ascontiguousarray(table[1:]))  # row 0 is padding: ids shift by one

    def top_n(
        self, user_vectors: torch.Tensor, n: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        users = len(user_vectors)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(n + extra, self.index.ntotal)
        scores, ids = self.index.search(np.ascontiguousarray(user_vectors.float().numpy()), fetch)
        ids = ids + 1
        out_scores = np.full((users, n), -np.inf, np.float32)
        out_ids = np.zeros((users, n), np.int64)
        for row in range(users):
            keep = ids[row] > 0
            if exclude is not None and len(exclude[row]):
                keep &= ~np.isin(ids[row], exclude[row])
            found = ids[row][keep][:n]
            out_ids[row, : len(found)] = found
            out_scores[row, : len(found)] = scores[row][keep][:n]
        return out_scores, out_ids
