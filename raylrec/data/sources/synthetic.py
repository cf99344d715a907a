"""Zipf-distributed synthetic logs for benchmarks and tests (``raylrec.data.synthetic``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.config_types import Float, Int, OptionalFloat
from raylrec.data.config import SourceConfig, register_source

__all__ = ["SyntheticSource"]


@register_source
class SyntheticSource(SourceConfig):
    """Zipf-distributed synthetic logs, generated in parallel chunks (never whole in memory)."""

    type: Literal["synthetic"] = "synthetic"
    num_events: Int = Field(default=100_000, gt=0)
    num_users: Int = Field(default=10_000, gt=0)
    num_items: Int = Field(default=5_000, gt=0)
    zipf_exponent: Float = Field(default=1.1, gt=0)
    user_zipf_exponent: OptionalFloat = Field(
        default=None,
        gt=0,
        description="the users' Zipf exponent when it differs from the items' (default: zipf_exponent); "
        "1.1 over 200,000 users gives the top user 13% of the log; a lower exponent spreads it wider",
    )
    start: Int = 1_577_836_800  # 2020-01-01
    span_days: Int = Field(default=365, gt=0)
    seed: Int = 0
    events_per_chunk: Int = Field(default=250_000, gt=0)

    loader = "raylrec.data.synthetic:load_synthetic"
