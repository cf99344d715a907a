"""The baseline: the single-process pandas script a user would otherwise write for the same
steps as ``raylrec data prepare`` (validate + quarantine, de-duplicate, label, dense ids,
random per-user 8:1:1 split with RecBole's rule, point-in-time histories, Parquet per split).

    python bench/pandas_prepare.py --logs DIR --out DIR [--max-len 20]
"""

from __future__ import annotations

import argparse
import glob
import os
from collections import deque

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-len", type=int, default=20)
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.logs, "**", "*.parquet"), recursive=True))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    rows_in = len(df)

    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    rating = pd.to_numeric(df["rating"], errors="coerce")
    bad = (
        df["user_id"].isna()
        | df["item_id"].isna()
        | ts.isna()
        | (ts < 1)
        | (ts > 4_102_444_800)
        | rating.isna()
        | ~np.isfinite(rating)
        | (rating < 1)
        | (rating > 5)
    )
    quarantined = int(bad.sum())
    df = df[~bad].copy()
    dup = df.duplicated(["user_id", "item_id", "timestamp"])
    quarantined += int(dup.sum())
    df = df[~dup]
    df["label"] = (df["rating"] >= 4).astype("int8")
    df["uid"] = pd.Categorical(df["user_id"]).codes.astype(np.int64) + 1
    df["iid"] = pd.Categorical(df["item_id"]).codes.astype(np.int64) + 1

    # Random per-user 8:1:1 split (RecBole's rule): shuffle, rank within user, cut by counts.
    df = df.sample(frac=1.0, random_state=2020)
    rank = df.groupby("uid").cumcount()
    n = df.groupby("uid")["uid"].transform("size")
    n_valid, n_test = np.floor(0.1 * n), np.floor(0.1 * n)
    n_train = n - n_valid - n_test
    move = (n_train > 1) & (0.1 * n < 1)
    n_test, n_train = n_test + move, n_train - move
    move = (n_train > 1) & (0.1 * n < 1)
    n_valid, n_train = n_valid + move, n_train - move
    df["split"] = np.where(rank < n_train, "train", np.where(rank < n_train + n_valid, "valid", "test"))

    # Point-in-time histories: walk each user's events in time order.
    df = df.sort_values(["uid", "timestamp", "iid"])
    histories = []
    uids, times, items, labels = (df[c].to_numpy() for c in ("uid", "timestamp", "iid", "label"))
    last_user, recent, pending, pending_ts = None, deque(maxlen=args.max_len), [], None
    for u, t, i, y in zip(uids, times, items, labels, strict=True):
        if u != last_user:
            last_user, recent, pending, pending_ts = u, deque(maxlen=args.max_len), [], None
        if t != pending_ts:  # events at the same instant do not see each other
            recent.extend(pending)
            pending, pending_ts = [], t
        histories.append(list(recent))
        if y == 1:
            pending.append(int(i))
    df["history"] = histories

    os.makedirs(args.out, exist_ok=True)
    for split, part in df.groupby("split"):
        table = pa.Table.from_pandas(
            part[["uid", "iid", "timestamp", "rating", "label", "history"]], preserve_index=False
        )
        pq.write_table(table, os.path.join(args.out, f"{split}.parquet"))
    print(f"rows in {rows_in} out {len(df)} quarantined {quarantined}")


if __name__ == "__main__":
    main()
