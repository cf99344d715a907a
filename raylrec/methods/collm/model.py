"""CoLLM's model (see the package docstring for the paper): frozen CF embeddings projected
into the token-embedding space, one token per ID.

The prompt's ``{user_id}`` and ``{item_id}`` slots hold placeholder tokens whose input
embeddings are replaced by ``projector(cf user vector)`` and ``projector(cf item vector)``; an
item slot's item is the candidate its token belongs to (``RecMethod.token_items``).
Two stages: LoRA on the text-only prompt (TALLRec), then the projector alone with LoRA and CF
frozen (``tune_cf`` also tunes the CF encoder in stage 2).
"""

from __future__ import annotations

import torch
from torch import nn

from raylrec.cf.bundle import CFBundle
from raylrec.llm.prompts import SLOT_ITEM, SLOT_USER
from raylrec.methods.base import Batch, RecMethod
from raylrec.methods.collm import CoLLMConfig
from raylrec.methods.tallrec.model import add_lora

__all__ = ["CoLLM"]


class CoLLM(RecMethod):
    def __init__(self, config: CoLLMConfig, backbone, cf: CFBundle | None):
        super().__init__(config, backbone, cf)
        hidden = self.lm.get_input_embeddings().embedding_dim
        dim = int(cf.config["dim"])
        self.projector = nn.Sequential(
            nn.Linear(dim, config.projector_expansion * dim),
            nn.ReLU(),
            nn.Linear(config.projector_expansion * dim, hidden),
        )
        self.lora = add_lora(self.lm, config.lora)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"lora": self.lora, "projector": list(self.projector.parameters())}
        if self.config.tune_cf:  # otherwise the CF weights are the CF bundle's, kept there
            groups["cf"] = list(self.cf.parameters())
        return groups

    def input_embeddings(self, batch: Batch) -> torch.Tensor | None:
        slots = batch.get("slots")
        if slots is None or not bool((slots != 0).any()):
            return None  # a text-only prompt (stage 1)
        embeds = self.lm.get_input_embeddings()(batch["input_ids"])
        users = self._project(self.cf.user_vectors(self.cf_inputs(batch)), embeds.dtype)
        embeds = torch.where((slots == SLOT_USER)[..., None], users[:, None, :], embeds)
        item_slots = slots == SLOT_ITEM
        if not bool(item_slots.any()):  # a shared prefix: the user's slot only
            return embeds
        # each item slot holds its own candidate (a packed scoring row holds several)
        slot_items = self.token_items(batch)[item_slots]
        items = self._project(self.cf.item_vectors(slot_items), embeds.dtype)
        return embeds.masked_scatter(item_slots[..., None], items)

    def _project(self, vectors: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """CF vectors through the projector in its own dtype (fp32 when the backbone is bf16 on a
        GPU: the trained weights keep full precision), out in the embeddings' dtype."""
        return self.projector(vectors.to(self.projector[0].weight.dtype)).to(dtype)
