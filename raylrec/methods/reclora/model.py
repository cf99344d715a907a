"""RecLoRA's model (see the package docstring for the paper): personalised meta-LoRA mixtures.

Every adapted module (q and v) holds a bank of K meta-LoRAs and a router; the frozen CF
encoder's user representation (detached; for a sequential encoder, over the long history)
picks the mixture weights per sample, and A and B are mixed separately
(``raylrec.adapters.LoRAMixture``). The text prompt carries only the short, recent history.
Score: softmax over "Yes"/"No", i.e. their log-odds as one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from raylrec.adapters import AdapterContext, LoRAMixture, Router, inject_per_sample_lora
from raylrec.cf.bundle import CFBundle
from raylrec.methods.base import Batch, RecMethod
from raylrec.methods.reclora import RecLoRAConfig

__all__ = ["RecLoRA"]


class RecLoRA(RecMethod):
    def __init__(self, config: RecLoRAConfig, backbone, cf: CFBundle | None):
        super().__init__(config, backbone, cf)
        cf_dim = int(cf.config["dim"])
        self._context = AdapterContext()
        lora = config.lora

        def mixture(linear: nn.Linear, name: str) -> nn.Module:
            router = Router(
                cf_dim, config.experts, config.router_hidden, config.router_temperature, config.router_dropout
            )
            return LoRAMixture(linear.in_features, linear.out_features, lora.r, config.experts, router)

        self.adapted = inject_per_sample_lora(
            self.lm, lora.targets, mixture, self._context, lora.alpha / lora.r, lora.dropout
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        params = [p for name in self.adapted for p in self.lm.get_submodule(name).factors.parameters()]
        return {"mixture": params}

    def adapter_context(self) -> AdapterContext:
        return self._context

    def condition(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return self.cf.user_vectors(self.cf_inputs(batch)).detach()
