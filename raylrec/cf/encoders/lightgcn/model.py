"""LightGCN (see the package docstring for the paper)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from raylrec.cf.graph import GraphRows
from raylrec.cf.models import CFEncoder

if TYPE_CHECKING:
    from raylrec.cf.data import Split
    from raylrec.cf.encoders.lightgcn import LightGCNConfig

__all__ = ["LightGCN"]


def _mix(seed: int, draw: int) -> int:
    """A generator seed for draw ``draw`` of a run seeded ``seed`` (distinct per draw)."""
    return (seed * 6364136223846793005 + draw * 1442695040888963407 + 1) % 2**63


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
        edge_dropout: float = 0.0,
    ):
        super().__init__()
        if combine not in ("mean", "sum"):
            raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")
        if not 0 <= edge_dropout < 1:
            raise ValueError(f"edge_dropout must be in [0, 1), got {edge_dropout!r}")
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.layers, self.combine, self.edge_dropout = layers, combine, edge_dropout
        self.embedding = nn.Embedding(num_users + num_items, dim)
        nn.init.xavier_uniform_(self.embedding.weight)
        self.register_buffer("adjacency", adjacency, persistent=False)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if edge_dropout:
            # Each step's dropped edges are a function of torch's seed when the encoder was built
            # (the training core seeds it with train.seed first) and of the draw count, which is
            # in the state dict: a run, and a resumed run, see the same graphs. A private
            # generator leaves torch's global random stream to everything else.
            self._dropout_seed = torch.initial_seed()
            self.register_buffer("dropout_draws", torch.zeros((), dtype=torch.int64))

    def id_tables(self) -> dict[str, tuple[str, ...]]:
        return {"embedding.weight": ("users", "items")}  # one table: every user, then every item

    @classmethod
    def graph_rows(cls, config: LightGCNConfig) -> GraphRows:
        # The graph of a BCE encoder holds every training interaction; a BPR one, its positives.
        return "all" if config.implicit or config.loss == "bce" else "positives"

    @classmethod
    def from_config(cls, config: LightGCNConfig, train: Split) -> LightGCN:
        return cls(
            train.num_users,
            train.num_items,
            train.graph(cls.graph_rows(config)),
            config.dim,
            config.layers,
            config.combine,
            config.edge_dropout,
        )

    def graph(self) -> torch.Tensor:
        """The adjacency a forward propagates: the full graph in eval mode; in training with
        ``edge_dropout``, a fresh draw of the graph with that share of its entries zeroed and
        the rest kept at their full-graph values (not rescaled, as RLMRec's ``SpAdjEdgeDrop``;
        each of an edge's two entries is dropped on its own, as there)."""
        if not self.training or not self.edge_dropout:
            return self.adjacency
        values = self.adjacency.values()
        generator = torch.Generator(device=values.device)
        generator.manual_seed(_mix(self._dropout_seed, int(self.dropout_draws)))
        self.dropout_draws += 1
        keep = torch.rand(values.shape, generator=generator, device=values.device) >= self.edge_dropout
        return torch.sparse_csr_tensor(
            self.adjacency.crow_indices(),
            self.adjacency.col_indices(),
            values * keep,
            self.adjacency.shape,
            check_invariants=False,  # the full graph's own structure, already valid
        )

    def propagate(self, ego: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item tables, from the layer-0 ``embedding`` or from ``ego`` in its
        place (RLMRec-Gen's masked input). Cached in eval mode (the graph and weights are fixed)."""
        if ego is None and not self.training and self._cache is not None:
            return self._cache
        x = self.embedding.weight if ego is None else ego
        graph = self.graph()
        outputs = [x]
        for _ in range(self.layers):
            x = torch.sparse.mm(graph, x)
            outputs.append(x)
        stacked = torch.stack(outputs)
        final = stacked.mean(0) if self.combine == "mean" else stacked.sum(0)
        tables = (final[: self.num_users], final[self.num_users :])
        if ego is None:
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
