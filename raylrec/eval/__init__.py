"""Evaluation: pointwise CTR metrics (AUC, UAUC, LogLoss) with warm/cold slices, and
full-ranking top-K metrics (Recall, NDCG, HitRate, MRR) with training items masked."""

from raylrec.eval.ctr import CTRAccumulator, auc, log_loss, uauc
from raylrec.eval.ranking import ItemSets, RankingAccumulator, RecallDenominator
from raylrec.eval.report import format_report
from raylrec.eval.slices import warm_mask

__all__ = [
    "CTRAccumulator",
    "ItemSets",
    "RankingAccumulator",
    "RecallDenominator",
    "auc",
    "format_report",
    "log_loss",
    "uauc",
    "warm_mask",
]
