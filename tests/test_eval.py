"""Metrics against scikit-learn, brute-force references and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import COLLM_DIR
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from raylrec.eval import (
    CTRAccumulator,
    ItemSets,
    RankingAccumulator,
    auc,
    format_report,
    log_loss,
    uauc,
    warm_mask,
)

rows = st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 6)), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(rows)
def test_auc_matches_sklearn_with_ties(data):
    _, labels, scores = (np.array(c) for c in zip(*data, strict=True))
    expected = roc_auc_score(labels, scores) if 0 < labels.sum() < len(labels) else float("nan")
    got = auc(labels, scores / 3.0)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(rows, st.sampled_from(["user", "impressions"]))
def test_uauc_is_the_mean_of_per_user_sklearn_aucs(data, weighting):
    users, labels, scores = (np.array(c) for c in zip(*data, strict=True))
    per_user, weights = [], []
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            per_user.append(roc_auc_score(labels[m], scores[m]))
            weights.append(m.sum())
    got, counted = uauc(users, labels, scores.astype(float), weighting)
    assert counted == len(per_user)
    if per_user:
        expected = np.average(per_user, weights=weights if weighting == "impressions" else None)
        assert got == pytest.approx(expected)
    else:
        assert math.isnan(got)


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p))


def test_ctr_accumulator_reports_slices():
    acc = CTRAccumulator()
    acc.update([1, 1, 2, 2], [1, 0, 1, 0], [0.9, 0.1, 0.2, 0.8], warm=[1, 1, 0, 0])
    acc.update([3, 3], [1, 0], [0.6, 0.4], warm=[1, 1])
    out = acc.compute()
    assert out["warm/uauc"] == 1.0 and out["cold/uauc"] == 0.0
    assert out["all/uauc"] == pytest.approx(2 / 3) and out["all/uauc_users"] == 3
    assert out["all/rows"] == 6 and out["cold/rows"] == 2


def test_ranking_hand_worked_case():
    # One user, catalogue 1..6; item 2 was seen in training; test items {3, 5}.
    scores = torch.tensor([[9.0, 0.9, 0.99, 0.8, 0.1, 0.7, 0.5]])  # item 0 is padding
    train = ItemSets.from_pairs(np.array([0]), np.array([2]), 1)
    test = ItemSets.from_pairs(np.array([0, 0]), np.array([3, 5]), 1)
    for denominator, recall_at_1 in (("test_items", 0.5), ("min_k", 1.0)):
        acc = RankingAccumulator(ks=(1, 3), recall_denominator=denominator)
        acc.update(scores, 0, train, test)
        out = acc.compute()
        # Ranking after masking: 1 (0.9), 3 (0.8), 5 (0.7), 6, 4 -> hits at ranks 2 and 3.
        assert out["recall@1"] == 0.0 and out["hit@1"] == 0.0
        assert out["recall@3"] == 1.0 and out["hit@3"] == 1.0
        assert out["mrr@3"] == pytest.approx(0.5)
        ideal = 1 + 1 / math.log2(3)
        assert out["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)
        del recall_at_1
    assert "min(K, |test items|)" in RankingAccumulator(recall_denominator="min_k").describe()


def _reference(scores, train, test, k, denominator):
    recalls, ndcgs = [], []
    for u in range(scores.shape[0]):
        t = set(test.indices[test.indptr[u] : test.indptr[u + 1]].tolist())
        if not t:
            continue
        s = scores[u].copy()
        s[train.indices[train.indptr[u] : train.indptr[u + 1]]] = -np.inf
        s[0] = -np.inf
        ranked = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        hits = [1.0 if i in t else 0.0 for i in ranked]
        recalls.append(sum(hits) / (len(t) if denominator == "test_items" else min(k, len(t))))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(t))))
        ndcgs.append(sum(h / math.log2(j + 2) for j, h in enumerate(hits)) / idcg)
    return np.mean(recalls), np.mean(ndcgs)


@pytest.mark.parametrize("denominator", ["test_items", "min_k"])
def test_ranking_matches_brute_force_in_chunks(denominator):
    rng = np.random.default_rng(1)
    n_users, n_items = 40, 30
    scores = rng.random((n_users, n_items)).astype(np.float32)
    pairs = rng.random((n_users, n_items)) < 0.2
    split = rng.random((n_users, n_items)) < 0.5
    users, items = np.nonzero(pairs & split & (np.arange(n_items) > 0))
    train = ItemSets.from_pairs(users, items, n_users)
    users, items = np.nonzero(pairs & ~split & (np.arange(n_items) > 0))
    test = ItemSets.from_pairs(users, items, n_users)
    acc = RankingAccumulator(ks=(5, 10), recall_denominator=denominator)
    for start in range(0, n_users, 16):  # chunks of users, as a scorer would stream them
        acc.update(torch.from_numpy(scores[start : start + 16]), start, train, test)
    out = acc.compute()
    for k in (5, 10):
        recall, ndcg = _reference(scores, train, test, k, denominator)
        assert out[f"recall@{k}"] == pytest.approx(recall, rel=1e-5)
        assert out[f"ndcg@{k}"] == pytest.approx(ndcg, rel=1e-5)
    assert "recall@10" in format_report("MF on test", out, acc.describe())


@pytest.mark.parametrize("denominator", ["test_items", "min_k"])
def test_published_list_metrics_equal_the_full_ranking_ones(denominator):
    """``scoring.quality.list_metrics`` over the lists the full ranking would publish gives the
    trainer's numbers: both reduce to ``eval.ranking.topk_metric_sums``."""
    from raylrec.scoring.quality import list_metrics

    rng = np.random.default_rng(2)
    n_users, n_items, ks = 30, 25, (3, 10, 40)  # 40 > the catalogue: ranks past it are misses
    scores = rng.random((n_users, n_items)).astype(np.float32)
    pairs = rng.random((n_users, n_items)) < 0.25
    split = rng.random((n_users, n_items)) < 0.5
    users, items = np.nonzero(pairs & split & (np.arange(n_items) > 0))
    train = ItemSets.from_pairs(users, items, n_users)
    users, items = np.nonzero(pairs & ~split & (np.arange(n_items) > 0))
    test = ItemSets.from_pairs(users, items, n_users)
    acc = RankingAccumulator(ks=ks, recall_denominator=denominator)
    acc.update(torch.from_numpy(scores), 0, train, test)
    recommended, truth = {}, {}
    for u in range(n_users):
        s = scores[u].astype(np.float64)
        s[train.indices[train.indptr[u] : train.indptr[u + 1]]] = -np.inf
        s[0] = -np.inf
        ranked = sorted(range(1, n_items), key=lambda i: (-s[i], i))
        ranked = [i for i in ranked if np.isfinite(s[i])]
        recommended[f"u{u}"] = [f"i{i}" for i in ranked]
        relevant = test.indices[test.indptr[u] : test.indptr[u + 1]]
        if len(relevant):
            truth[f"u{u}"] = {f"i{i}" for i in relevant}
    listed = list_metrics(recommended, truth, ks, denominator)
    ranked = acc.compute()
    assert listed["users"] == ranked["users"]
    for name in listed:
        assert listed[name] == pytest.approx(ranked[name], rel=1e-6), name


@pytest.mark.skipif(not COLLM_DIR.exists(), reason="../shared/datasets/collm-ml1m is not beside the repo")
def test_warm_rule_reproduces_collm_not_cold_flag():
    train = pq.read_table(COLLM_DIR / "train.parquet", columns=["user_id", "item_id"])
    valid = pq.read_table(COLLM_DIR / "valid.parquet", columns=["user_id", "item_id", "not_cold"])
    warm = warm_mask(
        valid["user_id"].to_numpy(),
        valid["item_id"].to_numpy(),
        train["user_id"].to_numpy(),
        train["item_id"].to_numpy(),
    )
    flag = valid["not_cold"].to_numpy().astype(bool)
    agree = (warm == flag).mean()
    assert agree == 1.0, f"the not_cold rule agrees on {agree:.2%} of valid rows"
    assert flag.sum() == 6609
    # The threshold of 3 that the dataset's README states does not produce the shipped flag.
    three = warm_mask(
        valid["user_id"].to_numpy(),
        valid["item_id"].to_numpy(),
        train["user_id"].to_numpy(),
        train["item_id"].to_numpy(),
        min_interactions=3,
    )
    assert (three == flag).mean() < 0.95
