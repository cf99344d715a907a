"""Pointwise (CTR) metrics: AUC, UAUC and LogLoss, vectorised with numpy.

UAUC is the per-user AUC averaged over users, as CoLLM and TALLRec report it; only users with
both classes in the evaluated slice have an AUC. ``weighting`` picks the average: ``"user"``
(each such user counts once; the papers' rule) or ``"impressions"`` (weighted by the user's
number of rows, sometimes called GAUC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["auc", "uauc", "log_loss", "CTRAccumulator"]

Weighting = Literal["user", "impressions"]


def _tie_averaged_ranks(sorted_scores: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """1-based ranks within each group of an array sorted by (group, score); tied scores in a
    group share the mean of their ranks."""
    n = len(sorted_scores)
    position = np.arange(n) - group_start + 1.0
    new_run = np.ones(n, bool)
    new_run[1:] = (sorted_scores[1:] != sorted_scores[:-1]) | (group_start[1:] != group_start[:-1])
    run_id = np.cumsum(new_run) - 1
    run_first = position[new_run]
    run_last = np.r_[position[np.flatnonzero(new_run)[1:] - 1], position[-1]] if n else run_first
    return ((run_first + run_last) / 2.0)[run_id]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = _tie_averaged_ranks(scores[order], np.zeros(len(scores), np.int64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uauc(
    users: np.ndarray, labels: np.ndarray, scores: np.ndarray, weighting: Weighting = "user"
) -> tuple[float, int]:
    """(UAUC, number of users it averages over)."""
    users = np.asarray(users)
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    if len(users) == 0:
        return float("nan"), 0
    order = np.lexsort((scores, users))
    u, y, s = users[order], labels[order], scores[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    starts = np.flatnonzero(new_user)
    group = np.cumsum(new_user) - 1
    ranks = _tie_averaged_ranks(s, starts[group])
    n = np.bincount(group).astype(np.float64)
    n_pos = np.bincount(group, weights=y.astype(np.float64))
    n_neg = n - n_pos
    pos_rank_sum = np.bincount(group, weights=np.where(y, ranks, 0.0))
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return float("nan"), 0
    per_user = (pos_rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2.0) / (n_pos[both] * n_neg[both])
    weights = n[both] if weighting == "impressions" else None
    return float(np.average(per_user, weights=weights)), int(both.sum())


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(probabilities, np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass
class CTRAccumulator:
    """Collects (user, label, probability, warm) batch by batch; ``compute`` reports the metrics
    overall and on the warm and cold slices. Memory: four numbers per evaluated row."""

    weighting: Weighting = "user"
    _parts: list[tuple[np.ndarray, ...]] = field(default_factory=list, repr=False)

    def update(
        self, users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, warm: np.ndarray | None = None
    ) -> None:
        users = np.asarray(users)
        warm = np.ones(len(users), bool) if warm is None else np.asarray(warm).astype(bool)
        self._parts.append((users, np.asarray(labels), np.asarray(probabilities, np.float64), warm))

    def compute(self) -> dict[str, float]:
        if not self._parts:
            raise ValueError("no predictions were added")
        users, labels, probs, warm = (np.concatenate(c) for c in zip(*self._parts, strict=True))
        out: dict[str, float] = {}
        for name, mask in (("all", np.ones(len(users), bool)), ("warm", warm), ("cold", ~warm)):
            if not mask.any():
                continue
            value, counted = uauc(users[mask], labels[mask], probs[mask], self.weighting)
            out[f"{name}/auc"] = auc(labels[mask], probs[mask])
            out[f"{name}/uauc"] = value
            out[f"{name}/uauc_users"] = counted
            out[f"{name}/logloss"] = log_loss(labels[mask], probs[mask])
            out[f"{name}/rows"] = int(mask.sum())
        return out
