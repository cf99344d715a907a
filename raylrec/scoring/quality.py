"""Top-K quality of published recommendations against a held-out split.

The ground truth is each user's positive items in ``split`` of a prepared dataset, matched by
raw ids. The arithmetic is the trainer's own, ``raylrec.eval.ranking.topk_metric_sums`` (Recall
with an explicit denominator, NDCG with binary gains); users with no positives in the split are
skipped, and a user the run did not score counts with zero hits.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import torch

from raylrec.data.output import read_table
from raylrec.data.vocab import Vocabulary
from raylrec.eval.ranking import RecallDenominator, topk_metric_sums
from raylrec.scoring.publish import read_recommendations

__all__ = ["held_out_positives", "list_metrics", "evaluate_published"]


def held_out_positives(dataset: str, split: str, implicit: bool = False) -> dict[str, set[str]]:
    """raw user id -> raw ids of their positive items in ``split`` (``implicit``: every
    interaction counts, as in RecBole's protocol)."""
    table = read_table(dataset, split, columns=["uid", "iid", "label"])
    if not implicit:
        table = table.filter(pc.greater(table["label"], 0))
    users = Vocabulary.from_table(read_table(dataset, "users.parquet"), "user_id", "uid")
    items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    truth: dict[str, set[str]] = {}
    for user, item in zip(
        users.to_raw(table["uid"].to_numpy()), items.to_raw(table["iid"].to_numpy()), strict=True
    ):
        truth.setdefault(user, set()).add(item)
    return truth


def list_metrics(
    recommended: dict[str, list[str]],
    truth: dict[str, set[str]],
    ks: tuple[int, ...] = (10, 20),
    recall_denominator: RecallDenominator = "test_items",
) -> dict[str, float]:
    """Recall@K / NDCG@K / HitRate@K of ranked lists (best first) over the users in ``truth``."""
    if not truth:
        raise ValueError("no user has held-out positives")
    width = max(ks)
    hits = np.zeros((len(truth), width))
    for row, (user, relevant) in enumerate(truth.items()):
        ranked = recommended.get(user, [])[:width]
        hits[row, : len(ranked)] = [item in relevant for item in ranked]
    relevant = torch.tensor([len(items) for items in truth.values()], dtype=torch.float64)
    sums = topk_metric_sums(torch.from_numpy(hits), relevant, ks, recall_denominator)
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hit")]
    metrics = {name: sums[name] / len(truth) for name in names}
    metrics["users"] = len(truth)
    return metrics


def evaluate_published(
    root: str,
    date: str,
    dataset: str,
    split: str,
    ks: tuple[int, ...] = (10,),
    recall_denominator: RecallDenominator = "test_items",
    implicit: bool = False,
    verify: bool = True,
) -> dict[str, float]:
    """Metrics of the users the run scored that have positives in ``split`` (``verify``: the
    published files' checksums, as every reader does by default)."""
    table = read_recommendations(root, date, verify=verify)
    recommended: dict[str, list[str]] = {}
    for user, item in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True):
        recommended.setdefault(user, []).append(item)  # rows come sorted by (user, rank)
    truth = {
        u: items for u, items in held_out_positives(dataset, split, implicit).items() if u in recommended
    }
    return list_metrics(recommended, truth, ks, recall_denominator)
