"""Running a training function on Ray Train (V2 API): scaling from the config, checkpoints in
``storage_path/run_name``, automatic recovery from worker failures, and resume on re-running
the same run name (a different configuration under an existing name is refused)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raylrec import storage
from raylrec.config import TrainConfig
from raylrec.timeline import mark
from raylrec.train.checkpoint_io import safe_load
from raylrec.train.engines import Engine
from raylrec.train.hooks import TrialHooks
from raylrec.train.loop import Batch, NonFiniteLossError, Task, TrainState, fit, is_finished
from raylrec.train.reporting import STATE_FILE, RayReporter, load_state, state_from_payload

__all__ = [
    "default_run_name",
    "fit_in_worker",
    "resume",
    "run_on_ray",
    "shard_arrays",
]

log = logging.getLogger(__name__)

# Ray Train's record of a run's committed checkpoints (written once every rank's part is stored).
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
# Errors that a retry from the last checkpoint would only repeat (a diverged loss, a metric the
# task never reports): the first worker to meet one records it here, later attempts of the same
# fit stop at once instead of training up to it again, and the driver raises it as it was.
FATAL_FILE = "raylrec_fatal.json"
FATAL_ERRORS: tuple[type[Exception], ...] = (NonFiniteLossError, ValueError)


def default_run_name(kind: str) -> str:
    """Unique by construction: a reused name resumes that run, so reuse must be deliberate."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def run_on_ray(
    worker_loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    train: TrainConfig,
    run_name: str,
    fingerprint: str,
    datasets: dict[str, ray.data.Dataset],
    data_config: ray.train.DataConfig | None = None,
    trial: TrialHooks | None = None,
) -> TrainState:
    """Fit and return the final ``TrainState`` (from the last checkpoint)."""
    callbacks = []
    if trial is not None:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
        loop_config = {**loop_config, "trial": asdict(trial)}
    previous = refuse_changed_run(train.storage_path, run_name, fingerprint)
    fatal_marker = storage.join(storage.absolute(train.storage_path), run_name, FATAL_FILE)
    _clear(fatal_marker)  # a new attempt from the driver: an earlier attempt's verdict is stale
    if previous is not None and trial is None and is_finished(previous, train):
        # Re-running a finished run (a retried job, a rerun pipeline) starts no workers.
        log.info("run %r already finished (epoch %d): nothing left to train", run_name, previous.epoch)
        return previous
    if storage.is_remote(train.storage_path):
        storage_fs, storage_path = storage.arrow_filesystem(train.storage_path)
    else:
        storage_fs, storage_path = None, os.path.abspath(train.storage_path)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            **loop_config,
            "run_name": run_name,
            "fingerprint": fingerprint,
            "fatal_marker": fatal_marker,
        },
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker, **train.resources_per_worker}
            if train.num_workers
            else None,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            # Ray Train's own INFO lines (worker group, each result and checkpoint) stay in the
            # session's logs/train/ files; the console gets raylrec's progress and Ray's warnings.
            logging_config=LoggingConfig(log_level=_ray_train_log_level()),
        ),
        datasets=datasets,
        dataset_config=data_config,
    )
    mark("trainer fit")
    try:
        result = trainer.fit()
    except Exception:
        fatal = _read_fatal(fatal_marker)
        if fatal is not None:
            raise fatal from None  # the worker's own error, not Ray Train's wrapper of it
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name!r} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        return load_state(directory, fingerprint, run_name)


def refuse_changed_run(storage_path: str, run_name: str, fingerprint: str) -> TrainState | None:
    """A reused run name resumes that run; under a different configuration it would silently
    mix two runs, so it fails here, before any worker starts. Returns the state of the run's
    latest committed checkpoint, the one Ray Train resumes from (None for a new run)."""
    fs, root = storage.filesystem(storage.join(storage_path, run_name))
    snapshot = f"{root}/{TRAIN_SNAPSHOT}"
    if not fs.exists(snapshot):
        return None
    latest = json.loads(fs.cat_file(snapshot)).get("latest_checkpoint_result") or {}
    state_file = f"{root}/{latest.get('checkpoint_dir_name')}/{STATE_FILE}"
    if not latest or not fs.exists(state_file):
        return None
    where = storage.join(storage_path, run_name, latest["checkpoint_dir_name"], STATE_FILE)
    payload = safe_load(fs.cat_file(state_file), where)
    return state_from_payload(payload, fingerprint, run_name)


def resume(engine: Engine, fingerprint: str, run_name: str) -> TrainState | None:
    """Inside a worker: restore ``engine`` from the latest checkpoint of this run and return its
    state; None for a fresh run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        state = load_state(directory, fingerprint, run_name)
        engine.load(directory)
        return state


def shard_arrays(name: str) -> dict[str, np.ndarray]:
    """Inside a worker: this rank's rows of dataset ``name``, whole, as numpy columns (small
    enough to hold; batches are then cut per epoch with a seeded order, so resume is exact)."""
    parts = list(ray.train.get_dataset_shard(name).iter_batches(batch_format="numpy", batch_size=65_536))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def fit_in_worker(
    task: Task,
    batches: Callable[[int], Iterable[Batch]],
    engine: Engine,
    train: TrainConfig,
    loop_config: dict[str, Any],
    wandb_config: dict[str, Any],
    steps_per_epoch: int,
) -> TrainState:
    """Inside a worker: resume ``engine`` from this run's last checkpoint (if any) and fit, with
    metrics and checkpoints going through Ray Train and wandb."""
    marker = loop_config.get("fatal_marker")
    fatal = _read_fatal(marker) if marker else None
    if fatal is not None:
        raise fatal  # an earlier attempt of this fit failed for good: retrying repeats it
    _quiet_report_lines()
    fingerprint, run_name = loop_config["fingerprint"], loop_config["run_name"]
    trial = TrialHooks(**loop_config["trial"]) if loop_config.get("trial") else None
    reporter = RayReporter(fingerprint, run_name, train.wandb_project, wandb_config, trial)
    state = resume(engine, fingerprint, run_name)
    try:
        state = fit(task, batches, train, reporter, engine, state, steps_per_epoch=steps_per_epoch)
    except FATAL_ERRORS as e:
        if marker:
            storage.write_json(marker, {"type": type(e).__name__, "message": str(e)})
        raise
    reporter.finish()
    return state


def _ray_train_log_level() -> str:
    return "INFO" if os.environ.get("RAYLREC_RAY_TRAIN_LOGS") == "1" else "WARNING"


def _quiet_report_lines() -> None:
    """Ray Train's per-report INFO line ("Reporting training result N: ...", on every rank)
    comes from a logger named after its source file's path, which its ``LoggingConfig`` level
    does not reach (that filter matches ``ray.train*`` names): hold it to the same level."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(_ray_train_log_level())


def _read_fatal(marker: str) -> Exception | None:
    fs, path = storage.filesystem(marker)
    if not fs.exists(path):
        return None
    record = storage.read_json(marker)
    kind = next((t for t in FATAL_ERRORS if t.__name__ == record.get("type")), RuntimeError)
    return kind(record.get("message", "training failed"))


def _clear(marker: str) -> None:
    fs, path = storage.filesystem(marker)
    if fs.exists(path):
        fs.rm(path)
