"""Global temporal split by whole UTC days counted back from the log's last day: the split an
appended day moves forward (``raylrec data prepare --append``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from raylrec.config_types import Int
from raylrec.data.config import DAY, SplitProtocol, register_split
from raylrec.data.days import day_name
from raylrec.data.splits import UserRows, by_time

__all__ = ["RollingDaysSplit"]


@register_split
class RollingDaysSplit(SplitProtocol):
    """Global temporal split by whole UTC days counted back from the log's last day: its last
    ``test_days`` days are test, the ``valid_days`` before them valid, everything earlier train.
    The split an appended day moves forward (``raylrec data prepare --append``)."""

    protocol: Literal["rolling_days"] = "rolling_days"
    valid_days: Int = Field(default=1, ge=1, description="days of validation before the test days")
    test_days: Int = Field(default=1, ge=1, description="the log's last days, held out for test")

    appendable = True

    def cutoffs(self, last_timestamp: int) -> tuple[int, int]:
        """(valid_start, test_start) in seconds for a log whose latest event is at ``last_timestamp``."""
        test_start = (last_timestamp // DAY - self.test_days + 1) * DAY
        return test_start - self.valid_days * DAY, test_start

    def bounds(self, kth_timestamp: Any, rows: int, last: int | None) -> tuple[Any, int | None, str | None]:
        assert last is not None, "rolling_days counts back from the log's last timestamp"
        cutoffs = self.cutoffs(last)
        valid, test = (day_name(cutoff // DAY) for cutoff in cutoffs)
        return cutoffs, None, f"rolling days: valid from {valid}, test from {test}"

    def assign(self, rows: UserRows, cutoffs: tuple[int, int] | None) -> np.ndarray:
        assert cutoffs is not None, "rolling_days needs the log's cutoffs"
        return by_time(rows.timestamp, *cutoffs)
