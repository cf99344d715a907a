"""A second baseline: the same steps as ``bench/pandas_prepare.py`` (validate + quarantine,
de-duplicate, label, dense ids, random per-user 8:1:1 split with RecBole's rule, point-in-time
histories, Parquet per split) written the way a polars user would: a lazy scan, window
expressions (``over``) and an integer ``rolling`` window for the histories.

    python bench/polars_prepare.py --logs DIR --out DIR [--max-len 20]

The outputs are the pandas script's, row for row: the shuffle that decides the split is the one
``DataFrame.sample(frac=1.0, random_state=2020)`` draws (numpy's ``RandomState(2020)``
permutation of the kept rows in file order), so every split holds the same events with the same
histories. Each split file is sorted by (uid, timestamp, iid), as pandas writes it. Column types
are the source's: where a file has missing timestamps or ratings pandas reads the integer column
as float64, polars keeps int64 (the values are the same); ``history`` is written as a
``large_list`` (polars' list layout) where pandas writes a ``list``. polars runs on all cores
(``POLARS_MAX_THREADS`` limits it), pandas on one.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import polars as pl

SEED = 2020  # pandas_prepare.py: df.sample(frac=1.0, random_state=2020)
COLUMNS = ["uid", "iid", "timestamp", "rating", "label", "history"]


def missing(name: str, dtype: pl.DataType) -> pl.Expr:
    """pandas' ``isna``: null, and NaN in a float column."""
    col = pl.col(name)
    return col.is_null() | col.is_nan() if dtype.is_float() else col.is_null()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-len", type=int, default=20)
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.logs, "**", "*.parquet"), recursive=True))
    logs = pl.scan_parquet(files)  # rows keep their file order: the shuffle below relies on it
    schema = logs.collect_schema()
    rows_in = logs.select(pl.len()).collect().item()

    # Validate, quarantine, de-duplicate (first row in file order wins), label, dense ids (1-based,
    # in sorted id order like pandas' Categorical codes): one lazy query.
    ts = pl.col("timestamp").cast(pl.Float64, strict=False)  # pd.to_numeric(errors="coerce")
    rating = pl.col("rating").cast(pl.Float64, strict=False)
    bad = (
        missing("user_id", schema["user_id"])
        | missing("item_id", schema["item_id"])
        | ts.is_null()
        | ts.is_nan()
        | (ts < 1)
        | (ts > 4_102_444_800)
        | rating.is_null()
        | ~rating.is_finite()
        | (rating < 1)
        | (rating > 5)
    ).fill_null(True)
    kept = (
        logs.filter(~bad)
        .unique(["user_id", "item_id", "timestamp"], keep="first", maintain_order=True)
        .with_columns(
            label=(rating >= 4).cast(pl.Int8),
            uid=pl.col("user_id").rank("dense").cast(pl.Int64),
            iid=pl.col("item_id").rank("dense").cast(pl.Int64),
        )
        .collect()
    )
    quarantined = rows_in - kept.height

    # Random per-user 8:1:1 split (RecBole's rule): shuffle, rank within user, cut by counts.
    # polars has no numpy RandomState, so the shuffle is numpy's (pandas' df.sample draws exactly
    # this permutation): each row gets its position in the shuffled order.
    perm = np.random.RandomState(SEED).permutation(kept.height)
    shuffled_at = np.empty(kept.height, np.int64)
    shuffled_at[perm] = np.arange(kept.height)
    tenth = 0.1 * pl.col("n")
    move = (pl.col("n_train") > 1) & (tenth < 1)
    split = (
        kept.lazy()
        .with_columns(shuffled_at=pl.Series(shuffled_at))
        .with_columns(
            rank=pl.col("shuffled_at").rank("ordinal").over("uid").cast(pl.Int64) - 1,
            n=pl.len().over("uid").cast(pl.Int64),
        )
        .with_columns(n_valid=tenth.floor(), n_test=tenth.floor())
        .with_columns(n_train=pl.col("n") - pl.col("n_valid") - pl.col("n_test"))
        .with_columns(n_test=pl.col("n_test") + move, n_train=pl.col("n_train") - move)
        .with_columns(n_valid=pl.col("n_valid") + move, n_train=pl.col("n_train") - move)
        .with_columns(
            split=pl.when(pl.col("rank") < pl.col("n_train"))
            .then(pl.lit("train"))
            .when(pl.col("rank") < pl.col("n_train") + pl.col("n_valid"))
            .then(pl.lit("valid"))
            .otherwise(pl.lit("test"))
        )
    )

    # Point-in-time histories: in each user's time order, ``seen`` counts the positives up to and
    # including a row; ``before`` is the count strictly before the row's instant (events at the
    # same instant do not see each other). A rolling window over the positives' ``seen`` holds the
    # last max_len positive items up to each one; an event's history is the window of the
    # ``before``-th positive (none: empty).
    events = (
        split.sort(["uid", "timestamp", "iid"])
        .with_columns(seen=pl.col("label").cast(pl.Int64).cum_sum().over("uid"))
        .with_columns(before=(pl.col("seen") - pl.col("label")).min().over(["uid", "timestamp"]))
    )
    if args.max_len > 0:
        windows = (
            events.filter(pl.col("label") == 1)
            .rolling("seen", period=f"{args.max_len}i", group_by="uid")
            .agg(history=pl.col("iid"))
        )
        events = events.join(
            windows, left_on=["uid", "before"], right_on=["uid", "seen"], how="left"
        ).with_columns(pl.col("history").fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
    else:
        events = events.with_columns(history=pl.lit([], dtype=pl.List(pl.Int64)))
    df = events.sort(["uid", "timestamp", "iid"]).select([*COLUMNS, "split"]).collect()

    os.makedirs(args.out, exist_ok=True)
    for (name,), part in df.partition_by("split", as_dict=True, maintain_order=True).items():
        part.select(COLUMNS).write_parquet(os.path.join(args.out, f"{name}.parquet"))
    print(f"rows in {rows_in} out {df.height} quarantined {quarantined}")


if __name__ == "__main__":
    main()
