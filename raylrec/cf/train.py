"""Training a CF encoder end to end: data -> Ray Train (or a plain process) -> best weights ->
evaluation -> CF bundle."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raylrec import storage
from raylrec.cf.bundle import save_cf_bundle
from raylrec.cf.data import Split, load_split, positives, to_arrays
from raylrec.cf.models import CFEncoder
from raylrec.cf.task import (
    CFTask,
    build_encoder,
    epoch_batches,
    evaluate_ctr,
    evaluate_ranking,
    seen_pairs,
)
from raylrec.config import RaylrecConfig
from raylrec.data.output import read_meta, read_split
from raylrec.eval import ItemSets, RankingAccumulator, format_report
from raylrec.train.engines import TorchEngine
from raylrec.train.loop import TrainState, fit
from raylrec.train.reporting import LocalReporter, config_fingerprint

__all__ = ["CFResult", "train_cf"]

if TYPE_CHECKING:
    from raylrec.train.ray_runner import TrialHooks


@dataclass
class CFResult:
    run_name: str
    state: TrainState
    metrics: dict[str, float]
    bundle: str | None
    seconds: float


def _history_len(config: RaylrecConfig) -> int:
    return config.cf.history_len


def _fingerprint(config: RaylrecConfig) -> str:
    return config_fingerprint(
        {
            "dataset": config.dataset_path(),
            "cf": config.cf.model_dump(),
            # What defines the trajectory; epochs and patience may grow when a run is extended.
            "train": config.train.model_dump(
                include={
                    "batch_size",
                    "lr",
                    "weight_decay",
                    "seed",
                    "metric",
                    "mode",
                    "optimizer",
                    "schedule",
                    "warmup_ratio",
                    "max_grad_norm",
                }
            ),
        }
    )


def _rows_for_training(batch: pa.Table, history_len: int, positives_only: bool) -> dict[str, np.ndarray]:
    """Ray Data map: a split's rows -> the arrays a worker trains on (BPR keeps positives only,
    before the split across workers, so every worker gets the same number of steps)."""
    if positives_only:
        batch = batch.filter(pc.equal(batch["label"], 1))
    return to_arrays(batch, history_len)


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: everything model-specific lives in the CF task and fit()."""
    import ray.train
    import ray.train.torch

    from raylrec.train.ray_runner import fit_in_worker, shard_arrays

    config = RaylrecConfig.model_validate(loop_config["config"])
    torch.manual_seed(config.train.seed)
    history_len = _history_len(config)
    full_train = load_split(config.dataset_path(), "train", history_len)
    valid = load_split(config.dataset_path(), "valid", history_len)
    arrays = shard_arrays("train")
    if config.cf.loss == "bpr":
        arrays["label"] = np.ones(len(arrays["uid"]), np.float32)  # positives only, see above
    mine = Split(arrays, full_train.num_users, full_train.num_items)

    model = build_encoder(config.cf, full_train)
    task = CFTask(model, config.cf, config.eval, full_train, valid)
    task.model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    steps_per_epoch = len(mine) // config.train.batch_size
    engine = TorchEngine(task.model, config.train, config.train.epochs * steps_per_epoch)
    cf = config.cf.model_copy(update={"implicit": True}) if config.cf.loss == "bpr" else config.cf
    rank = ray.train.get_context().get_world_rank()
    seen = seen_pairs(full_train, cf)  # the whole split's pairs: this rank trains on a shard
    fit_in_worker(
        task,
        lambda epoch: epoch_batches(
            mine, config.train.batch_size, config.train.seed + rank, epoch, cf, seen=seen
        ),
        engine,
        config.train,
        loop_config,
        {"cf": config.cf.model_dump(), "train": config.train.model_dump()},
        steps_per_epoch,
    )


def _train_ray(
    config: RaylrecConfig, run_name: str, fingerprint: str, trial: TrialHooks | None = None
) -> TrainState:
    from raylrec.train.ray_runner import run_on_ray

    dataset = read_split(config.dataset_path(), "train").map_batches(
        _rows_for_training,
        batch_format="pyarrow",
        fn_kwargs={
            "history_len": _history_len(config),
            "positives_only": config.cf.loss == "bpr" and not config.cf.implicit,
        },
    )
    # Read before the workers start: once they hold every CPU (2 workers on a 2-core machine),
    # read tasks could never be scheduled. The object store then serves the shards.
    dataset = dataset.materialize()
    return run_on_ray(
        _worker_loop,
        {"config": config.model_dump(mode="json")},
        config.train,
        run_name,
        fingerprint,
        {"train": dataset},
        trial=trial,
    )


