"""Group rows by an integer key through staged files: prepare's shuffle by user.

    map:    each block splits its rows by ``key % partitions`` and writes one Parquet file per
            bucket it holds, under ``<staging>/<bucket>/``
    reduce: one task per bucket reads that bucket's directory, so it sees every row of its keys,
            and applies the caller's function

Ray Data's own key shuffle (``repartition(keys=...)``) does this through the object store, but a
worker process that runs its tasks keeps memory in proportion to all the rows it has shuffled,
not to one partition: 0.99 GiB at 5M events, 6.5 GiB at 50M in prepare (docs/benchmarks.md,
stop 48; ``bench/shuffle_memory.py`` shows it with no raylrec code). Here a task holds one block
or one bucket, whatever the log's size. The staged files live on the output's filesystem (local,
shared or s3://) so that every node's reducers reach them: the shuffle of MapReduce and Spark,
buckets written by the mappers and pulled whole by one reducer each.

The driver holds one count per bucket. A file's name is its rows' content hash, so a map task
that Ray retries overwrites its own files instead of adding rows; each reducer checks that it
read the rows the mappers reported for its bucket. Two blocks with identical rows would share a
name and fail that check: prepare's rows carry their file and row number, so none are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylrec import storage
from raylrec.data.hashing import row_hashes

if TYPE_CHECKING:
    import ray

__all__ = ["ShuffleError", "shuffle_by_key", "scatter_block", "gather_bucket"]


class ShuffleError(RuntimeError):
    """Staged rows went missing or appeared twice (a bug or a tampered staging directory)."""


def _bucket_dir(root: str, bucket: int) -> str:
    """A bucket's directory under the staging path ``root`` (of ``storage.arrow_filesystem``)."""
    return f"{root.rstrip('/')}/{bucket:06d}"


def _content_name(batch: pa.Table) -> str:
    with np.errstate(over="ignore"):
        digest = int(np.sum(row_hashes(batch), dtype=np.uint64))
    return f"{digest:016x}-{batch.num_rows}.parquet"


def scatter_block(batch: pa.Table, key: str, partitions: int, staging: str) -> pa.Table:
    """Write ``batch``'s rows into their buckets' directories; returns (bucket, rows) per file."""
    buckets = np.mod(batch[key].to_numpy(), partitions)
    order = np.argsort(buckets, kind="stable")
    present, starts, counts = np.unique(buckets[order], return_index=True, return_counts=True)
    name = _content_name(batch)
    fs, root = storage.arrow_filesystem(staging)
    for bucket, start, count in zip(present.tolist(), starts.tolist(), counts.tolist(), strict=True):
        directory = _bucket_dir(root, bucket)
        fs.create_dir(directory, recursive=True)
        part = batch.take(order[start : start + count])
        pq.write_table(part, f"{directory}/{name}", filesystem=fs, compression="lz4")
    return pa.table({"bucket": present.astype(np.int64), "rows": counts.astype(np.int64)})


def gather_bucket(bucket: int, rows: int, staging: str) -> pa.Table:
    """Every staged row of one bucket, checked against the ``rows`` the mappers reported."""
    fs, root = storage.arrow_filesystem(staging)
    directory = _bucket_dir(root, bucket)
    names = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(directory)) if info.is_file)
    table = pa.concat_tables([pq.read_table(path, filesystem=fs) for path in names])
    if table.num_rows != rows:
        raise ShuffleError(
            f"shuffle bucket {directory}: read {table.num_rows:,} rows from {len(names)} file(s), "
            f"the map step wrote {rows:,}"
        )
    return table


def _gather_and_reduce(
    batch: pa.Table, staging: str, reduce: Callable[..., pa.Table], reduce_kwargs: dict[str, Any]
) -> pa.Table:
    (bucket,), (rows,) = batch["bucket"].to_pylist(), batch["rows"].to_pylist()
    return reduce(gather_bucket(bucket, rows, staging), **reduce_kwargs)


def shuffle_by_key(
    ds: ray.data.Dataset,
    key: str,
    partitions: int,
    staging: str,
    reduce: Callable[..., pa.Table],
    reduce_kwargs: dict[str, Any],
) -> tuple[ray.data.Dataset, int]:
    """``reduce`` applied to all rows of each bucket of ``key`` (one call per bucket), as a lazy
    Dataset, and the number of rows staged. ``key`` must be an integer column; ``staging`` a new
    directory that the caller removes once the result is materialized.

    The map step runs to completion before any reducer starts, as in every shuffle.
    """
    import ray

    counts = np.zeros(partitions, np.int64)  # the driver's only state: a count per bucket
    written = ds.map_batches(
        scatter_block,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"key": key, "partitions": partitions, "staging": staging},
    )
    for summary in written.iter_batches(batch_format="numpy", batch_size=None):
        np.add.at(counts, summary["bucket"], summary["rows"])
    present = np.flatnonzero(counts)
    buckets = ray.data.from_items(
        [{"bucket": int(b), "rows": int(counts[b])} for b in present],
        override_num_blocks=max(1, len(present)),
    )
    reduced = buckets.map_batches(
        _gather_and_reduce,
        batch_format="pyarrow",
        batch_size=1,
        fn_kwargs={"staging": staging, "reduce": reduce, "reduce_kwargs": reduce_kwargs},
    )
    staged = int(counts.sum())
    return reduced, staged
