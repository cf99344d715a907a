"""A second baseline: the same steps as ``bench/pandas_prepare.py`` (validate + quarantine,
de-duplicate, label, dense ids, random per-user 8:1:1 split with RecBole's rule, point-in-time
histories, Parquet per split) written the way a DuckDB user would: SQL over ``read_parquet``,
window functions (``QUALIFY``, ``dense_rank``, ``row_number``, a ``list`` window for the
histories) and ``COPY ... TO`` Parquet.

    python bench/duckdb_prepare.py --logs DIR --out DIR [--max-len 20]

The outputs are the pandas script's, row for row: the shuffle that decides the split is the one
``DataFrame.sample(frac=1.0, random_state=2020)`` draws (numpy's ``RandomState(2020)``
permutation of the kept rows in file order, each file's rows in order), so every split holds the
same events with the same histories. Each split file is sorted by (uid, timestamp, iid), as pandas
writes it. Column types are the source's: where a file has missing timestamps or ratings pandas
reads the integer column as float64, DuckDB keeps int64 (the values are the same). DuckDB runs
on all cores, pandas on one.
"""

from __future__ import annotations

import argparse
import glob
import os

import duckdb
import numpy as np
import pyarrow as pa

SEED = 2020  # pandas_prepare.py: df.sample(frac=1.0, random_state=2020)
SPLITS = ("train", "valid", "test")


def missing(name: str, sql_type: str) -> str:
    """pandas' ``isna``: NULL, and NaN in a float column."""
    if sql_type in ("FLOAT", "DOUBLE"):
        return f"({name} IS NULL OR isnan({name}))"
    return f"{name} IS NULL"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-len", type=int, default=20)
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.logs, "**", "*.parquet"), recursive=True))
    con = duckdb.connect()
    types = dict(
        con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE FROM read_parquet($files))", {"files": files}
        ).fetchall()
    )
    rows_in = con.execute("SELECT count(*) FROM read_parquet($files)", {"files": files}).fetchall()[0][0]

    # Validate, quarantine, de-duplicate (the first row in file order wins), label, dense ids
    # (1-based, in sorted id order like pandas' Categorical codes). ``pos`` numbers the kept rows
    # in file order, the order pandas' df.sample permutes.
    con.execute(
        f"""
        CREATE TEMP TABLE kept AS
        WITH logs AS (
            SELECT user_id, item_id, "timestamp", rating,
                   list_position($files, filename) AS file_no, file_row_number AS row_no,
                   TRY_CAST("timestamp" AS DOUBLE) AS ts,  -- pd.to_numeric(errors="coerce")
                   TRY_CAST(rating AS DOUBLE) AS r
            FROM read_parquet($files, filename = true, file_row_number = true)
        ), valid AS (
            SELECT * FROM logs
            WHERE NOT coalesce(
                {missing("user_id", types["user_id"])} OR {missing("item_id", types["item_id"])}
                OR ts IS NULL OR isnan(ts) OR ts < 1 OR ts > 4102444800
                OR r IS NULL OR NOT isfinite(r) OR r < 1 OR r > 5,
                true)
            QUALIFY row_number() OVER (
                PARTITION BY user_id, item_id, "timestamp" ORDER BY file_no, row_no) = 1
        )
        SELECT row_number() OVER (ORDER BY file_no, row_no) - 1 AS pos,
               dense_rank() OVER (ORDER BY user_id) AS uid,
               dense_rank() OVER (ORDER BY item_id) AS iid,
               "timestamp", rating, (r >= 4)::TINYINT AS label
        FROM valid
        """,
        {"files": files},
    )
    kept = con.execute("SELECT count(*) FROM kept").fetchall()[0][0]
    quarantined = rows_in - kept

    # DuckDB's random() is not numpy's, so the shuffle is numpy's (pandas' df.sample draws exactly
    # this permutation): the k-th row of the shuffled order is kept row perm[k].
    shuffle = pa.table({"pos": np.random.RandomState(SEED).permutation(kept), "shuffled_at": np.arange(kept)})
    con.register("shuffle", shuffle)

    # Random per-user 8:1:1 split (RecBole's rule): rank within user in shuffled order, cut by
    # counts. Point-in-time histories: ``before`` counts the user's positives strictly before the
    # event's instant (events at the same instant do not see each other); a ROWS window over the
    # user's positives in (timestamp, iid) order holds the last max_len positive items up to each
    # one, and an event's history is the window of its ``before``-th positive (none: empty).
    if args.max_len > 0:
        windows = f"""
            SELECT uid, row_number() OVER w AS seen,
                   list(iid) OVER (w ROWS BETWEEN {args.max_len - 1} PRECEDING AND CURRENT ROW) AS history
            FROM events WHERE label = 1
            WINDOW w AS (PARTITION BY uid ORDER BY "timestamp", iid)
        """
    else:
        windows = "SELECT NULL::BIGINT AS uid, NULL::BIGINT AS seen, NULL::BIGINT[] AS history LIMIT 0"
    con.execute(
        f"""
        CREATE TEMP TABLE prepared AS
        WITH ranked AS (
            SELECT kept.*, row_number() OVER (PARTITION BY uid ORDER BY shuffled_at) - 1 AS rnk,
                   count(*) OVER (PARTITION BY uid) AS n
            FROM kept JOIN shuffle USING (pos)
        ), counts AS (
            SELECT *, floor(tenth) AS n_valid, floor(tenth) AS n_test, n - 2 * floor(tenth) AS n_train
            FROM (SELECT *, 0.1::DOUBLE * n AS tenth FROM ranked)
        ), moved_test AS (
            SELECT * REPLACE (n_test + (n_train > 1 AND tenth < 1)::INT AS n_test,
                              n_train - (n_train > 1 AND tenth < 1)::INT AS n_train)
            FROM counts
        ), moved_valid AS (
            SELECT * REPLACE (n_valid + (n_train > 1 AND tenth < 1)::INT AS n_valid,
                              n_train - (n_train > 1 AND tenth < 1)::INT AS n_train)
            FROM moved_test
        ), events AS (
            SELECT uid, iid, "timestamp", rating, label,
                   CASE WHEN rnk < n_train THEN 'train'
                        WHEN rnk < n_train + n_valid THEN 'valid'
                        ELSE 'test' END AS split,
                   (sum(label) OVER (PARTITION BY uid ORDER BY "timestamp")
                    - sum(label) OVER (PARTITION BY uid, "timestamp"))::BIGINT AS before
            FROM moved_valid
        ), windows AS ({windows})
        SELECT e.uid, e.iid, e."timestamp", e.rating, e.label,
               coalesce(w.history, []::BIGINT[]) AS history, e.split
        FROM events e LEFT JOIN windows w ON w.uid = e.uid AND w.seen = e.before
        """
    )
    rows_out = con.execute("SELECT count(*) FROM prepared").fetchall()[0][0]

    os.makedirs(args.out, exist_ok=True)
    present = {s for (s,) in con.execute("SELECT DISTINCT split FROM prepared").fetchall()}
    for split in (s for s in SPLITS if s in present):
        path = os.path.join(args.out, f"{split}.parquet").replace("'", "''")
        con.execute(
            f"""
            COPY (SELECT uid, iid, "timestamp", rating, label, history FROM prepared
                  WHERE split = '{split}' ORDER BY uid, "timestamp", iid)
            TO '{path}' (FORMAT parquet)
            """
        )
    print(f"rows in {rows_in} out {rows_out} quarantined {quarantined}")


if __name__ == "__main__":
    main()
