"""Warm-starting a CF encoder from an earlier CF bundle: the nightly refresh of a growing log.

A dataset appended day by day (``raylrec data prepare --append``) keeps every dense id and gives
new users and items the next ones, so yesterday's tables are a prefix of today's. A warm start

- checks that prefix: every user and item of the bundle has the same dense id in the dataset
  (a full re-preparation renumbers them; training on it from the bundle would scramble them);
- builds the encoder as a fresh run would (seeded), then copies the bundle's weights over it: a
  table that grew keeps the bundle's rows on top and the fresh initialisation below, for the
  new users and items (``extended_state``);
- trains on the training rows after the bundle's training cutoff (what it has not seen), plus
  a replay sample of the older ones (``warm_start.replay``, a seeded coin per row): fine-tuning
  on the new period is the retraining baseline of Zhang et al., "How to Retrain Recommender
  System? A Sequential Meta-Learning Method" (SIGIR 2020), and a replay sample of older data the
  common guard against forgetting them;
- records where it started (``warm_start`` in the new bundle's ``config.json``).

The bundle's training cutoff is the dataset's ``valid`` start when it trained (a time split's
``temporal_cutoffs``): rows before it were training rows then. A random or leave-last-out split
has no such instant, so it cannot be warm-started from: its "new rows" are not defined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from raylrec.data.hashing import splitmix64
from raylrec.data.output import train_cutoff

if TYPE_CHECKING:
    from raylrec.cf.models import CFEncoder

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


FROM_SCRATCH = "train from scratch (without --init-from; in a nightly: nightly.warm_start_cf=false)"


# Fields of a recorded ``cf`` section that change how an encoder trains, not what its weights
# mean: a warm start may change them. Any other difference (dim, loss, the encoder's own
# settings) is refused.
TRAINING_ONLY = frozenset({"reg_weight", "negatives"})


@dataclass(frozen=True)
class WarmStart:
    """A checked warm start: the bundle and which training rows to use."""

    bundle: str
    since: int  # rows at or after this instant are new; earlier ones are replayed
    replay: float
    sizes: tuple[int, int]  # the bundle's (num_users, num_items)

    def describe(self, num_users: int, num_items: int) -> str:
        """The progress line of a run that starts here, on tables of ``num_users`` and ``num_items``."""
        new_users, new_items = num_users - self.sizes[0], num_items - self.sizes[1]
        return (
            f"warm start from {self.bundle}: {new_users:,} new user rows and {new_items:,} new item rows "
            f"initialised fresh; training on the rows from {_iso(self.since)} on, and {self.replay:.0%} "
            "of the older ones"
        )

    def record(self) -> dict[str, Any]:
        """What the new bundle's ``config.json`` says of its start."""
        return {
            "bundle": self.bundle,
            "since": self.since,
            "replay": self.replay,
            "num_users": self.sizes[0],
            "num_items": self.sizes[1],
        }


def plan_warm_start(
    bundle: str, replay: float, cf: dict[str, Any], dataset: str, meta: dict[str, Any]
) -> tuple[WarmStart, dict[str, torch.Tensor]]:
    """Check ``bundle`` against this run (the ``cf`` section, as JSON, on ``dataset``) and load
    its weights. Raises ``WarmStartError`` naming what does not match."""
    from safetensors.torch import load_file

    from raylrec.bundle_dir import fetch_files
    from raylrec.cf.bundle import cf_vocabularies, check_cf_bundle
    from raylrec.data.output import read_table
    from raylrec.data.vocab import Vocabulary

    description = check_cf_bundle(bundle)  # every file against its checksum first
    recorded = description["cf"]
    if recorded["model"] != cf["model"]:
        raise WarmStartError(
            f"warm_start.bundle {bundle} holds a {recorded['model']} encoder; this run trains "
            f"{cf['model']}: {FROM_SCRATCH}, or start from a {cf['model']} bundle"
        )
    changed = sorted(
        k for k in set(recorded) | set(cf) if k not in TRAINING_ONLY and recorded.get(k) != cf.get(k)
    )
    if changed:
        differences = "; ".join(f"cf.{k} {recorded.get(k)} there, {cf.get(k)} here" for k in changed)
        raise WarmStartError(
            f"warm_start.bundle {bundle} is another encoder configuration ({differences}): {FROM_SCRATCH}"
        )
    since = description.get("training", {}).get("train_cutoff")
    if since is None:
        raise WarmStartError(
            f"warm_start.bundle {bundle} records no training cutoff (it was trained on a dataset without a "
            "time split, or by a raylrec before warm starts): the rows it has not seen are not defined; "
            + FROM_SCRATCH
        )
    cutoff = train_cutoff(meta)
    if cutoff is None:
        raise WarmStartError(
            f"{dataset} has no time split (its split: {_split_name(meta)}): a warm start trains on the rows "
            "after the bundle's cutoff, which needs one (data.split: rolling_days, temporal_fraction or "
            "temporal_window)"
        )
    if since >= cutoff:
        raise WarmStartError(
            f"warm_start.bundle {bundle} has seen every training row of {dataset} (its training rows end "
            f"at {_iso(since)}, this dataset's at {_iso(cutoff)}): nothing new to train on; start from an "
            "older bundle or append the new days first"
        )
    for what, ids, (raw, dense) in zip(
        ("user", "item"), cf_vocabularies(bundle), (("user_id", "uid"), ("item_id", "iid")), strict=True
    ):
        here = Vocabulary.from_table(read_table(dataset, f"{what}s.parquet"), raw, dense)
        _check_prefix(what, ids, here, bundle, dataset)
    with fetch_files(bundle, ("model.safetensors",)) as local:
        state = load_file(local["model.safetensors"])
    start = WarmStart(bundle, int(since), replay, (description["num_users"], description["num_items"]))
    return start, state


