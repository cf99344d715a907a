"""Matrix factorisation (Koren et al., IEEE Computer 2009; BPR: Rendle et al., UAI 2009,
arXiv 1205.2618): a user and an item embedding, scored by their dot product."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.cf.config import CFConfig, register_encoder

__all__ = ["MFConfig"]


@register_encoder
class MFConfig(CFConfig):
    model: Literal["mf"] = "mf"
    init: Literal["normal", "xavier"] = Field(default="normal", description="N(0, 0.1) or xavier normal")

    implementation = "raylrec.cf.encoders.mf.model:MF"
    paper = "BPR, arXiv 1205.2618"
