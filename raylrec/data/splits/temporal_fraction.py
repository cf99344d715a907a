"""Global temporal split by shares of the log's events, in time order."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from raylrec.data.config import Shares, SplitProtocol, register_split
from raylrec.data.splits import UserRows, by_time, fraction_cutoffs

__all__ = ["TemporalFractionSplit"]


@register_split
class TemporalFractionSplit(SplitProtocol):
    """Global temporal split: the earliest ``fractions[0]`` of events train, and so on.
    Events sharing a timestamp always land in the same split."""

    protocol: Literal["temporal_fraction"] = "temporal_fraction"
    fractions: Shares = (0.8, 0.1, 0.1)

    def bounds(self, kth_timestamp: Any, rows: int, last: int | None) -> tuple[Any, int | None, str | None]:
        cutoffs = fraction_cutoffs(kth_timestamp, rows, self.fractions)
        return cutoffs, None, f"temporal cutoffs: valid from {cutoffs[0]}, test from {cutoffs[1]}"

    def assign(self, rows: UserRows, cutoffs: tuple[int, int] | None) -> np.ndarray:
        assert cutoffs is not None, "temporal_fraction needs the log's cutoffs"
        return by_time(rows.timestamp, *cutoffs)
