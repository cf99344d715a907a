"""The names evaluation reports, torch-free, so that a config can check ``train.metric`` before
any work starts. ``raylrec.eval`` computes them (``CTRAccumulator.compute``,
``RankingAccumulator.update``); ``tests/test_config_checks.py`` keeps the two in step."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CTR_METRICS",
    "CTR_SLICES",
    "LOWER_IS_BETTER",
    "RANKING_METRICS",
    "ctr_metric_names",
    "ranking_metric_names",
]

CTR_METRICS = ("auc", "uauc", "logloss")
CTR_SLICES = ("", "warm/", "cold/")  # warm/ and cold/: only when the data flags cold users
RANKING_METRICS = ("recall", "ndcg", "hit", "mrr")
LOWER_IS_BETTER = ("logloss", "loss")


def ctr_metric_names(split: str = "valid") -> frozenset[str]:
    """``valid/auc``, ``valid/warm/uauc``, ...: what a pointwise (CTR) task reports."""
    return frozenset(f"{split}/{s}{m}" for s in CTR_SLICES for m in CTR_METRICS)


def ranking_metric_names(ks: Iterable[int], split: str = "valid") -> frozenset[str]:
    """``valid/recall@10``, ...: what a full-ranking task reports at each cut-off."""
    return frozenset(f"{split}/{m}@{k}" for m in RANKING_METRICS for k in ks)
