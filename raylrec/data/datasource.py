"""A Ray Data datasource over many tabular files: one read task per file (per run of Parquet
row groups for big Parquet files), each streaming bounded batches tagged with file and row
(and the reader's ``_reason``/``_raw`` for rows it could not split: see ``files``)."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raylrec.data.files import TabularFile, check_columns, open_parquet, read_batches

__all__ = ["TabularFilesDatasource"]

ROWS_PER_TASK = 1_000_000


class TabularFilesDatasource(Datasource):
    """Reads ``files`` keeping only ``mapping``'s columns, renamed to canonical names."""

    def __init__(self, files: list[TabularFile], mapping: dict[str, str]):
        self._files = files
        self._mapping = mapping
        # Parquet footers are read once on the driver: a truncated file, or one lacking a mapped
        # column or holding one of a wrong type, fails here, by name, before any task starts;
        # their row counts also let big files split across tasks.
        self._parquet_plan: dict[str, list[tuple[list[int], int, int]]] = {}
        for f in files:
            if f.format == "parquet":
                self._parquet_plan[f.uri] = _row_group_runs(f.uri, mapping)

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(f.size for f in self._files) * 3

    def get_name(self) -> str:
        return "ReadInteractionFiles"

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        tasks: list[ReadTask] = []
        for f in self._files:
            runs = self._parquet_plan.get(f.uri) or [(None, 0, None)]
            for row_groups, first_row, num_rows in runs:
                meta = BlockMetadata(
                    num_rows=num_rows, size_bytes=None, exec_stats=None, input_files=(f.uri,)
                )
                tasks.append(
                    ReadTask(
                        _reader(f, self._mapping, row_groups, first_row),
                        meta,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
        return tasks


def _reader(f: TabularFile, mapping: dict[str, str], row_groups, first_row):
    def read() -> Iterable[pa.Table]:
        yield from read_batches(f, mapping, row_groups=row_groups, first_row=first_row)

    return read


def _row_group_runs(uri: str, mapping: dict[str, str]) -> list[tuple[list[int], int, int]]:
    """Consecutive row groups bundled into runs of about ROWS_PER_TASK rows (after checking
    the file's mapped columns)."""
    pf = open_parquet(uri)
    check_columns(pf.schema_arrow, mapping, uri)
    meta = pf.metadata
    runs: list[tuple[list[int], int, int]] = []
    current: list[int] = []
    start = rows = 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if current and rows + n > ROWS_PER_TASK:
            runs.append((current, start, rows))
            current, start, rows = [], start + rows, 0
        current.append(i)
        rows += n
    if current:
        runs.append((current, start, rows))
    return runs or [([], 0, 0)]
