"""CoRA's model (see the package docstring for the paper): collaborative information as
generated LoRA weights.

Per sample, the frozen CF encoder's user vector (for a sequential encoder, over the history)
and target-item vector are concatenated, ``[e_u ; e_i]``, and fed as the single key/value token
to ``raylrec.adapters.WeightGenerator``; its output ``W_gen(u, i)`` [hidden x r] is the "A"
factor of every adapted module (q, k, v, o by default), each module adding
``P_l(dropout(x) W_gen) * alpha / r`` with its own zero-initialised ``P_l``
(``raylrec.adapters.GeneratedFactor``). The generator runs once per forward pass
(``condition``). Only the generator, its queries and head, and the ``P_l`` train; the text
prompt is TALLRec's, with no ID tokens. Score: the raw "Yes" logit (BCE on it).
"""

from __future__ import annotations

import torch
from torch import nn

from raylrec.adapters import AdapterContext, GeneratedFactor, WeightGenerator, inject_per_sample_lora
from raylrec.cf.bundle import CFBundle
from raylrec.methods.base import Batch, RecMethod
from raylrec.methods.cora import CoRAConfig

__all__ = ["CoRA"]


class CoRA(RecMethod):
    def __init__(self, config: CoRAConfig, backbone, cf: CFBundle | None):
        super().__init__(config, backbone, cf)
        targets = [
            m
            for name, m in self.lm.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in config.target_modules
        ]
        if not targets:
            raise ValueError(f"CoRA: no linear layer named {config.target_modules} in the backbone")
        cf_dim = int(cf.config["dim"])
        hidden = config.generator_hidden or 2 * cf_dim
        if hidden % config.generator_heads:
            raise ValueError(
                f"CoRA: the generator's width {hidden} (2 x CF dim {cf_dim} unless generator_hidden is set) "
                f"is not divisible by generator_heads {config.generator_heads}"
            )
        self.generator = WeightGenerator(
            2 * cf_dim,
            [m.in_features for m in targets],
            config.r,
            layers=config.generator_layers,
            heads=config.generator_heads,
            hidden=hidden,
            queries=config.queries,
            ffn=config.generator_ffn,
            dropout=config.generator_dropout,
        )
        offsets = self.generator.offsets()
        self._context = AdapterContext()

        def factor(linear: nn.Linear, name: str) -> nn.Module:
            return GeneratedFactor(
                linear.in_features, linear.out_features, config.r, offsets[linear.in_features]
            )

        self.adapted = inject_per_sample_lora(
            self.lm, config.target_modules, factor, self._context, config.alpha / config.r, config.dropout
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        projections = [self.lm.get_submodule(name).factors.lora_P for name in self.adapted]
        return {"generator": [*self.generator.parameters(), *projections]}

    def no_weight_decay(self) -> list[nn.Parameter]:
        """CoRA's optimiser decays matrices only: biases and LayerNorm weights are exempt
        (read by ``raylrec.train.engines``)."""
        return [p for p in self.generator.parameters() if p.dim() < 2]

    def adapter_context(self) -> AdapterContext:
        return self._context

    def cf_condition(self, batch: Batch) -> torch.Tensor:
        """[rows, 2 x CF dim]: the frozen ``[e_u ; e_i]`` of each row's user and candidate."""
        iid = batch["iid"]
        tokens = self.token_items(batch)
        if bool((iid == 0).any()) or bool(((tokens != 0) & (tokens != iid[:, None])).any()):
            # a shared prefix (no candidate) or a packed row (several): shares_prefix is False
            raise ValueError("CoRA generates one adapter per candidate: every row must hold exactly one")
        with torch.no_grad():
            users = self.cf.user_vectors(self.cf_inputs(batch))
            items = self.cf.item_vectors(iid)
        return torch.cat([users, items], dim=-1).detach()

    def condition(self, batch: Batch) -> torch.Tensor:
        """``W_gen`` of every row, [rows, sum of the adapted input widths, r]."""
        dtype = self.generator.queries.dtype
        return self.generator(self.cf_condition(batch).to(dtype))
