"""Matrix factorisation (see the package docstring for the paper)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from raylrec.cf.models import CFEncoder

if TYPE_CHECKING:
    from raylrec.cf.data import Split
    from raylrec.cf.encoders.mf import MFConfig

__all__ = ["MF"]


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

    @classmethod
    def from_config(cls, config: MFConfig, train: Split) -> MF:
        return cls(train.num_users, train.num_items, config.dim, config.init)

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.users(batch["uid"])

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.items.weight if items is None else self.items(items)
