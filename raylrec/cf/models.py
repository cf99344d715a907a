"""Collaborative-filtering encoders: MF, LightGCN and SASRec, on one small interface.

Every encoder scores (user, item) pairs for CTR training, scores a chunk of users against the
whole catalogue for top-K, and exposes the user representation the LLM methods consume
(CoLLM's projector, RecLoRA's router). Index 0 of every table is padding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["CFEncoder", "MF", "LightGCN", "SASRec", "normalized_adjacency"]


class CFEncoder(nn.Module):
    """The interface: ``batch`` holds ``uid``, ``iid`` and, for sequential models, ``history``."""

    num_users: int
    num_items: int
    dim: int

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor], *items: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """User vectors for ``batch``, then item vectors for each of ``items`` (None: the whole
        table), computed together so graph models propagate once per step."""
        return (self.user_vectors(batch), *(self.item_vectors(i) for i in items))

    def forward(
        self, batch: dict[str, torch.Tensor], *items: torch.Tensor | None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``score(batch)`` or, given item sets, ``embed(batch, *items)``: going through
        ``forward`` is what lets DistributedDataParallel synchronise gradients."""
        return self.embed(batch, *items) if items else self.score(batch)

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


class MF(CFEncoder):
    """Matrix factorisation: dot product of user and item embeddings."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init: str = "normal"):
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.users = nn.Embedding(num_users, dim, padding_idx=0)
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        for table in (self.users, self.items):
            if init == "xavier":  # RecBole's BPR: std sqrt(2 / (rows + dim))
                nn.init.xavier_normal_(table.weight)
            else:
                nn.init.normal_(table.weight, std=0.1)
            with torch.no_grad():
                table.weight[0].zero_()

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.users(batch["uid"])

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.items.weight if items is None else self.items(items)


def normalized_adjacency(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the user-item bipartite graph, users first then items (sparse CSR)."""
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    u, i = pairs[:, 0], pairs[:, 1] + num_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    n = num_users + num_items
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1)), 0.0)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    coo = torch.sparse_coo_tensor(
        torch.as_tensor(np.stack([rows, cols])), torch.as_tensor(values, dtype=torch.float32), (n, n)
    )
    return coo.coalesce().to_sparse_csr()


class LightGCN(CFEncoder):
    """LightGCN: embeddings propagated over the normalised graph, layers combined by mean (CoLLM)
    or sum (RLMRec)."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        adjacency: torch.Tensor,
        dim: int = 64,
        layers: int = 3,
        combine: str = "mean",
    ):
        super().__init__()
        if combine not in ("mean", "sum"):
            raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.layers, self.combine = layers, combine
        self.embedding = nn.Embedding(num_users + num_items, dim)
        nn.init.xavier_uniform_(self.embedding.weight)
        self.register_buffer("adjacency", adjacency, persistent=False)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item tables. Cached in eval mode (the graph and weights are fixed)."""
        if not self.training and self._cache is not None:
            return self._cache
        x = self.embedding.weight
        outputs = [x]
        for _ in range(self.layers):
            x = torch.sparse.mm(self.adjacency, x)
            outputs.append(x)
        stacked = torch.stack(outputs)
        final = stacked.mean(0) if self.combine == "mean" else stacked.sum(0)
        tables = (final[: self.num_users], final[self.num_users :])
        self._cache = None if self.training else tables
        return tables

    def train(self, mode: bool = True) -> LightGCN:
        self._cache = None
        return super().train(mode)

    def embed(self, batch: dict[str, torch.Tensor], *items: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        users, table = self.propagate()
        return (users[batch["uid"]], *(table if i is None else table[i] for i in items))

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.propagate()[0][batch["uid"]]

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        table = self.propagate()[1]
        return table if items is None else table[items]

    def regularisation(self, batch: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        # LightGCN regularises the layer-0 embeddings, not the propagated ones.
        ego_u = self.embedding(batch["uid"])
        ego_i = self.embedding(items + self.num_users)
        return (ego_u.pow(2).sum() + ego_i.pow(2).sum()) / (2 * len(ego_u))


class SASRec(CFEncoder):
    """SASRec: a causal Transformer over the user's recent items; the last position's state is
    the user vector (so the user is represented by their history, not an id)."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 64,
        max_len: int = 25,
        blocks: int = 2,
        heads: int = 4,
        dropout: float = 0.2,
    ):
        if dim % heads:  # torch would only assert it, deep inside the attention layer
            raise ValueError(f"SASRec: dim {dim} is not divisible by heads {heads}")
        super().__init__()
        self.num_users, self.num_items, self.dim, self.max_len = num_users, num_items, dim, max_len
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.items.weight, std=1 / math.sqrt(dim))
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.register_buffer(
            "causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1), persistent=False
        )

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        history = batch["history"][:, -self.max_len :]  # left-padded with 0, newest last
        length = history.shape[1]
        x = self.items(history) * math.sqrt(self.dim) + self.positions.weight[-length:]
        x = self.dropout(x) * (history > 0).unsqueeze(-1)
        # Padding stays attendable as zero vectors (as in the reference SASRec): a key padding
        # mask would leave rows with no history attending to nothing, which yields NaN.
        h = self.encoder(x, mask=self.causal[-length:, -length:])
        return self.norm(h[:, -1])

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.items.weight if items is None else self.items(items)
