"""The bundle protocol every bundle kind (CF bundle, model bundle) follows, in one place.

Where a bundle is written: a new or empty directory, or one holding an earlier bundle of the
same kind (committed or interrupted), and nothing else.

A bundle is committed by its ``config.json``, written last. Replacing one first removes that
file (uncommits it), so a crash mid-write leaves a directory no loader accepts. raylrec never
removes or overwrites a file it cannot prove it wrote: a ``config.json`` of another format (a
Hugging Face model directory, say) or any name outside the bundle's layout is refused, naming it.

How it is written (``write_bundle``): every file first, to a local temporary directory and then
put in place; then ``config.json`` with the bundle's ``format``, its description and each
file's size and sha256. How it is read: ``read_description`` (refuses a directory without a
valid ``config.json``), ``check_bundle`` (verifies every recorded checksum without loading
anything), ``fetch_files`` (the files, local, for loading), ``read_parquet`` (the raw-id tables).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from raylrec import storage

__all__ = [
    "BundleDirError",
    "CONFIG_FILE",
    "check_bundle",
    "claim_bundle_dir",
    "fetch_files",
    "parquet_file",
    "read_description",
    "read_parquet",
    "write_bundle",
]

CONFIG_FILE = "config.json"


class BundleDirError(FileExistsError):
    """The directory holds something raylrec did not write; nothing was touched."""


def claim_bundle_dir(out: str, format_prefix: str, layout: Iterable[str]) -> None:
    """Make ``out`` ready for a bundle whose ``config.json`` format starts with
    ``format_prefix`` and whose other top-level entries are among ``layout``."""
    fs, path = storage.filesystem(out)
    if fs.isfile(path):
        raise BundleDirError(f"{out} is a file; a bundle is written to a directory")
    entries = storage.entry_names(out)
    config = storage.join(path, CONFIG_FILE)
    if CONFIG_FILE in entries:
        found = storage.read_json(storage.join(out, CONFIG_FILE))
        kind = found.get("format") if isinstance(found, dict) else None
        if not str(kind or "").startswith(format_prefix):
            raise BundleDirError(
                f"{out} holds a {CONFIG_FILE} that is not a {format_prefix} bundle (format {kind!r}): "
                "not replacing it; choose another output directory"
            )
    foreign = entries - {CONFIG_FILE, *layout}
    if foreign:
        shown = ", ".join(repr(n) for n in sorted(foreign)[:5])
        raise BundleDirError(
            f"{out} holds {shown}{' and more' if len(foreign) > 5 else ''}, which is not part of a "
            f"{format_prefix} bundle: choose a new or empty output directory (nothing was touched)"
        )
    fs.makedirs(path, exist_ok=True)
    if CONFIG_FILE in entries:
        fs.rm(config)  # uncommit the old bundle before replacing it


FileWriter = Callable[[str], None]  # writes one bundle file at the local path it is given


def parquet_file(table: Any) -> FileWriter:
    """A writer of ``table`` (a pyarrow table: the raw-id tables users.parquet, items.parquet)."""

    def write(path: str) -> None:
        import pyarrow.parquet as pq

        pq.write_table(table, path)

    return write


def write_bundle(
    out: str,
    format: str,
    files: dict[str, FileWriter],
    description: dict[str, Any],
    extra_entries: Iterable[str] = (),
    before_commit: Callable[[], None] | None = None,
) -> str:
    """Write a bundle of ``format`` (``"raylrec.<kind>/<version>"``) to ``out``: claim the
    directory, write every file of ``files`` to a temporary directory and put it in place, run
    ``before_commit`` (entries of ``extra_entries`` that are not checksummed, such as a copied
    directory), then commit with ``config.json``: ``format``, ``description`` and the files'
    digests."""
    prefix = format.split("/", 1)[0] + "/"
    claim_bundle_dir(out, prefix, (*files, *extra_entries))
    fs, path = storage.filesystem(out)
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in files.items():
            write(os.path.join(tmp, name))
        for name in files:
            fs.put_file(os.path.join(tmp, name), storage.join(path, name))
    if before_commit is not None:
        before_commit()
    record = {"format": format, **description, "files": storage.file_digests(out, list(files))}
    storage.write_json(storage.join(out, CONFIG_FILE), record)
    return out


def read_description(path: str, kind: str) -> dict[str, Any]:
    """The committed ``config.json`` of the ``kind`` (e.g. "CF bundle") at ``path``."""
    fs, root = storage.filesystem(path)
    if not fs.exists(storage.join(root, CONFIG_FILE)):
        raise FileNotFoundError(f"{path} is not a {kind} (no {CONFIG_FILE}: missing or interrupted export)")
    try:
        return storage.read_json(storage.join(path, CONFIG_FILE))
    except ValueError as e:
        raise storage.StorageError(f"{kind} {path}: {CONFIG_FILE} is not valid JSON ({e})") from None


def check_bundle(path: str, kind: str) -> dict[str, Any]:
    """Verify every file of the bundle against its recorded checksum; returns its description."""
    description = read_description(path, kind)
    storage.verify_digests(path, description.get("files", {}), kind)
    return description


@contextlib.contextmanager
def fetch_files(path: str, names: Iterable[str]) -> Iterator[dict[str, str]]:
    """The bundle's files ``names`` copied to a local temporary directory: {name: local path}."""
    fs, root = storage.filesystem(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = {}
        for name in names:
            local[name] = os.path.join(tmp, name)
            fs.get_file(storage.join(root, name), local[name])
        yield local


def read_parquet(path: str, name: str) -> Any | None:
    """The bundle's table ``name`` (a raw-id table), None when the bundle has none."""
    import pyarrow.parquet as pq

    fs, root = storage.filesystem(path)
    if not fs.exists(storage.join(root, name)):
        return None
    with fs.open(storage.join(root, name), "rb") as f:
        return pq.read_table(f)
