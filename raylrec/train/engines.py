"""Engines: how one optimisation step is taken and how a rank's resumable state is saved.

``TorchEngine`` is a plain optimiser (a plain process, or DDP inside Ray Train).
``DeepSpeedEngine`` wraps ``deepspeed.initialize`` (ZeRO stage 0-3): gloo on CPU, NCCL on GPU,
a torch optimiser (``zero_allow_untested_optimizer``, so CPU needs no JIT-compiled CPUAdam).
The training loop only calls ``step``, ``weights``, ``save`` and ``load``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any, Protocol

import torch
from torch import nn

from raylrec.config import TrainConfig
from raylrec.timeline import mark
from raylrec.train.checkpoint_io import RestrictedCheckpointEngine, safe_load

__all__ = ["Engine", "TorchEngine", "DeepSpeedEngine", "build_engine", "lr_lambda", "trainable_state"]

ENGINE_FILE = "engine.pt"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "latest_state"


class Engine(Protocol):
    model: nn.Module

    def step(self, loss: torch.Tensor) -> None: ...

    def weights(self) -> dict[str, torch.Tensor]: ...

    def save(self, directory: str, rank: int) -> None: ...

    def load(self, directory: str) -> None: ...


def lr_lambda(config: TrainConfig, total_steps: int):
    """Warmup, then constant, linear or cosine decay to zero over ``total_steps``."""
    warmup = int(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if config.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _optimizer(
    params: Iterable[nn.Parameter], config: TrainConfig, model: nn.Module | None = None, fused: bool = False
) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params``. A model may exempt some of them from weight decay with a
    ``no_weight_decay()`` method (CoRA: biases and norms); those form a second group at 0.
    ``fused``: torch's fused kernel where every parameter allows it (``TorchEngine``; DeepSpeed
    hands its own flattened partitions to the optimiser it is given and keeps the default)."""
    params = list(params)
    exempt = {id(p) for p in getattr(model, "no_weight_decay", lambda: [])()} if model is not None else set()
    if exempt and config.weight_decay:
        params = [
            {"params": [p for p in params if id(p) not in exempt]},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
        ]
    # The fused kernel updates in place; the default single-tensor path on CPU makes temporaries
    # the size of each parameter, every one a fresh allocation the kernel zero-fills page by page
    # (a CF encoder's tables: bench/optimizer_step.py).
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    kernel = {"fused": True} if fused and all(_fusable(p) for p in tensors) else {}
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=config.lr, weight_decay=config.weight_decay, **kernel)


def _fusable(param: torch.Tensor) -> bool:
    """Where torch has a fused Adam kernel: floating tensors on the CPU or a CUDA device."""
    return param.device.type in ("cpu", "cuda") and param.is_floating_point()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors by name, detached copies on CPU (what a bundle and the best-epoch
    snapshot keep; frozen backbone weights are never copied)."""
    inner = model.module if hasattr(model, "module") else model
    return {n: p.detach().cpu().clone() for n, p in inner.named_parameters() if p.requires_grad}


class TorchEngine:
    """A torch optimiser and LR schedule; ``model`` may be DDP-wrapped."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        total_steps: int,
        params: Iterable[nn.Parameter] | None = None,
        full_state: bool = True,
    ):
        self.model = model
        self.config = config
        self.full_state = full_state  # CF models keep every tensor (buffers too) in a snapshot
        params = params if params is not None else model.parameters()
        self.optimizer = _optimizer(params, config, self._inner(), fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, total_steps))

    def _inner(self) -> nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()

    def weights(self) -> dict[str, torch.Tensor]:
        if self.full_state:
            return {k: v.detach().cpu().clone() for k, v in self._inner().state_dict().items()}
        return trainable_state(self.model)

    def save(self, directory: str, rank: int) -> None:
        if rank != 0:
            return  # every rank holds the same replica
        torch.save(
            {
                "model": self.weights(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            },
            os.path.join(directory, ENGINE_FILE),
        )

    def load(self, directory: str) -> None:
        path = os.path.join(directory, ENGINE_FILE)
        payload = safe_load(path, path)
        self._inner().load_state_dict(payload["model"], strict=self.full_state)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])


