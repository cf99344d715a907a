"""LightGCN (He et al., SIGIR 2020, arXiv 2002.02126): ID embeddings propagated over the
normalised user-item graph, the layers combined by mean (the paper, CoLLM) or sum (RLMRec)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.cf.config import CFConfig, register_encoder
from raylrec.config_types import Int

__all__ = ["LightGCNConfig"]


@register_encoder
class LightGCNConfig(CFConfig):
    model: Literal["lightgcn"] = "lightgcn"
    layers: Int = Field(default=3, ge=1, description="propagation layers")
    combine: Literal["mean", "sum"] = Field(default="mean", description="how the layers' outputs combine")

    implementation = "raylrec.cf.encoders.lightgcn.model:LightGCN"
    paper = "LightGCN, arXiv 2002.02126"
