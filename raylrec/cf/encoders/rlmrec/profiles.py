"""Reading the profile embeddings RLMRec aligns with (arXiv 2310.15950): what
``raylrec profiles embed`` writes, checked against the dataset the encoder trains on.

The contract, one directory (local or s3://)::

    <dir>/*.parquet       rows: kind ("user" | "item"), id (int64: the prepared dataset's uid or
                          iid, as in its splits), embedding (fixed_size_list<float32>[dim])
    <dir>/_manifest.json  written last: {"model", "dim", "text": "profiles" | "metadata",
                          "dataset", "rows": {"user": n, "item": m}, optionally "files"}

A directory without ``_manifest.json`` is an unfinished job and is refused. Users and items
with no row simply have no profile (``present`` is False for them); RLMRec leaves them out of
its alignment term. Torch-free: numpy and pyarrow through ``raylrec.storage``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylrec import storage
from raylrec.artifacts import MANIFEST

__all__ = ["MANIFEST", "ProfileEmbeddings", "read_profile_embeddings"]

KINDS = ("user", "item")


@dataclass
class ProfileEmbeddings:
    """Profile vectors in the layout of LightGCN's node table: users ``0..num_users-1``, then
    items at ``num_users + iid``; ``present`` marks the nodes that have one (never index 0 of
    either table: padding)."""

    vectors: np.ndarray  # [num_users + num_items, dim] float32, zero where absent
    present: np.ndarray  # [num_users + num_items] bool
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


class ProfileEmbeddingsError(ValueError):
    """Profile embeddings that cannot be used for this dataset; the message names the file."""


def _part_files(path: str, manifest: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(uri, sha256 or None) of the manifest's own list of part files (names, or entries with
    ``path`` and ``sha256`` as ``raylrec profiles embed`` writes), else of every Parquet file in
    the directory."""
    listed = manifest.get("files")
    if listed:
        entries = [e if isinstance(e, dict) else {"path": e} for e in listed]
        return [(storage.join(path, e["path"]), e.get("sha256")) for e in entries]
    return [(name, None) for name, _ in storage.list_files(path, (".parquet",))]


def _read_part(uri: str, dim: int, sha256: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kinds, ids, vectors) of one part file, its checksum (when recorded) and every column
    checked."""
    fs, local = storage.filesystem(uri)
    with storage.errors(uri, "read profile embeddings"):
        data = fs.cat_file(local)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ProfileEmbeddingsError(
            f"{uri} does not match its checksum in {MANIFEST} (corrupted or replaced)"
        )
    table = pq.read_table(pa.BufferReader(data))
    missing = {"kind", "id", "embedding"} - set(table.schema.names)
    if missing:
        raise ProfileEmbeddingsError(f"{uri}: no column(s) {sorted(missing)} (has {table.schema.names})")
    column = table["embedding"].combine_chunks()
    column_type = column.type
    if pa.types.is_fixed_size_list(column_type):
        width = column_type.list_size
    elif pa.types.is_list(column_type) or pa.types.is_large_list(column_type):
        sizes = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        width = int(sizes[0]) if len(sizes) and (sizes == sizes[0]).all() else -1
    else:
        raise ProfileEmbeddingsError(f"{uri}: column 'embedding' is {column_type}, not a list of floats")
    if len(table) and width != dim:
        raise ProfileEmbeddingsError(
            f"{uri}: embeddings are {width}-d, the manifest says dim {dim} (mixed or foreign files?)"
        )
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    vectors = values.reshape(len(table), dim)
    kinds = np.asarray(table["kind"].to_pylist(), dtype=object)
    ids = table["id"].to_numpy(zero_copy_only=False)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ProfileEmbeddingsError(f"{uri}: column 'id' is {table['id'].type}, not an integer")
    return kinds, ids.astype(np.int64), vectors


def read_profile_embeddings(path: str, num_users: int, num_items: int) -> ProfileEmbeddings:
    """The committed embeddings under ``path`` for a dataset of ``num_users`` / ``num_items``
    table rows (index 0: padding). Raises naming the file for an unfinished directory, a
    dimension that disagrees with the manifest, an unknown kind, an id outside the dataset's
    tables (embeddings of another dataset), a repeated id, or a non-finite value."""
    manifest_uri = storage.join(path, MANIFEST)
    fs, local = storage.filesystem(manifest_uri)
    if not fs.exists(local):
        raise ProfileEmbeddingsError(
            f"{path} has no {MANIFEST}: not committed embeddings (an interrupted or unfinished "
            "`raylrec profiles embed`?); run the embed job to completion first"
        )
    manifest = storage.read_json(manifest_uri)
    try:
        dim = int(manifest["dim"])
    except (KeyError, TypeError, ValueError):
        raise ProfileEmbeddingsError(f"{manifest_uri}: no integer 'dim'") from None
    files = _part_files(path, manifest)
    if not files:
        raise ProfileEmbeddingsError(f"{path}: {MANIFEST} is there but no Parquet part files are")
    sizes = {"user": num_users, "item": num_items}
    offset = {"user": 0, "item": num_users}
    vectors = np.zeros((num_users + num_items, dim), np.float32)
    present = np.zeros(num_users + num_items, bool)
    counts = dict.fromkeys(KINDS, 0)
    for uri, sha256 in files:
        kinds, ids, part = _read_part(uri, dim, sha256)
        unknown = set(kinds.tolist()) - set(KINDS)
        if unknown:
            raise ProfileEmbeddingsError(
                f"{uri}: kind {sorted(map(str, unknown))} is neither 'user' nor 'item'"
            )
        if not np.isfinite(part).all():
            row = int(np.flatnonzero(~np.isfinite(part).all(1))[0])
            raise ProfileEmbeddingsError(f"{uri}: row {row} ({kinds[row]} {ids[row]}) has a non-finite value")
        for kind in KINDS:
            mine = kinds == kind
            if not mine.any():
                continue
            kind_ids = ids[mine]
            bad = (kind_ids < 1) | (kind_ids >= sizes[kind])
            if bad.any():
                raise ProfileEmbeddingsError(
                    f"{uri}: {kind} id {int(kind_ids[bad][0])} is outside the dataset's {kind}s "
                    f"(1..{sizes[kind] - 1}; 0 is padding): embeddings of another dataset or version "
                    f"(the manifest names {manifest.get('dataset')!r})"
                )
            rows = kind_ids + offset[kind]
            unique, seen = np.unique(rows, return_counts=True)
            repeated = unique[(seen > 1) | present[unique]]
            if len(repeated):
                raise ProfileEmbeddingsError(
                    f"{uri}: {kind} id {int(repeated[0] - offset[kind])} appears twice under {path}"
                )
            vectors[rows] = part[mine]
            present[rows] = True
            counts[kind] += int(mine.sum())
    recorded = manifest.get("rows")
    if isinstance(recorded, dict):
        for kind in KINDS:
            if kind in recorded and int(recorded[kind]) != counts[kind]:
                raise ProfileEmbeddingsError(
                    f"{manifest_uri} records {recorded[kind]} {kind} rows, the part files hold {counts[kind]}"
                )
    return ProfileEmbeddings(vectors, present, manifest)
