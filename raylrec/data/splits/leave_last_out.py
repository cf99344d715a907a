"""Per-user leave-last-out: each user's last event is test, the one before valid."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from raylrec.config_types import Int
from raylrec.data.config import SplitProtocol, register_split
from raylrec.data.splits import TEST, TRAIN, VALID, UserRows

__all__ = ["LeaveLastOutSplit"]


@register_split
class LeaveLastOutSplit(SplitProtocol):
    """Per user: the last event is test, the one before valid, the rest train."""

    protocol: Literal["leave_last_out"] = "leave_last_out"
    min_events: Int = Field(default=3, ge=1, description="users with fewer events stay in train")

    def assign(self, rows: UserRows, cutoffs: tuple[int, int] | None) -> np.ndarray:
        split = np.full(len(rows.user), TRAIN, np.int8)
        eligible = rows.count >= self.min_events
        split[eligible & (rows.position == rows.count - 1)] = TEST
        split[eligible & (rows.position == rows.count - 2)] = VALID
        return split
