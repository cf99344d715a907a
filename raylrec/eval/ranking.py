"""Full-ranking top-K metrics over the whole catalogue: Recall@K, NDCG@K, HitRate@K, MRR@K.

Scores come in user chunks (``[users, items]``, torch), so memory stays bounded for any number
of users. Items a user interacted with in training are masked before ranking, and so is the
padding item 0. Users without test items are skipped.

Recall's denominator differs between papers, so it is an explicit option that every report
names: ``"test_items"`` (|test items|, RecBole and LightGCN) or ``"min_k"``
(min(K, |test items|), which some LLM-recommender papers use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = ["ItemSets", "RankingAccumulator", "RecallDenominator", "topk_metric_sums"]

RecallDenominator = Literal["test_items", "min_k"]


def topk_metric_sums(
    hits: torch.Tensor,
    relevant: torch.Tensor,
    ks: tuple[int, ...],
    recall_denominator: RecallDenominator = "test_items",
) -> dict[str, float]:
    """Sums over users of ``recall@k``, ``ndcg@k``, ``hit@k`` and ``mrr@k`` for each k in ``ks``.

    The one place these metrics are computed: full ranking (``RankingAccumulator``) and the
    published lists (``raylrec.scoring.quality.list_metrics``) both reduce to it.
    ``hits[u, r]`` is 1 when the item ranked ``r + 1`` for user ``u`` is relevant, else 0;
    ranks past ``hits.shape[1]`` count as misses. ``relevant[u]`` (at least 1) is the number
    of ``u``'s relevant items. Gains are binary; the ideal DCG ranks ``min(k, relevant)`` hits
    first. Arithmetic is in ``hits``' dtype and on its device.
    """
    width = hits.shape[1]
    relevant = relevant.to(hits.dtype)
    discount = 1.0 / torch.log2(torch.arange(2, width + 2, device=hits.device, dtype=hits.dtype))
    first_hit = torch.where(hits.any(1), hits.argmax(1), torch.full_like(relevant, width, dtype=torch.long))
    sums: dict[str, float] = {}
    for k in ks:
        kk = min(k, width)
        hit_k = hits[:, :kk]
        found = hit_k.sum(1)
        at_most_k = torch.clamp(relevant, max=kk)
        denominator = relevant if recall_denominator == "test_items" else at_most_k
        ideal = torch.cumsum(discount[:kk], 0)[at_most_k.long() - 1]
        reciprocal = torch.where(
            first_hit < kk, 1.0 / (first_hit.to(hits.dtype) + 1.0), torch.zeros_like(relevant)
        )
        sums[f"recall@{k}"] = float((found / denominator).sum())
        sums[f"ndcg@{k}"] = float(((hit_k * discount[:kk]).sum(1) / ideal).sum())
        sums[f"hit@{k}"] = float((found > 0).to(hits.dtype).sum())
        sums[f"mrr@{k}"] = float(reciprocal.sum())
    return sums


@dataclass(frozen=True)
class ItemSets:
    """Each user's set of items, as CSR arrays (row u holds indices[indptr[u]:indptr[u+1]]).
    ``distinct``: every row is sorted and holds each item once (what ``nth_absent`` needs)."""

    indptr: np.ndarray
    indices: np.ndarray
    distinct: bool = False

    @classmethod
    def from_pairs(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        num_users: int,
        sort_items: bool = False,
        distinct: bool = False,
    ) -> ItemSets:
        """``sort_items``: each user's items ascending (what ``contains`` needs); otherwise in
        the order given (CLLM4Rec's documents keep a user's items in time order).
        ``distinct``: sorted, and a pair seen several times kept once."""
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        order = np.lexsort((items, users)) if sort_items or distinct else np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        if distinct and len(users):
            first = np.r_[True, (users[1:] != users[:-1]) | (items[1:] != items[:-1])]
            users, items = users[first], items[first]
        counts = np.bincount(users, minlength=num_users)
        return cls(np.r_[0, np.cumsum(counts)].astype(np.int64), items, distinct)

    @property
    def num_users(self) -> int:
        return len(self.indptr) - 1

    def sizes(self, start: int, stop: int) -> np.ndarray:
        return np.diff(self.indptr[start : stop + 1])

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each ``items[j]`` is among ``users[j]``'s items: a vectorised binary search
        inside each user's row, so rows must be sorted (``from_pairs(..., sort_items=True)`` or
        ``raylrec.data.item_sets``)."""
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        lo, end = self.indptr[users], self.indptr[users + 1]
        hi = end.copy()
        if not len(self.indices):
            return np.zeros(len(users), bool)
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            right = active & (self.indices[np.minimum(mid, len(self.indices) - 1)] < items)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        return (lo < end) & (self.indices[np.minimum(lo, len(self.indices) - 1)] == items)

    def sizes_of(self, users: np.ndarray) -> np.ndarray:
        return self.indptr[users + 1] - self.indptr[users]

    def nth_absent(self, users: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """For each j, the ``ranks[j]``-th (0-based) item id >= 1 that ``users[j]``'s row does not
        hold: exact sampling from a user's complement without rejection (draw a rank uniformly
        below the number of absent items). Rows must be ``distinct`` and hold ids >= 1 (0 is
        padding). In a row s_0 < s_1 < ..., ``s_i - 1 - i`` items are absent below s_i, a
        non-decreasing count; the answer is ``rank + 1 + #{i: s_i - 1 - i <= rank}``, found by
        one vectorised binary search per row (log2 of the row's length steps, whatever share of
        the catalogue the user has seen)."""
        if not self.distinct:
            raise ValueError("nth_absent needs distinct, sorted rows (ItemSets(..., distinct=True))")
        users = np.asarray(users, np.int64)
        ranks = np.asarray(ranks, np.int64)
        start = self.indptr[users]
        lo, hi = start.copy(), self.indptr[users + 1].copy()
        last = max(len(self.indices) - 1, 0)
        while len(self.indices):
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            at = self.indices[np.minimum(mid, last)].astype(np.int64)
            below = active & (at - (mid - start) <= ranks + 1)
            lo = np.where(below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        return ranks + 1 + (lo - start)

    def take(self, users: np.ndarray) -> ItemSets:
        """The rows of ``users``, in that order (repeats allowed), as a new ``ItemSets``."""
        users = np.asarray(users, np.int64)
        sizes = self.sizes_of(users)
        offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        starts = np.repeat(self.indptr[users] - offsets[:-1], sizes)
        indices = self.indices[starts + np.arange(offsets[-1])] if len(starts) else self.indices[:0]
        return ItemSets(offsets, indices, self.distinct)

    def dense_rows(
        self, users: np.ndarray, num_items: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """A boolean ``[len(users), num_items]`` membership matrix for the listed users."""
        rows_of_users = self.take(users)
        rows = np.repeat(np.arange(len(users)), np.diff(rows_of_users.indptr))
        cols = rows_of_users.indices
        mask = torch.zeros(len(users), num_items, dtype=torch.bool, device=device)
        mask[torch.as_tensor(rows, device=device), torch.as_tensor(cols, dtype=torch.long, device=device)] = (
            True
        )
        return mask


@dataclass
class RankingAccumulator:
    ks: tuple[int, ...] = (10, 20)
    recall_denominator: RecallDenominator = "test_items"
    _sums: dict[str, float] = field(default_factory=dict, repr=False)
    _users: int = 0

    def update(self, scores: torch.Tensor, first_user: int, train: ItemSets, test: ItemSets) -> None:
        """Scores of users ``first_user .. first_user + len(scores) - 1`` against every item."""
        self.update_users(scores, np.arange(first_user, first_user + len(scores)), train, test)

    def update_users(self, scores: torch.Tensor, users: np.ndarray, train: ItemSets, test: ItemSets) -> None:
        """Scores of the listed ``users`` (any ids, each with test items) against every item."""
        n_items = scores.shape[1]
        n_test = torch.as_tensor(test.sizes_of(users), device=scores.device)
        keep = n_test > 0
        if not keep.any():
            return
        scores = scores.float().clone()
        scores[train.dense_rows(users, n_items, scores.device)] = -torch.inf
        scores[:, 0] = -torch.inf  # padding
        k_max = min(max(self.ks), n_items - 1)
        top = torch.topk(scores[keep], k_max, dim=1).indices
        hits = torch.gather(test.dense_rows(users, n_items, scores.device)[keep], 1, top).float()
        for name, total in topk_metric_sums(
            hits, n_test[keep].float(), self.ks, self.recall_denominator
        ).items():
            self._add(name, total)
        self._users += int(keep.sum())

    def merge(self, sums: dict[str, float], users: int) -> None:
        """Add another accumulator's ``state()`` (a distributed evaluation's part)."""
        for name, total in sums.items():
            self._add(name, total)
        self._users += users

    def state(self) -> tuple[dict[str, float], int]:
        return dict(self._sums), self._users

    def _add(self, name: str, value: float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + float(value)

    def compute(self) -> dict[str, float]:
        if not self._users:
            raise ValueError("no user with test items was evaluated")
        out = {name: total / self._users for name, total in self._sums.items()}
        out["users"] = self._users
        return out

    def describe(self) -> str:
        rule = "|test items|" if self.recall_denominator == "test_items" else "min(K, |test items|)"
        return f"full ranking, training items masked, recall denominator {rule}"
