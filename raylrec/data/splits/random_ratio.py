"""Per-user random ratio: RecBole's 'RS' rule (each user's events shuffled, seeded, then cut)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from raylrec.config_types import Int
from raylrec.data.config import Shares, SplitProtocol, register_split
from raylrec.data.hashing import splitmix64
from raylrec.data.splits import TEST, TRAIN, VALID, UserRows

__all__ = ["RandomRatioSplit", "ratio_counts"]


def ratio_counts(count: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per user, how many events go to train and valid (the rest test). RecBole's rule: floor
    each held-out share, then move one event from train to a held-out split whose share was
    between 0 and 1 event, while train keeps more than one."""
    r_train, r_valid, r_test = ratios
    valid = np.floor(r_valid * count).astype(np.int64)
    test = np.floor(r_test * count).astype(np.int64)
    train = count - valid - test
    for share, held in ((r_test, test), (r_valid, valid)):
        exact = share * count
        move = (train > 1) & (exact > 0) & (exact < 1)
        held += move
        train -= move
        # RecBole stops adjusting once train is down to one; (train > 1) carries that forward.
    return train, valid


@register_split
class RandomRatioSplit(SplitProtocol):
    """Per user: events shuffled (seeded) and cut by ratios, RecBole's 'RS' rule."""

    protocol: Literal["random_ratio"] = "random_ratio"
    ratios: Shares = (0.8, 0.1, 0.1)
    seed: Int = 2020

    def assign(self, rows: UserRows, cutoffs: tuple[int, int] | None) -> np.ndarray:
        key = splitmix64(
            splitmix64(rows.user.astype(np.uint64) ^ np.uint64(self.seed))
            ^ splitmix64(rows.item.astype(np.uint64) * np.uint64(0x9E37))
            ^ rows.timestamp.astype(np.uint64)
        )
        order = np.lexsort((key, rows.user))  # shuffled within each user, users stay contiguous
        rank = np.empty(len(rows.user), np.int64)
        rank[order] = np.arange(len(rows.user)) - rows.first[order]
        train, valid = ratio_counts(rows.count, self.ratios)
        return np.where(rank < train, TRAIN, np.where(rank < train + valid, VALID, TEST)).astype(np.int8)