def _iso(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


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
            f"--append` keeps ids; a full preparation renumbers them); {FROM_SCRATCH}"
        )


def extended_state(
    model: CFEncoder, old: dict[str, torch.Tensor], old_sizes: tuple[int, int], bundle: str
) -> dict[str, torch.Tensor]:
    """``model``'s state (a seeded fresh encoder) with the bundle's weights ``old`` copied over
    it: each id table (``CFEncoder.id_tables``) gets the old rows of each side where that side's
    ids now are, its new rows keeping their fresh initialisation; every other weight is the
    bundle's, whole. ``old_sizes``: the bundle's (num_users, num_items)."""
    fresh = model.state_dict()
    if set(fresh) != set(old):
        missing, unknown = sorted(set(fresh) - set(old)), sorted(set(old) - set(fresh))
        raise WarmStartError(
            f"warm_start.bundle {bundle} is another configuration of the encoder: it lacks {missing} and "
            f"holds {unknown}; {FROM_SCRATCH}"
        )
    before = dict(zip(("users", "items"), old_sizes, strict=True))
    now = {"users": model.num_users, "items": model.num_items}
    for side in before:
        if before[side] > now[side]:
            raise WarmStartError(
                f"warm_start.bundle {bundle} has {before[side]:,} {side} rows, more rows than this dataset's "
                f"{now[side]:,}: it is not from an earlier version of it; {FROM_SCRATCH}"
            )
    tables = model.id_tables()
    state = {}
    for name, tensor in fresh.items():
        weight = old[name].to(tensor.dtype)
        layout = tables.get(name)
        expected = (sum(before[s] for s in layout), *tensor.shape[1:]) if layout else tuple(tensor.shape)
        if tuple(weight.shape) != expected:
            raise WarmStartError(
                f"warm_start.bundle {bundle}: {name} is {tuple(weight.shape)} there and "
                f"{tuple(tensor.shape)} here (another cf setting): {FROM_SCRATCH}"
            )
        if not layout:
            state[name] = weight
            continue
        grown, source, target = tensor.clone(), 0, 0
        for side in layout:  # e.g. LightGCN's one table: users, then items
            grown[target : target + before[side]] = weight[source : source + before[side]]
            source, target = source + before[side], target + now[side]
        state[name] = grown
    return state


def replay_mask(
    uid: np.ndarray, iid: np.ndarray, timestamp: np.ndarray, since: int, replay: float, seed: int
) -> np.ndarray:
    """Which rows a warm start trains on: every row at or after ``since``, and each older one
    with probability ``replay`` (a hash of the row, ``seed`` and ``since``: the same rows every
    epoch, on every rank and in a rerun, another sample each night)."""
    new = timestamp >= since
    if replay >= 1.0:
        return np.ones(len(new), bool)
    # the cutoff in the coin: each night (a new cutoff) replays another sample of the old rows
    coin = splitmix64(
        splitmix64(uid.astype(np.uint64) ^ np.uint64(seed))
        ^ splitmix64(iid.astype(np.uint64) ^ np.uint64(since))
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
