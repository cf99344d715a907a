"""Reading tabular files (Parquet, CSV/TSV, JSON Lines) in bounded batches, each row tagged with
its file and row number so a bad value can be named exactly.

Values are returned as the file holds them (CSV as strings): value checks belong to the
validator, which quarantines a bad row instead of failing a whole file. Two kinds of problem are
the reader's own:

* A row the parser cannot split into the file's columns (a CSV row with too many or too few
  fields, a JSON Lines line that is no JSON object, a JSON value that is an object or array) is
  kept as a row of nulls whose ``_reason`` says why and whose ``_raw`` is the line as written;
  the validator keeps that reason. Every batch carries both columns (null on good rows) so that
  batches of one file always share a schema.
* A column whose type can hold no valid value at all (a ``bool`` timestamp column, a ``struct``
  id) is a mapping mistake, not bad rows: a ``SourceError`` naming the file, the column and the
  types it may have (see ``wrong_type``). Quarantining each row instead would bury the one
  mistake under a million identical reasons, or hide it when other files are fine.

Row numbers count data rows from 0: the header of a CSV file is not a row, a record with a
quoted newline is one row; in JSON Lines they are line numbers from 0 (blank lines are skipped
but counted).
"""

from __future__ import annotations

import bisect
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from raylrec import storage
from raylrec.data.config import CsvOptions

__all__ = [
    "CSV_BLOCK_BYTES",
    "REASON_COLUMN",
    "RAW_COLUMN",
    "SourceError",
    "TabularFile",
    "check_columns",
    "infer_format",
    "open_parquet",
    "read_batches",
    "wrong_type",
]

log = logging.getLogger(__name__)
FILE_COLUMN = "_file"
ROW_COLUMN = "_row"
REASON_COLUMN = "_reason"  # set by the reader on rows it could not split into columns
RAW_COLUMN = "_raw"  # such a row's text as written
BATCH_ROWS = 131_072
CSV_BLOCK_BYTES = 8 << 20  # one parsed block (and batch) of delimited text; a row must fit in one
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
# The kinds of column each canonical field can be read from (other columns are not checked).
_ID_KINDS = ("text", "integer", "float")
_FIELD_KINDS = {
    "user_id": _ID_KINDS,
    "item_id": _ID_KINDS,
    "timestamp": ("integer", "float", "text", "timestamp", "date"),
    "rating": ("integer", "float", "decimal", "text"),
    "label": ("bool", "integer", "float", "text"),
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


def _kind(type_: pa.DataType) -> str:
    t = pa.types
    if t.is_dictionary(type_):
        return _kind(type_.value_type)
    checks = (
        ("text", t.is_string(type_) or t.is_large_string(type_) or t.is_binary(type_)),
        ("bool", t.is_boolean(type_)),
        ("integer", t.is_integer(type_)),
        ("float", t.is_floating(type_)),
        ("decimal", t.is_decimal(type_)),
        ("timestamp", t.is_timestamp(type_)),
        ("date", t.is_date(type_)),
        ("null", t.is_null(type_)),
    )
    return next((name for name, hit in checks if hit), str(type_))


def wrong_type(field: str, type_: pa.DataType) -> str | None:
    """What a ``field`` column must be, when ``type_`` can hold no valid value; else None.

    A column of nulls (``null`` type, e.g. a JSON field that is always null) is of any type:
    its rows are quarantined as missing.
    """
    kinds = _FIELD_KINDS.get(field)
    if kinds is None or _kind(type_) in (*kinds, "null"):
        return None
    return f"{', '.join(kinds[:-1])} or {kinds[-1]}"


def _check_types(schema: pa.Schema, mapping: dict[str, str], uri: str) -> None:
    for dst, src in mapping.items():
        type_ = schema.field(src).type
        expected = wrong_type(dst, type_)
        if expected:
            raise SourceError(
                f"{uri}: column types cannot be read as an interaction log: {dst} ({type_}) must be "
                f"{expected}; it is read from column {src!r}: is the column mapping right?"
            )


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


def _tag(
    table: pa.Table,
    file_index: int,
    rows: np.ndarray,
    reasons: list[str | None] | None = None,
    raws: list[str | None] | None = None,
) -> pa.Table:
    """Append ``_file``, ``_row`` (``rows``) and the reader's ``_reason`` and ``_raw``."""
    n = table.num_rows
    reason = pa.nulls(n, pa.string()) if reasons is None else pa.array(reasons, pa.string())
    raw = pa.nulls(n, pa.string()) if raws is None else pa.array(raws, pa.string())
    return (
        table.append_column(FILE_COLUMN, pa.array(np.full(n, file_index, np.int32)))
        .append_column(ROW_COLUMN, pa.array(rows, pa.int64()))
        .append_column(REASON_COLUMN, reason)
        .append_column(RAW_COLUMN, raw)
    )


def _rows(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.int64)


def check_columns(schema: pa.Schema, mapping: dict[str, str], uri: str) -> None:
    """A ``SourceError`` naming the file when a mapped column is absent or of a wrong type."""
    _require_columns(schema.names, mapping, uri)
    _check_types(schema, mapping, uri)


def _parquet_batches(
    f: TabularFile, mapping: dict[str, str], row_groups: list[int] | None, first_row: int
) -> Iterator[pa.Table]:
    pf = open_parquet(f.uri)
    check_columns(pf.schema_arrow, mapping, f.uri)
    row = first_row
    try:
        for batch in pf.iter_batches(
            batch_size=BATCH_ROWS, row_groups=row_groups, columns=list(dict.fromkeys(mapping.values()))
        ):
            table = _select(pa.Table.from_batches([batch]), mapping, f.uri)
            yield _tag(table, f.index, _rows(row, batch.num_rows))
            row += batch.num_rows
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"{f.uri}: failed reading Parquet data near row {row}: {e}") from None


