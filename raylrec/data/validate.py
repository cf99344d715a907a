"""Row-level validation of raw interaction batches, vectorised with pyarrow.

Every row leaves with typed canonical columns and a ``_reason``: null for a good row, otherwise
the first check it failed, naming the field ("rating: outside [1.0, 5.0]"). Bad rows also carry
``_raw``, their original values as JSON, so the quarantine shows exactly what the file held.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylrec.config import ValidationConfig
from raylrec.data.files import FILE_COLUMN, ROW_COLUMN

__all__ = ["REASON", "RAW", "VALID_SCHEMA", "validate_batch"]

REASON = "_reason"
RAW = "_raw"
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

_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?(nan|NaN|inf|Inf|infinity)\s*$"
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d")
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _ids(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """IDs as strings (integral floats printed as integers); mask of missing ones."""
    arr = col.combine_chunks()
    if pa.types.is_floating(arr.type):
        finite = pc.fill_null(pc.is_finite(arr), False)
        integral = pc.and_(finite, pc.equal(pc.floor(arr), arr))
        arr = pc.if_else(integral, pc.cast(pc.if_else(integral, arr, 0.0), pa.int64()), None)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    arr = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    missing = pc.fill_null(pc.equal(pc.utf8_length(arr), 0), True)
    return arr, missing.to_numpy(zero_copy_only=False)


def _numbers(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 values, a null mask and a not-a-number mask (text that is no number)."""
    arr = col.combine_chunks()
    null = arr.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok = pc.fill_null(pc.match_substring_regex(arr, _FLOAT_RE), False)
        nonnum = np.logical_and(~null, ~ok.to_numpy(zero_copy_only=False))
        arr = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, arr, None)), pa.float64())
    elif pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        nonnum = np.zeros(len(arr), bool)
        arr = pc.cast(arr, pa.float64())
    else:
        nonnum = ~null
        arr = pa.nulls(len(arr), pa.float64())
    values = arr.fill_null(np.nan).to_numpy(zero_copy_only=False)
    return values, null, nonnum


def _timestamps(col: pa.ChunkedArray, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 seconds, a null mask and an unparseable mask."""
    arr = col.combine_chunks()
    n = len(arr)
    null = arr.is_null().to_numpy(zero_copy_only=False)
    seconds = np.zeros(n, np.int64)
    bad = np.zeros(n, bool)
    divisor = _UNIT_DIVISOR[unit]
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        secs = pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
        return secs.fill_null(0).to_numpy(zero_copy_only=False), null, bad
    if pa.types.is_integer(arr.type):
        return arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64) // divisor, null, bad
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        is_int = pc.fill_null(pc.match_substring_regex(arr, _INT_RE), False)
        ints = pc.cast(pc.utf8_trim_whitespace(pc.if_else(is_int, arr, None)), pa.int64())
        seconds = ints.fill_null(0).to_numpy(zero_copy_only=False) // divisor
        parsed = is_int.to_numpy(zero_copy_only=False).copy()
        rest = ~parsed & ~null
        if rest.any():
            floats, _, nonnum = _numbers(pa.chunked_array([pc.if_else(is_int, None, arr)]))
            usable = rest & ~nonnum & np.isfinite(floats) & (np.abs(floats) < 9e18)
            seconds[usable] = (floats[usable] // divisor).astype(np.int64)
            parsed |= usable
            iso_rest = rest & ~parsed
            if iso_rest.any():
                text = pc.utf8_trim_whitespace(arr)
                for fmt in _ISO_FORMATS:
                    when = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
                    hit = when.is_valid().to_numpy(zero_copy_only=False) & iso_rest
                    if hit.any():
                        secs = pc.cast(when, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
                        seconds[hit] = secs[hit]
                        parsed |= hit
                        iso_rest &= ~hit
        bad = ~parsed & ~null
        return seconds, null, bad
    values, _, nonnum = _numbers(pa.chunked_array([arr]))
    finite = np.isfinite(values) & (np.abs(values) < 9e18)
    seconds[finite] = (values[finite] // divisor).astype(np.int64)
    return seconds, null, ~finite & ~null


def _labels(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    values, null, nonnum = _numbers(col)
    ok = ~null & ~nonnum & np.isin(values, (0.0, 1.0))
    if pa.types.is_string(col.type):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(col.combine_chunks())).to_numpy(zero_copy_only=False)
        t, f = np.isin(text, ("true", "yes")), np.isin(text, ("false", "no"))
        values = np.where(t, 1.0, np.where(f, 0.0, values))
        ok |= t | f
    return np.where(ok, values, 0).astype(np.int8), ~ok


def validate_batch(
    batch: pa.Table, config: ValidationConfig, threshold: float, timestamp_unit: str = "s"
) -> pa.Table:
    """Type, check and label one batch of raw events (see the module docstring)."""
    n = batch.num_rows
    reasons = np.full(n, None, dtype=object)

    def flag(mask: np.ndarray, reason: str) -> None:
        # Checks run from the least to the most basic, so the first failing check wins.
        reasons[mask] = reason

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

    ts, ts_null, ts_bad = _timestamps(batch["timestamp"], timestamp_unit)
    flag(ts > config.max_timestamp, f"timestamp: after {config.max_timestamp} (milliseconds?)")
    flag(ts < config.min_timestamp, f"timestamp: before {config.min_timestamp} (negative or zero?)")
    flag(ts_bad, "timestamp: not a number or ISO date")
    flag(ts_null, "timestamp: missing")
    item_id, item_missing = _ids(batch["item_id"])
    flag(item_missing, "item_id: missing")
    user_id, user_missing = _ids(batch["user_id"])
    flag(user_missing, "user_id: missing")

    bad = np.not_equal(reasons, None)
    raw = np.full(n, None, dtype=object)
    if bad.any():
        originals = batch.select([c for c in names if c not in (FILE_COLUMN, ROW_COLUMN)])
        for i in np.flatnonzero(bad):
            raw[i] = json.dumps({c: _jsonable(originals[c][int(i)].as_py()) for c in originals.schema.names})
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
            RAW: pa.array(raw, pa.string()),
        },
        schema=VALID_SCHEMA,
    )


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
