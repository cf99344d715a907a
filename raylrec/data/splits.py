"""Split protocols: global temporal (fractions, fixed instants or rolling days), per-user leave-last-out and
per-user random ratio. Per-user rules run vectorised over blocks of complete users."""

from __future__ import annotations

import numpy as np

from raylrec.config import (
    LeaveLastOutSplit,
    RandomRatioSplit,
    RollingDaysSplit,
    TemporalFractionSplit,
    TemporalWindowSplit,
)
from raylrec.data.hashing import splitmix64

__all__ = ["SPLITS", "TRAIN", "VALID", "TEST", "assign_splits", "fraction_cutoffs"]

TRAIN, VALID, TEST = 0, 1, 2
SPLITS = ("train", "valid", "test")


def _by_time(timestamp: np.ndarray, valid_start: int, test_start: int) -> np.ndarray:
    return np.where(timestamp < valid_start, TRAIN, np.where(timestamp < test_start, VALID, TEST)).astype(
        np.int8
    )


def _leave_last_out(position: np.ndarray, count: np.ndarray, min_events: int) -> np.ndarray:
    split = np.full(len(position), TRAIN, np.int8)
    eligible = count >= min_events
    split[eligible & (position == count - 1)] = TEST
    split[eligible & (position == count - 2)] = VALID
    return split


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


def _random_ratio(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    position_in_user_first: np.ndarray,
    count: np.ndarray,
    config: RandomRatioSplit,
) -> np.ndarray:
    key = splitmix64(
        splitmix64(user.astype(np.uint64) ^ np.uint64(config.seed))
        ^ splitmix64(item.astype(np.uint64) * np.uint64(0x9E37))
        ^ timestamp.astype(np.uint64)
    )
    order = np.lexsort((key, user))  # shuffled within each user, users stay contiguous
    rank = np.empty(len(user), np.int64)
    rank[order] = np.arange(len(user)) - position_in_user_first[order]
    train, valid = ratio_counts(count, config.ratios)
    return np.where(rank < train, TRAIN, np.where(rank < train + valid, VALID, TEST)).astype(np.int8)


def assign_splits(
    config, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, cutoffs: tuple[int, int] | None
) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) for rows sorted by (user, timestamp)."""
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int8)
    new_user = np.r_[True, user[1:] != user[:-1]]
    starts = np.flatnonzero(new_user)
    group = np.cumsum(new_user) - 1
    first = starts[group]
    count = np.diff(np.r_[starts, n])[group]
    position = np.arange(n) - first
    if isinstance(config, (TemporalFractionSplit, RollingDaysSplit)):
        assert cutoffs is not None, f"{config.protocol} needs the log's cutoffs"
        return _by_time(timestamp, *cutoffs)
    if isinstance(config, TemporalWindowSplit):
        valid_start, test_start, _ = config.cutoffs()
        return _by_time(timestamp, valid_start, test_start)
    if isinstance(config, LeaveLastOutSplit):
        return _leave_last_out(position, count, config.min_events)
    if isinstance(config, RandomRatioSplit):
        return _random_ratio(user, item, timestamp, first, count, config)
    raise ValueError(f"split protocol {config.protocol!r} is not computed here")


def fraction_cutoffs(
    sorted_timestamps_at: callable, total: int, fractions: tuple[float, float, float]
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
