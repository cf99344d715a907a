"""Bundles (CF bundles, model bundles): artefact directories committed by ``config.json``.

A bundle kind is an ``ArtifactKind`` whose manifest is ``config.json`` (``bundle_kind``); the
protocol (claim, stage, commit last, verify) is ``raylrec.artifacts``'. Where a bundle is written:
a new or empty directory, or one holding an earlier bundle of the same kind (committed or
interrupted), and nothing else; a ``config.json`` of another format (a Hugging Face model
directory, say) or any name outside the bundle's layout is refused, naming it.

How it is written (``write_bundle``): the directory is claimed and uncommitted, every file is
written to a local temporary directory and put in place (its size and sha256 taken as it goes),
then ``config.json`` with the bundle's ``format``, its description and each file's digest. How it
is read: ``read_description`` (refuses a directory without a valid ``config.json``),
``check_bundle`` (verifies every recorded checksum without loading anything), ``fetch_files``
(the files, local, for loading), ``read_parquet`` (the raw-id tables).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from raylrec import storage
from raylrec.artifacts import ArtifactDir, ArtifactDirError, ArtifactKind

__all__ = [
    "BundleDirError",
    "CONFIG_FILE",
    "bundle_kind",
    "check_bundle",
    "fetch_files",
    "parquet_file",
    "read_description",
    "read_parquet",
    "write_bundle",
]

CONFIG_FILE = "config.json"
BundleDirError = ArtifactDirError  # the directory holds something raylrec did not write


def bundle_kind(name: str, format: str, layout: Iterable[str]) -> ArtifactKind:
    """The artefact kind of a bundle called ``name`` ("CF bundle"), of ``format``
    (``"raylrec.<kind>/<version>"``), whose top-level entries besides ``config.json`` are ``layout``."""
    return ArtifactKind(name, format, layout=tuple(layout), manifest=CONFIG_FILE)


FileWriter = Callable[[str], None]  # writes one bundle file at the local path it is given


def parquet_file(table: Any) -> FileWriter:
    """A writer of ``table`` (a pyarrow table: the raw-id tables users.parquet, items.parquet)."""

    def write(path: str) -> None:
        import pyarrow.parquet as pq

        pq.write_table(table, path)

    return write


def write_bundle(
    out: str,
    kind: ArtifactKind,
    files: dict[str, FileWriter],
    description: dict[str, Any],
    before_commit: Callable[[], None] | None = None,
) -> str:
    """Write a bundle of ``kind`` to ``out``: claim the directory and uncommit an earlier bundle,
    write every file of ``files`` to a temporary directory and put it in place, run
    ``before_commit`` (layout entries that are not checksummed, such as a copied directory), then
    commit ``config.json``: the kind's format, ``description`` and the files' digests."""
    bundle = ArtifactDir(out, kind)
    bundle.claim()
    bundle.uncommit()
    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in files.items():
            local = os.path.join(tmp, name)
            write(local)
            entry = bundle.put_file(local, name)
            digests[name] = {"bytes": entry["bytes"], "sha256": entry["sha256"]}
    if before_commit is not None:
        before_commit()
    bundle.commit({**description, "files": digests})
    return out


def read_description(path: str, kind: ArtifactKind) -> dict[str, Any]:
    """The committed ``config.json`` of the bundle of ``kind`` at ``path``."""
    return ArtifactDir(path, kind).read()


def check_bundle(path: str, kind: ArtifactKind) -> dict[str, Any]:
    """Verify every file of the bundle against its recorded checksum; returns its description."""
    return ArtifactDir(path, kind).verify()


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
