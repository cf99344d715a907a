"""CoRA (Liu et al., "Collaborative Information Perception for LLM-based recommendation" /
collaborative LoRA, AAAI 2025, arXiv 2408.10645; code VanillaCreamer/CoRA): the frozen CF
encoder's user and target-item vectors become, through a query generator, one LoRA "A"
matrix per sample shared by every adapted layer; the LLM and the CF encoder stay frozen."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylrec.config_types import FieldError, Float, Int, OptionalInt
from raylrec.methods.config import MethodConfig, Stage, register_method

__all__ = ["CoRAConfig"]


@register_method
class CoRAConfig(MethodConfig):
    """CoRA's hyperparameters: the adapter (rank, scale, dropout, targets) and the generator."""

    name: Literal["cora"] = "cora"
    r: Int = Field(default=16, ge=1, description="rank of the generated LoRA factor")
    alpha: Float = Field(default=32, gt=0, description="scale numerator: updates are scaled by alpha / r")
    dropout: Float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapted layers' input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="module names to adapt (the FFN's gate_proj, up_proj, down_proj may be added)",
    )
    generator_layers: Int = Field(default=8, ge=1, description="the generator's transformer layers")
    generator_heads: Int = Field(default=8, ge=1, description="the generator's attention heads")
    generator_hidden: OptionalInt = Field(
        default=None, ge=1, description="the generator's width (default: 2 x the CF dimension)"
    )
    generator_ffn: OptionalInt = Field(
        default=None, ge=1, description="the generator's feed-forward width (default: 4 x its width)"
    )
    generator_dropout: Float = Field(default=0.1, ge=0, lt=1, description="dropout inside the generator")
    queries: Int = Field(default=4, ge=1, description="learned queries of the generator")

    implementation = "raylrec.methods.cora.model:CoRA"
    paper = "CoRA, arXiv 2408.10645"
    needs_cf = True
    # W_gen depends on the candidate, so every layer's keys and values of the prompt prefix do.
    shares_prefix = False
    default_score = "yes_logit"

    def stages(self) -> list[Stage]:
        # TALLRec's question (registered by tallrec), with no ID tokens
        return [Stage("generator", "tallrec", ("generator",))]

    @model_validator(mode="after")
    def _shapes(self) -> CoRAConfig:
        if self.generator_hidden is not None and self.generator_hidden % self.generator_heads:
            raise FieldError(
                "generator_hidden",
                f"{self.generator_hidden} is not divisible by generator_heads {self.generator_heads}",
            )
        if len(set(self.target_modules)) != len(self.target_modules):
            raise FieldError("target_modules", f"lists a module twice: {self.target_modules}")
        return self
