"""prepare's staged shuffle by user (raylrec/data/shuffle.py), its map and reduce halves run as
plain functions: every row reaches exactly one bucket, all of a key's rows the same one, a
retried map task adds nothing, and a bucket that does not hold what the mappers reported fails."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylrec.data.shuffle import ShuffleError, gather_bucket, scatter_block


def _blocks(keys: list[int], cuts: list[int]) -> list[pa.Table]:
    table = pa.table({"uid": np.array(keys, np.int64), "row": np.arange(len(keys), dtype=np.int64)})
    bounds = sorted({0, len(keys), *(c % (len(keys) + 1) for c in cuts)})
    return [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _scatter_all(blocks: list[pa.Table], partitions: int, staging: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for block in blocks:
        summary = scatter_block(block, "uid", partitions, staging)
        for bucket, rows in zip(summary["bucket"].to_pylist(), summary["rows"].to_pylist(), strict=True):
            counts[bucket] = counts.get(bucket, 0) + rows
    return counts


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.integers(0, 50), min_size=1, max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=5),
    partitions=st.integers(1, 7),
)
def test_every_row_reaches_the_one_bucket_of_its_key(tmp_path_factory, keys, cuts, partitions):
    staging = str(tmp_path_factory.mktemp("shuffle"))
    counts = _scatter_all(_blocks(keys, cuts), partitions, staging)
    seen_rows: list[int] = []
    bucket_of: dict[int, int] = {}
    for bucket, rows in counts.items():
        table = gather_bucket(bucket, rows, staging)
        for uid, row in zip(table["uid"].to_pylist(), table["row"].to_pylist(), strict=True):
            assert bucket_of.setdefault(uid, bucket) == bucket, f"user {uid} in two buckets"
            assert keys[row] == uid
            seen_rows.append(row)
    assert sorted(seen_rows) == list(range(len(keys)))


def test_a_retried_map_task_overwrites_its_files_instead_of_adding_rows(tmp_path):
    blocks = _blocks(list(range(100)), [40])
    counts = _scatter_all(blocks, 3, str(tmp_path))
    scatter_block(blocks[0], "uid", 3, str(tmp_path))  # Ray retries the first block's task
    total = sum(gather_bucket(b, rows, str(tmp_path)).num_rows for b, rows in counts.items())
    assert total == 100


def test_a_bucket_holding_rows_the_mappers_did_not_report_fails_naming_it(tmp_path):
    counts = _scatter_all(_blocks(list(range(10)), []), 2, str(tmp_path))
    pq.write_table(pa.table({"uid": [0], "row": [0]}), tmp_path / "000000" / "stray.parquet")
    with pytest.raises(ShuffleError, match=r"000000: read 6 rows from 2 file\(s\), the map step wrote 5"):
        gather_bucket(0, counts[0], str(tmp_path))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 80), min_size=0, max_size=30), st.integers(1, 25))
def test_the_history_bound_is_the_histories_of_an_all_positive_log(events_per_user, max_len):
    """``history_items_bound`` equals the history items ``point_in_time_histories`` builds when
    every event is positive and has its own instant: the most a log of these users can hold."""
    from raylrec.data.history import point_in_time_histories
    from raylrec.data.pipeline import history_items_bound

    user = np.repeat(np.arange(len(events_per_user)), events_per_user)
    timestamp = np.concatenate([np.arange(n) for n in events_per_user]) if events_per_user else np.zeros(0)
    items = np.arange(len(user))
    histories = point_in_time_histories(user, timestamp, items, np.ones(len(user), bool), max_len)
    assert history_items_bound(np.array(events_per_user), max_len) == len(histories.flatten())


def test_wider_histories_make_more_and_smaller_partitions():
    """The shuffle's partitions are sized by bytes: the same rows with fuller histories are cut
    into more partitions, so a reduce task holds about the same bytes as the log grows."""
    from raylrec.data.pipeline import BYTES_PER_PARTITION, ROW_BYTES, shuffle_partitions

    rows = 10 * BYTES_PER_PARTITION // ROW_BYTES
    assert shuffle_partitions(rows, 0) == 10
    assert shuffle_partitions(rows, rows * 4) > shuffle_partitions(rows, rows) > 10
    assert shuffle_partitions(1, 0) == 1
