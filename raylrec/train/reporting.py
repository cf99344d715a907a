"""Reporters: where the training loop's metrics and checkpoints go.

``LocalReporter`` prints and keeps the state in memory (a plain process, no Ray).
``RayReporter`` sends metrics and checkpoints through ``ray.train.report`` so that Ray Train
can resume a failed or re-run job from the last one, and logs to wandb from rank 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

import torch

from raylrec.train.checkpoint_io import safe_load
from raylrec.train.engines import Engine
from raylrec.train.loop import TrainState

if TYPE_CHECKING:
    from raylrec.train.hooks import TrialHooks

progress = logging.getLogger("raylrec.train.progress")

__all__ = [
    "LocalReporter",
    "RayReporter",
    "STATE_FILE",
    "load_state",
    "state_from_payload",
    "config_fingerprint",
]

STATE_FILE = "train_state.pt"


def config_fingerprint(config: dict[str, Any]) -> str:
    """What must not change when a run resumes (model, data, objective, optimisation)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_state(directory: str, fingerprint: str, run_name: str) -> TrainState:
    path = os.path.join(directory, STATE_FILE)
    return state_from_payload(safe_load(path, path), fingerprint, run_name)


def state_from_payload(payload: dict[str, Any], fingerprint: str, run_name: str) -> TrainState:
    """A saved ``STATE_FILE``'s state, refused when the run it belongs to had another config."""
    if payload["fingerprint"] != fingerprint:
        raise ValueError(
            f"run {run_name!r} already exists with a different configuration "
            f"({payload['fingerprint']} != {fingerprint}); use a new train.run_name to start a new run"
        )
    return TrainState.from_dict(payload["state"])


class LocalReporter:
    def __init__(self, prefix: str = "[train]"):
        self.prefix = prefix
        self.started = time.perf_counter()
        self.history: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], state: TrainState, engine: Engine | None) -> None:
        self.history.append(metrics)

    def log(self, message: str) -> None:
        print(f"{self.prefix} {time.perf_counter() - self.started:7.1f}s {message}", flush=True)


class RayReporter(LocalReporter):
    """Every rank calls ``ray.train.report`` (Ray Train requires it); rank 0 attaches the
    checkpoint and writes to wandb."""

    def __init__(
        self,
        fingerprint: str,
        run_name: str,
        wandb_project: str | None,
        wandb_config: dict[str, Any],
        trial: TrialHooks | None = None,
    ):
        import ray.train

        self.rank = ray.train.get_context().get_world_rank()
        super().__init__(prefix=f"[train rank {self.rank}]")
        self.fingerprint = fingerprint
        self.trial = trial
        self._wandb = None
        if self.rank == 0 and wandb_project and os.environ.get("WANDB_MODE", "offline") != "disabled":
            import wandb

            self._wandb = wandb.init(
                # Offline (no network) unless WANDB_MODE asks for more; wandb reads it when unset.
                mode=None if os.environ.get("WANDB_MODE") else "offline",
                project=wandb_project,
                name=run_name,
                group=trial.group if trial else run_name,
                config=wandb_config,
                reinit="finish_previous",
                # Ray already forwards worker output; the banner and summary are wandb's noise.
                settings=wandb.Settings(console="off", silent=True),
            )
            self.log(f"wandb run {self._wandb.id} ({self._wandb.settings.mode}) in {self._wandb.dir}")

    def report(self, metrics: dict[str, float], state: TrainState, engine: Engine | None) -> None:
        import ray.train

        super().report(metrics, state, engine)
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.trial is not None and "epoch" in numeric:
            numeric["total_epoch"] = self.trial.epoch_offset + numeric["epoch"]
        if self._wandb is not None:
            self._wandb.log(numeric, step=int(numeric.get("step", 0)))
        if engine is None and self.trial is not None:
            if self.trial.metric in numeric:
                ray.train.report(numeric)  # a Tune scheduler decides on every evaluation
            return
        if engine is None:
            # Ray Train's report blocks until its controller takes the result (seconds per
            # call), so only checkpoints go through it; every epoch's metrics are in wandb and
            # in the state's history. The decision is the same on every rank.
            return
        with tempfile.TemporaryDirectory() as tmp:
            # Every rank saves (DeepSpeed writes one optimiser partition per rank, a collective);
            # Ray Train merges the ranks' files into one checkpoint directory.
            engine.save(tmp, self.rank)
            if self.rank == 0:
                torch.save(
                    {"fingerprint": self.fingerprint, "state": state.to_dict()}, os.path.join(tmp, STATE_FILE)
                )
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if os.listdir(tmp) else None
            ray.train.report(numeric, checkpoint=checkpoint)

    def log(self, message: str) -> None:
        # Through logging, not print: Ray Train routes a worker's root logger to the console
        # (once) and to its per-worker log file, while its patched print also tees to any
        # wrapped stdout, which printed every line twice.
        if self.rank == 0:
            progress.info("%s %7.1fs %s", self.prefix, time.perf_counter() - self.started, message)

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
