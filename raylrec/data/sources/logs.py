"""Generic interaction logs: Parquet, CSV or JSON Lines files, local or s3:// (``raylrec.data.logs``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from raylrec.data.config import ColumnMapping, CsvOptions, MetadataFile, SourceConfig, register_source

__all__ = ["LogSource"]


@register_source
class LogSource(SourceConfig):
    """Generic interaction logs: Parquet, CSV or JSON Lines files, local or s3://."""

    type: Literal["logs"] = "logs"
    paths: list[str] = Field(min_length=1, description="files, directories or globs")
    format: Literal["parquet", "csv", "jsonl"] | None = Field(
        default=None, description="inferred from each file's extension when unset"
    )
    columns: ColumnMapping = ColumnMapping()
    csv: CsvOptions = CsvOptions()
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s"
    items: MetadataFile | None = None
    users: MetadataFile | None = None

    loader = "raylrec.data.logs:load_logs"

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("paths")
    @classmethod
    def _no_empty_path(cls, paths: list[str]) -> list[str]:
        # '' would resolve to the current directory (and then to "output lies inside the input")
        empty = [i for i, p in enumerate(paths) if not p.strip()]
        if empty:
            raise ValueError(f"path {empty[0]} of {len(paths)} is empty: name a file, a directory or a glob")
        return paths
