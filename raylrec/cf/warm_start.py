"""Warm-starting a CF encoder from an earlier CF bundle: the nightly refresh of a growing log.

A dataset appended day by day (``raylrec data prepare --append``) keeps every dense id and gives
new users and items the next ones, so yesterday's tables are a prefix of today's. A warm start

- checks that prefix: every user and item of the bundle has the same dense id in the dataset
  (a full re-preparation renumbers them; training on it from the bundle would scramble them);
- builds the encoder as a fresh run would (seeded), then copies the bundle's weights over it: a
  table that grew keeps the bundle's rows on top and the fresh initialisation below, for the
  new users and items (``extended_state``);
- trains on the training rows after the bundle's training cutoff (what it has not seen), plus
  a replay sample of the older ones (``warm_start.replay``, a seeded coin per row), against
  catastrophic forgetting, as incremental recommenders do (e.g. Zhang et al., "How to Retrain
  Recommender System?", SIGIR 2020, fine-tune on the new period; replay of old data is the
  usual guard);
- records where it started (``warm_start`` in the new bundle's ``config.json``).

The bundle's training cutoff is the dataset's ``valid`` start when it trained (a time split's
``temporal_cutoffs``): rows before it were training rows then. A random or leave-last-out split
has no such instant, so it cannot be warm-started from: its "new rows" are not defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raylrec.data.hashing import splitmix64
from raylrec.data.output import train_cutoff

__all__ = [
    "WarmStartError",
    "WarmStart",
    "extended_state",
    "plan_warm_start",
    "replay_mask",
    "replayed_rows",
]


class WarmStartError(ValueError):
    """The bundle cannot start this run (another model, renumbered ids, no training cutoff)."""


@dataclass(frozen=True)
class WarmStart:
    """A checked warm start: the bundle, its weights, and which training rows to use."""

    bundle: str
    state: dict[str, torch.Tensor]
    since: int  # rows at or after this instant are new; earlier ones are replayed
    replay: float
    sizes: tuple[int, int]  # the bundle's (num_users, num_items)

    def record(self) -> dict[str, Any]:
        """What the new bundle's ``config.json`` says of its start."""
        return {
            "bundle": self.bundle,
            "since": self.since,
            "replay": self.replay,
            "num_users": self.sizes[0],
            "num_items": self.sizes[1],
        }


def plan_warm_start(bundle: str, replay: float, model: str, dataset: str, meta: dict[str, Any]) -> WarmStart:
    """Check ``bundle`` against this run (encoder ``model`` on ``dataset``) and load its weights.
    Raises ``WarmStartError`` naming what does not match."""
    from safetensors.torch import load_file

    from raylrec.bundle_dir import fetch_files
    from raylrec.cf.bundle import cf_vocabularies, check_cf_bundle
    from raylrec.data.output import read_table
    from raylrec.data.vocab import Vocabulary

    description = check_cf_bundle(bundle)  # every file against its checksum first
    if description["cf"]["model"] != model:
        raise WarmStartError(
            f"warm_start.bundle {bundle} holds a {description['cf']['model']} encoder; this run trains "
            f"{model}: train from scratch, or start from a {model} bundle"
        )
    since = description.get("training", {}).get("train_cutoff")
    if since is None:
        raise WarmStartError(
            f"warm_start.bundle {bundle} records no training cutoff (it was trained on a dataset without a "
            "time split, or by a raylrec before warm starts): the rows it has not seen are not defined; "
            "train from scratch once on a rolling_days or temporal dataset"
        )
    if train_cutoff(meta) is None:
        raise WarmStartError(
            f"{dataset} has no time split (its split: {_split_name(meta)}): a warm start trains on the rows "
            "after the bundle's cutoff, which needs one (data.split: rolling_days)"
        )
    for what, ids, (raw, dense) in zip(
        ("user", "item"), cf_vocabularies(bundle), (("user_id", "uid"), ("item_id", "iid")), strict=True
    ):
        here = Vocabulary.from_table(read_table(dataset, f"{what}s.parquet"), raw, dense)
        _check_prefix(what, ids, here, bundle, dataset)
    with fetch_files(bundle, ("model.safetensors",)) as local:
        state = load_file(local["model.safetensors"])
    return WarmStart(bundle, state, int(since), replay, (description["num_users"], description["num_items"]))


