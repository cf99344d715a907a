"""Row-level validation of raw interaction batches, vectorised with pyarrow and numpy.

Every row leaves with typed canonical columns and a ``_reason``: null for a good row, otherwise
the first check it failed, naming the field ("rating: outside [1.0, 5.0]"). Bad rows also carry
``_raw``: the line as written when the reader could not split it into columns (the reader's
reason is kept, see ``files``), else the row's original values as JSON, so the quarantine shows
exactly what the file held. No row is dropped: rows in = rows out + rows quarantined.

Ids are the text as written, trimmed of surrounding whitespace and nothing else: "01", "1.0"
and "1" in a CSV file are three ids, as text sources hold codes whose leading zeros or decimals
can matter. Typed columns give their value's text: an integer as written; a float column (how
pandas stores an integer column with missing values) gives the integer text of an integral
value (1.0 -> "1") and NaN is missing; any other float (2.5, inf, or beyond 2**53, where a float
no longer holds every integer exactly) is quarantined. An id longer than ``max_id_length``
characters (1024 by default) is quarantined: it is a broken field, not a key.

Timestamps are read from integers and numbers (also as text) in the source's
``timestamp_unit``; typed timestamps of any unit, precision and time zone, and dates; ISO 8601
text: a date, or a date and a time to the minute, second or a fraction of one, with an optional
"Z" or +hh:mm offset (none means UTC). All become whole seconds since 1970, truncated (floor):
sub-second precision is dropped. A date or time that is not on the calendar (2020-02-30, 24:00)
is quarantined, never shifted.

A column whose type can hold no valid value at all (a bool timestamp, a struct id) raises
TypeError naming the column; ``data prepare`` adds the file's name (the reader, which knows the
file, refuses such a Parquet or JSON column first: see ``files.wrong_type``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylrec.data.config import ValidationConfig
from raylrec.data.files import FILE_COLUMN, RAW_COLUMN, REASON_COLUMN, ROW_COLUMN, wrong_type

__all__ = ["REASON", "RAW", "VALID_SCHEMA", "validate_batch"]

REASON = REASON_COLUMN
RAW = RAW_COLUMN
VALID_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
        ("label", pa.int8()),
        (FILE_COLUMN, pa.int32()),
        (ROW_COLUMN, pa.int64()),
        (REASON, pa.string()),
        (RAW, pa.string()),
    ]
)

_INT_RE = r"^\s*[+-]?\d{1,18}\s*$"  # at most 18 digits always fits int64; longer ones parse as floats
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?(nan|NaN|inf|Inf|infinity)\s*$"
_ISO_RE = (
    r"^\s*(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,]\d+)?)?)?"
    r"\s*(?:Z|(?P<zs>[+-])(?P<zh>\d{2}):?(?P<zm>\d{2}))?\s*$"
)
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EXACT_FLOAT = 2.0**53  # above it a float64 cannot hold every integer
_SECONDS_LIMIT = 9e18  # |seconds| beyond any plausible bound, still an int64

# (mask, reason) pairs, from the least to the most basic check: a later one overrides.
Checks = list[tuple[np.ndarray, str]]


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array, dictionary-decoded (pandas categoricals arrive as dictionaries)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _mask(arr: pa.Array) -> np.ndarray:
    """A boolean array as numpy, null as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _ids(col: pa.ChunkedArray, field: str, max_length: int) -> tuple[pa.Array, Checks]:
    """IDs as canonical text (see the module docstring) and the checks they fail."""
    arr = _plain(col)
    checks: Checks = []
    if pa.types.is_floating(arr.type):
        arr, checks = _float_ids(arr, field)
    text = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
    length = pc.utf8_length(text)
    missing = _mask(pc.equal(length, 0)) | text.is_null().to_numpy(zero_copy_only=False)
    too_long = _mask(pc.greater(length, max_length))
    # Float problems come last: those rows have no text, and "missing" would hide why.
    return text, [
        (too_long, f"{field}: longer than {max_length} characters"),
        (missing, f"{field}: missing"),
    ] + checks


