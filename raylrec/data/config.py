"""The data section's plugin points: sources of logs and split protocols, each a registered config
class (DESIGN.md, "Models are plugins", applied to data).

A source is one module under ``raylrec/data/sources/`` and a split protocol one module under
``raylrec/data/splits/``: its config class, registered here, declares what the rest of raylrec
needs (a source's loader as a dotted path, imported only when a dataset is prepared; a split's
rule as methods on the config). ``raylrec.config`` builds the ``data.source`` and ``data.split``
unions from the registries, so a new source or protocol is a new file, never an edit to a list.

Torch-free and Ray-free: a config loads (and fails) without either.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from raylrec.config_types import Bool, FieldError, Float, Int, StrictConfig
from raylrec.registry import Registry, import_object

__all__ = [
    "DAY",
    "SOURCES",
    "SPLITS",
    "ColumnMapping",
    "Shares",
    "CsvOptions",
    "HistoryConfig",
    "LabelConfig",
    "MetadataFile",
    "SourceConfig",
    "SplitProtocol",
    "ValidationConfig",
    "register_source",
    "register_split",
    "to_seconds",
]

# Seconds since the epoch for 2100-01-01: later timestamps are almost always milliseconds.
YEAR_2100 = 4_102_444_800
DAY = 86_400  # seconds: the unit of rolling_days and of an appended dataset's day files


class SourceConfig(StrictConfig):
    """A source of interaction logs. ``loader``: ``"module:function"`` taking ``(source,
    validation)`` and returning a ``raylrec.data.loaded.LoadedSource`` (raw events as one Ray
    Dataset). A source whose files already hold train/valid/test (``carries_splits``) names the
    function that prepares the whole dataset from them instead (``prepare``), and goes with the
    ``given`` split protocol."""

    type: str
    loader: ClassVar[str | None] = None
    carries_splits: ClassVar[bool] = False
    prepare: ClassVar[str | None] = None

    def load(self, validation: ValidationConfig) -> Any:
        if self.loader is None:
            raise TypeError(f"source {self.type!r} has no loader (it prepares its own splits)")
        return import_object(self.loader)(self, validation)


class SplitProtocol(StrictConfig):
    """A split protocol: which of a user's rows (sorted by user, then time) are train, valid and
    test. ``assign`` is the rule; ``bounds`` computes the global cutoffs a temporal protocol
    needs from the log (once, in the driver); ``appendable``: a dataset of this protocol can take
    appended days (``data prepare --append``); ``from_source``: the source carries the split."""

    protocol: str
    appendable: ClassVar[bool] = False
    from_source: ClassVar[bool] = False

    def bounds(self, kth_timestamp: Any, rows: int, last: int | None) -> tuple[Any, int | None, str | None]:
        """``(cutoffs, end, message)``: the global ``(valid_start, test_start)`` the rule needs
        (None: none), the instant from which events are quarantined (None: none) and a line for
        the progress log. ``kth_timestamp(k)``: the log's k-th smallest timestamp; ``last``: its
        latest (computed for appendable protocols only)."""
        return None, None, None

    def assign(self, rows: Any, cutoffs: tuple[int, int] | None) -> Any:
        """Split codes (``raylrec.data.splits``: 0 train, 1 valid, 2 test) for ``rows`` (a
        ``UserRows``: complete users, sorted by user then time)."""
        raise NotImplementedError(f"split protocol {self.protocol!r} is not computed by the pipeline")

    def recorded_cutoffs(self, cutoffs: tuple[int, int] | None) -> list[int] | None:
        """Where train ends and test starts, recorded in meta.json (a warm start's new rows)."""
        return list(cutoffs) if cutoffs else None


SOURCES: Registry = Registry("source", "type", "raylrec.data.sources", "raylrec.sources", modules=True)
SPLITS: Registry = Registry(
    "split protocol", "protocol", "raylrec.data.splits", "raylrec.splits", modules=True
)
register_source = SOURCES.register
register_split = SPLITS.register


def _shares(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-6:
        raise ValueError(f"train/valid/test shares must be non-negative and sum to 1, got {list(v)}")
    return v


# train/valid/test shares of a split protocol
Shares = Annotated[tuple[Float, Float, Float], AfterValidator(_shares)]


def to_seconds(value: int | str | dt.date) -> int:
    """Epoch seconds of an instant given as seconds, an ISO date or datetime (UTC when naive)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    else:
        when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


# --- options shared by the sources -----------------------------------------------------------


class ColumnMapping(StrictConfig):
    """Which source column holds each canonical field of an interaction log."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    label: str | None = None

    @model_validator(mode="after")
    def _rating_or_label(self) -> ColumnMapping:
        if self.rating is None and self.label is None:
            raise ValueError("map at least one of 'rating' or 'label'")
        return self

    def as_dict(self) -> dict[str, str]:
        """canonical name -> source column, for the fields that are mapped."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _csv_char(value: str) -> str:
    # Arrow's CSV parser takes one ASCII character; anything else would fail inside a Ray task.
    if len(value) != 1 or not value.isascii() or value in "\r\n":
        raise ValueError(f"must be one ASCII character other than a line break, got {value!r}")
    return value


CsvChar = Annotated[str, AfterValidator(_csv_char)]


class CsvOptions(StrictConfig):
    delimiter: CsvChar = ","
    quote_char: CsvChar | None = '"'
    has_header: Bool = True
    column_names: list[str] | None = Field(default=None, description="names for a file without a header row")
    encoding: str = "utf8"

    @model_validator(mode="after")
    def _distinct(self) -> CsvOptions:
        if self.quote_char == self.delimiter:
            raise FieldError("quote_char", f"{self.quote_char!r} is also the delimiter")
        return self


class MetadataFile(StrictConfig):
    """An item (or user) metadata table: any format the logs accept."""

    path: str
    id_column: str = "item_id"
    columns: dict[str, str] = Field(
        default_factory=lambda: {"title": "title"},
        description="output name -> source column",
    )
    format: Literal["parquet", "csv", "jsonl"] | None = None
    csv: CsvOptions = CsvOptions()


# --- preparation steps -------------------------------------------------------------------------


class ValidationConfig(StrictConfig):
    rating_range: tuple[Float, Float] | None = Field(
        default=None, description="inclusive [min, max]; ratings outside are quarantined"
    )
    min_timestamp: Int = Field(default=1, description="earliest plausible timestamp (seconds)")
    max_timestamp: Int = Field(default=YEAR_2100, description="latest plausible timestamp")
    max_id_length: Int = Field(
        default=1024, ge=1, description="user and item ids longer than this many characters are quarantined"
    )
    on_empty_file: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _ordered(self) -> ValidationConfig:
        if self.rating_range and self.rating_range[0] > self.rating_range[1]:
            raise ValueError("rating_range must be [min, max] with min <= max")
        if self.min_timestamp >= self.max_timestamp:
            raise ValueError("min_timestamp must be below max_timestamp")
        return self


class LabelConfig(StrictConfig):
    threshold: Float = Field(default=4.0, description="label = 1 when rating >= threshold")


class HistoryConfig(StrictConfig):
    max_len: Int = Field(default=50, ge=1, description="last N positive items before the event")