def _train_local(config: RaylrecConfig, train: Split, valid: Split) -> TrainState:
    torch.manual_seed(config.train.seed)
    model = build_encoder(config.cf, train)
    task = CFTask(model, config.cf, config.eval, train, valid)
    steps_per_epoch = len(train) // config.train.batch_size
    seen = seen_pairs(train, config.cf)
    return fit(
        task,
        lambda epoch: epoch_batches(
            train, config.train.batch_size, config.train.seed, epoch, config.cf, seen=seen
        ),
        config.train,
        LocalReporter(),
        TorchEngine(model, config.train, config.train.epochs * steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
    )


def _final_metrics(
    config: RaylrecConfig, model: CFEncoder, train: Split, splits: dict[str, Split]
) -> dict[str, float]:
    """Best weights on every held-out split; top-K masks training (and earlier held-out) items."""
    model.eval()
    metrics: dict[str, float] = {}
    with torch.no_grad():
        if config.cf.loss == "bce":
            for name, split in splits.items():
                metrics.update(evaluate_ctr(model, split, config.eval, name))
            return metrics
        known_users, known_items = positives(train, config.cf.implicit)
        for name, split in splits.items():
            users, items = positives(split, config.cf.implicit)
            known = ItemSets.from_pairs(known_users, known_items, train.num_users)
            metrics.update(
                evaluate_ranking(
                    model, known, ItemSets.from_pairs(users, items, train.num_users), config.eval, name
                )
            )
            known_users, known_items = np.r_[known_users, users], np.r_[known_items, items]
    return metrics


def train_cf(
    config: RaylrecConfig,
    say: Callable[[str], None] = print,
    use_ray: bool = True,
    trial: TrialHooks | None = None,
) -> CFResult:
    """Train ``config.cf`` on ``config.dataset_path()``; evaluate the best weights on valid (and
    test when the dataset has it); export the CF bundle to ``config.output`` if set. ``trial``:
    this run is a Ray Tune trial (every epoch's metrics go to Tune)."""
    from raylrec.train.ray_runner import default_run_name

    started = time.perf_counter()
    config = config.model_copy(update={"dataset": storage.absolute(config.dataset_path())})
    dataset = config.dataset_path()
    meta = read_meta(dataset)
    history_len = _history_len(config)
    train = load_split(dataset, "train", history_len)
    held_out = {
        s: load_split(dataset, s, history_len) for s in ("valid", "test") if s in meta["counts"]["splits"]
    }
    if "valid" not in held_out:
        raise ValueError(f"{dataset} has no valid split to select the best epoch on")
    run_name = config.train.run_name or default_run_name(f"{config.cf.model}-{config.cf.loss}")
    say(f"training {config.cf.model} ({config.cf.loss}) on {dataset}: {len(train):,} rows, run {run_name}")
    if use_ray:
        state = _train_ray(config, run_name, _fingerprint(config), trial)
    else:
        state = _train_local(config, train, held_out["valid"])
    model = build_encoder(config.cf, train)
    model.load_state_dict(state.best_model)
    metrics = _final_metrics(config, model, train, held_out)
    say(f"best epoch {state.best_epoch} ({config.train.metric} {state.best_metric:.4f})")
    protocol = (
        f"CTR, UAUC averaged per {config.eval.uauc_weighting}"
        if config.cf.loss == "bce"
        else RankingAccumulator(tuple(config.eval.ks), config.eval.recall_denominator).describe()
    )
    say(format_report(f"{config.cf.model} on {dataset}", metrics, protocol))
    bundle = None
    if config.output:
        bundle = save_cf_bundle(config.output, model, config, meta, metrics, train)
        say(f"CF bundle written to {bundle}")
    return CFResult(run_name, state, metrics, bundle, time.perf_counter() - started)
