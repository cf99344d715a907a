"""The processed dataset on disk or s3://: layout, commit marker and readers.

    <out>/train/*.parquet  valid/  test/   uid, iid, timestamp, rating, label, history, ...
    <out>/users.parquet    user_id (raw) -> uid, plus user metadata
    <out>/items.parquet    item_id (raw) -> iid, plus item metadata (title, ...)
    <out>/quarantine/      rows that failed a check, with _file, _row, _reason and _raw
    <out>/meta.json        counts, protocol, source and content hash: written last

A directory without ``meta.json`` is incomplete (an interrupted run) and is never read.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raylrec import __version__, storage
from raylrec.data.hashing import arrow_digest, json_digest

__all__ = [
    "META_FILE",
    "OutputExistsError",
    "IncompleteDatasetError",
    "commit",
    "prepare_output_dir",
    "write_table",
    "read_meta",
    "read_split",
    "read_table",
]

META_FILE = "meta.json"
FORMAT = "raylrec.processed/1"


class OutputExistsError(FileExistsError):
    pass


class IncompleteDatasetError(FileNotFoundError):
    pass


def prepare_output_dir(out: str, overwrite: bool) -> None:
    """Refuse to clobber a finished dataset unless asked; clear an interrupted one."""
    storage.check_reachable(out)
    fs, path = storage.filesystem(out)
    if fs.exists(storage.join(path, META_FILE)):
        if not overwrite:
            raise OutputExistsError(
                f"{out} already holds a prepared dataset ({META_FILE} exists); "
                "pass data.overwrite=true to replace it"
            )
        fs.rm(storage.join(path, META_FILE))  # uncommit first: a crash below leaves it incomplete
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)


def write_table(table: pa.Table, out: str, name: str) -> None:
    fs, path = storage.arrow_filesystem(out)
    pq.write_table(table, storage.join(path, name), filesystem=fs, compression="zstd")


def commit(
    out: str,
    *,
    protocol: dict[str, Any],
    counts: dict[str, Any],
    split_hashes: dict[str, str],
    users: pa.Table,
    items: pa.Table,
    source: dict[str, Any],
    columns: list[str],
    started: float,
) -> dict[str, Any]:
    """Write the vocabularies, then ``meta.json`` last: the dataset exists from that moment.

    The content hash covers what a model would see (protocol, counts, every row of every split,
    the vocabularies and metadata), not where it came from or when it was made."""
    write_table(users, out, "users.parquet")
    write_table(items, out, "items.parquet")
    content = {
        "format": FORMAT,
        "protocol": protocol,
        "counts": counts,
        "split_hashes": split_hashes,
        "users": arrow_digest(users),
        "items": arrow_digest(items),
    }
    meta = {
        "format": FORMAT,
        "protocol": protocol,
        "counts": counts,
        "source": source,
        "content_hash": json_digest(content),
        "columns": columns,
        "raylrec_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    storage.write_json(storage.join(out, META_FILE), meta)
    return meta


def read_meta(out: str) -> dict[str, Any]:
    fs, path = storage.filesystem(out)
    meta = storage.join(path, META_FILE)
    if not fs.exists(meta):
        raise IncompleteDatasetError(
            f"{out} is not a prepared dataset (no {META_FILE}: missing or interrupted run)"
        )
    return storage.read_json(storage.join(out, META_FILE))


def read_split(out: str, split: str) -> ray.data.Dataset:
    """One split of a committed dataset as a Ray Dataset."""
    meta = read_meta(out)
    if split not in meta["counts"]["splits"]:
        raise KeyError(f"{out} has no split {split!r}; it has {sorted(meta['counts']['splits'])}")
    fs, path = storage.arrow_filesystem(out)
    return ray.data.read_parquet(storage.join(path, split), filesystem=fs)


def read_table(out: str, name: str) -> pa.Table:
    """A small table of a committed dataset (``items.parquet``, ``users.parquet``) or one
    split read whole with pyarrow, for small data and tests."""
    read_meta(out)
    fs, path = storage.arrow_filesystem(out)
    return pq.read_table(storage.join(path, name), filesystem=fs)
