"""SASRec (see the package docstring for the paper)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from raylrec.cf.models import CFEncoder

if TYPE_CHECKING:
    from raylrec.cf.data import Split
    from raylrec.cf.encoders.sasrec import SASRecConfig

__all__ = ["SASRec"]


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

    @classmethod
    def from_sizes(cls, config: SASRecConfig, num_users: int, num_items: int) -> SASRec:
        return cls(
            num_users, num_items, config.dim, config.max_len, config.blocks, config.heads, config.dropout
        )

    @classmethod
    def from_config(cls, config: SASRecConfig, train: Split) -> SASRec:
        return cls.from_sizes(config, train.num_users, train.num_items)

    @classmethod
    def for_serving(
        cls,
        config: SASRecConfig,
        sizes: tuple[int, int],
        state: dict[str, torch.Tensor],
        tables: dict[str, torch.Tensor],
    ) -> SASRec:
        # Users are computed from their history at serving time: the whole encoder is needed.
        encoder = cls.from_sizes(config, *sizes)
        encoder.load_state_dict(state)
        return encoder

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
