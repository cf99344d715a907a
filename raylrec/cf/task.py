"""A CF encoder as a training task: how to build it, its loss, its evaluation, its batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from raylrec.cf.config import CFConfig
from raylrec.cf.data import Split, positives, sample_negatives
from raylrec.cf.models import CFEncoder
from raylrec.config import EvalConfig
from raylrec.eval import CTRAccumulator, ItemSets, RankingAccumulator
from raylrec.train.loop import unwrap

__all__ = [
    "CFTask",
    "build_encoder",
    "epoch_batches",
    "evaluate_ctr",
    "evaluate_ranking",
    "positives",
    "seen_pairs",
]


def build_encoder(config: CFConfig, train: Split) -> CFEncoder:
    """The encoder ``config`` names, for the users and items of ``train`` (the registry finds its
    class: see ``raylrec.cf.config``)."""
    return config.build(train)


def seen_pairs(train: Split, config: CFConfig) -> ItemSets | None:
    """What BPR must not sample as a negative: every training interaction of the user (the
    Ray path builds the same sets from the files: ``raylrec.cf.streaming``)."""
    if config.loss != "bpr" or config.negatives == "uniform":
        return None
    return ItemSets.from_pairs(train.arrays["uid"], train.arrays["iid"], train.num_users, distinct=True)


def epoch_batches(
    split: Split,
    batch_size: int,
    seed: int,
    epoch: int,
    config: CFConfig,
    drop_last: bool = True,
    seen: ItemSets | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches of one epoch (seeded by (seed, epoch): a resumed run sees the same
    order); BPR batches hold the positives and one sampled negative each (not in ``seen``)."""
    rng = np.random.default_rng([seed, epoch])
    arrays = split.arrays
    if config.loss == "bpr":
        users, items = positives(split, config.implicit)
        arrays = {"uid": users, "iid": items}
    n = len(arrays["uid"])
    order = rng.permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        batch = {k: torch.from_numpy(v[index]) for k, v in arrays.items() if k != "warm"}
        if config.loss == "bpr":
            users = arrays["uid"][index]
            batch["neg"] = torch.from_numpy(sample_negatives(rng, split.num_items, len(index), users, seen))
        yield batch


def evaluate_ctr(
    model: CFEncoder, split: Split, config: EvalConfig, prefix: str, batch_size: int = 8192
) -> dict[str, float]:
    acc = CTRAccumulator(weighting=config.uauc_weighting)
    arrays = split.arrays
    device = next(model.parameters()).device
    for start in range(0, len(split), batch_size):
        batch = {
            k: torch.from_numpy(v[start : start + batch_size]).to(device)
            for k, v in arrays.items()
            if k != "warm"
        }
        probs = torch.sigmoid(model.score(batch)).float().cpu().numpy()
        warm = arrays["warm"][start : start + batch_size] if "warm" in arrays else None
        acc.update(batch["uid"].cpu().numpy(), batch["label"].cpu().numpy(), probs, warm)
    return {f"{prefix}/{k.removeprefix('all/')}": v for k, v in acc.compute().items()}


def evaluate_ranking(
    model: CFEncoder,
    known: ItemSets,
    target: ItemSets,
    config: EvalConfig,
    prefix: str,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Full ranking of ``users`` (default: every user with target items), ``users_per_chunk``
    at a time; ``known`` items are masked."""
    acc = RankingAccumulator(tuple(config.ks), config.recall_denominator)
    device = next(model.parameters()).device
    if users is None:
        users = np.flatnonzero(np.diff(target.indptr) > 0)
    users = users[target.sizes_of(users) > 0]
    for start in range(0, len(users), config.users_per_chunk):
        chunk = users[start : start + config.users_per_chunk]
        acc.update_users(model.full_scores({"uid": torch.from_numpy(chunk).to(device)}), chunk, known, target)
    return {f"{prefix}/{k}": v for k, v in acc.compute().items()}


class CFTask:
    """The encoder's loss and its validation: CTR metrics on ``valid``'s rows (bce), or full
    ranking of ``users`` (None: all) against their ``target`` items with ``known`` masked (bpr)."""

    def __init__(
        self, model: CFEncoder, config: CFConfig, eval_config: EvalConfig, train: Split, valid: Split
    ):
        known = target = None
        if config.loss == "bpr":
            known = ItemSets.from_pairs(*positives(train, config.implicit), train.num_users)
            target = ItemSets.from_pairs(*positives(valid, config.implicit), train.num_users)
        self._set(model, config, eval_config, valid, known, target, None)

    @classmethod
    def from_item_sets(
        cls,
        model: CFEncoder,
        config: CFConfig,
        eval_config: EvalConfig,
        valid: Split | None,
        known: ItemSets | None,
        target: ItemSets | None,
        users: np.ndarray | None,
    ) -> CFTask:
        """The Ray path's task: validation inputs prepared by the driver (``raylrec.cf.streaming``)."""
        task = cls.__new__(cls)
        task._set(model, config, eval_config, valid, known, target, users)
        return task

    def _set(self, model, config, eval_config, valid, known, target, users) -> None:
        self.model, self.config, self.eval_config = model, config, eval_config
        self.valid, self.known, self.target, self.users = valid, known, target, users

    @property
    def encoder(self) -> CFEncoder:
        return unwrap(self.model)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's own ``loss`` for this objective (``CFEncoder.loss``, overridable),
        called through the wrapper's forward so DDP synchronises every gradient."""
        return self.model(batch, objective=self.config)

    def evaluate(self) -> dict[str, float]:
        if self.config.loss == "bce":
            return evaluate_ctr(self.encoder, self.valid, self.eval_config, "valid")
        return evaluate_ranking(self.encoder, self.known, self.target, self.eval_config, "valid", self.users)
