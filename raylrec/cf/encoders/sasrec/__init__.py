"""SASRec (Kang and McAuley, ICDM 2018, arXiv 1808.09781): a causal Transformer over the
user's recent items; the last position's state is the user vector."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylrec.cf.config import CFConfig, register_encoder
from raylrec.config_types import FieldError, Float, Int

__all__ = ["SASRecConfig"]


@register_encoder
class SASRecConfig(CFConfig):
    model: Literal["sasrec"] = "sasrec"
    max_len: Int = Field(default=25, ge=1, description="history length the encoder reads")
    blocks: Int = Field(default=2, ge=1, description="Transformer blocks")
    heads: Int = Field(default=4, ge=1, description="attention heads (must divide dim)")
    dropout: Float = Field(default=0.2, ge=0, lt=1)

    implementation = "raylrec.cf.encoders.sasrec.model:SASRec"
    paper = "SASRec, arXiv 1808.09781"

    @property
    def history_len(self) -> int:
        return self.max_len

    @model_validator(mode="after")
    def _buildable(self) -> SASRecConfig:
        # multi-head attention splits dim evenly over the heads (torch asserts it mid-build)
        if self.dim % self.heads:
            raise FieldError(
                "heads", f"cf.dim {self.dim} is not divisible by {self.heads} heads (sasrec splits it evenly)"
            )
        if self.loss == "bpr":
            # BPR batches are rebuilt from the positives alone (cf.data.positives), without
            # the history of each event that SASRec reads.
            raise FieldError(
                "loss", "sasrec trains with loss 'bce' on CTR labels; 'bpr' is not supported for it"
            )
        return self
