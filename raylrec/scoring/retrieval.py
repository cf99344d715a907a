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

__all__ = ["exact_top_n", "FaissIndex"]


def _exclusion_pairs(exclude: Sequence[np.ndarray] | None, users: int) -> tuple[np.ndarray, np.ndarray]:
    if exclude is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sizes = np.fromiter((len(e) for e in exclude), np.int64, users)
    rows = np.repeat(np.arange(users), sizes)
    cols = (
        np.concatenate([np.asarray(e, np.int64) for e in exclude]) if sizes.sum() else np.zeros(0, np.int64)
    )
    return rows, cols


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
    users, device = len(user_vectors), user_vectors.device
    rows, cols = _exclusion_pairs(exclude, users)
    best_scores = torch.full((users, n), -torch.inf, device=device)
    best_ids = torch.zeros((users, n), dtype=torch.long, device=device)
    for start in range(0, len(items), item_chunk):
        stop = min(start + item_chunk, len(items))
        scores = (user_vectors @ items[start:stop].T).float()
        if start == 0:
            scores[:, 0] = -torch.inf
        inside = (cols >= start) & (cols < stop)
        masked = (
            torch.from_numpy(rows[inside]).to(device),
            torch.from_numpy(cols[inside] - start).to(device),
        )
        scores[masked] = -torch.inf
        top = scores.topk(min(n, stop - start), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)
        merged_ids = torch.cat([best_ids, top.indices + start], dim=1)
        keep = merged_scores.topk(n, dim=1).indices
        best_scores = merged_scores.gather(1, keep)
        best_ids = merged_ids.gather(1, keep)
    best_ids[torch.isinf(best_scores)] = 0
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
