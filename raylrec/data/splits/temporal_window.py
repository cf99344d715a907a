"""Global temporal split at instants given in the config."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from raylrec.config_types import NO_BOOL
from raylrec.data.config import SplitProtocol, register_split, to_seconds
from raylrec.data.splits import UserRows, by_time

__all__ = ["TemporalWindowSplit"]

Instant = Annotated[int | str | dt.date, NO_BOOL]


@register_split
class TemporalWindowSplit(SplitProtocol):
    """Global temporal split at given instants: train < valid_start <= valid < test_start."""

    protocol: Literal["temporal_window"] = "temporal_window"
    valid_start: Instant
    test_start: Instant
    end: Annotated[int | str | dt.date | None, NO_BOOL] = Field(
        default=None, description="events at or after this instant are quarantined"
    )

    @field_validator("valid_start", "test_start", "end")
    @classmethod
    def _instant(cls, value: int | str | dt.date | None) -> int | str | dt.date | None:
        if value is not None:
            try:
                to_seconds(value)
            except ValueError as e:
                raise ValueError(f"{value!r} is not an ISO date or epoch seconds ({e})") from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> TemporalWindowSplit:
        cuts = [self.valid_start, self.test_start] + ([self.end] if self.end is not None else [])
        secs = [to_seconds(c) for c in cuts]
        if secs != sorted(secs) or len(set(secs)) != len(secs):
            raise ValueError("need valid_start < test_start (< end)")
        return self

    def cutoffs(self) -> tuple[int, int, int | None]:
        """(valid_start, test_start, end) in epoch seconds."""
        end = to_seconds(self.end) if self.end is not None else None
        return to_seconds(self.valid_start), to_seconds(self.test_start), end

    def bounds(self, kth_timestamp: Any, rows: int, last: int | None) -> tuple[Any, int | None, str | None]:
        return None, self.cutoffs()[2], None

    def assign(self, rows: UserRows, cutoffs: tuple[int, int] | None) -> np.ndarray:
        valid_start, test_start, _ = self.cutoffs()
        return by_time(rows.timestamp, valid_start, test_start)

    def recorded_cutoffs(self, cutoffs: tuple[int, int] | None) -> list[int] | None:
        return list(self.cutoffs()[:2])
