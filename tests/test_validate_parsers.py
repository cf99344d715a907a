"""The validator and the file parsers, with hypothesis-generated good and bad rows."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raylrec.data.config import CsvOptions, ValidationConfig
from raylrec.data.files import ROW_COLUMN, SourceError, TabularFile, read_batches
from raylrec.data.validate import RAW, REASON, validate_batch

CONFIG = ValidationConfig(rating_range=(1.0, 5.0))
MAPPING = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp", "rating": "rating"}

good_row = st.fixed_dictionaries(
    {
        "user_id": st.from_regex(r"u[0-9]{1,4}", fullmatch=True),
        "item_id": st.from_regex(r"i[0-9]{1,4}", fullmatch=True),
        "timestamp": st.integers(1, 4_000_000_000).map(str),
        "rating": st.sampled_from(["1", "2", "3", "4", "5", "4.5", " 3 "]),
    }
)
# (field, bad value, expected reason prefix)
bad_value = st.sampled_from(
    [
        ("user_id", None, "user_id: missing"),
        ("user_id", "  ", "user_id: missing"),
        ("item_id", None, "item_id: missing"),
        ("timestamp", None, "timestamp: missing"),
        ("timestamp", "yesterday", "timestamp: not a number"),
        ("timestamp", "-5", "timestamp: before"),
        ("timestamp", "0", "timestamp: before"),
        ("timestamp", "1700000000000", "timestamp: after"),
        ("rating", None, "rating: missing"),
        ("rating", "NaN", "rating: NaN"),
        ("rating", "inf", "rating: NaN"),
        ("rating", "five", "rating: not a number"),
        ("rating", "7", "rating: outside"),
        ("rating", "-1", "rating: outside"),
    ]
)


def _table(rows: list[dict]) -> pa.Table:
    cols = {k: pa.array([r[k] for r in rows], pa.string()) for k in MAPPING}
    cols["_file"] = pa.array([0] * len(rows), pa.int32())
    cols[ROW_COLUMN] = pa.array(range(len(rows)), pa.int64())
    return pa.table(cols)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            good_row.map(lambda r: (r, None)),
            st.tuples(good_row, bad_value).map(lambda p: ({**p[0], p[1][0]: p[1][1]}, p[1][2])),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_every_bad_row_is_quarantined_with_its_reason(cases):
    rows = [c[0] for c in cases]
    out = validate_batch(_table(rows), CONFIG, threshold=4.0)
    assert out.num_rows == len(rows)  # nothing lost
    reasons = out[REASON].to_pylist()
    for (row, expected), reason, raw in zip(cases, reasons, out[RAW].to_pylist(), strict=True):
        if expected is None:
            assert reason is None, (row, reason)
            assert raw is None
        else:
            assert reason is not None and reason.startswith(expected), (row, reason, expected)
            assert json.loads(raw)["user_id"] == row["user_id"]  # the original values are kept
    good = out.filter(pa.compute.is_null(out[REASON]))
    for rating, label in zip(good["rating"].to_pylist(), good["label"].to_pylist(), strict=True):
        assert label == int(rating >= 4.0)
        assert 1.0 <= rating <= 5.0 and math.isfinite(rating)


def test_typed_columns_and_iso_timestamps():
    batch = pa.table(
        {
            "user_id": pa.array([1.0, 2.0, 3.5]),
            "item_id": pa.array([10, 11, 12]),
            "timestamp": pa.array(["2020-01-02T03:04:05", "1577934245", "1577934245.9"]),
            "rating": pa.array([5, 1, 3], pa.int64()),
            "_file": pa.array([0] * 3, pa.int32()),
            ROW_COLUMN: pa.array([0, 1, 2], pa.int64()),
        }
    )
    out = validate_batch(batch, CONFIG, threshold=4.0).to_pylist()
    assert [r["user_id"] for r in out] == ["1", "2", None]
    assert out[2][REASON] == "user_id: float that is not an integer"  # 3.5 is no id
    assert [r["timestamp"] for r in out[:2]] == [1577934245, 1577934245]
    assert [r["label"] for r in out[:2]] == [1, 0]


def test_milliseconds_unit_and_label_column():
    batch = pa.table(
        {
            "user_id": ["a", "b", "c"],
            "item_id": ["x", "y", "z"],
            "timestamp": pa.array([1_600_000_000_123, 1_600_000_001_000, 5], pa.int64()),
            "label": ["1", "false", "2"],
            "_file": pa.array([0] * 3, pa.int32()),
            ROW_COLUMN: pa.array([0, 1, 2], pa.int64()),
        }
    )
    out = validate_batch(batch, ValidationConfig(), threshold=4.0, timestamp_unit="ms").to_pylist()
    assert [r["timestamp"] for r in out[:2]] == [1_600_000_000, 1_600_000_001]
    assert [r["label"] for r in out[:2]] == [1, 0]
    assert out[2][REASON].startswith("timestamp: before")  # 5 ms is 0 s; checked before label


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(good_row, min_size=0, max_size=300), st.sampled_from(["parquet", "csv", "tsv", "jsonl"]))
def test_parsers_round_trip_every_row_with_its_row_number(tmp_path_factory, rows, fmt):
    path = tmp_path_factory.mktemp("p") / f"events.{fmt}"
    table = pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in MAPPING})
    csv = CsvOptions()
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=50)
    elif fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        csv = CsvOptions(delimiter=delimiter)
        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(delimiter=delimiter))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not rows and fmt == "jsonl":
        return  # an empty JSON Lines file is the empty-file rule's business
    parsed = list(
        read_batches(
            TabularFile(str(path), path.stat().st_size, "csv" if fmt == "tsv" else fmt, csv), MAPPING
        )
    )
    got = pa.concat_tables(parsed) if parsed else None
    n = got.num_rows if got is not None else 0
    assert n == len(rows)
    if n:
        assert got[ROW_COLUMN].to_pylist() == list(range(n))
        assert got["user_id"].to_pylist() == [r["user_id"] for r in rows]
        assert [str(v) for v in got["timestamp"].to_pylist()] == [r["timestamp"] for r in rows]


def test_jsonl_with_mixed_types_and_broken_lines_keeps_every_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"user_id": 1, "item_id": 2, "timestamp": 100, "rating": 5}\n'
        '{"user_id": "u2", "item_id": 3, "timestamp": "101", "rating": "4"}\n'
        "{not json\n"
        "\n"
        '{"user_id": 3, "item_id": 4, "timestamp": 102, "rating": 1}\n'
    )
    got = pa.concat_tables(read_batches(TabularFile(str(path), 1, "jsonl"), MAPPING))
    assert got[ROW_COLUMN].to_pylist() == [0, 1, 2, 4]  # line numbers; the blank line is skipped
    out = validate_batch(got, CONFIG, threshold=4.0)
    assert out[REASON].to_pylist() == [None, None, "json: not valid JSON", None]
    assert out[RAW][2].as_py() == "{not json"  # the line as written


def test_missing_column_names_file_and_mapping(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item_id,timestamp,rating\n1,2,3,4\n")
    with pytest.raises(SourceError, match=r"a\.csv: column 'user_id' \(for user_id\) not found"):
        list(read_batches(TabularFile(str(path), 1, "csv"), MAPPING))


def test_truncated_parquet_names_the_file(tmp_path):
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"user_id": ["a"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(SourceError, match=r"cut\.parquet: not a readable Parquet file"):
        list(read_batches(TabularFile(str(path), 1, "parquet"), MAPPING))