def _float_ids(arr: pa.Array, field: str) -> tuple[pa.Array, Checks]:
    """Integral floats as int64; NaN and null as null (missing); the others null and flagged."""
    values = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(values) & (np.floor(values) == values)
        exact = integral & (np.abs(values) <= _EXACT_FLOAT)
    ints = pa.array(np.where(exact, values, 0).astype(np.int64), mask=~exact)
    return ints, [
        (~integral & ~np.isnan(values), f"{field}: float that is not an integer"),
        (integral & ~exact, f"{field}: float beyond 2**53 (not an exact integer)"),
    ]


def _numbers(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 values, a null mask and a not-a-number mask (text that is no number)."""
    arr = _plain(col)
    null = arr.is_null().to_numpy(zero_copy_only=False)
    if _is_text(arr.type):
        ok = pc.fill_null(pc.match_substring_regex(arr, _FLOAT_RE), False)
        nonnum = np.logical_and(~null, ~ok.to_numpy(zero_copy_only=False))
        arr = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, arr, None)), pa.float64())
    elif any(is_(arr.type) for is_ in (pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating)):
        nonnum = np.zeros(len(arr), bool)
        arr = pc.cast(arr, pa.float64())
    elif pa.types.is_decimal(arr.type):
        nonnum = np.zeros(len(arr), bool)
        arr = pc.cast(arr, pa.float64(), safe=False)  # a rating needs no more than float64 holds
    else:
        nonnum = ~null
        arr = pa.nulls(len(arr), pa.float64())
    values = arr.fill_null(np.nan).to_numpy(zero_copy_only=False)
    return values, null, nonnum


def _float_seconds(values: np.ndarray, divisor: int) -> np.ndarray:
    """Whole seconds (floor) of finite values, clipped so absurd ones fail the range checks."""
    with np.errstate(invalid="ignore", over="ignore"):
        seconds = np.clip(np.floor(values / divisor), -_SECONDS_LIMIT, _SECONDS_LIMIT)
    return np.where(np.isfinite(values), seconds, 0).astype(np.int64)


def _temporal_seconds(arr: pa.Array) -> np.ndarray:
    """Typed timestamps (any unit, zone) and dates as whole seconds (floor)."""
    if pa.types.is_date32(arr.type):
        return pc.cast(arr, pa.int32()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64) * 86_400
    ticks = pc.cast(arr, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)  # UTC, in the unit
    per_second = 1_000 if pa.types.is_date64(arr.type) else _UNIT_DIVISOR[arr.type.unit]
    return ticks // per_second


def _int_seconds(arr: pa.Array, divisor: int) -> np.ndarray:
    values = arr.fill_null(0).to_numpy(zero_copy_only=False)
    if values.dtype == np.uint64:
        values = np.minimum(values, np.iinfo(np.int64).max)
    return values.astype(np.int64) // divisor


def _digits(parts: pa.StructArray, name: str) -> np.ndarray:
    """One group of an ISO match as int64 (an absent group, "", as 0)."""
    text = pc.struct_field(parts, name)
    text = pc.fill_null(pc.if_else(pc.equal(text, ""), "0", text), "0")
    return pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False)


def _iso_seconds(text: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds of ISO 8601 text, a mask of ISO-shaped text and one of real calendar dates."""
    parts = pc.extract_regex(text, _ISO_RE)
    shaped = parts.is_valid().to_numpy(zero_copy_only=False)
    y, mo, d, h, mi, s, zh, zm = (_digits(parts, g) for g in ("y", "mo", "d", "h", "mi", "s", "zh", "zm"))
    months = (y - 1970) * 12 + (mo - 1)
    month_start = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    days_in_month = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(
        np.int64
    ) - month_start
    on_calendar = (
        shaped
        & (mo >= 1)
        & (mo <= 12)
        & (d >= 1)
        & (d <= days_in_month)
        & (h < 24)
        & (mi < 60)
        & (s < 60)
        & (zh < 24)
        & (zm < 60)
    )
    sign = np.where(_mask(pc.equal(pc.struct_field(parts, "zs"), "-")), -1, 1)
    seconds = (month_start + d - 1) * 86_400 + h * 3_600 + mi * 60 + s - sign * (zh * 3_600 + zm * 60)
    return np.where(on_calendar, seconds, 0), shaped, on_calendar


def _text_timestamps(arr: pa.Array, divisor: int) -> tuple[np.ndarray, Checks]:
    """Integers first (exact), then other numbers, then ISO 8601 text."""
    null = arr.is_null().to_numpy(zero_copy_only=False)
    is_int = _mask(pc.match_substring_regex(arr, _INT_RE))
    ints = pc.cast(pc.utf8_trim_whitespace(pc.if_else(is_int, arr, None)), pa.int64())
    seconds = ints.fill_null(0).to_numpy(zero_copy_only=False) // divisor
    rest = ~is_int & ~null
    bad = np.zeros(len(arr), bool)
    off_calendar = np.zeros(len(arr), bool)
    if rest.any():
        floats, _, nonnum = _numbers(pc.if_else(rest, arr, None))
        number = rest & ~nonnum
        seconds = np.where(number, _float_seconds(floats, divisor), seconds)
        bad = number & ~np.isfinite(floats)
        if (rest & nonnum).any():
            iso, shaped, on_calendar = _iso_seconds(pc.if_else(rest & nonnum, arr, None))
            seconds = np.where(on_calendar, iso, seconds)
            bad |= rest & nonnum & ~shaped
            off_calendar = shaped & ~on_calendar
    return seconds, [
        (bad, "timestamp: not a number or ISO date"),
        (off_calendar, "timestamp: not a calendar date or time"),
        (null, "timestamp: missing"),
    ]


def _timestamps(col: pa.ChunkedArray, unit: str) -> tuple[np.ndarray, Checks]:
    """int64 seconds and the checks they fail (see the module docstring)."""
    arr = _plain(col)
    divisor = _UNIT_DIVISOR[unit]
    null = arr.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        return _temporal_seconds(arr), [(null, "timestamp: missing")]
    if pa.types.is_integer(arr.type):
        return _int_seconds(arr, divisor), [(null, "timestamp: missing")]
    if _is_text(arr.type):
        return _text_timestamps(arr, divisor)
    values, _, _ = _numbers(arr)  # floats and decimals; NaN is missing, as pandas writes it
    return _float_seconds(values, divisor), [
        (np.isinf(values), "timestamp: not a number or ISO date"),
        (np.isnan(values), "timestamp: missing"),
    ]


def _labels(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    values, null, nonnum = _numbers(col)
    ok = ~null & ~nonnum & np.isin(values, (0.0, 1.0))
    arr = _plain(col)
    if _is_text(arr.type):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(arr)).to_numpy(zero_copy_only=False)
        t, f = np.isin(text, ("true", "yes")), np.isin(text, ("false", "no"))
        values = np.where(t, 1.0, np.where(f, 0.0, values))
        ok |= t | f
    return np.where(ok, values, 0).astype(np.int8), ~ok


def _check_types(batch: pa.Table) -> None:
    for field in batch.schema:
        expected = wrong_type(field.name, field.type)
        if expected:
            raise TypeError(f"{field.name}: a {field.type} column; {field.name} must be {expected}")


def validate_batch(
    batch: pa.Table, config: ValidationConfig, threshold: float, timestamp_unit: str = "s"
) -> pa.Table:
    """Type, check and label one batch of raw events (see the module docstring).

    Args:
        batch: ``user_id``, ``item_id``, ``timestamp``, ``rating`` and/or ``label`` as read,
            plus ``_file`` and ``_row`` (and the reader's ``_reason``/``_raw``, if any).
        config: the range checks and ``max_id_length``.
        threshold: label = 1 when rating >= threshold (without a label column).
        timestamp_unit: the unit of numeric timestamps.

    Returns:
        One row per input row, in ``VALID_SCHEMA``.

    Raises:
        TypeError: a column's type can hold no valid value (the message names the column).
    """
    _check_types(batch)
    n = batch.num_rows
    reasons = np.full(n, None, dtype=object)

    def flag(mask: np.ndarray, reason: str) -> None:
        # Checks run from the least to the most basic, so the first failing check wins.
        reasons[mask] = reason

    def flag_all(checks: Checks) -> None:
        for mask, reason in checks:
            flag(mask, reason)

    names = batch.schema.names
    if "label" in names:
        label, bad_label = _labels(batch["label"])
        flag(bad_label, "label: not 0/1")
    if "rating" in names:
        rating, r_null, r_nonnum = _numbers(batch["rating"])
        lo, hi = config.rating_range or (-np.inf, np.inf)
        with np.errstate(invalid="ignore"):
            out_of_range = np.isfinite(rating) & ((rating < lo) | (rating > hi))
        flag(out_of_range, f"rating: outside [{lo}, {hi}]")
        flag(~r_null & ~r_nonnum & ~np.isfinite(rating), "rating: NaN or infinite")
        flag(r_nonnum, "rating: not a number")
        if "label" not in names:
            flag(r_null, "rating: missing")
            with np.errstate(invalid="ignore"):
                label = (rating >= threshold).astype(np.int8)
    else:
        rating = np.full(n, np.nan)

    ts, ts_checks = _timestamps(batch["timestamp"], timestamp_unit)
    flag(ts > config.max_timestamp, f"timestamp: after {config.max_timestamp} (milliseconds?)")
    flag(ts < config.min_timestamp, f"timestamp: before {config.min_timestamp} (negative or zero?)")
    flag_all(ts_checks)
    max_length = config.max_id_length
    item_id, item_checks = _ids(batch["item_id"], "item_id", max_length)
    flag_all(item_checks)
    user_id, user_checks = _ids(batch["user_id"], "user_id", max_length)
    flag_all(user_checks)
    if REASON in names:  # the reader's reason (a row it could not split) is the most basic
        read = batch[REASON].to_numpy(zero_copy_only=False)
        reasons = np.where(np.not_equal(read, None), read, reasons)

    return pa.table(
        {
            "user_id": user_id,
            "item_id": item_id,
            "timestamp": pa.array(ts, pa.int64()),
            "rating": pa.array(rating, pa.float64(), mask=np.isnan(rating)),
            "label": pa.array(label, pa.int8()),
            FILE_COLUMN: batch[FILE_COLUMN].combine_chunks().cast(pa.int32()),
            ROW_COLUMN: batch[ROW_COLUMN].combine_chunks().cast(pa.int64()),
            REASON: pa.array(reasons, pa.string()),
            RAW: pa.array(_raw(batch, np.not_equal(reasons, None)), pa.string()),
        },
        schema=VALID_SCHEMA,
    )


def _raw(batch: pa.Table, bad: np.ndarray) -> np.ndarray:
    """Bad rows' original values as JSON; the reader's text where it kept the line."""
    raw = np.full(batch.num_rows, None, dtype=object)
    if not bad.any():
        return raw
    rows = np.flatnonzero(bad)
    skip = (FILE_COLUMN, ROW_COLUMN, REASON, RAW)
    originals = batch.select([c for c in batch.schema.names if c not in skip]).take(rows)
    columns = {c: _jsonable_column(originals[c]) for c in originals.schema.names}
    raw[rows] = [json.dumps({c: _jsonable(v[i]) for c, v in columns.items()}) for i in range(len(rows))]
    if RAW in batch.schema.names:
        text = batch[RAW].to_numpy(zero_copy_only=False)
        raw = np.where(np.not_equal(text, None), text, raw)
    return raw


def _jsonable_column(col: pa.ChunkedArray) -> list:
    """Python values; types JSON has no word for (timestamps, bytes) as Arrow's text for them."""
    arr = _plain(col)
    plain = (pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_null, _is_text)
    if not any(is_(arr.type) for is_ in plain):
        arr = pc.cast(arr, pa.string())
    return arr.to_pylist()


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
