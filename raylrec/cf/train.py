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
from raylrec.cf.graph import shared_graph_ref
from raylrec.cf.models import CFEncoder
from raylrec.cf.streaming import (
    InteractionSplit,
    StreamedInputs,
    item_sets_refs,
    latest_histories,
    sample_users,
    streamed_batches,
    training_shards,
)
from raylrec.cf.task import (
    CFTask,
    build_encoder,
    epoch_batches,
    evaluate_ctr,
    evaluate_ranking,
    seen_pairs,
)
from raylrec.cf.warm_start import (
    WarmStart,
    WarmStartError,
    extended_state,
    plan_warm_start,
    replay_mask,
    replayed_rows,
)
from raylrec.config import RaylrecConfig
from raylrec.data.output import read_meta, read_split, read_table
from raylrec.eval import ItemSets, RankingAccumulator, format_report
from raylrec.train.engines import TorchEngine
from raylrec.train.loop import TrainState
from raylrec.train.pipeline import Fitting, StagePlan, TaskDefinition, TrainResult, run_pipeline
from raylrec.train.shards import shard_name

__all__ = ["CFDefinition", "CFResult", "train_cf"]

if TYPE_CHECKING:
    from raylrec.train.hooks import TrialHooks


CFResult = TrainResult  # the result of train_cf (one stage, ``result.state``)


