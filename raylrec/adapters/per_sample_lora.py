"""Batched per-sample LoRA.

``PerSampleLoRALinear`` wraps any ``nn.Linear`` of a model and adds, for sample ``b`` of the
batch, the update ``(x_b A_b) B_b * alpha / r``. The factors come from a *factor module* that
sees a per-sample condition (a user representation, CF embeddings, ...):

- ``LoRAMixture`` (RecLoRA): a bank of K meta-LoRAs and a router; ``A_b = sum_k w_bk A_k`` and
  ``B_b = sum_k w_bk B_k`` are mixed separately, then applied with two batched matmuls. Mixing
  the factors first costs ``B*K*r*(d_in+d_out)``, independent of sequence length, so the
  sequence-length term is the same as a plain LoRA's.
- a generator (CoRA) returns ``A_b`` per sample and a shared ``B`` (``[r, d_out]``).

The condition reaches every wrapped layer through one shared ``AdapterContext`` set by the
method around its forward pass. Factor parameters are submodules of the wrapper, so DeepSpeed
ZeRO-3 gathers them when the wrapper runs, like any other layer's weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["AdapterContext", "LoRAMixture", "PerSampleLoRALinear", "Router", "inject_per_sample_lora"]


class AdapterContext:
    """The per-sample condition of the current forward pass, shared by all wrapped layers."""

    def __init__(self) -> None:
        self.condition: torch.Tensor | None = None

    @contextmanager
    def use(self, condition: torch.Tensor) -> Iterator[None]:
        self.condition = condition
        try:
            yield
        finally:
            self.condition = None


class Router(nn.Module):
    """RecLoRA's router: LayerNorm -> Linear -> ReLU -> Dropout -> Linear -> /T -> softmax."""

    def __init__(
        self, in_dim: int, num_experts: int, hidden: int = 60, temperature: float = 5.0, dropout=0.1
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_experts),
        )
        self.temperature = temperature

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(condition) / self.temperature, dim=-1)


class LoRAMixture(nn.Module):
    """K meta-LoRAs mixed per sample by a router over the condition."""

    def __init__(self, in_features: int, out_features: int, rank: int, num_experts: int, router: nn.Module):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(num_experts, in_features, rank))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, rank, out_features))
        with torch.no_grad():  # peft's LoRA init per expert; B = 0 so training starts at W
            for k in range(num_experts):
                nn.init.kaiming_uniform_(self.lora_A[k].T, a=math.sqrt(5))
        self.router = router

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.router(condition).to(self.lora_A.dtype)  # [B, K]
        a = torch.einsum("bk,kir->bir", weights, self.lora_A)
        b = torch.einsum("bk,kro->bro", weights, self.lora_B)
        return a, b


class PerSampleLoRALinear(nn.Module):
    """``base(x) + (x A_b) B_b * scaling`` for every sample ``b``; ``base`` stays as it is."""

    def __init__(
        self,
        base: nn.Linear,
        factors: nn.Module,
        context: AdapterContext,
        scaling: float,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.base = base
        self.factors = factors
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self._context = [context]  # in a list: not a submodule, never in the state dict

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        condition = self._context[0].condition
        if condition is None:
            raise RuntimeError("PerSampleLoRALinear called outside AdapterContext.use(condition)")
        a, b = self.factors(condition)
        squeeze = x.dim() == 2
        h = self.dropout(x.unsqueeze(1) if squeeze else x).to(a.dtype)  # [B, T, d_in]
        low = torch.bmm(h, a)  # [B, T, r]
        update = torch.bmm(low, b) if b.dim() == 3 else low @ b  # per-sample or shared B
        update = update.squeeze(1) if squeeze else update
        return out + (update * self.scaling).to(out.dtype)


def inject_per_sample_lora(
    model: nn.Module,
    targets: Sequence[str],
    make_factors: Callable[[nn.Linear, str], nn.Module],
    context: AdapterContext,
    scaling: float,
    dropout: float = 0.0,
) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with one of ``targets`` (``q_proj``, ...)
    by a ``PerSampleLoRALinear``; returns the replaced module names."""
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in targets:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = PerSampleLoRALinear(module, make_factors(module, name), context, scaling, dropout)
        setattr(parent, child, wrapped)
        replaced.append(name)
    if not replaced:
        raise ValueError(f"no linear layer named {list(targets)} in {type(model).__name__}")
    return replaced
