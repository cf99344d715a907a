"""What every source loader returns: one Ray Dataset of raw events with canonical columns
(``user_id``, ``item_id``, ``timestamp``, ``rating`` and/or ``label``, ``_file``, ``_row``) plus
small metadata tables. Below ``sources`` (which dispatches to the loaders) and the loaders
themselves (``movielens``, ``synthetic``), so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from raylrec.data.datasource import TabularFilesDatasource
from raylrec.data.files import TabularFile

__all__ = ["LoadedSource", "read_events"]


@dataclass
class LoadedSource:
    events: ray.data.Dataset
    timestamp_unit: str = "s"
    items: pa.Table | None = None  # item_id (string) + metadata columns such as title
    users: pa.Table | None = None  # user_id (string) + metadata columns
    files: list[str] = field(default_factory=list)
    sample: pa.Table | None = None  # the first batch of the first file, read on the driver
    description: dict[str, Any] = field(default_factory=dict)


def read_events(files: list[TabularFile], mapping: dict[str, str]) -> ray.data.Dataset:
    return ray.data.read_datasource(TabularFilesDatasource(files, mapping))
