"""TALLRec: the LLM with a text-only prompt, fine-tuned with a plain LoRA (peft; r 8, alpha 16,
q and v projections)."""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from raylrec.cf.bundle import CFBundle
from raylrec.config import MethodConfig
from raylrec.methods.base import RecMethod, Stage

__all__ = ["TALLRec", "add_lora"]


def add_lora(lm: nn.Module, config: MethodConfig) -> list[nn.Parameter]:
    """peft LoRA layers in place on ``lm``; returns their parameters."""
    lora = config.lora
    inject_adapter_in_model(
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets),
        lm,
    )
    return [p for n, p in lm.named_parameters() if "lora_" in n]


class TALLRec(RecMethod):
    name = "tallrec"

    def __init__(self, config: MethodConfig, backbone, cf: CFBundle | None = None):
        super().__init__(config, backbone, None)  # text only: no CF
        self.lora = add_lora(self.lm, config)

    @classmethod
    def stages_for(cls, config: MethodConfig) -> list[Stage]:
        return [Stage("lora", "tallrec", ("lora",))]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"lora": self.lora}
