"""Date partitions of recommendations that are either published whole or invisible.

    <root>/date=YYYY-MM-DD/_runs/<run_id>/*.parquet   a run's files (its staging prefix)
    <root>/date=YYYY-MM-DD/_MANIFEST.json            the published run: files, checksums, counts

A run writes only under its own ``_runs/<run_id>/``. Publishing checks the files against the
counts the job expects, then writes ``_MANIFEST.json`` last, in one PUT (a rename on local
disk): readers see the old run or the new one, never a mix. Only then are other runs' files
deleted. A killed run leaves files that no manifest names, which readers never see and the
next run of that date removes. Plain Parquet readers pointed at the root see nothing (names
starting with ``_`` are hidden): read through ``read_recommendations``.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylrec import storage

__all__ = [
    "MANIFEST",
    "partition",
    "run_prefix",
    "read_manifest",
    "publish",
    "read_recommendations",
    "published_dates",
    "remove_unpublished",
    "RECS_SCHEMA",
]

MANIFEST = "_MANIFEST.json"
RECS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("source", pa.string()),
        ("model", pa.string()),
        ("run_id", pa.string()),
    ]
)


def check_date(date: str) -> str:
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"date {date!r} is not YYYY-MM-DD") from None
    return date


def partition(root: str, date: str) -> str:
    return storage.join(root, f"date={check_date(date)}")


def run_prefix(root: str, date: str, run_id: str) -> str:
    return storage.join(partition(root, date), "_runs", run_id)


def read_manifest(root: str, date: str) -> dict[str, Any] | None:
    fs, path = storage.filesystem(partition(root, date))
    if not fs.exists(storage.join(path, MANIFEST)):
        return None
    return storage.read_json(storage.join(partition(root, date), MANIFEST))


def _run_files(root: str, date: str, run_id: str) -> list[str]:
    fs, path = storage.filesystem(run_prefix(root, date, run_id))
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p) for p in fs.ls(path, detail=False) if p.endswith(".parquet"))


def publish(
    root: str, date: str, run_id: str, expected_users: int, details: dict[str, Any]
) -> dict[str, Any]:
    """Verify run ``run_id``'s files (one row set per user, ``expected_users`` users), write the
    manifest, then delete every other run of the date. Returns the manifest."""
    prefix = run_prefix(root, date, run_id)
    fs, path = storage.filesystem(prefix)
    names = _run_files(root, date, run_id)
    files, keys = [], []
    for name in names:
        with fs.open(storage.join(path, name), "rb") as f:
            table = pq.read_table(f, columns=["user_id", "rank"])
        keys.append(table)
        files.append({"path": f"_runs/{run_id}/{name}", "rows": table.num_rows, **_digest(prefix, name)})
    keys_table = pa.concat_tables(keys) if keys else pa.table({"user_id": [], "rank": []})
    rows = keys_table.num_rows
    users = pc.count_distinct(keys_table["user_id"]).as_py() if rows else 0
    distinct = (
        keys_table.group_by(["user_id", "rank"], use_threads=False).aggregate([]).num_rows if rows else 0
    )
    if users != expected_users or distinct != rows:
        raise RuntimeError(
            f"run {run_id} wrote {rows} rows for {users} users ({rows - distinct} duplicated), "
            f"expected one row set for each of {expected_users} users: not publishing"
        )
    manifest = {
        "format": "raylrec.recommendations/1",
        "date": date,
        "run_id": run_id,
        "rows": rows,
        "users": users,
        "files": files,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **details,
    }
    storage.write_json(storage.join(partition(root, date), MANIFEST), manifest)
    remove_unpublished(root, date)
    return manifest


def _digest(prefix: str, name: str) -> dict[str, Any]:
    return storage.file_digests(prefix, [name])[name]


def remove_unpublished(root: str, date: str) -> list[str]:
    """Delete the runs of ``date`` that its manifest does not name (killed or replaced runs)."""
    manifest = read_manifest(root, date)
    keep = manifest["run_id"] if manifest else None
    fs, path = storage.filesystem(storage.join(partition(root, date), "_runs"))
    if not fs.exists(path):
        return []
    removed = []
    for run in fs.ls(path, detail=False):
        if posixpath.basename(run.rstrip("/")) != keep:
            fs.rm(run, recursive=True)
            removed.append(posixpath.basename(run.rstrip("/")))
    return removed


def published_dates(root: str) -> list[str]:
    fs, path = storage.filesystem(root)
    if not fs.exists(path):
        return []
    dates = []
    for entry in fs.ls(path, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name.startswith("date=") and fs.exists(f"{entry.rstrip('/')}/{MANIFEST}"):
            dates.append(name.removeprefix("date="))
    return sorted(dates)


def read_recommendations(root: str, date: str | None = None, verify: bool = False) -> pa.Table:
    """The published recommendations of ``date`` (default: the latest published date)."""
    if date is None:
        dates = published_dates(root)
        if not dates:
            raise FileNotFoundError(f"no published recommendations under {root}")
        date = dates[-1]
    manifest = read_manifest(root, date)
    if manifest is None:
        raise FileNotFoundError(f"{partition(root, date)} is not published (no {MANIFEST})")
    base = partition(root, date)
    if verify:
        storage.verify_digests(base, {f["path"]: f for f in manifest["files"]}, "recommendations")
    fs, path = storage.filesystem(base)
    tables = []
    for entry in manifest["files"]:
        with fs.open(storage.join(path, entry["path"]), "rb") as f:
            tables.append(pq.read_table(f, schema=RECS_SCHEMA))
    table = pa.concat_tables(tables) if tables else RECS_SCHEMA.empty_table()
    if table.num_rows != manifest["rows"]:
        raise storage.StorageError(f"{base}: {table.num_rows} rows, manifest says {manifest['rows']}")
    return table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