class CFDefinition(TaskDefinition):
    """A CF encoder as a one-stage task: the encoder of ``config.cf``, its CFTask (the encoder's
    own loss, validation metrics) and its CF bundle."""

    kind = "CF bundle"

    def __init__(self, config: RaylrecConfig):
        super().__init__(config)
        # driver side: the item sets ray_datasets put in the object store, by (splits,
        # positives_only), which the final evaluation reuses; a graph encoder's shared graph
        self.item_sets: dict[tuple[tuple[str, ...], bool], Any] = {}
        self.graph_ref: Any = None
        self.warm: WarmStart | None = None  # set by initial_weights when warm_start.bundle is

    @cached_property
    def meta(self) -> dict[str, Any]:
        return read_meta(self.config.dataset_path())

    @cached_property
    def train(self) -> Split:
        """The training split, whole: the plain-process path only (the Ray path streams it)."""
        return load_split(self.config.dataset_path(), "train", self.config.cf.history_len)

    @cached_property
    def held_out_names(self) -> list[str]:
        return [s for s in ("valid", "test") if s in self.meta["counts"]["splits"]]

    @cached_property
    def held_out(self) -> dict[str, Split]:
        """The held-out splits, whole: the plain-process path only."""
        return {
            s: load_split(self.config.dataset_path(), s, self.config.cf.history_len)
            for s in self.held_out_names
        }

    @property
    def sizes(self) -> tuple[int, int]:
        counts = self.meta["counts"]
        return counts["num_users"], counts["num_items"]

    def default_run_name(self) -> str:
        from raylrec.train.ray_runner import default_run_name

        return default_run_name(f"{self.config.cf.model}-{self.config.cf.loss}")

    def stages(self) -> list[StagePlan]:
        return [StagePlan(self.config.cf.model, self.config.train, suffix=False)]

    def identity(self, stage: StagePlan) -> dict[str, Any]:
        warm = self.config.warm_start
        started = {"warm_start": warm.model_dump()} if warm.bundle else {}
        return {"cf": self.config.cf.model_dump(), **started}

    def initial_weights(self, say) -> dict[str, torch.Tensor]:
        """A warm start's bundle weights (``raylrec.cf.warm_start``), checked against the dataset;
        every worker extends them over its freshly built encoder."""
        warm, config = self.config.warm_start, self.config
        if not warm.bundle:
            return {}
        cf = config.cf.model_dump(mode="json")
        self.warm, state = plan_warm_start(warm.bundle, warm.replay, cf, config.dataset_path(), self.meta)
        say(self.warm.describe(*self.sizes))
        return state

    def announce(self, run_name: str, stages: list[StagePlan], say) -> None:
        if "valid" not in self.held_out_names:
            raise ValueError(f"{self.config.dataset_path()} has no valid split to select the best epoch on")
        cf = self.config.cf
        rows = self.meta["counts"]["splits"]["train"]
        say(f"training {cf.model} ({cf.loss}) on {self.config.dataset_path()}: {rows:,} rows, run {run_name}")

    def stage_done(self, stage: StagePlan, state: TrainState, say) -> None:
        say(f"best epoch {state.best_epoch} ({self.config.train.metric} {state.best_metric:.4f})")

    def ray_datasets(self, stage: StagePlan, say):
        """The training rows as one ordered shard per rank, and the item sets the workers share
        (``raylrec.cf.streaming``); nothing here holds a split."""
        from ray.train import DataConfig

        config, path = self.config, self.config.dataset_path()
        cf, (num_users, num_items) = config.cf, self.sizes
        bpr = cf.loss == "bpr"
        rows = read_split(path, "train")
        if self.warm is not None:
            kept = {"since": self.warm.since, "replay": self.warm.replay, "seed": config.train.seed}
            rows = rows.map_batches(replayed_rows, batch_format="pyarrow", fn_kwargs=kept)
        datasets, rows_per_rank = training_shards(
            rows,
            config.train.num_workers,
            cf.history_len,
            positives_only=bpr and not cf.implicit,
            seed=config.train.seed,
        )
        users = sample_users(num_users, config.eval.valid_users, config.train.seed)
        # Item sets by (splits, positives_only, distinct). Training sets hold each pair once (the
        # masks, BPR's exact sampler, the graph); valid's keep repeats, which recall's
        # denominators count. With implicit, BPR's seen set is its mask set: asked for once.
        known_key = target_key = seen_key = graph_key = None
        if bpr:
            known_key, target_key = (("train",), not cf.implicit, True), (("valid",), not cf.implicit, False)
            if cf.negatives != "uniform":
                seen_key = (("train",), False, True)
        else:
            datasets["valid"] = _valid_sample(read_split(path, "valid"), users, num_users)
        graph_rows = cf.encoder_class().graph_rows(cf)
        if graph_rows is not None:
            graph_key = (("train",), graph_rows == "positives", True)
        keys = list(dict.fromkeys(k for k in (known_key, target_key, seen_key, graph_key) if k))
        built = item_sets_refs(path, [(list(s), p, d) for s, p, d in keys], num_users) if keys else []
        refs = dict(zip(keys, built, strict=True))
        known, target, seen = refs.get(known_key), refs.get(target_key), refs.get(seen_key)
        if graph_key is not None:
            self.graph_ref = shared_graph_ref(refs[graph_key], num_items)
            say(f"{cf.model}'s interaction graph built once, kept in the object store for every process")
        if self.warm is not None:
            _check_warm_rows(rows_per_rank, config.train.batch_size, "per rank")
        inputs = StreamedInputs(rows_per_rank, seen, known, target, users, self.graph_ref)
        self.worker_data = {"inputs": inputs, "warm_sizes": self.warm.sizes if self.warm else None}
        # the final evaluation's masks and targets for valid are these same sets
        self.item_sets = {(("train",), not cf.implicit): known, (("valid",), not cf.implicit): target}
        say(f"streaming {rows_per_rank:,} training rows per rank to {config.train.num_workers} workers")
        return datasets, DataConfig(datasets_to_split=[])

    def worker_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor]) -> Fitting:
        import ray
        import ray.train
        import ray.train.torch

        config, cf = self.config, self.config.cf
        inputs: StreamedInputs = self.worker_data["inputs"]
        num_users, num_items = self.sizes
        model = build_encoder(cf, InteractionSplit(config.dataset_path(), num_users, num_items, inputs.graph))
        _warm_start(model, init, self.worker_data.get("warm_sizes"), config)
        bpr = cf.loss == "bpr"
        if bpr:
            known, target = ray.get([inputs.known, inputs.target])
            task = CFTask.from_item_sets(model, cf, config.eval, None, known, target, inputs.users)
        else:
            valid = _collect(ray.train.get_dataset_shard("valid"), cf.history_len, num_users, num_items)
            task = CFTask.from_item_sets(model, cf, config.eval, valid, None, None, None)
        with warnings.catch_warnings():
            # torch deprecates broadcast_buffers for forward_sync_buffers, which still syncs at
            # init; its own warning says to keep broadcast_buffers=False until init_sync_buffers
            # exists.
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            task.model = ray.train.torch.prepare_model(
                model, parallel_strategy_kwargs={"broadcast_buffers": False}
            )
        steps_per_epoch = inputs.rows_per_rank // config.train.batch_size
        engine = TorchEngine(task.model, config.train, config.train.epochs * steps_per_epoch)
        rank = ray.train.get_context().get_world_rank()
        shard = ray.train.get_dataset_shard(shard_name(rank))
        seen = ray.get(inputs.seen) if inputs.seen is not None else None
        size, seed = config.train.batch_size, config.train.seed

        def batches(epoch: int):
            return streamed_batches(shard, size, seed, rank, epoch, num_items, bpr, seen)

        return Fitting(task, batches, engine, steps_per_epoch)

    def local_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor], say) -> Fitting:
        config, train = self.config, self.train
        # train.use_gpu in a plain process: the encoder and its batches on the GPU (as the LLM
        # methods' plain path does); the exported weights come back to the CPU (engine.weights).
        device = torch.device("cuda" if torch.cuda.is_available() and config.train.use_gpu else "cpu")
        model = build_encoder(config.cf, train)
        _warm_start(model, init, self.warm.sizes if self.warm else None, config)
        model = model.to(device)
        task = CFTask(model, config.cf, config.eval, train, self.held_out["valid"])
        seen = seen_pairs(train, config.cf)  # every training pair: BPR's negatives are unseen ones
        rows = self._warm_rows(train)
        if self.warm is not None:
            _check_warm_rows(len(rows), config.train.batch_size, "")
        steps_per_epoch = len(rows) // config.train.batch_size
        size, seed = config.train.batch_size, config.train.seed

        def batches(epoch: int):
            for batch in epoch_batches(rows, size, seed, epoch, config.cf, seen=seen):
                yield {k: v.to(device) for k, v in batch.items()}

        return Fitting(
            task,
            batches,
            TorchEngine(model, config.train, config.train.epochs * steps_per_epoch),
            steps_per_epoch,
        )

    def _warm_rows(self, train: Split) -> Split:
        """The training rows a warm start trains on (all of them for a fresh model)."""
        if self.warm is None:
            return train
        table = read_table(self.config.dataset_path(), "train", columns=["timestamp"])
        keep = replay_mask(
            train.arrays["uid"],
            train.arrays["iid"],
            table["timestamp"].to_numpy(),
            self.warm.since,
            self.warm.replay,
            self.config.train.seed,
        )
        return Split({k: v[keep] for k, v in train.arrays.items()}, train.num_users, train.num_items)

    def final_metrics(self, states: dict[str, TrainState], weights: dict[str, torch.Tensor], say):
        config = self.config
        num_users, num_items = self.sizes
        if self.use_ray and not self._small_enough_for_the_driver():
            from raylrec.cf.distributed_eval import distributed_metrics

            self.model = build_encoder(
                config.cf, InteractionSplit(config.dataset_path(), num_users, num_items, self.graph_ref)
            )
            self.model.load_state_dict(weights)
            say(f"evaluating on {', '.join(self.held_out_names)} with Ray Data (every user)")
            metrics = distributed_metrics(
                config, weights, self.held_out_names, num_users, num_items, self.item_sets, self.graph_ref
            )
        else:
            if self.use_ray:
                say(
                    f"evaluating on {', '.join(self.held_out_names)} in this process "
                    "(eval.in_process_max_rows)"
                )
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

    def _small_enough_for_the_driver(self) -> bool:
        """Train and held-out rows within ``eval.in_process_max_rows``: the bounded in-process
        evaluation beats the Ray Data jobs' start-up (memory stays bounded by the setting)."""
        splits = self.meta["counts"]["splits"]
        rows = sum(splits[s] for s in ["train", *self.held_out_names])
        return rows <= self.config.eval.in_process_max_rows

    def export(self, weights: dict[str, torch.Tensor], metrics: dict[str, float], run_name: str) -> str:
        config = self.config
        if not self.use_ray:
            started_from = self._started_from()
            return save_cf_bundle(
                config.output, self.model, config, self.meta, metrics, self.train, started_from=started_from
            )
        num_users, num_items = self.sizes
        train = InteractionSplit(config.dataset_path(), num_users, num_items, self.graph_ref)
        histories = (
            latest_histories(config.dataset_path(), config.cf.history_len, num_users)
            if config.cf.history_len
            else None
        )
        return save_cf_bundle(
            config.output, self.model, config, self.meta, metrics, train, histories, self._started_from()
        )

    def _started_from(self) -> dict[str, Any] | None:
        return self.warm.record() if self.warm is not None else None


