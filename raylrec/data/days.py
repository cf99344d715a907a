"""Day files: how a ``rolling_days`` dataset keeps its held-out rows so that a later day moves
the split forward without rewriting anything.

Rows older than the validation window are written once, to ``train/`` (the bulk). Every
held-out or appended day is written to ``days/<YYYY-MM-DD>/``, and ``meta.json`` records each
day's rows, positives, order-independent hash and files. A version's splits are then a pure
function of its day records and its cutoffs (``assemble``): when an appended day pushes the
window forward, yesterday's test day becomes validation and the oldest validation day becomes
train by being listed under another split, never copied. Split hashes are sums (mod 2^64) of
row hashes, so a split's hash is the sum of its parts' hashes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from raylrec.data.config import DAY
from raylrec.data.splits import SPLIT_NAMES, TEST, TRAIN, VALID

__all__ = ["BULK", "add_hash", "assemble", "day_name", "day_number", "day_split"]

BULK = -1  # the day code of rows written to train/ in one piece


def day_name(day: int) -> str:
    """``2026-11-24`` for the day number ``day`` (days since 1970-01-01, UTC)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


def day_number(name: str) -> int:
    return (dt.date.fromisoformat(name) - dt.date(1970, 1, 1)).days


def day_split(day: int, cutoffs: tuple[int, int]) -> str:
    """The split of a whole day under (valid_start, test_start), both at midnight."""
    start = day * DAY
    return SPLIT_NAMES[TRAIN if start < cutoffs[0] else VALID if start < cutoffs[1] else TEST]


def add_hash(a: str, b: str) -> str:
    with np.errstate(over="ignore"):
        return f"{int(np.uint64(int(a, 16)) + np.uint64(int(b, 16))):016x}"


def assemble(
    bulk: dict[str, Any] | None, days: dict[str, dict[str, Any]], cutoffs: tuple[int, int]
) -> dict[str, dict[str, Any]]:
    """Each split's rows, positives, hash and files (paths under the dataset) from the bulk
    train part and the day records; a split with no rows is left out."""
    splits: dict[str, dict[str, Any]] = {}
    parts = ([("train", bulk)] if bulk and bulk["rows"] else []) + [
        (day_split(day_number(name), cutoffs), record) for name, record in sorted(days.items())
    ]
    for split, part in parts:
        into = splits.setdefault(split, {"rows": 0, "positives": 0, "hash": f"{0:016x}", "files": []})
        into["rows"] += part["rows"]
        into["positives"] += part["positives"]
        into["hash"] = add_hash(into["hash"], part["hash"])
        into["files"] += part["files"]
    return {s: splits[s] for s in SPLIT_NAMES if s in splits}
