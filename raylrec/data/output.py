"""The processed dataset on disk or s3://: layout, commit marker and readers.

    <out>/train/*.parquet  valid/  test/   uid, iid, timestamp, rating, label, history, ...
    <out>/users.parquet    user_id (raw) -> uid, plus user metadata
    <out>/items.parquet    item_id (raw) -> iid, plus item metadata (title, ...)
    <out>/quarantine/      rows that failed a check, with _file, _row, _reason and _raw
    <out>/meta.json        counts, protocol, source, content hash and the file list: written last
    <out>/_RAYLREC_DATASET written first: raylrec made this directory and may clear it
    <out>/_shuffle/        prepare's staged shuffle by user while it runs (removed before meta.json)

A directory without ``meta.json`` is incomplete (an interrupted run) and is never read. A new run
clears a directory only when it can prove raylrec wrote it (``_RAYLREC_DATASET``, or a committed
``meta.json`` with ``data.overwrite``) and it holds nothing but raylrec's own entries; anything
else is refused with its contents named, and nothing is deleted. Readers
read the files ``meta.json`` lists, not whatever the split directories hold: every file a run
writes carries its write id, so a straggling writer of a killed earlier run (a Ray worker that
outlived its driver) cannot add rows, or half a file, to a dataset committed after it.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylrec import __version__, storage
from raylrec.artifacts import ArtifactDir, ArtifactDirError, ArtifactKind, IncompleteArtifactError
from raylrec.data.hashing import arrow_digest, json_digest

if TYPE_CHECKING:  # Ray is imported where a Ray Dataset is read or written: the plain-process
    import ray  # path (training, scoring in one process) runs where Ray is not installed

__all__ = [
    "META_FILE",
    "train_cutoff",
    "OWNER_FILE",
    "SHUFFLE_DIR",
    "OutputExistsError",
    "IncompleteDatasetError",
    "commit",
    "new_write_id",
    "prepare_output_dir",
    "check_output_dir",
    "refuse_overlap",
    "input_paths",
    "InputPath",
    "split_paths",
    "write_dataset",
    "write_table",
    "read_meta",
    "read_split",
    "read_table",
    "table_path",
    "refuse_whole_split",
    "FORBID_WHOLE_SPLITS",
    "WholeSplitReadError",
]

META_FILE = "meta.json"
OWNER_FILE = "_RAYLREC_DATASET"  # written first: proof that raylrec made the directory
FORMAT = "raylrec.processed/1"
SHUFFLE_DIR = "_shuffle"  # prepare's staged shuffle files, removed before the commit
# Everything a prepared dataset directory may hold besides meta.json and the owner file.
DATASET = ArtifactKind(
    "prepared dataset",
    FORMAT,
    layout=(
        SHUFFLE_DIR,
        "train",
        "valid",
        "test",
        "quarantine",
        "users.parquet",
        "items.parquet",
        # a rolling_days dataset's day files, users' tails, versioned id tables, past versions,
        # and the lock an append's compare-and-swap commit of meta.json takes on local disk
        "days",
        "tails",
        "tables",
        "versions",
        f"{META_FILE}.lock",
    ),
    manifest=META_FILE,
    owner=OWNER_FILE,
)


OutputExistsError = ArtifactDirError  # data.output is not a directory prepare may use
IncompleteDatasetError = IncompleteArtifactError  # no meta.json: missing or interrupted run


_OVERWRITE_HINT = "pass data.overwrite=true to replace it"


def _check_location(out: str, inputs: Iterable[InputPath]) -> None:
    if not out or not out.strip():
        raise OutputExistsError("data.output is empty: name a directory for the prepared dataset")
    refuse_overlap(out, inputs)
    storage.check_reachable(out)


def check_output_dir(out: str, overwrite: bool, inputs: Iterable[InputPath] = ()) -> set[str]:
    """Raise unless ``prepare_output_dir`` may use ``out``; reads, never writes (the CLI calls it
    before Ray starts). Returns the entries ``out`` holds now."""
    _check_location(out, inputs)
    return ArtifactDir(out, DATASET).check(overwrite, _OVERWRITE_HINT)


def prepare_output_dir(out: str, overwrite: bool, inputs: Iterable[InputPath] = ()) -> None:
    """Make ``out`` ready for a new dataset, deleting only what raylrec can prove it wrote.

    ``out`` may be new, an empty directory, an interrupted run's directory (it holds
    ``_RAYLREC_DATASET``, written before anything else) or, with ``overwrite``, a committed
    dataset. Anything else, a directory holding a file raylrec did not write among them, is
    refused before anything is deleted, as is an output that overlaps an input (``refuse_overlap``)."""
    _check_location(out, inputs)
    dataset = ArtifactDir(out, DATASET)
    entries = dataset.claim(overwrite, _OVERWRITE_HINT)
    dataset.uncommit()  # first: a crash below leaves it incomplete
    dataset.clear(entries)


class InputPath(NamedTuple):
    """A path a source reads; ``walked``: every file below it is read (log directories, globs),
    not only files of known names (a MovieLens or CoLLM directory)."""

    uri: str
    walked: bool


def refuse_overlap(out: str, inputs: Iterable[InputPath]) -> None:
    """Refuse an output equal to or above an input (clearing it would delete the input), or
    inside a walked input (the next run would read the prepared files as logs)."""
    target = _location(out)
    for source in inputs:
        here = _location(_static_prefix(source.uri))
        if target[0] != here[0]:
            continue
        if _within(here[1], target[1]) or (source.walked and _within(target[1], here[1])):
            where = "inside" if target[1] != here[1] and _within(target[1], here[1]) else "over"
            raise OutputExistsError(
                f"data.output {out} lies {where} the input {source.uri}: preparing it would "
                + ("delete the input" if where == "over" else "read its own output as logs")
                + "; choose an output outside every input"
            )


def input_paths(source: Any) -> list[InputPath]:
    """Every path a ``data.source`` reads: its logs, metadata files or source directory."""
    paths = [InputPath(p, walked=True) for p in getattr(source, "paths", None) or []]
    if getattr(source, "path", None):
        paths.append(InputPath(source.path, walked=False))
    for metadata in (getattr(source, "items", None), getattr(source, "users", None)):
        if getattr(metadata, "path", None):
            paths.append(InputPath(metadata.path, walked=False))
    return paths


def _location(uri: str) -> tuple[str, str]:
    if storage.is_remote(uri):
        return "s3", uri.split("://", 1)[1].strip("/")
    return "file", os.path.realpath(os.path.expanduser(uri)).rstrip("/")


def _static_prefix(uri: str) -> str:
    """The directory part of a glob that holds no wildcard (the path itself otherwise)."""
    parts = uri.split("/")
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return "/".join(parts[:i]) or "."
    return uri


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


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
    target = storage.join(path, name)
    fs.create_dir(posixpath.dirname(target), recursive=True)  # tables/ of an appended version
    pq.write_table(table, target, filesystem=fs, compression="zstd")


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
    extra: dict[str, Any] | None = None,
    tables: dict[str, str] | None = None,
    replaces: str | None = None,
) -> dict[str, Any]:
    """Write the vocabularies, then ``meta.json`` last: the dataset exists from that moment.

    The content hash covers what a model would see (protocol, counts, every row of every split,
    the vocabularies and metadata), not where it came from or when it was made."""
    tables = tables or {}  # an appended version's id tables: under tables/, named by its write id
    write_table(users, out, tables.get("users.parquet", "users.parquet"))
    write_table(items, out, tables.get("items.parquet", "items.parquet"))
    content = {
        "format": FORMAT,
        "protocol": protocol,
        "counts": counts,
        "split_hashes": split_hashes,
        "users": arrow_digest(users),
        "items": arrow_digest(items),
    }
    meta = {
        "protocol": protocol,
        "counts": counts,
        "source": source,
        "content_hash": json_digest(content),
        "columns": columns,
        "files": files,
        "raylrec_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(time.perf_counter() - started, 2),
        **(extra or {}),
        **({"tables": tables} if tables else {}),
    }
    dataset = ArtifactDir(out, DATASET)
    # an append replaces the version it read, or fails (ArtifactDir.commit_if): never another's
    return dataset.commit_if(meta, replaces) if replaces is not None else dataset.commit(meta)


class WholeSplitReadError(RuntimeError):
    """A split was read whole where ``RAYLREC_FORBID_WHOLE_SPLITS=1`` forbids it."""


# Set to 1, every read of a whole split in this process (and in the Ray Train workers the
# pipeline starts: it forwards RAYLREC_* variables) raises: how the tests prove the Ray path
# streams, and how a user can check a path of their own before pointing it at a large log.
FORBID_WHOLE_SPLITS = "RAYLREC_FORBID_WHOLE_SPLITS"


def refuse_whole_split(out: str, name: str) -> None:
    if os.environ.get(FORBID_WHOLE_SPLITS) == "1" and name != "quarantine":
        raise WholeSplitReadError(
            f"split {name!r} of {out} read whole in pid {os.getpid()} while {FORBID_WHOLE_SPLITS}=1: "
            "on the Ray path a split reaches a process through Ray Data, batch by batch"
        )


def train_cutoff(meta: dict[str, Any]) -> int | None:
    """The instant a dataset's training rows end (its ``valid`` start), for a time split; None
    for splits without one (random ratio, leave-last-out, a given split)."""
    cutoffs = meta.get("protocol", {}).get("temporal_cutoffs")
    return int(cutoffs[0]) if cutoffs else None


def read_meta(out: str) -> dict[str, Any]:
    """The committed ``meta.json``; ``IncompleteDatasetError`` when there is none."""
    return ArtifactDir(out, DATASET).read()


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
    # a name: a file of the split's folder; a path (days/<date>/...): relative to the dataset
    return fs, [
        storage.join(path, name) if "/" in name else storage.join(path, split, name) for name in listed
    ]


def read_split(out: str, split: str | list[str], **options: Any) -> ray.data.Dataset:
    """One split (or several) of a committed dataset as a Ray Dataset; ``options`` go to
    ``ray.data.read_parquet`` (``columns``, ``include_paths``, ...)."""
    import ray

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
        refuse_whole_split(out, name)
        fs, files = split_paths(out, name, meta)
        return pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)
    fs, _ = storage.arrow_filesystem(out)
    return pq.read_table(table_path(out, name, meta), filesystem=fs, columns=columns)


def table_path(out: str, name: str, meta: dict[str, Any] | None = None) -> str:
    """Where the committed table ``name`` (``users.parquet``, ``items.parquet``) of the dataset
    lives, as a path of its pyarrow filesystem: an appended version names its own."""
    meta = meta or read_meta(out)
    _, path = storage.arrow_filesystem(out)
    return storage.join(path, meta.get("tables", {}).get(name, name))