def _warm_start(
    model: CFEncoder, init: dict[str, torch.Tensor], sizes: tuple[int, int] | None, config: RaylrecConfig
) -> None:
    """A warm start's weights over the freshly built ``model`` (its new rows keep their seeded
    initialisation; ``sizes``: the bundle's users and items); nothing for a fresh run."""
    if init:
        model.load_state_dict(extended_state(model, init, sizes, config.warm_start.bundle))


def _check_warm_rows(rows: int, batch_size: int, where: str) -> None:
    if rows < batch_size:
        raise WarmStartError(
            f"the warm start keeps {rows:,} training rows{' ' + where if where else ''}, fewer than one "
            f"batch (train.batch_size {batch_size}): lower train.batch_size or raise warm_start.replay"
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
        sample = None
        if config.eval.final_users is not None:
            sample = sample_users(train.num_users, config.eval.final_users, config.train.seed)
        for name, split in splits.items():
            users, items = positives(split, config.cf.implicit)
            known = ItemSets.from_pairs(known_users, known_items, train.num_users)
            metrics.update(
                evaluate_ranking(
                    model,
                    known,
                    ItemSets.from_pairs(users, items, train.num_users),
                    config.eval,
                    name,
                    sample,
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
    update: dict[str, Any] = {"dataset": storage.absolute(config.dataset_path())}
    if config.warm_start.bundle:  # absolute: the workers and the run's fingerprint see one spelling
        update["warm_start"] = config.warm_start.model_copy(
            update={"bundle": storage.absolute(config.warm_start.bundle)}
        )
    config = config.model_copy(update=update)
    return run_pipeline(CFDefinition(config), say, use_ray, trial)


def _valid_sample(dataset, users: np.ndarray, num_users: int):
    """The valid rows of the sampled users (every row when every user is sampled), materialised
    before the workers start; every worker validates on them whole."""
    if len(users) < num_users - 1:
        dataset = dataset.map_batches(_keep_users, batch_format="pyarrow", fn_kwargs={"users": users})
    return dataset.materialize()


def _keep_users(batch: pa.Table, users: np.ndarray) -> pa.Table:
    return batch.filter(pc.is_in(batch["uid"], value_set=pa.array(users, batch.schema.field("uid").type)))


def _collect(iterator, history_len: int, num_users: int, num_items: int) -> Split:
    """A small dataset's rows (the validation sample), whole, as a Split."""
    batches = list(iterator.iter_batches(batch_format="pyarrow"))
    table = pa.concat_tables(batches) if batches else None
    return Split(to_arrays(table, history_len), num_users, num_items)