def deepspeed_config(config: TrainConfig, world_size: int, use_gpu: bool) -> dict[str, Any]:
    stage = config.zero_stage
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.batch_size * world_size,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # our loop prints progress
        "wall_clock_breakdown": False,
    }
    if config.max_grad_norm:
        ds["gradient_clipping"] = config.max_grad_norm
    if use_gpu:
        ds["bf16"] = {"enabled": True}
    # DeepSpeed's default buckets (5e8 elements, 2 GB in fp32) are sized for full fine-tuning;
    # adapters are a few million parameters at most.
    bucket = int(5e7)
    ds["zero_optimization"].update({"reduce_bucket_size": bucket, "allgather_bucket_size": bucket})
    if stage == 3:
        # Partition even small parameters (nothing persistent): every weight takes the gather path.
        ds["zero_optimization"].update(
            {
                "stage3_param_persistence_threshold": 0,
                "stage3_prefetch_bucket_size": bucket,
                "stage3_max_live_parameters": 2 * bucket,
            }
        )
    return ds


def _without_the_shared_memory_op() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory all-reduce op.

    When its comm backend starts, DeepSpeed on CPU JIT-compiles ``deepspeed_shm_comm`` (printed
    as "... built successfully"): 54 s of g++ in the first worker on a fresh 2-core machine,
    before the first step. Only ``inference_all_reduce`` (DeepSpeed's inference tensor
    parallelism) uses it; ZeRO training's collectives go through the gloo process group.
    ``deepspeed.ops.__compatible_ops__`` is the one dict DeepSpeed reads to decide (its module
    keeps one copy so that edits persist): the op is marked unavailable there.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine:
    """``deepspeed.initialize`` around ``model``; only parameters with ``requires_grad`` train."""

    def __init__(self, model: nn.Module, config: TrainConfig, total_steps: int, world_size: int):
        use_gpu = torch.cuda.is_available() and config.use_gpu
        # Named before DeepSpeed's first import, which otherwise probes for an accelerator and
        # warns when it settles on the CPU.
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
        mark("deepspeed import", "worker")
        import deepspeed  # inside the worker: the driver never imports it

        if not use_gpu:
            _without_the_shared_memory_op()
        mark("deepspeed initialize", "worker")

        self.config = config
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _optimizer(params, config, model)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config, total_steps)),
            config=deepspeed_config(config, world_size, use_gpu),
            dist_init_required=False,
        )
        mark("deepspeed engine ready", "worker")
        self.stage = config.zero_stage

    def step(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)
        self.model.step()

    def gathered(self, params: list[nn.Parameter]):
        """ZeRO-3 partitions every parameter: a rank holds an empty placeholder until the
        parameters are gathered. A collective: every rank must call it."""
        if self.stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def weights(self) -> dict[str, torch.Tensor]:
        named = [(n, p) for n, p in self.model.module.named_parameters() if p.requires_grad]
        with self.gathered([p for _, p in named]):
            return {n: p.detach().float().cpu().clone() for n, p in named}

    def save(self, directory: str, rank: int) -> None:
        # Every rank writes its own optimiser partition; Ray Train merges the ranks' files
        # into one checkpoint directory. Frozen weights are not saved (they come from the backbone).
        self.model.save_checkpoint(
            os.path.join(directory, DEEPSPEED_DIR), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True
        )

    def load(self, directory: str) -> None:
        if not isinstance(self.model.checkpoint_engine, RestrictedCheckpointEngine):
            self.model.checkpoint_engine = RestrictedCheckpointEngine(self.model.checkpoint_engine)
        self.model.load_checkpoint(
            os.path.join(directory, DEEPSPEED_DIR),
            tag=DEEPSPEED_TAG,
            load_module_strict=False,  # frozen weights were excluded on save
        )


def build_engine(
    model: nn.Module, config: TrainConfig, total_steps: int, world_size: int, full_state: bool = True
) -> Engine:
    """DeepSpeed when the config asks for it and there is a process group, else a torch optimiser
    (a plain process: a GPU box without Ray or DeepSpeed runs the same loop)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if config.strategy == "deepspeed" and distributed:
        return DeepSpeedEngine(model, config, total_steps, world_size)
    params = [p for p in model.parameters() if p.requires_grad]
    return TorchEngine(model, config, total_steps, params, full_state=full_state)
