"""The interface every LLM recommender implements.

A method is an ``nn.Module`` built from (method config, backbone, CF bundle). It scores a batch
of tokenised prompts with one logit per sample (``sigmoid`` of it is P(like)), says which of its
parameters train in each stage, and saves/loads only its own weights (adapters, projector,
router, generator, ID embeddings, ...), never the frozen backbone. The hooks cover the methods
that come next: CoRA (a generator producing per-sample LoRA factors: ``condition`` +
``raylrec.adapters``), CLLM4Rec (new ID-token tables: ``input_embeddings``; an item head:
override ``score``), RLMRec (a CF-side alignment loss: override ``loss``, which training
calls through ``forward(batch, compute_loss=True)``).

The input contract (a ``Batch``, every tensor on the model's device; ``rows`` prompts of
``tokens`` tokens, left-padded in training and full-prompt scoring):

- ``input_ids``, ``attention_mask`` [rows, tokens]: token ids, and 1 on real tokens, 0 on pads;
- ``slots`` [rows, tokens]: which tokens are ID placeholders (``raylrec.llm.prompts.SLOT_USER``,
  ``SLOT_ITEM``; 0 elsewhere);
- ``uid``, ``iid`` [rows]: the row's user and candidate item (``iid`` is 0 in a row that holds
  no single candidate: a shared prefix, or a packed row of several);
- ``history`` [rows, L] (when the CF encoder reads histories), ``label`` [rows] (training);
- ``token_items`` [rows, tokens], optional: the candidate item each token belongs to (0: none,
  as on a shared prefix or a pad). Batch scoring packs several candidates' prompt suffixes into
  one row and sets it; where it is absent every token belongs to the row's ``iid`` (training
  batches, full prompts). A method reads it through ``RecMethod.token_items(batch)``, never by
  guessing the scorer's layout.

The decode context: ``decode(batch, context)`` runs the decoder over ``batch`` alone
(``context`` None) or after a cached prompt prefix (a ``DecodeContext``: the cache, the 4-D
mask over prefix + batch tokens, the positions that continue the prefix's). The reranker
(``raylrec.scoring.rerank``) first decodes a batch of prefixes into an empty cache, then each
packed row of suffixes against its prefix's cache, and reads one logit per candidate with
``answer_logit`` at each suffix's last token. A method whose prefix keys and values depend on
the candidate (per-candidate adapters, as CoRA's) declares ``shares_prefix = False`` in its
config, and the reranker scores it with full prompts through ``forward`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raylrec.cf.bundle import CFBundle
from raylrec.llm.backbone import cache_argument
from raylrec.methods.config import MethodConfig, Stage

__all__ = ["RecMethod", "Stage", "Batch", "DecodeContext"]

Batch = dict[str, torch.Tensor]


@dataclass
class DecodeContext:
    """How ``RecMethod.decode`` runs a batch after a cached prompt prefix (module docstring).

    ``cache``: a ``transformers`` cache; it receives the batch's keys and values (an empty one:
    the batch is the prefix) and, when not empty, already holds the prefix's, one row per
    batch row. ``attention_mask``: None (the batch's own ``attention_mask``) or an additive
    float mask [rows, 1, batch tokens, cached + batch tokens] (0: attend; dtype minimum: not).
    ``position_ids``: None (counted from the batch's mask) or [rows, batch tokens]."""

    cache: Any
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None


class RecMethod(nn.Module):
    """The base every method's model subclasses; its config class (``raylrec.methods.config``)
    declares the stages and capabilities."""

    def __init__(self, config: MethodConfig, backbone, cf: CFBundle | None):
        super().__init__()
        if config.needs_cf and cf is None:
            raise ValueError(f"{config.name} needs a CF bundle (method.cf_bundle)")
        self.config = config
        self.lm = backbone.model
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.yes_id, self.no_id = backbone.yes_no_token_ids()
        self.score_kind = config.score_kind
        self.cf = cf.encoder if cf is not None else None
        if self.cf is not None:
            for p in self.cf.parameters():
                p.requires_grad_(False)

    # --- what each method defines -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    def stages(self) -> list[Stage]:
        return self.config.stages()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of the method's own parameters (``Stage.trainable`` picks among them)."""
        raise NotImplementedError

    def input_embeddings(self, batch: Batch) -> torch.Tensor | None:
        """Input embeddings to use instead of ``input_ids`` (None: the token ids as they are)."""
        return None

    def condition(self, batch: Batch) -> torch.Tensor | None:
        """A per-sample condition for per-sample adapters (None: no per-sample adapters)."""
        return None

    # --- shared machinery ---------------------------------------------------------------------

    def set_stage(self, stage: Stage) -> None:
        groups = self.parameter_groups()
        unknown = set(stage.trainable) - set(groups)
        if unknown:
            raise ValueError(f"{self.name}: stage {stage.name} trains unknown groups {sorted(unknown)}")
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in stage.trainable)

    def train(self, mode: bool = True) -> RecMethod:
        """A frozen CF encoder stays in eval mode while the method trains: its vectors are the
        bundle's (SASRec's dropout would otherwise perturb them in training steps and not at
        evaluation). One the stage tunes (CoLLM's ``tune_cf``) trains as usual."""
        super().train(mode)
        if self.cf is not None and not any(p.requires_grad for p in self.cf.parameters()):
            self.cf.eval()
        return self

    def method_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter of every group (all stages), by its name in ``named_parameters``."""
        own = {id(p) for params in self.parameter_groups().values() for p in params}
        return {n: p.detach().cpu() for n, p in self.named_parameters() if id(p) in own}

    def load_method_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        params = dict(self.named_parameters())
        expected = set(self.method_state_dict())
        missing, unknown = expected - set(state), set(state) - expected
        if not strict:  # another method's weights: take what both have
            state = {k: v for k, v in state.items() if k in expected}
            unknown = set()
        if unknown or (strict and missing):
            raise ValueError(
                f"{self.name} weights do not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unknown)[:5]}"
            )
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def cf_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: batch[k] for k in ("uid", "iid", "history") if k in batch}

    def token_items(self, batch: Batch) -> torch.Tensor:
        """[rows, tokens]: the candidate item each token belongs to (0: none); the batch's
        ``token_items`` where set, else the row's ``iid`` on every token."""
        if "token_items" in batch:
            return batch["token_items"]
        return batch["iid"][:, None].expand_as(batch["input_ids"])

    def decode(self, batch: Batch, context: DecodeContext | None = None):
        """The decoder over ``batch`` with the method's input embeddings and adapters; with a
        ``context``, after (and into) its cache (module docstring)."""
        mask = batch["attention_mask"]
        if context is not None and context.attention_mask is not None:
            mask = context.attention_mask
        position_ids = context.position_ids if context is not None else None
        if position_ids is None:
            position_ids = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        cache = context.cache if context is not None else None
        embeds = self.input_embeddings(batch)
        condition = self.condition(batch)
        adapters = self.adapter_context() if condition is not None else None
        decoder = self.lm.get_decoder()
        with adapters.use(condition) if adapters is not None else nullcontext():
            return decoder(
                input_ids=None if embeds is not None else batch["input_ids"],
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=cache is not None,
                **({cache_argument(decoder): cache} if cache is not None else {}),
            )

    def answer_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] states at the answer position -> one logit per row."""
        # Calling the head module (not indexing its weight) lets ZeRO-3 gather it.
        logits = self.lm.get_output_embeddings()(hidden).float()
        yes = logits[:, self.yes_id]
        return yes if self.score_kind == "yes_logit" else yes - logits[:, self.no_id]

    def forward(self, batch: Batch, compute_loss: bool = False) -> torch.Tensor:
        """One logit per sample, read at the answer position (the last column: prompts are
        left-padded). The LM head runs on that position only.

        ``compute_loss``: the training loss of ``batch`` instead (``self.loss``). Training calls
        ``model(batch, compute_loss=True)`` so that an overridden ``loss`` is what is optimised
        while the call still goes through the wrapper's forward (DDP's gradient sync, the
        DeepSpeed engine)."""
        if compute_loss:
            return self.loss(batch)
        return self.answer_logit(self.decode(batch).last_hidden_state[:, -1])

    def recommend(
        self, users: np.ndarray, known: Sequence[np.ndarray], k: int, *, exclude_seen: bool = True,
        item_chunk: int = 65_536,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """A ``full_catalog`` method's top-``k`` (scores, item ids), ``[len(users), k]`` each, over
        the whole catalogue: ``users`` and ``known`` (each user's known items) in the method's
        own dense id space, ids 0 where fewer than ``k`` items are left. Batch scoring calls it
        when the method is the retriever or the whole ranker."""
        raise NotImplementedError(
            f"{self.name} is a {self.config.role} method: it scores given candidates and does not "
            "rank the catalogue (only full_catalog methods, as CLLM4Rec, retrieve)"
        )

    def adapter_context(self):
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        """What training optimises (reached through ``forward(batch, compute_loss=True)``): BCE
        of the logits against the labels. Override it to add a term (RLMRec's alignment loss):
        ``super().loss(batch) + weight * term``."""
        return F.binary_cross_entropy_with_logits(self(batch), batch["label"].float())
