"""Bad input in the ``logs`` source (issue 16, items 13-17): a bad row is quarantined on its own,
with its reason, its row number and its original text, and never rejects the whole file; a
column of the wrong type as a whole is one clear error naming the file and the column.

Mostly unit level (reader + validator, no Ray), where ``rows in = rows out + rows quarantined``
means every data row of the file leaves the validator, good or with a reason; the last test runs
one ``data prepare`` over all three formats.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import data_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raylrec.data import files
from raylrec.data.config import ValidationConfig
from raylrec.data.datasource import TabularFilesDatasource
from raylrec.data.files import ROW_COLUMN, SourceError, TabularFile, read_batches
from raylrec.data.output import read_table
from raylrec.data.prepare import prepare
from raylrec.data.validate import RAW, REASON, validate_batch

CONFIG = ValidationConfig(rating_range=(1.0, 5.0))
MAPPING = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating"}


def _validated(path, fmt: str) -> pa.Table:
    """Read one file and validate every batch, as `data prepare` does per block."""
    f = TabularFile(str(path), path.stat().st_size, fmt)
    return pa.concat_tables(validate_batch(b, CONFIG, threshold=4.0) for b in read_batches(f, MAPPING))


def _batch(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    defaults = {
        "user_id": pa.array(["u"] * n),
        "item_id": pa.array(["i"] * n),
        "timestamp": pa.array([1_600_000_000 + i for i in range(n)], pa.int64()),
        "rating": pa.array([5.0] * n),
    }
    table = {**defaults, **columns}
    table["_file"] = pa.array([0] * n, pa.int32())
    table[ROW_COLUMN] = pa.array(range(n), pa.int64())
    return pa.table(table)


def _reasons(out: pa.Table) -> list:
    return out[REASON].to_pylist()


# --- 13: timestamps of any unit and precision --------------------------------------------------


def test_13_sub_second_timestamps_are_truncated_to_seconds(tmp_path):
    when = np.array(
        ["2020-01-02T03:04:05.999999999", "2020-01-02T03:04:06.5", "2021-06-01"], "datetime64[ns]"
    )
    path = tmp_path / "pandas.parquet"
    pq.write_table(
        _batch(timestamp=pa.array(when, pa.timestamp("ns"))).drop_columns(["_file", ROW_COLUMN]), path
    )
    out = _validated(path, "parquet")
    assert _reasons(out) == [None, None, None]
    assert out["timestamp"].to_pylist() == [1577934245, 1577934246, 1622505600]
    # Other units, time zones and dates: the same instant in whole seconds.
    for arr in (
        pa.array([1577934245_123], pa.timestamp("ms", tz="Europe/Paris")),
        pa.array([1577934245_123_456], pa.timestamp("us")),
        pa.array([18263], pa.date32()),
    ):
        got = validate_batch(_batch(timestamp=arr), CONFIG, threshold=4.0)
        assert _reasons(got) == [None], arr.type
        assert got["timestamp"][0].as_py() in (1577934245, 18263 * 86400), arr.type


# --- 14: float ids -----------------------------------------------------------------------------


def test_14_bad_float_ids_are_quarantined_one_by_one_with_their_reason():
    ids = pa.array([1.0, 1e20, 2.5, float("inf"), float("nan"), None, 2.0**53, -3.0])
    out = validate_batch(_batch(user_id=ids), CONFIG, threshold=4.0)
    assert out.num_rows == 8
    assert out["user_id"].to_pylist()[0] == "1"
    assert out["user_id"].to_pylist()[6:] == ["9007199254740992", "-3"]
    reasons = _reasons(out)
    assert reasons[0] is None and reasons[6] is None and reasons[7] is None
    assert reasons[1] == "user_id: float beyond 2**53 (not an exact integer)"
    assert reasons[2] == reasons[3] == "user_id: float that is not an integer"
    assert reasons[4] == reasons[5] == "user_id: missing"  # NaN is how pandas writes a missing id
    assert json.loads(out[RAW][1].as_py())["user_id"] == 1e20  # the original value is kept


# --- 15: a boolean timestamp column; impossible calendar dates -----------------------------------


def test_15_boolean_timestamp_column_is_an_error_naming_file_and_column(tmp_path):
    wrong_type = r"flags\.parquet: column types cannot be read .*: timestamp \(bool\) must be integer"
    path = tmp_path / "flags.parquet"
    pq.write_table(
        pa.table(
            {"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [True, False], "rating": [5.0, 4.0]}
        ),
        path,
    )
    with pytest.raises(SourceError, match=wrong_type):
        list(read_batches(TabularFile(str(path), 1, "parquet"), MAPPING))
    with pytest.raises(SourceError, match=wrong_type):
        TabularFilesDatasource([TabularFile(str(path), 1, "parquet")], MAPPING)  # on the driver, early
    # The validator alone (any other source) refuses it too, naming the column.
    with pytest.raises(TypeError, match=r"timestamp: a bool column"):
        validate_batch(_batch(timestamp=pa.array([True])), CONFIG, threshold=4.0)


def test_15_impossible_calendar_dates_are_quarantined_not_shifted():
    text = pa.array(
        [
            "2020-02-30",
            "2021-02-29",
            "2020-02-29",
            "2020-13-01",
            "2020-01-02T24:00:00",
            "2020-01-02T03:04:05.250Z",
            "2020-01-02 03:04:05+01:00",
            "2020-01-02T03:04",
        ]
    )
    out = validate_batch(_batch(timestamp=text), CONFIG, threshold=4.0)
    reasons = _reasons(out)
    assert reasons[:2] == ["timestamp: not a calendar date or time"] * 2
    assert reasons[3:5] == ["timestamp: not a calendar date or time"] * 2
    assert reasons[2] is None and reasons[5:] == [None] * 3
    ts = out["timestamp"].to_pylist()
    assert ts[2] == 1582934400  # 2020-02-29 exists
    assert ts[5:] == [1577934245, 1577934245 - 3600, 1577934240]


# --- 16: JSON Lines rows that are not objects of scalars -----------------------------------------


def test_16_broken_and_non_scalar_json_rows_keep_their_text_and_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"user_id": "u1", "item_id": "i1", "timestamp": 1600000000, "rating": 5}',
        "{broken",
        '{"user_id": {"nested": 1}, "item_id": "i1", "timestamp": 1600000001, "rating": 5}',
        '{"user_id": "u2", "item_id": [1, 2], "timestamp": 1600000002, "rating": 5}',
        "[1, 2]",
        '{"user_id": "u3", "item_id": "i3", "timestamp": 1600000003, "rating": 4}',
    ]
    path.write_text("\n".join(lines) + "\n")
    out = _validated(path, "jsonl")
    assert out.num_rows == len(lines)
    assert out[ROW_COLUMN].to_pylist() == list(range(len(lines)))
    assert _reasons(out) == [
        None,
        "json: not valid JSON",
        "user_id: a JSON object or array, not a value",
        "item_id: a JSON object or array, not a value",
        "json: a line that is not an object",
        None,
    ]
    raws = out[RAW].to_pylist()
    assert [raws[i] for i in (1, 2, 3, 4)] == [lines[i] for i in (1, 2, 3, 4)]  # the text as written
    assert out["user_id"].to_pylist()[5] == "u3"


# --- 17: a ragged CSV row ----------------------------------------------------------------------


def test_17_a_ragged_csv_row_is_quarantined_with_its_row_number_and_text(tmp_path):
    path = tmp_path / "ragged.csv"
    rows = [f"u{i},i{i},{1_600_000_000 + i},4" for i in range(400)]
    rows[250] = "u250,i250,1600000250,4,surplus"
    rows[399] = "u399,i399"  # too few fields, on the last line
    path.write_text("user_id,item_id,timestamp,rating\n" + "\n".join(rows) + "\n")
    out = _validated(path, "csv")
    assert out.num_rows == 400
    assert sorted(out[ROW_COLUMN].to_pylist()) == list(range(400))  # every row, by its own number
    bad = out.filter(pc.is_valid(out[REASON])).to_pylist()
    assert [(r[ROW_COLUMN], r[REASON], r[RAW]) for r in sorted(bad, key=lambda r: r[ROW_COLUMN])] == [
        (250, "csv: 5 fields, expected 4", rows[250]),
        (399, "csv: 2 fields, expected 4", rows[399]),
    ]
    good = out.filter(pc.is_null(out[REASON]))
    pairs = zip(good["user_id"].to_pylist(), good[ROW_COLUMN].to_pylist(), strict=True)
    assert all(user == f"u{row}" for user, row in pairs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, 199), max_size=30), st.sampled_from([None, 1, 2]))
def test_17_ragged_rows_keep_their_numbers_across_blocks(tmp_path_factory, monkeypatch, ragged, extra):
    monkeypatch.setattr(files, "CSV_BLOCK_BYTES", 256)  # about 8 rows a block: rows straddle blocks
    rows = [f"u{i},i{i},{1_600_000_000 + i},4" for i in range(200)]
    for i in ragged:
        rows[i] = f"u{i},i{i}" if extra is None else rows[i] + ",x" * extra
    path = tmp_path_factory.mktemp("csv") / "blocks.csv"
    path.write_text("user_id,item_id,timestamp,rating\n" + "\n".join(rows) + "\n")
    out = _validated(path, "csv")
    assert sorted(out[ROW_COLUMN].to_pylist()) == list(range(200))
    for r in out.to_pylist():
        if r[ROW_COLUMN] in ragged:
            assert r[REASON].startswith("csv: ") and r[RAW] == rows[r[ROW_COLUMN]]
        else:
            assert r[REASON] is None and r["user_id"] == f"u{r[ROW_COLUMN]}"


# --- the two unclear cases, decided ------------------------------------------------------------


def test_ids_longer_than_the_limit_are_quarantined():
    long_id = "x" * 2_000_000
    out = validate_batch(_batch(item_id=pa.array(["ok", long_id, "y" * 1024])), CONFIG, threshold=4.0)
    assert _reasons(out) == [None, "item_id: longer than 1024 characters", None]
    assert json.loads(out[RAW][1].as_py())["item_id"] == long_id


def test_ids_are_text_as_written_except_integral_floats_of_typed_columns(tmp_path):
    text = validate_batch(_batch(user_id=pa.array(["01", "1.0", "1", " 1 "])), CONFIG, threshold=4.0)
    assert text["user_id"].to_pylist() == ["01", "1.0", "1", "1"]  # only whitespace is trimmed
    typed = [pa.array([1.0, 7.0]), pa.array([1, 7], pa.int32()), pa.array([1, 7], pa.uint64())]
    for arr in typed:
        got = validate_batch(_batch(user_id=arr), CONFIG, threshold=4.0)
        assert got["user_id"].to_pylist() == ["1", "7"], arr.type


# --- end to end: one `data prepare` over all three formats -------------------------------------


def test_prepare_keeps_every_bad_row_with_its_text_and_number(tmp_path, ray_session):
    logs = tmp_path / "logs"
    logs.mkdir()
    csv_rows = [f"u{i % 7},i{i % 5},{1_600_000_000 + i},4" for i in range(300)]
    csv_rows[250] += ",surplus"
    (logs / "a.csv").write_text("user_id,item_id,timestamp,rating\n" + "\n".join(csv_rows) + "\n")
    (logs / "b.jsonl").write_text(
        '{"user_id": "u1", "item_id": "j1", "timestamp": 1600000000, "rating": 5}\n{broken\n'
    )
    when = np.array(
        ["2020-01-02T03:04:05.5", "2020-01-02T03:04:06.25", "2020-01-02T03:04:07.1"], "datetime64[ns]"
    )
    ns = pa.array(when, pa.timestamp("ns"))
    pq.write_table(
        pa.table({"user_id": ["p1"] * 3, "item_id": ["q1"] * 3, "timestamp": ns, "rating": [5.0] * 3}),
        logs / "c.parquet",
    )
    meta = prepare(data_config({"type": "logs", "paths": [str(logs)]}, str(tmp_path / "out")))
    counts = meta["counts"]
    assert counts["rows_in"] == 300 + 2 + 3 == counts["rows_out"] + counts["rows_quarantined"]
    quarantine = {
        (r["_file"].rsplit("/", 1)[-1], r["_row"]): r
        for r in read_table(str(tmp_path / "out"), "quarantine").to_pylist()
    }
    assert quarantine[("a.csv", 250)][REASON] == "csv: 5 fields, expected 4"
    assert quarantine[("a.csv", 250)][RAW] == csv_rows[250]
    assert quarantine[("b.jsonl", 1)][REASON] == "json: not valid JSON"
    assert quarantine[("b.jsonl", 1)][RAW] == "{broken"
    assert not any(name == "c.parquet" for name, _ in quarantine)  # sub-second timestamps are fine