class _RaggedRows:
    """Collects the rows the CSV parser skips (wrong number of fields) and puts each back
    where it was, by its record number, as a row of nulls with a reason and its text.

    The parser numbers records only when it runs single-threaded; that costs little here, as
    each file is one Ray task on one CPU anyway.
    """

    def __init__(self, header_rows: int):
        self._header_rows = header_rows
        self._skipped: list[tuple[int, str, str]] = []  # (data row, reason, text), sorted
        self._next = 0  # the first data row not yet given out

    def __call__(self, row: pacsv.InvalidRow) -> str:
        if row.number is None:  # cannot be put back in its place: fail the file, honestly
            return "error"
        index = row.number - 1 - self._header_rows
        reason = f"csv: {row.actual_columns} fields, expected {row.expected_columns}"
        bisect.insort(self._skipped, (index, reason, row.text))
        return "skip"

    def place(self, table: pa.Table, file_index: int) -> pa.Table:
        """``table``'s rows numbered around the skipped rows among them, plus those rows."""
        n = table.num_rows
        skipped = self._take(n)
        rows = _rows(self._next, n + len(skipped))
        self._next += n + len(skipped)
        if not skipped:
            return _tag(table, file_index, rows)
        good = _tag(table, file_index, rows[np.isin(rows, [s[0] for s in skipped], invert=True)])
        return pa.concat_tables([good, self._as_rows(skipped, table.schema, file_index)])

    def rest(self, schema: pa.Schema, file_index: int) -> pa.Table | None:
        """Skipped rows after the last good one."""
        skipped, self._skipped = self._skipped, []
        return self._as_rows(skipped, schema, file_index) if skipped else None

    def _take(self, n: int) -> list[tuple[int, str, str]]:
        """The skipped rows among the next ``n`` good ones: each one taken widens the range."""
        end, taken = self._next + n, 0
        while taken < len(self._skipped) and self._skipped[taken][0] < end + taken:
            taken += 1
        out, self._skipped = self._skipped[:taken], self._skipped[taken:]
        return out

    @staticmethod
    def _as_rows(skipped: list[tuple[int, str, str]], schema: pa.Schema, file_index: int) -> pa.Table:
        rows, reasons, texts = (list(c) for c in zip(*skipped, strict=True))
        nulls = pa.table({f.name: pa.nulls(len(rows), f.type) for f in schema})
        return _tag(nulls, file_index, np.array(rows, np.int64), reasons, texts)


def _csv_batches(f: TabularFile, mapping: dict[str, str]) -> Iterator[pa.Table]:
    opts = f.csv
    fs, path = storage.filesystem(f.uri)
    read = pacsv.ReadOptions(
        use_threads=False,  # so that the parser numbers the rows it skips (see _RaggedRows)
        block_size=CSV_BLOCK_BYTES,
        column_names=opts.column_names if not opts.has_header else None,
        autogenerate_column_names=not opts.has_header and opts.column_names is None,
        encoding=opts.encoding,
    )
    ragged = _RaggedRows(header_rows=1 if opts.has_header else 0)
    parse = pacsv.ParseOptions(
        delimiter=opts.delimiter, quote_char=opts.quote_char or False, invalid_row_handler=ragged
    )
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
                yield ragged.place(table, f.index)
                row += batch.num_rows
            tail = ragged.rest(pa.schema([(c, pa.string()) for c in mapping]), f.index)
            if tail is not None:
                yield tail
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(
            f"{f.uri}: cannot parse as delimited text (after the first {row} data rows): {e}"
        ) from None


