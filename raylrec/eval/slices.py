"""Warm/cold slices: CoLLM's ``not_cold`` rule, computed from training interactions.

On the CoLLM MovieLens-1M split the shipped ``not_cold`` flag is exactly "the user and the item
both appear in training" (min_interactions=1 agrees on 100% of valid rows; the threshold of 3
that the dataset's README states agrees on only 92.8%): see tests/test_eval.py."""

from __future__ import annotations

import numpy as np

__all__ = ["warm_mask"]


def warm_mask(
    users: np.ndarray,
    items: np.ndarray,
    train_users: np.ndarray,
    train_items: np.ndarray,
    min_interactions: int = 1,
) -> np.ndarray:
    """True where both the user and the item have at least ``min_interactions`` training rows
    (CoLLM's ``not_cold`` with the default); every other row is cold."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    size_u = max(int(users.max(initial=0)), int(np.max(train_users, initial=0))) + 1
    size_i = max(int(items.max(initial=0)), int(np.max(train_items, initial=0))) + 1
    user_counts = np.bincount(np.asarray(train_users, np.int64), minlength=size_u)
    item_counts = np.bincount(np.asarray(train_items, np.int64), minlength=size_i)
    return (user_counts[users] >= min_interactions) & (item_counts[items] >= min_interactions)
