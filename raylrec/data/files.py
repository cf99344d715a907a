"""Reading tabular files (Parquet, CSV/TSV, JSON Lines) in bounded batches, each row tagged with
its file and row number so a bad value can be named exactly.

Values are returned as the file holds them (CSV as strings): type checks belong to the
validator, which quarantines a bad row instead of failing a whole file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from raylrec import storage
from raylrec.config import CsvOptions

__all__ = ["SourceError", "TabularFile", "infer_format", "open_parquet", "read_batches"]

FILE_COLUMN = "_file"
ROW_COLUMN = "_row"
BATCH_ROWS = 131_072
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".dat": "csv",
    ".data": "csv",
    ".inter": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


class SourceError(ValueError):
    """An input file that cannot be used as a whole; the message names the file (and field)."""


@dataclass(frozen=True)
class TabularFile:
    uri: str
    size: int
    format: str
    csv: CsvOptions = CsvOptions()
    index: int = 0  # position in the source's file list; rows carry it instead of the path


def infer_format(uri: str) -> str:
    name = uri.lower().removesuffix(".gz")
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise SourceError(f"{uri}: cannot tell the format from the extension; set 'format'")


def open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = storage.filesystem(uri)
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except Exception as e:
        raise SourceError(f"{uri}: not a readable Parquet file (truncated or corrupt?): {e}") from None


def _require_columns(names: list[str], mapping: dict[str, str], uri: str) -> None:
    """Name every mapped column the file lacks, and what it has instead."""
    missing = [f"{src!r} (for {dst})" for dst, src in mapping.items() if src not in names]
    if missing:
        raise SourceError(
            f"{uri}: column {', '.join(missing)} not found; the file has {names}. "
            "Fix the column mapping (or csv.column_names) in the config."
        )


def _select(table: pa.Table, mapping: dict[str, str], uri: str) -> pa.Table:
    """Rename mapped source columns to canonical names."""
    _require_columns(table.schema.names, mapping, uri)
    return pa.table({dst: table[src] for dst, src in mapping.items()})


def _tag(table: pa.Table, file_index: int, first_row: int) -> pa.Table:
    n = table.num_rows
    return table.append_column(FILE_COLUMN, pa.array(np.full(n, file_index, np.int32))).append_column(
        ROW_COLUMN, pa.array(range(first_row, first_row + n), pa.int64())
    )


def _parquet_batches(
    f: TabularFile, mapping: dict[str, str], row_groups: list[int] | None, first_row: int
) -> Iterator[pa.Table]:
    pf = open_parquet(f.uri)
    _require_columns(pf.schema_arrow.names, mapping, f.uri)
    row = first_row
    try:
        for batch in pf.iter_batches(
            batch_size=BATCH_ROWS, row_groups=row_groups, columns=list(dict.fromkeys(mapping.values()))
        ):
            table = _select(pa.Table.from_batches([batch]), mapping, f.uri)
            yield _tag(table, f.index, row)
            row += batch.num_rows
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{f.uri}: failed reading Parquet data near row {row}: {e}") from None


def _csv_batches(f: TabularFile, mapping: dict[str, str]) -> Iterator[pa.Table]:
    opts = f.csv
    fs, path = storage.filesystem(f.uri)
    read = pacsv.ReadOptions(
        block_size=8 << 20,
        column_names=opts.column_names if not opts.has_header else None,
        autogenerate_column_names=not opts.has_header and opts.column_names is None,
        encoding=opts.encoding,
    )
    parse = pacsv.ParseOptions(delimiter=opts.delimiter, quote_char=opts.quote_char or False)
    # Every column as text: a malformed value is quarantined by the validator, not fatal here.
    wanted = list(dict.fromkeys(mapping.values()))
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in wanted}, strings_can_be_null=True, null_values=[""]
    )
    row = 0
    compression = "gzip" if f.uri.endswith(".gz") else None
    try:
        with fs.open(path, "rb", compression=compression) as raw:
            reader = pacsv.open_csv(raw, read_options=read, parse_options=parse, convert_options=convert)
            _require_columns(reader.schema.names, mapping, f.uri)
            for batch in reader:
                table = _select(pa.Table.from_batches([batch]), mapping, f.uri)
                yield _tag(table, f.index, row)
                row += batch.num_rows
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{f.uri}: cannot parse as delimited text near data row {row}: {e}") from None


def _json_lines_slow(data: bytes, mapping: dict[str, str], uri: str, file_index: int) -> Iterator[pa.Table]:
    """Line by line: used when a file has mixed types or broken lines, so that each bad line
    is quarantined (a row of nulls, which the validator names) instead of failing the file."""
    out: dict[str, list] = {k: [] for k in mapping}
    seen: set[str] = set()
    line_numbers: list[int] = []
    for lineno, line in enumerate(io.BytesIO(data)):
        if not line.strip():
            continue
        line_numbers.append(lineno)
        try:
            obj = json.loads(line)
        except ValueError:
            obj = {}
        if not isinstance(obj, dict):
            obj = {}
        seen.update(obj)
        for dst, src in mapping.items():
            value = obj.get(src)
            out[dst].append(None if value is None else str(value))
    missing = [f"{src!r} (for {dst})" for dst, src in mapping.items() if src not in seen]
    if missing:
        raise SourceError(f"{uri}: field {', '.join(missing)} not found on any line; fix the column mapping")
    table = pa.table({k: pa.array(v, pa.string()) for k, v in out.items()})
    table = _tag(table, file_index, 0).set_column(
        len(out) + 1, ROW_COLUMN, pa.array(line_numbers, pa.int64())
    )
    for start in range(0, table.num_rows, BATCH_ROWS):
        yield table.slice(start, BATCH_ROWS)


def _jsonl_batches(f: TabularFile, mapping: dict[str, str]) -> Iterator[pa.Table]:
    fs, path = storage.filesystem(f.uri)
    compression = "gzip" if f.uri.endswith(".gz") else None
    with fs.open(path, "rb", compression=compression) as raw:
        data = raw.read()
    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=8 << 20))
    except pa.ArrowInvalid:
        yield from _json_lines_slow(data, mapping, f.uri, f.index)
        return
    table = _select(table, mapping, f.uri)
    for start in range(0, table.num_rows, BATCH_ROWS):
        yield _tag(table.slice(start, BATCH_ROWS), f.index, start)


def read_batches(
    f: TabularFile,
    mapping: dict[str, str],
    row_groups: list[int] | None = None,
    first_row: int = 0,
) -> Iterator[pa.Table]:
    """Yield tables of the mapped columns (canonical names) plus ``_file`` and ``_row``."""
    if f.format == "parquet":
        yield from _parquet_batches(f, mapping, row_groups, first_row)
    elif f.format == "csv":
        yield from _csv_batches(f, mapping)
    elif f.format == "jsonl":
        yield from _jsonl_batches(f, mapping)
    else:
        raise SourceError(f"{f.uri}: unsupported format {f.format!r}")


def read_table(f: TabularFile, columns: dict[str, str]) -> pa.Table:
    """A small file (metadata) read whole, with the same error rules."""
    tables = [t.drop_columns([FILE_COLUMN, ROW_COLUMN]) for t in read_batches(f, columns)]
    if not tables:
        return pa.table({k: pa.array([], pa.string()) for k in columns})
    return pa.concat_tables(tables, promote_options="permissive")
