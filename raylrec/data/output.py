"""The processed dataset on disk or s3://: layout, commit marker and readers.

    <out>/train/*.parquet  valid/  test/   uid, iid, timestamp, rating, label, history, ...
    <out>/users.parquet    user_id (raw) -> uid, plus user metadata
    <out>/items.parquet    item_id (raw) -> iid, plus item metadata (title, ...)
    <out>/quarantine/      rows that failed a check, with _file, _row, _reason and _raw
    <out>/meta.json        counts, protocol, source, content hash and the file list: written last

A directory without ``meta.json`` is incomplete (an interrupted run) and is never read. Readers
read the files ``meta.json`` lists, not whatever the split directories hold: every file a run
writes carries its write id, so a straggling writer of a killed earlier run (a Ray worker that
outlived its driver) cannot add rows, or half a file, to a dataset committed after it.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from raylrec import __version__, storage
from raylrec.data.hashing import arrow_digest, json_digest

__all__ = [
    "META_FILE",
    "OutputExistsError",
    "IncompleteDatasetError",
    "commit",
    "new_write_id",
    "prepare_output_dir",
    "split_paths",
    "write_dataset",
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


def new_write_id() -> str:
    return uuid.uuid4().hex[:16]


def write_dataset(ds: ray.data.Dataset, out: str, name: str, write_id: str, **options: Any) -> list[str]:
    """Write ``ds`` as Parquet under ``<out>/<name>/``; returns the names of the files this write
    made (each starts with ``write_id``), for ``commit`` to list."""
    from ray.data.datasource import FilenameProvider

    arrow_fs, path = storage.arrow_filesystem(out)
    ds.write_parquet(
        storage.join(path, name),
        filesystem=arrow_fs,
        filename_provider=FilenameProvider(dataset_uuid=write_id, file_format="parquet"),
        **options,
    )
    fs, path = storage.filesystem(out)
    directory = storage.join(path, name)
    fs.invalidate_cache(directory)  # s3fs caches listings
    names = (posixpath.basename(f) for f in fs.ls(directory, detail=False))
    return sorted(n for n in names if n.startswith(f"{write_id}_") and n.endswith(".parquet"))


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
    files: dict[str, list[str]],
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
        "files": files,
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


def split_paths(
    out: str, split: str, meta: dict[str, Any] | None = None
) -> tuple[pafs.FileSystem, list[str]]:
    """The pyarrow filesystem and the files of ``split`` (or ``quarantine``) that ``meta.json``
    lists; the whole directory for datasets written before the list existed."""
    meta = meta or read_meta(out)
    listed = meta.get("files", {}).get(split)
    if split not in meta["counts"]["splits"] and listed is None:
        raise KeyError(f"{out} has no split {split!r}; it has {sorted(meta['counts']['splits'])}")
    fs, path = storage.arrow_filesystem(out)
    if listed is None:
        return fs, [storage.join(path, split)]
    return fs, [storage.join(path, split, name) for name in listed]


def read_split(out: str, split: str | list[str], **options: Any) -> ray.data.Dataset:
    """One split (or several) of a committed dataset as a Ray Dataset; ``options`` go to
    ``ray.data.read_parquet`` (``columns``, ``include_paths``, ...)."""
    meta = read_meta(out)
    paths: list[str] = []
    for name in [split] if isinstance(split, str) else split:
        fs, files = split_paths(out, name, meta)
        paths += files
    return ray.data.read_parquet(paths, filesystem=fs, **options)


def read_table(out: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """A small table of a committed dataset (``items.parquet``, ``users.parquet``) or one
    split read whole with pyarrow, for small data and tests."""
    meta = read_meta(out)
    if name in meta["counts"]["splits"] or name in meta.get("files", {}):
        fs, files = split_paths(out, name, meta)
        return pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)
    fs, path = storage.arrow_filesystem(out)
    return pq.read_table(storage.join(path, name), filesystem=fs, columns=columns)
