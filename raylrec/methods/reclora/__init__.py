"""RecLoRA (Zhu et al., arXiv 2408.03533): personalised meta-LoRA mixtures, the mixture
weights picked per sample from the frozen CF encoder's user representation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.config_types import Float, Int
from raylrec.methods.config import LoRAConfig, MethodConfig, Stage, register_method
from raylrec.methods.tallrec import QUESTION

__all__ = ["RecLoRAConfig"]


@register_method
class RecLoRAConfig(MethodConfig):
    name: Literal["reclora"] = "reclora"
    lora: LoRAConfig = LoRAConfig()
    experts: Int = Field(default=8, ge=1, description="meta-LoRAs per adapted module")
    router_hidden: Int = Field(default=60, ge=1)
    router_temperature: Float = Field(default=5.0, gt=0)
    router_dropout: Float = Field(default=0.1, ge=0, lt=1)

    implementation = "raylrec.methods.reclora.model:RecLoRA"
    paper = "RecLoRA, arXiv 2408.03533"
    needs_cf = True
    default_score = "yes_no"
    # The text carries the short-term history; the long-term one reaches the adapters through
    # the CF user representation.
    templates = {"reclora": QUESTION}

    def stages(self) -> list[Stage]:
        return [Stage("mixture", "reclora", ("mixture",))]
