"""The vectorised kernels against plain-Python references, on hypothesis-generated events."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from raylrec.data.hashing import row_hashes, table_digest
from raylrec.data.history import point_in_time_histories
from raylrec.data.splits import TEST, TRAIN, VALID, assign_splits, fraction_cutoffs
from raylrec.data.splits.leave_last_out import LeaveLastOutSplit
from raylrec.data.splits.random_ratio import RandomRatioSplit, ratio_counts
from raylrec.data.splits.temporal_window import TemporalWindowSplit

events = st.lists(
    st.tuples(
        st.integers(1, 4), st.integers(0, 6), st.integers(1, 9), st.booleans()
    ),  # user, ts, item, positive
    min_size=0,
    max_size=60,
)


def _sorted_arrays(rows):
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    user = np.array([r[0] for r in rows], np.int64)
    ts = np.array([r[1] for r in rows], np.int64)
    item = np.array([r[2] for r in rows], np.int64)
    pos = np.array([r[3] for r in rows], bool)
    return rows, user, ts, item, pos


def _reference_history(rows, i, max_len):
    u, t = rows[i][0], rows[i][1]
    earlier = [r[2] for r in rows if r[0] == u and r[1] < t and r[3]]  # rows already time-sorted
    return earlier[-max_len:] if max_len else []


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 5), st.integers(1, 12))
def test_histories_match_reference_and_never_see_the_future(rows, max_len, elements_per_slice):
    # elements_per_slice: the gather runs in slices of rows (a few rows each here), whose
    # boundaries fall inside users and inside same-timestamp runs
    rows, user, ts, item, pos = _sorted_arrays(rows)
    histories = point_in_time_histories(user, ts, item, pos, max_len, elements_per_slice).to_pylist()
    assert len(histories) == len(rows)
    for i, history in enumerate(histories):
        assert history == _reference_history(rows, i, max_len)
        assert len(history) <= max_len


def test_history_excludes_same_timestamp_and_negatives():
    user = np.array([1, 1, 1, 1, 2])
    ts = np.array([10, 10, 20, 30, 5])
    item = np.array([5, 6, 7, 8, 9])
    pos = np.array([True, True, False, True, True])
    got = point_in_time_histories(user, ts, item, pos, 10).to_pylist()
    assert got == [[], [], [5, 6], [5, 6], []]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.floats(0, 1), st.floats(0, 1))
def test_ratio_counts_follow_recbole_rule(total, a, b):
    valid_share, test_share = a * 0.5, b * 0.5
    ratios = (1 - valid_share - test_share, valid_share, test_share)
    train, valid = ratio_counts(np.array([total]), ratios)
    # RecBole's _calcu_split_ids, written out for one user.
    cnt = [int(r * total) for r in ratios]
    cnt[0] = total - sum(cnt[1:])
    for i in range(1, 3):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    assert (train[0], valid[0]) == (cnt[0], cnt[1])


def test_random_ratio_is_per_user_and_seeded():
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(1, 21), 10)
    ts = np.tile(np.arange(10), 20)
    item = rng.integers(1, 100, len(user))
    config = RandomRatioSplit(ratios=(0.8, 0.1, 0.1), seed=1)
    split = assign_splits(config, user, item, ts, None)
    for u in range(1, 21):
        s = split[user == u]
        assert (s == TRAIN).sum() == 8 and (s == VALID).sum() == 1 and (s == TEST).sum() == 1
    assert not np.array_equal(split, assign_splits(RandomRatioSplit(seed=2), user, item, ts, None))
    np.testing.assert_array_equal(split, assign_splits(config, user, item, ts, None))


def test_leave_last_out_and_windows():
    user = np.array([1, 1, 1, 1, 2, 2])
    ts = np.array([1, 2, 3, 4, 1, 2])
    item = np.arange(6)
    split = assign_splits(LeaveLastOutSplit(min_events=3), user, item, ts, None)
    assert split.tolist() == [TRAIN, TRAIN, VALID, TEST, TRAIN, TRAIN]
    window = TemporalWindowSplit(valid_start=2, test_start=4)
    assert assign_splits(window, user, item, ts, None).tolist() == [TRAIN, VALID, VALID, TEST, TRAIN, VALID]


def test_fraction_cutoffs_keep_ties_together():
    ts = np.sort(np.array([1, 2, 2, 2, 3, 4, 5, 6, 7, 8]))
    c1, c2 = fraction_cutoffs(lambda k: ts[k], len(ts), (0.2, 0.4, 0.4))
    # Rank 2 is a 2, so every 2 goes to valid (none stays in train); rank 6 is the 5.
    assert (c1, c2) == (2, 5)


def test_row_hash_is_order_independent_and_content_sensitive():
    table = pa.table(
        {
            "uid": [1, 2, 3],
            "rating": [1.0, 2.5, None],
            "history": pa.array([[1, 2], [], [3]], pa.list_(pa.int32())),
            "split": ["a", "b", "c"],
        }
    )
    assert table_digest(table) == table_digest(table.take([2, 0, 1]))
    moved = table.set_column(2, "history", pa.array([[2, 1], [], [3]], pa.list_(pa.int32())))
    assert table_digest(moved) != table_digest(table)
    shifted = table.set_column(2, "history", pa.array([[1], [2], [3]], pa.list_(pa.int32())))
    assert table_digest(shifted) != table_digest(table)
    assert len(set(row_hashes(table).tolist())) == 3


@settings(max_examples=50, deadline=None)
@given(events, st.integers(1, 7))
def test_row_hashes_are_the_same_whatever_the_slices(rows, rows_per_slice):
    rows, user, ts, item, _ = _sorted_arrays(rows)
    table = pa.table(
        {
            "uid": user,
            "rating": pa.array([None if i % 3 == 0 else float(i) for i in range(len(rows))], pa.float64()),
            "history": pa.array([list(range(i % 4)) for i in range(len(rows))], pa.list_(pa.int32())),
            "split": pa.array(["train" if i % 2 else None for i in range(len(rows))], pa.string()),
        }
    )
    assert np.array_equal(row_hashes(table, rows_per_slice), row_hashes(table, 1 << 30))
