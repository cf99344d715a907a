"""Training a CF encoder end to end: data -> Ray Train (or a plain process) -> best weights ->
evaluation -> CF bundle. The encoder is a one-stage ``TaskDefinition``; ``raylrec.train.pipeline``
runs it (fingerprint, resume, result, export hook)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cached_property
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
from raylrec.train.loop import TrainState
from raylrec.train.pipeline import Fitting, StagePlan, TaskDefinition, TrainResult, run_pipeline

__all__ = ["CFDefinition", "CFResult", "train_cf"]

if TYPE_CHECKING:
    from raylrec.train.hooks import TrialHooks


CFResult = TrainResult  # the result of train_cf (one stage, ``result.state``)


def _rows_for_training(batch: pa.Table, history_len: int, positives_only: bool) -> dict[str, np.ndarray]:
    """Ray Data map: a split's rows -> the arrays a worker trains on (BPR keeps positives only,
    before the split across workers, so every worker gets the same number of steps)."""
    if positives_only:
        batch = batch.filter(pc.equal(batch["label"], 1))
    return to_arrays(batch, history_len)


class CFDefinition(TaskDefinition):
    """A CF encoder as a one-stage task: the encoder of ``config.cf``, its CFTask (the encoder's
    own loss, validation metrics) and its CF bundle."""

    kind = "CF bundle"

    @cached_property
    def meta(self) -> dict[str, Any]:
        return read_meta(self.config.dataset_path())

    @cached_property
    def train(self) -> Split:
        return load_split(self.config.dataset_path(), "train", self.config.cf.history_len)

    @cached_property
    def held_out(self) -> dict[str, Split]:
        splits = [s for s in ("valid", "test") if s in self.meta["counts"]["splits"]]
        return {s: load_split(self.config.dataset_path(), s, self.config.cf.history_len) for s in splits}

    def default_run_name(self) -> str:
        from raylrec.train.ray_runner import default_run_name

        return default_run_name(f"{self.config.cf.model}-{self.config.cf.loss}")

    def stages(self) -> list[StagePlan]:
        return [StagePlan(self.config.cf.model, self.config.train, suffix=False)]

    def identity(self, stage: StagePlan) -> dict[str, Any]:
        return {"cf": self.config.cf.model_dump()}

    def announce(self, run_name: str, stages: list[StagePlan], say) -> None:
        if "valid" not in self.held_out:
            raise ValueError(f"{self.config.dataset_path()} has no valid split to select the best epoch on")
        cf = self.config.cf
        say(
            f"training {cf.model} ({cf.loss}) on {self.config.dataset_path()}: {len(self.train):,} rows, "
            f"run {run_name}"
        )

    def stage_done(self, stage: StagePlan, state: TrainState, say) -> None:
        say(f"best epoch {state.best_epoch} ({self.config.train.metric} {state.best_metric:.4f})")

    def ray_datasets(self, stage: StagePlan, say):
        config = self.config
        dataset = read_split(config.dataset_path(), "train").map_batches(
            _rows_for_training,
            batch_format="pyarrow",
            fn_kwargs={
                "history_len": config.cf.history_len,
                "positives_only": config.cf.loss == "bpr" and not config.cf.implicit,
            },
        )
        # Read before the workers start: once they hold every CPU (2 workers on a 2-core
        # machine), read tasks could never be scheduled. The object store then serves the shards.
        return {"train": dataset.materialize()}, None

    def worker_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor]) -> Fitting:
        import ray.train
        import ray.train.torch

        from raylrec.train.ray_runner import shard_arrays

        config = self.config
        history_len = config.cf.history_len
        full_train = load_split(config.dataset_path(), "train", history_len)
        valid = load_split(config.dataset_path(), "valid", history_len)
        arrays = shard_arrays("train")
        if config.cf.loss == "bpr":
            arrays["label"] = np.ones(len(arrays["uid"]), np.float32)  # positives only, see above
        mine = Split(arrays, full_train.num_users, full_train.num_items)
        model = build_encoder(config.cf, full_train)
        task = CFTask(model, config.cf, config.eval, full_train, valid)
        with warnings.catch_warnings():
            # torch deprecates broadcast_buffers for forward_sync_buffers, which still syncs at
            # init; its own warning says to keep broadcast_buffers=False until init_sync_buffers
            # exists.
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            task.model = ray.train.torch.prepare_model(
                model, parallel_strategy_kwargs={"broadcast_buffers": False}
            )
        steps_per_epoch = len(mine) // config.train.batch_size
        engine = TorchEngine(task.model, config.train, config.train.epochs * steps_per_epoch)
        cf = config.cf.model_copy(update={"implicit": True}) if config.cf.loss == "bpr" else config.cf
        rank = ray.train.get_context().get_world_rank()
        seen = seen_pairs(full_train, cf)  # the whole split's pairs: this rank trains on a shard
        size, seed = config.train.batch_size, config.train.seed + rank
        return Fitting(
            task, lambda epoch: epoch_batches(mine, size, seed, epoch, cf, seen=seen), engine, steps_per_epoch
        )

    def local_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor], say) -> Fitting:
        config, train = self.config, self.train
        # train.use_gpu in a plain process: the encoder and its batches on the GPU (as the LLM
        # methods' plain path does); the exported weights come back to the CPU (engine.weights).
        device = torch.device("cuda" if torch.cuda.is_available() and config.train.use_gpu else "cpu")
        model = build_encoder(config.cf, train).to(device)
        task = CFTask(model, config.cf, config.eval, train, self.held_out["valid"])
        steps_per_epoch = len(train) // config.train.batch_size
        seen = seen_pairs(train, config.cf)
        size, seed = config.train.batch_size, config.train.seed

        def batches(epoch: int):
            for batch in epoch_batches(train, size, seed, epoch, config.cf, seen=seen):
                yield {k: v.to(device) for k, v in batch.items()}

        return Fitting(
            task,
            batches,
            TorchEngine(model, config.train, config.train.epochs * steps_per_epoch),
            steps_per_epoch,
        )

    def final_metrics(self, states: dict[str, TrainState], weights: dict[str, torch.Tensor], say):
        config = self.config
        self.model = build_encoder(config.cf, self.train)
        self.model.load_state_dict(weights)
        metrics = _final_metrics(config, self.model, self.train, self.held_out)
        protocol = (
            f"CTR, UAUC averaged per {config.eval.uauc_weighting}"
            if config.cf.loss == "bce"
            else RankingAccumulator(tuple(config.eval.ks), config.eval.recall_denominator).describe()
        )
        say(format_report(f"{config.cf.model} on {config.dataset_path()}", metrics, protocol))
        return metrics

    def export(self, weights: dict[str, torch.Tensor], metrics: dict[str, float], run_name: str) -> str:
        config = self.config
        return save_cf_bundle(config.output, self.model, config, self.meta, metrics, self.train)


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
) -> TrainResult:
    """Train ``config.cf`` on ``config.dataset_path()``; evaluate the best weights on valid (and
    test when the dataset has it); export the CF bundle to ``config.output`` if set. ``trial``:
    this run is a Ray Tune trial (every epoch's metrics go to Tune)."""
    config = config.model_copy(update={"dataset": storage.absolute(config.dataset_path())})
    return run_pipeline(CFDefinition(config), say, use_ray, trial)
