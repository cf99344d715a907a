"""The CF encoder interface every encoder implements (``raylrec/cf/encoders/*/model.py``).

Every encoder scores (user, item) pairs for CTR training, scores a chunk of users against the
whole catalogue for top-K, and exposes the user representation the LLM methods consume
(CoLLM's projector, RecLoRA's router). Index 0 of every table is padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from raylrec.cf.config import CFConfig
    from raylrec.cf.data import Split
    from raylrec.cf.graph import GraphRows

__all__ = ["CFEncoder", "FixedTables"]


class CFEncoder(nn.Module):
    """The interface: ``batch`` holds ``uid``, ``iid`` and, for sequential models, ``history``."""

    num_users: int
    num_items: int
    dim: int

    @classmethod
    def from_config(cls, config: CFConfig, train: Split) -> CFEncoder:
        """A fresh encoder for the users and items of ``train`` (what ``config.build`` calls)."""
        raise NotImplementedError

    @classmethod
    def graph_rows(cls, config: CFConfig) -> GraphRows | None:
        """The training rows whose (user, item) pairs form the interaction graph the encoder
        propagates over ("all" or "positives"), or None for an encoder without one. On the Ray
        path that graph is built once and shared through the object store
        (``raylrec.cf.graph``); ``from_config`` gets it from ``train.graph(rows)``."""
        return None

    @classmethod
    def for_serving(
        cls,
        config: CFConfig,
        sizes: tuple[int, int],
        state: dict[str, torch.Tensor],
        tables: dict[str, torch.Tensor],
    ) -> CFEncoder:
        """The encoder a loaded CF bundle serves with: by default its exported ``tables``
        (final user and item vectors, LightGCN's after propagation) behind the same interface;
        an encoder that computes users from their history rebuilds itself from ``state``."""
        return FixedTables(tables["users"], tables["items"])

    def id_tables(self) -> dict[str, tuple[str, ...]]:
        """The state-dict entries whose rows are indexed by dense ids, with the sides their rows
        hold in order (``("users",)``, ``("items",)``, or both in one table): what a warm start
        grows for new users and items (``raylrec.cf.warm_start``). By default the tables named
        ``users`` and ``items``."""
        names = self.state_dict().keys()
        return {key: (side,) for side in ("users", "items") if (key := f"{side}.weight") in names}

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor], *items: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """User vectors for ``batch``, then item vectors for each of ``items`` (None: the whole
        table), computed together so graph models propagate once per step."""
        return (self.user_vectors(batch), *(self.item_vectors(i) for i in items))

    def forward(
        self, batch: dict[str, torch.Tensor], *items: torch.Tensor | None, objective: CFConfig | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``score(batch)`` or, given item sets, ``embed(batch, *items)``; given ``objective``
        (the CF config), the training loss ``self.loss(batch, objective)``. Going through
        ``forward`` is what lets DistributedDataParallel synchronise gradients."""
        if objective is not None:
            return self.loss(batch, objective)
        return self.embed(batch, *items) if items else self.score(batch)

    def loss(self, batch: dict[str, torch.Tensor], objective: CFConfig) -> torch.Tensor:
        """What training optimises: BCE of ``score`` on CTR labels, or BPR on (``iid``, ``neg``)
        with ``objective.reg_weight`` times ``regularisation``. Override it to add a term
        (``super().loss(batch, objective) + ...``); training calls it through ``forward``."""
        if objective.loss == "bce":
            return F.binary_cross_entropy_with_logits(self.score(batch), batch["label"].float())
        users, pos, neg = self.embed(batch, batch["iid"], batch["neg"])
        loss = -F.logsigmoid((users * pos).sum(-1) - (users * neg).sum(-1)).mean()
        if objective.reg_weight:
            items = torch.cat([batch["iid"], batch["neg"]])
            loss = loss + objective.reg_weight * self.regularisation(batch, items)
        return loss

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for the pairs (user, ``batch["iid"]``)."""
        users, items = self.embed(batch, batch["iid"])
        return (users * items).sum(-1)

    def full_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, num_items]`` scores against every item (column 0 is padding)."""
        users, table = self.embed(batch, None)
        return users @ table.T

    def user_representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What downstream LLM methods read: detached, one vector per row."""
        return self.user_vectors(batch).detach()

    def regularisation(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """L2 of the embeddings a step touched (BPR's usual regulariser)."""
        u = self.user_vectors(batch)
        return (u.pow(2).sum() + self.item_vectors(items).pow(2).sum()) / (2 * len(u))


class FixedTables(CFEncoder):
    """Frozen user and item tables behind the encoder interface: how a bundle of an ID-based
    encoder (MF, LightGCN) serves; scores equal the trained encoder's."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        super().__init__()
        self.num_users, self.num_items, self.dim = users.shape[0], items.shape[0], users.shape[1]
        self.users = nn.Embedding.from_pretrained(users.clone(), freeze=True)
        self.items = nn.Embedding.from_pretrained(items.clone(), freeze=True)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.users(batch["uid"])

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.items.weight if items is None else self.items(items)
