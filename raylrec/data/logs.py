"""The loader of the ``logs`` source (``raylrec.data.sources.logs``): the configured paths
expanded into files, read as one Ray Dataset of raw events with canonical columns, plus the
items' and users' metadata tables."""

from __future__ import annotations

import logging

import pyarrow as pa

from raylrec import storage
from raylrec.data.config import MetadataFile, ValidationConfig
from raylrec.data.files import SourceError, TabularFile, infer_format, read_batches, read_table
from raylrec.data.loaded import LoadedSource, read_events
from raylrec.data.sources.logs import LogSource

__all__ = ["load_logs", "log_files", "read_metadata"]

log = logging.getLogger(__name__)
_LOG_EXTENSIONS = (
    ".parquet",
    ".pq",
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".ndjson",
    ".gz",
    ".dat",
    ".data",
    ".inter",
    ".txt",
)


def log_files(source: LogSource, validation: ValidationConfig) -> list[TabularFile]:
    """Expand the configured paths into files; empty files are an error or skipped."""
    files: list[TabularFile] = []
    for uri in source.paths:
        storage.check_reachable(uri)
        found = storage.list_files(uri, _LOG_EXTENSIONS)
        if not found:
            raise SourceError(f"{uri}: no interaction files found (looked for {', '.join(_LOG_EXTENSIONS)})")
        for path, size in found:
            if size == 0:
                if validation.on_empty_file == "error":
                    raise SourceError(
                        f"{path}: empty file (0 bytes); remove it or set data.validation.on_empty_file=skip"
                    )
                log.warning("skipping empty file %s", path)
                continue
            fmt = source.format or infer_format(path)
            files.append(TabularFile(path, size, fmt, source.csv, index=len(files)))
    if not files:
        raise SourceError(f"{source.paths}: every file is empty")
    return files


def read_metadata(meta: MetadataFile, id_name: str) -> pa.Table:
    storage.check_reachable(meta.path)
    found = storage.list_files(meta.path)
    if not found:
        raise SourceError(f"{meta.path}: metadata file not found")
    columns = {id_name: meta.id_column, **meta.columns}
    tables = [
        read_table(TabularFile(path, size, meta.format or infer_format(path), meta.csv), columns)
        for path, size in found
    ]
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.set_column(0, id_name, table[id_name].cast(pa.string()))


def load_logs(source: LogSource, validation: ValidationConfig) -> LoadedSource:
    files = log_files(source, validation)
    # Read the first batch of the first file here, so a wrong column mapping (or, validated by
    # the pipeline, a wrong column type) fails at once with one clear line instead of from
    # inside a Ray task.
    sample = next(iter(read_batches(files[0], source.columns.as_dict())), None)
    return LoadedSource(
        sample=sample,
        events=read_events(files, source.columns.as_dict()),
        timestamp_unit=source.timestamp_unit,
        items=read_metadata(source.items, "item_id") if source.items else None,
        users=read_metadata(source.users, "user_id") if source.users else None,
        files=[f.uri for f in files],
        description={"type": "logs", "paths": source.paths, "files": len(files)},
    )