def _json_value(value: object, field: str) -> tuple[object, str | None]:
    """A JSON field's value for a column, or None and a reason when it is no single value."""
    if isinstance(value, (dict, list)):
        return None, f"{field}: a JSON object or array, not a value"
    return value, None


def _json_column(values: list) -> pa.Array:
    """Typed when every value has one JSON type (as the fast reader would give), else the text
    as written: strings as they are, numbers and booleans in JSON notation."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        text = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        return pa.array(text, pa.string())


def _json_lines_slow(data: bytes, mapping: dict[str, str], uri: str, file_index: int) -> Iterator[pa.Table]:
    """Line by line: used when a file has mixed types or broken lines, so that each bad line
    is quarantined (a row of nulls with the reader's reason and the line) instead of failing
    the file."""
    out: dict[str, list] = {k: [] for k in mapping}
    reasons: list[str | None] = []
    raws: list[str | None] = []
    seen: set[str] = set()
    line_numbers: list[int] = []
    for lineno, line in enumerate(io.BytesIO(data)):
        if not line.strip():
            continue
        line_numbers.append(lineno)
        values, reason = _json_line(line, mapping)
        seen.update(values)
        for dst, src in mapping.items():
            out[dst].append(values.get(src))
        reasons.append(reason)
        raws.append(None if reason is None else line.decode("utf8", "replace").rstrip("\r\n"))
    missing = [f"{src!r} (for {dst})" for dst, src in mapping.items() if src not in seen]
    if missing:
        raise SourceError(f"{uri}: field {', '.join(missing)} not found on any line; fix the column mapping")
    table = pa.table({k: _json_column(v) for k, v in out.items()})
    _check_types(table.schema, {k: k for k in mapping}, uri)
    table = _tag(table, file_index, np.array(line_numbers, np.int64), reasons, raws)
    for start in range(0, table.num_rows, BATCH_ROWS):
        yield table.slice(start, BATCH_ROWS)


def _json_line(line: bytes, mapping: dict[str, str]) -> tuple[dict, str | None]:
    """One line's mapped values (by source name) and the first reason it is unusable."""
    try:
        obj = json.loads(line)
    except ValueError:
        return {}, "json: not valid JSON"
    if not isinstance(obj, dict):
        return {}, "json: a line that is not an object"
    values: dict = {}
    reason = None
    for dst, src in mapping.items():
        if src in obj:
            values[src], problem = _json_value(obj[src], dst)
            reason = reason or problem
    return values, reason


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
    # A field that is an object or array on every line where it is set (and so typed as one):
    # the whole column is unusable, not single rows (mixed lines take the slow path above).
    _check_types(table.schema, {k: k for k in mapping}, f.uri)
    for start in range(0, table.num_rows, BATCH_ROWS):
        n = min(BATCH_ROWS, table.num_rows - start)
        yield _tag(table.slice(start, BATCH_ROWS), f.index, _rows(start, n))


def read_batches(
    f: TabularFile,
    mapping: dict[str, str],
    row_groups: list[int] | None = None,
    first_row: int = 0,
) -> Iterator[pa.Table]:
    """Yield tables of the mapped columns (canonical names) plus ``_file``, ``_row``,
    ``_reason`` and ``_raw`` (see the module docstring)."""
    if f.format == "parquet":
        yield from _parquet_batches(f, mapping, row_groups, first_row)
    elif f.format == "csv":
        yield from _csv_batches(f, mapping)
    elif f.format == "jsonl":
        yield from _jsonl_batches(f, mapping)
    else:
        raise SourceError(f"{f.uri}: unsupported format {f.format!r}")


def read_table(f: TabularFile, columns: dict[str, str]) -> pa.Table:
    """A small file (metadata) read whole, with the same error rules; rows the reader could
    not split into columns are left out, with a warning naming the file and the first one."""
    tables = [_readable(t, f.uri) for t in read_batches(f, columns)]
    if not tables:
        return pa.table({k: pa.array([], pa.string()) for k in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def _readable(table: pa.Table, uri: str) -> pa.Table:
    bad = table[REASON_COLUMN].is_valid()
    if pc.any(bad).as_py():
        first = table.filter(bad).slice(0, 1).to_pylist()[0]
        log.warning(
            "%s: left out %d rows the reader could not use, the first (row %d): %s",
            uri,
            pc.sum(bad).as_py(),
            first[ROW_COLUMN],
            first[REASON_COLUMN],
        )
        table = table.filter(pc.invert(bad))
    return table.drop_columns([FILE_COLUMN, ROW_COLUMN, REASON_COLUMN, RAW_COLUMN])
