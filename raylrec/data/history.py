"""Point-in-time user histories, vectorised over many users at once.

Rows must be sorted by (user, timestamp). An event's history is the user's last ``max_len``
positive items with a timestamp strictly earlier than the event's own: events that share a
timestamp never see each other, and nothing later is ever visible.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["point_in_time_histories"]


def point_in_time_histories(
    user: np.ndarray, timestamp: np.ndarray, item: np.ndarray, positive: np.ndarray, max_len: int
) -> pa.ListArray:
    """One list of item ids per row (oldest first), as a pyarrow ``list<int32>`` array."""
    n = len(user)
    if n == 0:
        return pa.ListArray.from_arrays(pa.array([0], pa.int32()), pa.array([], pa.int32()))
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_instant = new_user | np.r_[True, timestamp[1:] != timestamp[:-1]]
    # For each row: the first row of its user, and the first row of its (user, timestamp) run.
    user_first = np.flatnonzero(new_user)[np.cumsum(new_user) - 1]
    instant_first = np.flatnonzero(new_instant)[np.cumsum(new_instant) - 1]

    positive_rows = np.flatnonzero(positive)
    positives_before = np.r_[0, np.cumsum(positive, dtype=np.int64)]  # exclusive prefix count
    seen = positives_before[instant_first]  # positives strictly before this instant (any user)
    first_of_user = positives_before[user_first]
    length = np.minimum(seen - first_of_user, max_len)

    offsets = np.r_[0, np.cumsum(length)].astype(np.int64)
    total = int(offsets[-1])
    # The k-th element of row i is positive number (seen_i - length_i + k), counted globally.
    starts = np.repeat(seen - length - offsets[:-1], length)
    ranks = starts + np.arange(total, dtype=np.int64)
    values = item[positive_rows[ranks]].astype(np.int32)
    if total >= np.iinfo(np.int32).max:
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values, pa.int32()))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int32()))
