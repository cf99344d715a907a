"""LightGCN (He et al., SIGIR 2020, arXiv 2002.02126): ID embeddings propagated over the
normalised user-item graph, the layers combined by mean (the paper, CoLLM) or sum (RLMRec), with
RLMRec's optional edge dropout in training (arXiv 2310.15950, code HKUDS/RLMRec)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.cf.config import CFConfig, register_encoder
from raylrec.config_types import Float, Int

__all__ = ["LightGCNConfig"]


@register_encoder
class LightGCNConfig(CFConfig):
    model: Literal["lightgcn"] = "lightgcn"
    layers: Int = Field(default=3, ge=1, description="propagation layers")
    combine: Literal["mean", "sum"] = Field(default="mean", description="how the layers' outputs combine")
    edge_dropout: Float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "training only: share of the graph's entries dropped on each step, the rest not rescaled "
            "(RLMRec: 0.2); evaluation and the bundle use the full graph"
        ),
    )

    implementation = "raylrec.cf.encoders.lightgcn.model:LightGCN"
    paper = "LightGCN, arXiv 2002.02126"
    propagates = True
