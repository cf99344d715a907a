"""TALLRec's model: the backbone with a peft LoRA (see the package docstring for the paper)."""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from raylrec.cf.bundle import CFBundle
from raylrec.methods.base import RecMethod
from raylrec.methods.config import LoRAConfig
from raylrec.methods.tallrec import TALLRecConfig

__all__ = ["TALLRec", "add_lora"]


def add_lora(lm: nn.Module, lora: LoRAConfig) -> list[nn.Parameter]:
    """peft LoRA layers in place on ``lm``; returns their parameters."""
    inject_adapter_in_model(
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets),
        lm,
    )
    return [p for n, p in lm.named_parameters() if "lora_" in n]


class TALLRec(RecMethod):
    def __init__(self, config: TALLRecConfig, backbone, cf: CFBundle | None = None):
        super().__init__(config, backbone, None)  # text only: no CF
        self.lora = add_lora(self.lm, config.lora)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"lora": self.lora}
