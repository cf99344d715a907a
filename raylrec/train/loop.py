"""The training loop every model runs: plain PyTorch, the same in a plain process (the local
runner, a GPU box without Ray) and inside Ray Train workers. What differs between the two is
only the ``Reporter`` (where metrics and checkpoints go) and where batches come from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from raylrec.config import TrainConfig
from raylrec.timeline import mark_once
from raylrec.train.engines import Engine

__all__ = [
    "NonFiniteLossError",
    "Task",
    "Reporter",
    "TrainState",
    "fit",
    "global_mean_loss",
    "is_better",
    "rank0_value",
    "unwrap",
]

Batch = dict[str, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before it checkpoints the weights."""


class Task(Protocol):
    """What a model brings to the loop."""

    model: nn.Module

    def loss(self, batch: Batch) -> torch.Tensor: ...

    def evaluate(self) -> dict[str, float]: ...


class Reporter(Protocol):
    """Where the loop sends metrics and checkpoints (``engine`` given: a checkpoint)."""

    def report(self, metrics: dict[str, float], state: TrainState, engine: Engine | None) -> None: ...

    def log(self, message: str) -> None: ...


@dataclass
class TrainState:
    """Position and best result so far; the engine saves weights and optimiser beside it."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    stale_evals: int = 0
    epoch_step: int = 0  # steps done in an unfinished epoch (a mid-epoch checkpoint)
    best_model: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_at_steps: list[int] = field(default_factory=list)  # where the run was picked up again

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


def is_finished(state: TrainState, config: TrainConfig) -> bool:
    """Nothing left to train: all epochs done, or early-stopped (a mid-epoch state is never done:
    its ``epoch`` counts completed epochs only)."""
    return state.epoch >= config.epochs or state.stale_evals >= config.patience


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (CPU workers) reduces CPU ones.
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_mean_loss(total_loss: float, steps: int) -> float:
    """The epoch's mean training loss over every rank's steps. Each rank sees its own shard, so
    its local mean differs from the others'; a method that selects on ``train/loss`` (CLLM4Rec's
    pretraining stages) must decide on one number everywhere, or only some ranks enter the
    engine's gather of the best weights and the run deadlocks."""
    if not _distributed():
        return total_loss / max(steps, 1)
    sums = torch.tensor([total_loss, float(steps)], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(sums)
    return float(sums[0]) / max(float(sums[1]), 1.0)


def rank0_value(value: float) -> float:
    """Rank 0's ``value`` on every rank: the best-epoch and early-stop decisions (which start
    collectives: a ZeRO-3 gather, a checkpoint barrier) are then the same everywhere, even when
    an evaluation's float sums differ in the last bit between ranks."""
    if not _distributed():
        return value
    shared = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    torch.distributed.broadcast(shared, src=0)
    return float(shared[0])


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar) wrapper."""
    return model.module if hasattr(model, "module") else model


def fit(
    task: Task,
    batches: Callable[[int], Iterable[Batch]],
    config: TrainConfig,
    reporter: Reporter,
    engine: Engine,
    state: TrainState | None = None,
    steps_per_epoch: int | None = None,
) -> TrainState:
    """Train ``task.model`` with ``engine`` from ``state`` (a resumed run: the engine is already
    restored) or from scratch; returns the final state, whose ``best_model`` holds the weights
    of the best evaluation. Every rank makes the same decisions (the epoch's loss is reduced over
    ranks and the selection metric is rank 0's), so collectives inside the engine stay in lockstep."""
    state = state or TrainState()
    if state.step:
        state.resumed_at_steps.append(state.step)
        reporter.log(
            f"resumed after epoch {state.epoch} (step {state.step}, best {config.metric} {state.best_metric})"
        )
    last_epoch_log = -math.inf
    while not is_finished(state, config):
        epoch = state.epoch + 1
        task.model.train()
        started, samples, tokens, total_loss, steps = time.perf_counter(), 0, 0, 0.0, 0
        last_log = started
        skip, state.epoch_step = state.epoch_step, 0
        for index, batch in enumerate(batches(epoch)):
            if index < skip:
                continue  # done before a mid-epoch checkpoint; batches are seeded per epoch
            loss = task.loss(batch)
            engine.step(loss)
            mark_once("first step", "worker" if torch.distributed.is_initialized() else "driver")
            state.step += 1
            state.epoch_step = index + 1
            steps += 1
            samples += len(next(iter(batch.values())))
            if "attention_mask" in batch:  # language models: tokens actually processed
                tokens += int(batch["attention_mask"].sum())
            step_loss = float(loss.detach())  # the one host sync a step already made
            if not math.isfinite(step_loss):
                # Every later step would train on NaN weights and export them; stop while the
                # last checkpoint still holds finite ones.
                raise NonFiniteLossError(
                    f"training loss is {step_loss} at epoch {epoch} step {index + 1} (step {state.step} of "
                    f"the run): training diverged; lower train.lr ({config.lr:g}), set train.max_grad_norm, "
                    "or look for non-finite inputs"
                )
            total_loss += step_loss
            now = time.perf_counter()
            # Within an epoch, a line every log_every_s; the epoch's own line closes it.
            if now - last_log >= config.log_every_s and index + 1 != steps_per_epoch:
                last_log, elapsed = now, now - started
                left = (
                    f", ETA {(steps_per_epoch - index - 1) * elapsed / steps:.0f}s" if steps_per_epoch else ""
                )
                reporter.log(
                    f"epoch {epoch} step {index + 1}/{steps_per_epoch or '?'} loss {total_loss / steps:.4f} "
                    f"{samples / max(elapsed, 1e-9):,.1f} samples/s{left}"
                )
            if config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0:
                reporter.report(
                    {"step": state.step, "epoch": epoch - 1, "train/loss": total_loss / steps}, state, engine
                )
        seconds = time.perf_counter() - started
        state.epoch, state.epoch_step = epoch, 0
        metrics: dict[str, float] = {
            "epoch": epoch,
            "step": state.step,
            "train/loss": global_mean_loss(total_loss, steps),
            "train/samples_per_s": samples / max(seconds, 1e-9),
            "train/epoch_s": seconds,
        }
        if tokens:
            metrics["train/tokens_per_s"] = tokens / max(seconds, 1e-9)
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            task.model.eval()
            with torch.no_grad():
                metrics.update(task.evaluate())
            if config.metric not in metrics:
                # never improves: the run would train every epoch and keep no best weights
                raise ValueError(
                    f"train.metric {config.metric!r} is not among the metrics this task reports "
                    f"({', '.join(sorted(k for k in metrics if '/' in k))})"
                )
            value = metrics[config.metric] = rank0_value(metrics[config.metric])
            if is_better(value, state.best_metric, config.mode):
                state.best_metric, state.best_epoch, state.stale_evals = value, epoch, 0
                state.best_model = engine.weights()
            else:
                state.stale_evals += 1
        state.history.append(metrics)
        shown = {k: v for k, v in metrics.items() if k.count("/") == 1 and k.startswith("valid/")}
        shown = {
            k: v for k, v in shown.items() if k.endswith(("auc", "logloss")) or "recall@" in k or "ndcg@" in k
        }
        rate = metrics["train/samples_per_s"]
        last = epoch == config.epochs or state.stale_evals >= config.patience
        now = time.perf_counter()
        # Short epochs (a CF encoder's take a fraction of a second) print one line per
        # log_every_s, not one each; every epoch's metrics still go to wandb and the history.
        if epoch == 1 or last or now - last_epoch_log >= config.log_every_s:
            last_epoch_log = now
            reporter.log(
                f"epoch {epoch}: loss {metrics['train/loss']:.4f}, {rate:,.1f} samples/s"
                + "".join(f", {k} {v:.4f}" for k, v in shown.items())
            )
        # A checkpoint every `checkpoint_every` epochs and at the end (the best weights travel
        # inside it); metrics every epoch. A Ray Train checkpoint costs a synchronised write
        # and a wait for the controller, seconds on small models.
        checkpoint = last or epoch % config.checkpoint_every == 0
        reporter.report(metrics, state, engine if checkpoint else None)
    if state.stale_evals >= config.patience:
        reporter.log(f"early stop: {config.metric} did not improve for {config.patience} evaluations")
    if state.best_epoch is None:
        last = next((h[config.metric] for h in reversed(state.history) if config.metric in h), None)
        raise ValueError(
            f"no evaluation gave a number for {config.metric} (last: {last}): there are no best weights "
            "to keep (diverged weights, or a validation split with one class?)"
        )
    return state
