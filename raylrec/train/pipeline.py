"""One training pipeline for every kind of model: CF encoders, LLM methods and what comes next.

A model kind is a ``TaskDefinition``: its stages, what of its config defines the model (for the
fingerprint), how to build the model, its batches and its ``Task`` (loss and evaluation) for a
stage — in a plain process or inside a Ray Train worker —, its final metrics and its export.
``run_pipeline`` does the rest the same way for all of them:

- each stage trains in a plain process (``fit`` with a ``LocalReporter``) or as one Ray Train
  run (``run_on_ray``), named ``<run>`` for a one-stage task and ``<run>-<stage>`` otherwise;
- one fingerprint per stage: the dataset, the task's ``identity`` and the ``TrainConfig``
  fields of ``TRAJECTORY_FIELDS``; epochs and patience are not among them, so a finished run
  can be extended under the same name;
- one resume rule (``raylrec.train.ray_runner``): a reused run name resumes that run, a
  changed configuration under it is refused before any worker starts, and a finished run
  starts no workers;
- the best weights of a stage start the next one (``init``);
- one result, ``TrainResult``, and one export hook, ``TaskDefinition.export``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from raylrec.config import RaylrecConfig, TrainConfig
from raylrec.registry import import_object
from raylrec.timeline import mark
from raylrec.train.engines import Engine
from raylrec.train.loop import Batch, Task, TrainState, fit
from raylrec.train.reporting import LocalReporter, config_fingerprint

if TYPE_CHECKING:
    import ray

    from raylrec.train.hooks import TrialHooks

__all__ = [
    "TRAJECTORY_FIELDS",
    "Fitting",
    "StagePlan",
    "TaskDefinition",
    "TrainResult",
    "fingerprint",
    "run_pipeline",
]

# The TrainConfig fields that define a run's trajectory: a run resumed or extended under its
# name must have the same values (epochs and patience may grow; where checkpoints, logs and
# workers go does not change the weights).
TRAJECTORY_FIELDS = frozenset(
    {
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
        "strategy",
        "zero_stage",
    }
)


@dataclass
class TrainResult:
    """What a training run gives back: each stage's final state (in order), the final metrics,
    where the bundle went (None: no ``output``), and the wall-clock seconds."""

    run_name: str
    states: dict[str, TrainState]
    metrics: dict[str, float]
    bundle: str | None
    seconds: float

    @property
    def state(self) -> TrainState:
        """The last stage's state (a one-stage task's only one)."""
        return self.states[next(reversed(self.states))]


@dataclass(frozen=True)
class StagePlan:
    """One stage: ``train`` is the TrainConfig it runs under (its own epochs, say);
    ``suffix``: its Ray Train run is ``<run>-<name>`` (False: ``<run>``, a one-stage task)."""

    name: str
    train: TrainConfig
    suffix: bool = True
    spec: Any = None  # the task's own description of the stage (a method's ``Stage``)


@dataclass
class Fitting:
    """What ``fit`` needs for one stage: the task (model, loss, evaluation), the seeded batches
    of an epoch, the engine, and the steps of an epoch."""

    task: Task
    batches: Callable[[int], Iterable[Batch]]
    engine: Engine
    steps_per_epoch: int


class TaskDefinition:
    """A model kind. ``config`` is the run's configuration with every path absolute (workers
    run elsewhere); a definition is rebuilt from it inside each Ray Train worker, so it holds
    nothing else that the workers need."""

    kind = "model"  # what the bundle is called in messages

    def __init__(self, config: RaylrecConfig):
        self.config = config
        # Set by run_pipeline: whether the stages train on Ray Train (final_metrics may then
        # evaluate with Ray too).
        self.use_ray = False
        # Small facts the driver learns in ``ray_datasets`` (rows per shard, object-store
        # references) that every worker's ``worker_fitting`` needs; travels in the loop config.
        self.worker_data: dict[str, Any] = {}

    # --- what a model kind defines ------------------------------------------------------------

    def default_run_name(self) -> str:
        raise NotImplementedError

    def stages(self) -> list[StagePlan]:
        raise NotImplementedError

    def announce(self, run_name: str, stages: list[StagePlan], say) -> None:
        """Driver side, before anything trains: check the inputs and say what will run."""

    def identity(self, stage: StagePlan) -> dict[str, Any]:
        """The config sections that define the model and its data for ``stage`` (fingerprint)."""
        raise NotImplementedError

    def ray_datasets(self, stage: StagePlan, say) -> tuple[dict[str, ray.data.Dataset], Any]:
        """Driver side, before the workers start: the Ray datasets and the ``DataConfig``."""
        raise NotImplementedError

    def worker_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor]) -> Fitting:
        """Inside a Ray Train worker (after ``torch.manual_seed``): this rank's fitting."""
        raise NotImplementedError

    def local_fitting(self, stage: StagePlan, init: dict[str, torch.Tensor], say) -> Fitting:
        """In a plain process (after ``torch.manual_seed``)."""
        raise NotImplementedError

    def initial_weights(self, say) -> dict[str, torch.Tensor]:
        """Weights the first stage starts from (e.g. another bundle's)."""
        return {}

    def stage_done(self, stage: StagePlan, state: TrainState, say) -> None:
        say(f"stage {stage.name}: best epoch {state.best_epoch} ({_best(stage.train, state)})")

    def final_metrics(self, states: dict[str, TrainState], weights: dict[str, torch.Tensor], say):
        raise NotImplementedError

    def export(self, weights: dict[str, torch.Tensor], metrics: dict[str, float], run_name: str) -> str:
        """Write the bundle to ``config.output``; returns where it went."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------

    @classmethod
    def path(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    def wandb_config(self, stage: StagePlan) -> dict[str, Any]:
        return {**self.identity(stage), "train": stage.train.model_dump()}


def _best(train: TrainConfig, state: TrainState) -> str:
    return f"{train.metric} {state.best_metric:.4f}"


def fingerprint(definition: TaskDefinition, stage: StagePlan) -> str:
    """What must not change when ``stage``'s run resumes."""
    return config_fingerprint(
        {
            "dataset": definition.config.dataset_path(),
            **definition.identity(stage),
            "train": stage.train.model_dump(include=set(TRAJECTORY_FIELDS)),
        }
    )


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of every task: rebuild the definition, let it build this rank's
    fitting, and fit (resuming from this run's last checkpoint)."""
    import psutil

    from raylrec.train.ray_runner import fit_in_worker

    os.environ.update(loop_config["environment"])
    mark("worker process start", "worker", at=psutil.Process().create_time())
    mark("worker loop start", "worker")
    definition = import_object(loop_config["definition"])(RaylrecConfig.model_validate(loop_config["config"]))
    definition.use_ray, definition.worker_data = True, loop_config["worker_data"]
    stage = definition.stages()[loop_config["stage"]]
    torch.manual_seed(stage.train.seed)
    init = {k: torch.from_numpy(v) for k, v in loop_config["init"].items()}
    fitting = definition.worker_fitting(stage, init)
    mark("worker fitting built", "worker")
    fit_in_worker(
        fitting.task,
        fitting.batches,
        fitting.engine,
        stage.train,
        loop_config,
        definition.wandb_config(stage),
        fitting.steps_per_epoch,
    )


def _run_stage_ray(
    definition: TaskDefinition,
    index: int,
    stage: StagePlan,
    run_name: str,
    init: dict[str, torch.Tensor],
    say,
    trial: TrialHooks | None,
) -> TrainState:
    from raylrec.train.ray_runner import run_on_ray

    mark("ray datasets start")
    datasets, data_config = definition.ray_datasets(stage, say)
    mark("ray datasets ready")
    return run_on_ray(
        _worker_loop,
        {
            "definition": definition.path(),
            "config": definition.config.model_dump(mode="json"),
            "stage": index,
            "init": {k: v.numpy() for k, v in init.items()},
            "worker_data": definition.worker_data,
            # raylrec's own switches (RAYLREC_*) and torch's allocator switch (set by the CLI)
            # hold in the workers as in the driver
            "environment": {
                k: v for k, v in os.environ.items() if k.startswith("RAYLREC_") or k == "THP_MEM_ALLOC_ENABLE"
            },
        },
        stage.train,
        run_name,
        fingerprint(definition, stage),
        datasets,
        data_config=data_config,
        trial=trial,
    )


def _run_stage_local(
    definition: TaskDefinition, stage: StagePlan, init: dict[str, torch.Tensor], say
) -> TrainState:
    torch.manual_seed(stage.train.seed)
    fitting = definition.local_fitting(stage, init, say)
    return fit(
        fitting.task,
        fitting.batches,
        stage.train,
        LocalReporter(),
        fitting.engine,
        steps_per_epoch=fitting.steps_per_epoch,
    )


def run_pipeline(
    definition: TaskDefinition,
    say: Callable[[str], None] = print,
    use_ray: bool = True,
    trial: TrialHooks | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """Train ``definition`` stage by stage (the best weights of each start the next), compute
    its final metrics and export its bundle when ``config.output`` is set. ``trial``: this run
    is a Ray Tune trial (every epoch's metrics go to Tune, epochs counted across stages)."""
    started = time.perf_counter()
    config = definition.config
    if use_ray and config.train.num_workers == 0 and trial is None:
        # Ray Train's local mode runs in this process too, but keeps a reported checkpoint only
        # as the directory it was given (ours is temporary: the run's end found it gone); the
        # plain-process loop is the same training without that detour.
        say("train.num_workers 0: training in this process (no Ray Train workers, no checkpoints)")
        use_ray = False
    definition.use_ray = use_ray
    run_name = run_name or config.train.run_name or definition.default_run_name()
    stages = definition.stages()
    definition.announce(run_name, stages, say)
    if not config.output:
        say(
            f"output not set: the trained {definition.kind} is not written anywhere (set output=<dir or s3://...>)"
        )
    weights = definition.initial_weights(say)
    states: dict[str, TrainState] = {}
    epochs_before = 0
    for index, stage in enumerate(stages):
        name = f"{run_name}-{stage.name}" if stage.suffix else run_name
        if use_ray:
            hooks = replace(trial, epoch_offset=epochs_before) if trial else None
            state = _run_stage_ray(definition, index, stage, name, weights, say, hooks)
        else:
            state = _run_stage_local(definition, stage, weights, say)
        definition.stage_done(stage, state, say)
        weights = {**weights, **state.best_model}
        states[stage.name] = state
        epochs_before += stage.train.epochs
    metrics = definition.final_metrics(states, weights, say)
    bundle = None
    if config.output:
        bundle = definition.export(weights, metrics, run_name)
        say(f"{definition.kind} written to {bundle}")
    return TrainResult(run_name, states, metrics, bundle, time.perf_counter() - started)