def _split_name(meta: dict[str, Any]) -> str:
    split = meta.get("protocol", {}).get("split")
    return split.get("protocol", "?") if isinstance(split, dict) else str(split)


def _check_prefix(what: str, bundle_ids, dataset_ids, bundle: str, dataset: str) -> None:
    """Every id of the bundle's vocabulary has the same dense id in the dataset's."""
    was = bundle_ids.lookup(bundle_ids.ids)
    now = dataset_ids.lookup(bundle_ids.ids)
    moved = np.flatnonzero(was != now)
    if len(moved):
        first = moved[0]
        now_text = "is missing" if now[first] == 0 else f"has dense id {now[first]}"
        raise WarmStartError(
            f"{len(moved):,} {what}(s) of warm_start.bundle {bundle} have other dense ids in {dataset} "
            f"(e.g. {what} {bundle_ids.ids[first].as_py()!r}: {was[first]} in the bundle, {now_text} "
            "here): the dataset was not appended from the one the bundle trained on (`data prepare "
            "--append` keeps ids; a full preparation renumbers them); train from scratch"
        )


def extended_state(
    fresh: dict[str, torch.Tensor], old: dict[str, torch.Tensor], bundle: str
) -> dict[str, torch.Tensor]:
    """``fresh`` (a seeded new model's state) with ``old``'s weights copied over it: equal shapes
    whole, a table with more rows (new users or items at the end) on its first rows."""
    missing = sorted(set(fresh) - set(old))
    if missing:
        raise WarmStartError(
            f"warm_start.bundle {bundle} lacks {missing}: another configuration of the encoder"
        )
    state = {}
    for name, tensor in fresh.items():
        before = old[name]
        if before.shape == tensor.shape:
            state[name] = before.to(tensor.dtype)
        elif (
            before.dim() == tensor.dim()
            and before.shape[1:] == tensor.shape[1:]
            and before.shape[0] <= tensor.shape[0]
        ):
            grown = tensor.clone()
            grown[: before.shape[0]] = before.to(tensor.dtype)
            state[name] = grown
        else:
            raise WarmStartError(
                f"warm_start.bundle {bundle}: {name} is {tuple(before.shape)} there and "
                f"{tuple(tensor.shape)} here (another cf.dim or encoder setting): train from scratch"
            )
    return state


def replay_mask(
    uid: np.ndarray, iid: np.ndarray, timestamp: np.ndarray, since: int, replay: float, seed: int
) -> np.ndarray:
    """Which rows a warm start trains on: every row at or after ``since``, and each older one
    with probability ``replay`` (a hash of the row and ``seed``: the same rows every epoch,
    every rank and every rerun)."""
    new = timestamp >= since
    if replay >= 1.0:
        return np.ones(len(new), bool)
    coin = splitmix64(
        splitmix64(uid.astype(np.uint64) ^ np.uint64(seed))
        ^ splitmix64(iid.astype(np.uint64))
        ^ timestamp.astype(np.uint64)
    )
    drawn = (coin >> np.uint64(11)).astype(np.float64) * 2.0**-53 < replay
    return new | drawn


def replayed_rows(batch: pa.Table, since: int, replay: float, seed: int) -> pa.Table:
    """Ray Data map over a training split: the rows ``replay_mask`` keeps."""
    keep = replay_mask(
        batch["uid"].to_numpy(), batch["iid"].to_numpy(), batch["timestamp"].to_numpy(), since, replay, seed
    )
    return batch.filter(pa.array(keep))
