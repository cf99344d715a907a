"""The training loop every model runs: plain PyTorch, the same in a plain process (the local
runner, a GPU box without Ray) and inside Ray Train workers. What differs between the two is
only the ``Reporter`` (where metrics and checkpoints go) and where batches come from.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from raylrec.config import TrainConfig

__all__ = ["Task", "Reporter", "TrainState", "fit", "is_better", "unwrap"]

Batch = dict[str, torch.Tensor]


class Task(Protocol):
    """What a model brings to the loop."""

    model: nn.Module

    def loss(self, batch: Batch) -> torch.Tensor: ...

    def evaluate(self) -> dict[str, float]: ...


class Reporter(Protocol):
    """Where the loop sends metrics and checkpoints."""

    def report(self, metrics: dict[str, float], state: TrainState | None) -> None: ...

    def log(self, message: str) -> None: ...


@dataclass
class TrainState:
    """Everything needed to resume: position, optimiser, best result so far."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    stale_evals: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    best_model: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar) wrapper."""
    return model.module if hasattr(model, "module") else model


def fit(
    task: Task,
    batches: Callable[[int], Iterable[Batch]],
    config: TrainConfig,
    reporter: Reporter,
    optimizer: torch.optim.Optimizer,
    state: TrainState | None = None,
    steps_per_epoch: int | None = None,
) -> TrainState:
    """Train ``task.model`` from ``state`` (a resumed run) or from scratch; returns the final
    state, whose ``best_model`` holds the weights of the best evaluation."""
    state = state or TrainState()
    if state.model:
        unwrap(task.model).load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        reporter.log(
            f"resumed after epoch {state.epoch} (step {state.step}, best {config.metric} {state.best_metric})"
        )
    while state.epoch < config.epochs and state.stale_evals < config.patience:
        epoch = state.epoch + 1
        task.model.train()
        started, samples, total_loss, steps = time.perf_counter(), 0, 0.0, 0
        for batch in batches(epoch):
            loss = task.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            steps += 1
            samples += len(next(iter(batch.values())))
            total_loss += float(loss.detach())
            if steps % 50 == 0 or steps == steps_per_epoch:
                elapsed = time.perf_counter() - started
                eta = f", ETA {(steps_per_epoch - steps) * elapsed / steps:.0f}s" if steps_per_epoch else ""
                reporter.log(
                    f"epoch {epoch} step {steps}/{steps_per_epoch or '?'} loss {total_loss / steps:.4f} "
                    f"{samples / max(elapsed, 1e-9):,.0f} samples/s{eta}"
                )
            if config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0:
                _snapshot(task, optimizer, state)
                reporter.report(
                    {"step": state.step, "epoch": epoch - 1, "train/loss": total_loss / steps}, state
                )
        seconds = time.perf_counter() - started
        state.epoch = epoch
        metrics: dict[str, float] = {
            "epoch": epoch,
            "step": state.step,
            "train/loss": total_loss / max(steps, 1),
            "train/samples_per_s": samples / max(seconds, 1e-9),
            "train/epoch_s": seconds,
        }
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            task.model.eval()
            with torch.no_grad():
                metrics.update(task.evaluate())
            value = metrics.get(config.metric, float("nan"))
            if is_better(value, state.best_metric, config.mode):
                state.best_metric, state.best_epoch, state.stale_evals = value, epoch, 0
                state.best_model = copy.deepcopy(unwrap(task.model).state_dict())
            else:
                state.stale_evals += 1
        state.history.append(metrics)
        shown = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith("valid/")}
        shown = {k: v for k, v in shown.items() if k.endswith(("auc", "logloss")) or "@" in k}
        rate = metrics["train/samples_per_s"]
        reporter.log(
            f"epoch {epoch}: loss {metrics['train/loss']:.4f}, {rate:,.0f} samples/s"
            + "".join(f", {k} {v:.4f}" for k, v in shown.items())
        )
        # A checkpoint every `checkpoint_every` epochs and at the end (the best weights travel
        # inside it); metrics every epoch. A Ray Train checkpoint costs a synchronised write
        # and a wait for the controller, seconds on small models.
        last = epoch == config.epochs or state.stale_evals >= config.patience
        if last or epoch % config.checkpoint_every == 0:
            _snapshot(task, optimizer, state)
            reporter.report(metrics, state)
        else:
            reporter.report(metrics, None)
    if state.stale_evals >= config.patience:
        reporter.log(f"early stop: {config.metric} did not improve for {config.patience} evaluations")
    return state


def _snapshot(task: Task, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    state.model = copy.deepcopy(unwrap(task.model).state_dict())
    state.optimizer = copy.deepcopy(optimizer.state_dict())
