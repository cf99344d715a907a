"""A CF encoder's final metrics on the Ray path, computed by Ray Data: the trained weights go to
the object store once, Ray Data tasks score their part of the users or rows, and only metric sums come
back; the driver never loads a split. The numbers equal the single-process evaluation's
(``raylrec.cf.task``) up to float summation order:

- **top-K**: ``ray.data.range(num_users)`` in chunks of ``eval.users_per_chunk``; each task
  masks the user's known items and counts hits against the held-out ones, both read zero-copy
  from per-node ``ItemSets`` (``raylrec.data.item_sets``); sums are added in the driver.
- **CTR**: tasks score every row of the split; AUC is exact (the scored rows sorted by score
  with Ray Data, then one streaming pass with tie-averaged ranks: a tie may span batches),
  UAUC is exact per user (``groupby("uid")``), LogLoss a sum. Warm and cold slices as in
  ``CTRAccumulator``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from raylrec.cf.data import to_arrays
from raylrec.cf.streaming import InteractionSplit, item_sets_ref, sample_users
from raylrec.config import RaylrecConfig
from raylrec.eval.ctr import auc, log_loss
from raylrec.eval.ranking import RankingAccumulator

if TYPE_CHECKING:
    import ray

__all__ = ["distributed_metrics", "StreamingAUC"]

SLICES = ("all", "warm", "cold")


def distributed_metrics(
    config: RaylrecConfig,
    weights: dict[str, torch.Tensor],
    held_out: list[str],
    num_users: int,
    num_items: int,
    built: dict[tuple[tuple[str, ...], bool], ray.ObjectRef] | None = None,
    graph: ray.ObjectRef | None = None,
) -> dict[str, float]:
    """``built``: item sets already in the object store, by (splits, positives_only) (the
    training run's), so they are not built again; ``graph``: a graph encoder's shared graph
    (``raylrec.cf.graph``), else each evaluating process builds it from streamed item sets.

    Every held-out split's metrics for the encoder of ``config.cf`` with ``weights``; top-K
    masks the training items and those of earlier held-out splits, as the local path does."""
    import ray

    weights_ref = ray.put({k: v.detach().cpu().numpy() for k, v in weights.items()})
    model_args = {
        "cf": config.cf.model_dump(mode="json"),
        "dataset": config.dataset_path(),
        "sizes": (num_users, num_items),
        "weights": [weights_ref],  # in a list: Ray resolves only top-level references
        "graph": [graph],
    }
    metrics: dict[str, float] = {}
    if config.cf.loss == "bce":
        for name in held_out:
            metrics.update(_ctr_metrics(config, name, model_args))
        return metrics
    positives_only = not config.cf.implicit
    if config.eval.final_users is not None:
        model_args["users"] = sample_users(num_users, config.eval.final_users, config.train.seed)
    known = ["train"]
    for name in held_out:
        known_ref, target_ref = (
            (built or {}).get((tuple(splits), positives_only))
            or item_sets_ref(config.dataset_path(), splits, num_users, positives_only)
            for splits in (known, [name])
        )
        metrics.update(_ranking_metrics(config, name, model_args, known_ref, target_ref))
        known = [*known, name]
    return metrics


_MODELS: dict[str, Any] = {}  # per Ray worker process: the encoder of each weights reference


def _encoder(args: dict[str, Any]):
    """The encoder of ``args``, built once per worker process (Ray reuses the process for the
    next batches' tasks)."""
    import ray

    from raylrec.cf.config import encoder_config

    key = args["weights"][0].hex()
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time: an earlier evaluation's is not needed again
        cf = encoder_config(args["cf"])
        model = cf.build(InteractionSplit(args["dataset"], *args["sizes"], args["graph"][0]))
        state = ray.get(args["weights"][0])
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        _MODELS[key] = model.eval()
    return _MODELS[key]


def _ranking_part(
    batch: dict[str, np.ndarray], model_args: dict[str, Any], sets: list[Any], ks: list[int], denominator: str
) -> dict[str, np.ndarray]:
    """A Ray Data task: the metric sums of a chunk of user ids (those with held-out items).
    Tasks, not an actor pool: actors waiting for input while holding every CPU would leave the
    tasks that make their input none to run on."""
    import ray

    model = _encoder(model_args)
    known, target = ray.get(sets)
    ids = batch["id"].astype(np.int64)
    users = ids[(ids > 0) & (target.sizes_of(ids) > 0)]
    if model_args.get("users") is not None:  # eval.final_users: a fixed sample
        users = users[np.isin(users, model_args["users"])]
    acc = RankingAccumulator(tuple(ks), denominator)
    if len(users):
        with torch.no_grad():
            scores = model.full_scores({"uid": torch.from_numpy(users)})
        acc.update_users(scores, users, known, target)
    sums, count = acc.state()
    return {
        "first": ids[:1],
        "users": np.array([count]),
        **{name: np.array([sums.get(name, 0.0)]) for name in _ranking_names(tuple(ks))},
    }


def _ranking_names(ks: tuple[int, ...]) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hit", "mrr")]


def _ranking_metrics(
    config: RaylrecConfig,
    name: str,
    model_args: dict[str, Any],
    known_ref: ray.ObjectRef,
    target_ref: ray.ObjectRef,
) -> dict[str, float]:
    import ray

    num_users = model_args["sizes"][0]
    parts = ray.data.range(num_users, override_num_blocks=max(2, min(64, num_users // 4096))).map_batches(
        _ranking_part,
        batch_size=config.eval.users_per_chunk,
        batch_format="numpy",
        fn_kwargs={
            "model_args": model_args,
            "sets": [known_ref, target_ref],
            "ks": list(config.eval.ks),
            "denominator": config.eval.recall_denominator,
        },
    )
    acc = RankingAccumulator(tuple(config.eval.ks), config.eval.recall_denominator)
    rows = sorted(
        (row for batch in parts.iter_batches(batch_format="numpy") for row in _rows(batch)),
        key=lambda row: row["first"],
    )  # one small row per chunk of users: summed in user order, whatever order they finished in
    for row in rows:
        users = int(row.pop("users"))
        row.pop("first")
        acc.merge({k: float(v) for k, v in row.items()}, users)
    return {f"{name}/{k}": v for k, v in acc.compute().items()}


def _rows(batch: dict[str, np.ndarray]):
    for i in range(len(batch["first"])):
        yield {k: v[i] for k, v in batch.items()}


def _score_rows(batch: pa.Table, model_args: dict[str, Any], history_len: int) -> dict[str, np.ndarray]:
    """A Ray Data task: each row's probability, beside its user, label and warm flag."""
    arrays = to_arrays(batch, history_len)
    inputs = {k: torch.from_numpy(v) for k, v in arrays.items() if k != "warm"}
    with torch.no_grad():
        probs = torch.sigmoid(_encoder(model_args).score(inputs)).float().numpy()
    warm = arrays.get("warm", np.ones(len(probs), bool))
    return {"uid": arrays["uid"], "label": arrays["label"], "prob": probs.astype(np.float64), "warm": warm}


def _ctr_metrics(config: RaylrecConfig, name: str, model_args: dict[str, Any]) -> dict[str, float]:
    from raylrec.data.output import read_split

    history_len = config.cf.history_len
    scored = (
        read_split(config.dataset_path(), name)
        .map_batches(
            _score_rows,
            batch_format="pyarrow",
            batch_size=8192,
            fn_kwargs={"model_args": model_args, "history_len": history_len},
        )
        .materialize()
    )
    global_auc = StreamingAUC()
    for batch in scored.sort("prob").iter_batches(batch_format="numpy", batch_size=65_536):
        global_auc.update(batch)
    # as many partitions as scored blocks: Ray's default (200 hash partitions, each with its own
    # aggregation) costs seconds of scheduling however small the split
    partitions = max(1, min(scored.num_blocks(), 200))
    per_user = scored.groupby("uid", num_partitions=partitions).map_groups(_user_auc, batch_format="numpy")
    totals = {s: np.zeros(4) for s in SLICES}  # auc sum, weighted auc sum, users, weight
    loss = {s: np.zeros(2) for s in SLICES}  # loss sum, rows
    for batch in per_user.iter_batches(batch_format="numpy", batch_size=65_536):
        for s in SLICES:
            both = batch[f"{s}_both"]
            value, n = batch[f"{s}_auc"][both], batch[f"{s}_rows"][both].astype(np.float64)
            totals[s] += [value.sum(), (value * n).sum(), both.sum(), n.sum()]
            loss[s] += [batch[f"{s}_loss"].sum(), batch[f"{s}_rows"].sum()]
    weighting = config.eval.uauc_weighting
    out: dict[str, float] = {}
    for s in SLICES:
        rows = int(loss[s][1])
        if not rows:
            continue
        auc_sum, weighted_sum, users, weight = totals[s]
        uauc = (weighted_sum / weight if weighting == "impressions" else auc_sum / users) if users else np.nan
        prefix = name if s == "all" else f"{name}/{s}"
        out[f"{prefix}/auc"] = global_auc.compute(s)
        out[f"{prefix}/uauc"] = float(uauc)
        out[f"{prefix}/uauc_users"] = int(users)
        out[f"{prefix}/logloss"] = float(loss[s][0] / rows)
        out[f"{prefix}/rows"] = rows
    return out


def _user_auc(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One user's rows -> per slice: its AUC (when both classes are present), rows, loss sum."""
    labels, probs, warm = group["label"], group["prob"], group["warm"].astype(bool)
    out: dict[str, np.ndarray] = {"uid": group["uid"][:1]}
    for s, mask in (("all", np.ones(len(labels), bool)), ("warm", warm), ("cold", ~warm)):
        y, p = labels[mask], probs[mask]
        positives = int((y > 0.5).sum())
        both = 0 < positives < len(y)
        out[f"{s}_auc"] = np.array([auc(y, p) if both else 0.0])
        out[f"{s}_both"] = np.array([both])
        out[f"{s}_rows"] = np.array([len(y)], np.int64)
        out[f"{s}_loss"] = np.array([log_loss(y, p) * len(y) if len(y) else 0.0])
    return out


class StreamingAUC:
    """Exact AUC (tie-averaged Mann-Whitney U) over rows streamed in ascending score order, per
    slice: twice U = sum over tie groups of positives x (2 x negatives below + negatives tied).
    Integer arithmetic, so the result does not depend on how the stream is cut into batches."""

    def __init__(self) -> None:
        self._u2 = dict.fromkeys(SLICES, 0)
        self._pos = dict.fromkeys(SLICES, 0)
        self._neg = dict.fromkeys(SLICES, 0)
        self._pending: dict[str, tuple[float, int, int] | None] = dict.fromkeys(SLICES)

    def update(self, batch: dict[str, np.ndarray]) -> None:
        warm = batch["warm"].astype(bool)
        for s, mask in (("all", slice(None)), ("warm", warm), ("cold", ~warm)):
            self._update(s, batch["prob"][mask], batch["label"][mask] > 0.5)

    def _update(self, s: str, scores: np.ndarray, positive: np.ndarray) -> None:
        if not len(scores):
            return
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
        values = scores[starts]
        pos = np.add.reduceat(positive.astype(np.int64), starts)
        neg = np.diff(np.r_[starts, len(scores)]) - pos
        pending = self._pending[s]
        if pending is not None:
            if pending[0] == values[0]:
                pos[0] += pending[1]
                neg[0] += pending[2]
            else:
                self._close(s, pending[1], pending[2])
        # every tie group but the last is closed (the next batch may continue the last one)
        closed_pos, closed_neg = pos[:-1], neg[:-1]
        below = self._neg[s] + np.r_[0, np.cumsum(closed_neg)[:-1]] if len(closed_neg) else closed_neg
        self._u2[s] += int((closed_pos * (2 * below + closed_neg)).sum())
        self._pos[s] += int(closed_pos.sum())
        self._neg[s] += int(closed_neg.sum())
        self._pending[s] = (values[-1], int(pos[-1]), int(neg[-1]))

    def _close(self, s: str, pos: int, neg: int) -> None:
        self._u2[s] += pos * (2 * self._neg[s] + neg)
        self._pos[s] += pos
        self._neg[s] += neg

    def compute(self, s: str = "all") -> float:
        pending = self._pending[s]
        if pending is not None:
            self._close(s, pending[1], pending[2])
            self._pending[s] = None
        if not self._pos[s] or not self._neg[s]:
            return float("nan")
        return self._u2[s] / (2 * self._pos[s] * self._neg[s])
