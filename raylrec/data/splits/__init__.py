"""Split protocols, one module each (registered in ``raylrec.data.config.SPLITS``): global
temporal (fractions, fixed instants or rolling days), per-user leave-last-out and per-user
random ratio, and ``given`` (the source's own split). Per-user rules run vectorised over blocks
of complete users: ``assign_splits`` hands a protocol's ``assign`` the rows of such a block.

A new protocol is a new module here (or a ``raylrec.splits`` entry point): its config class
(``raylrec.data.config.SplitProtocol``), ``@register_split``, and its rule as ``assign``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VALID",
    "UserRows",
    "assign_splits",
    "by_time",
    "fraction_cutoffs",
]

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class UserRows:
    """Rows of complete users sorted by (user, timestamp), with each row's place in its user:
    ``first`` (the index of its user's first row), ``position`` (0-based within the user) and
    ``count`` (its user's rows)."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    first: np.ndarray
    position: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> UserRows:
        n = len(user)
        new_user = np.r_[True, user[1:] != user[:-1]]
        starts = np.flatnonzero(new_user)
        group = np.cumsum(new_user) - 1
        first = starts[group]
        count = np.diff(np.r_[starts, n])[group]
        return cls(user, item, timestamp, first, np.arange(n) - first, count)


def by_time(timestamp: np.ndarray, valid_start: int, test_start: int) -> np.ndarray:
    """Train before ``valid_start``, valid before ``test_start``, test from then on."""
    return np.where(timestamp < valid_start, TRAIN, np.where(timestamp < test_start, VALID, TEST)).astype(
        np.int8
    )


def assign_splits(
    config: Any, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, cutoffs: tuple[int, int] | None
) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) for rows sorted by (user, timestamp), by the
    protocol ``config`` (a ``SplitProtocol``)."""
    if len(user) == 0:
        return np.zeros(0, np.int8)
    return config.assign(UserRows.of(user, item, timestamp), cutoffs)


def fraction_cutoffs(
    sorted_timestamps_at: Callable[[int], int], total: int, fractions: tuple[float, float, float]
) -> tuple[int, int]:
    """Cutoffs (c1, c2) so that train = ts < c1, valid = c1 <= ts < c2, test = ts >= c2, where
    c1 is the timestamp of the event at rank floor(total * f_train) in time order, and so on.
    ``sorted_timestamps_at(k)`` returns the k-th smallest timestamp (0-based)."""
    k1 = int(np.floor(total * fractions[0]))
    k2 = int(np.floor(total * (fractions[0] + fractions[1])))
    big = np.iinfo(np.int64).max
    c1 = sorted_timestamps_at(k1) if k1 < total else big
    c2 = sorted_timestamps_at(k2) if k2 < total else big
    return int(c1), int(c2)
