"""One protocol for every directory raylrec writes and later reads back: claim, stage, commit, verify.

Prepared datasets, CF and model bundles, profile stores and embedding directories are each an
``ArtifactKind`` (their names, format and layout, declared beside the code that writes them) and
are written and read through ``ArtifactDir``; the published recommendations keep their own date
partitions and lease (``raylrec.scoring.publish``) and read their manifest with this module's
``load_manifest``, ``check_entries`` and ``read_listed``. The rules, in
[Reliability](../docs/reliability.md):

1. **Claim.** A directory is written only when it is new, empty, or provably raylrec's own of the
   same kind: it holds the kind's owner file (written first, before anything is deleted), or a
   committed manifest of the same format family, or (kinds without an owner file) only entries of
   the kind's layout. Anything else is refused naming what it holds, before anything is touched.
2. **Stage.** Every file is written whole: one PUT on object storage, a rename on local disk, so a
   file that exists is complete. Its size and sha256 are recorded as it is written.
3. **Commit.** The manifest is written last: the artefact exists from that moment. Replacing one
   first removes the manifest (``uncommit``), so a crash part-way leaves a directory no reader
   accepts, never half-written output that looks complete.
4. **Read and verify.** Readers refuse a directory without a manifest, and read only the files it
   lists: each path relative, inside the directory (no ``..``, no link out of it), of the kind's
   layout, listed once; its size checked always, its sha256 unless verification is turned off.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raylrec import __version__, storage

__all__ = [
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "ArtifactDir",
    "ArtifactDirError",
    "ArtifactKind",
    "CommitConflict",
    "DamagedArtifactError",
    "IncompleteArtifactError",
    "check_entries",
    "load_manifest",
    "read_listed",
]

MANIFEST = "_manifest.json"  # the commit file of kinds that do not name their own
MAX_MANIFEST_BYTES = 16 * 2**20  # a manifest lists files; more than this is not one of ours


class ArtifactDirError(FileExistsError):
    """The directory holds something raylrec did not write, or is not this kind's: nothing was
    touched."""


class IncompleteArtifactError(FileNotFoundError):
    """No committed manifest: a missing directory, or an interrupted or unfinished run."""


class CommitConflict(storage.StorageError):
    """Another writer committed the artefact after this one read it (``commit_if``): this
    writer's files are not listed, and what the other committed stands."""


class DamagedArtifactError(storage.StorageError):
    """A committed artefact whose manifest or files do not hold what the manifest says."""


@dataclass(frozen=True)
class ArtifactKind:
    """What one kind of artefact directory is called and may hold.

    ``format`` is recorded in the manifest (``"raylrec.processed/1"``); a directory whose
    manifest has another format family (the part before ``/``) is not this kind's. ``layout``:
    glob patterns of the top-level entries raylrec writes there besides the manifest and the owner
    file; ``files``: glob patterns of the paths a manifest may list (default: ``layout``)."""

    name: str  # in messages: "prepared dataset", "CF bundle"
    format: str
    layout: tuple[str, ...]
    manifest: str = MANIFEST
    owner: str | None = None  # written first by ``claim``: proof that raylrec made the directory
    files: tuple[str, ...] | None = None

    @property
    def family(self) -> str:
        return self.format.split("/", 1)[0] + "/"

    def is_own_format(self, found: Any) -> bool:
        return str(found or "").startswith(self.family)

    def is_own_entry(self, name: str) -> bool:
        return name in (self.manifest, self.owner) or any(fnmatch.fnmatchcase(name, p) for p in self.layout)

    def may_list(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in self.files or self.layout)


def _listing(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ArtifactDir:
    """One artefact directory (local or s3://) of ``kind``: the writer's claim, stage and commit,
    the reader's ``read`` and ``read_file``."""

    def __init__(self, uri: str, kind: ArtifactKind):
        self.uri = uri
        self.kind = kind

    def __repr__(self) -> str:
        return f"ArtifactDir({self.uri!r}, {self.kind.name})"

    @property
    def manifest_uri(self) -> str:
        return storage.join(self.uri, self.kind.manifest)

    def join(self, path: str) -> str:
        return storage.join(self.uri, path)

    # --- writing ------------------------------------------------------------------------------

    def check(self, replace: bool = True, replace_hint: str = "") -> set[str]:
        """Raise ``ArtifactDirError`` unless ``claim`` may use the directory; reads, never
        writes. ``replace``: a committed artefact of this kind may be replaced (else refused,
        with ``replace_hint`` saying how to allow it). Returns the entries it holds now."""
        kind = self.kind
        fs, path = storage.filesystem(self.uri)
        if fs.isfile(path):
            raise ArtifactDirError(f"{self.uri} is a file; a {kind.name} is written to a directory")
        entries = storage.entry_names(self.uri)
        if not entries:
            return entries
        if kind.manifest in entries:
            try:
                found = storage.read_json(self.manifest_uri)
            except ValueError:
                found = None
            fmt = found.get("format") if isinstance(found, dict) else None
            if not kind.is_own_format(fmt):
                raise ArtifactDirError(
                    f"{self.uri} holds a {kind.manifest} that raylrec did not write for a {kind.name} "
                    f"(format {fmt!r}, not {kind.family}...): not replacing it; choose another directory"
                )
            if not replace:
                raise ArtifactDirError(
                    f"{self.uri} already holds a {kind.name} ({kind.manifest} exists)"
                    + (f"; {replace_hint}" if replace_hint else "")
                )
        elif kind.owner is not None and kind.owner not in entries:
            raise ArtifactDirError(
                f"{self.uri} is not empty and raylrec did not write it (no {kind.owner} or "
                f"{kind.manifest}); it holds {_listing(entries)}: choose a new or empty directory"
            )
        foreign = {name for name in entries if not kind.is_own_entry(name)}
        if foreign:
            raise ArtifactDirError(
                f"{self.uri} holds {_listing(foreign)}, which is not part of a {kind.name} raylrec "
                "writes: move them or choose another directory (nothing was deleted)"
            )
        return entries

    def claim(self, replace: bool = True, replace_hint: str = "") -> set[str]:
        """``check``, then make the directory raylrec's: create it and write the owner file
        (before anything is deleted, so a crash while clearing leaves a directory the rerun can
        still prove is raylrec's). Returns the entries it held."""
        entries = self.check(replace, replace_hint)
        fs, path = storage.filesystem(self.uri)
        fs.makedirs(path, exist_ok=True)
        if self.kind.owner is not None:
            storage.write_json(
                self.join(self.kind.owner),
                {
                    "format": self.kind.format,
                    "written_by": f"raylrec {__version__}",
                    "claimed_at": _now(),
                    "host": socket.gethostname(),
                },
            )
        return entries

    def uncommit(self) -> bool:
        """Remove the manifest (first, before any file it lists is replaced); True if there was one."""
        fs, path = storage.filesystem(self.manifest_uri)
        if not fs.exists(path):
            return False
        fs.rm(path)
        return True

    def clear(self, entries: Iterable[str]) -> None:
        """Remove ``entries`` (claimed, so all of them raylrec's), keeping the owner file; the
        manifest must be gone already (``uncommit``)."""
        fs, path = storage.filesystem(self.uri)
        for name in sorted(set(entries) - {self.kind.owner, self.kind.manifest}):
            fs.rm(storage.join(path, name), recursive=True)

    def write_file(self, path: str, data: bytes, **details: Any) -> dict[str, Any]:
        """Stage one file in one piece; returns its manifest entry (path, bytes, sha256, details)."""
        uri = self.join(path)
        with storage.errors(uri, "write"):
            storage.write_bytes(uri, data)
        return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **details}

    def put_file(self, local: str, path: str) -> dict[str, Any]:
        """Stage a local file (a large one: streamed, never held whole); returns its entry."""
        digest = hashlib.sha256()
        with open(local, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        uri = self.join(path)
        fs, target = storage.filesystem(uri)
        with storage.errors(uri, "write"):
            fs.put_file(local, target)
        return {"path": path, "bytes": os.path.getsize(local), "sha256": digest.hexdigest()}

    def commit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest, last: ``format`` and ``record``. Returns what was written."""
        manifest = {"format": self.kind.format, **record}
        with storage.errors(self.manifest_uri, "write"):
            storage.write_json(self.manifest_uri, manifest)
        return manifest

    def version(self) -> str | None:
        """A token of the committed manifest (None: there is none), for ``commit_if``."""
        with storage.errors(self.manifest_uri, "read"):
            return storage.version(self.manifest_uri)

    def commit_if(self, record: dict[str, Any], expected: str | None) -> dict[str, Any]:
        """``commit``, only if the manifest is still the one ``version`` returned ``expected``
        (a compare-and-swap: ``If-Match`` on S3, a ``flock``-guarded compare on local disk);
        ``CommitConflict`` otherwise. A writer that extends the committed artefact (an append)
        uses it so that two at once cannot both commit and lose one's rows."""
        manifest = {"format": self.kind.format, **record}
        with storage.errors(self.manifest_uri, "write"):
            written = storage.write_if(self.manifest_uri, storage.json_bytes(manifest), expected)
        if not written:
            raise CommitConflict(
                f"{self.uri}: its {self.kind.manifest} was committed by another writer after this one "
                f"read it; this {self.kind.name}'s new files are not listed (nothing of the other was "
                "changed): run it again"
            )
        return manifest

    # --- reading ------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        """The committed manifest (None when there is none), checked to be this kind's."""
        manifest = load_manifest(self.manifest_uri, self.uri)
        if manifest is None:
            return None
        if not isinstance(manifest, dict) or not self.kind.is_own_format(manifest.get("format")):
            raise DamagedArtifactError(
                f"{self.manifest_uri} is not the manifest of a raylrec {self.kind.name}"
            )
        return manifest

    def read(self) -> dict[str, Any]:
        """The committed manifest; ``IncompleteArtifactError`` when there is none."""
        manifest = self.manifest()
        if manifest is None:
            raise IncompleteArtifactError(
                f"{self.uri} holds no committed {self.kind.name} (no {self.kind.manifest}: "
                "missing, or an interrupted or unfinished run)"
            )
        return manifest

    def entries(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """The manifest's file entries, checked (``check_entries``); a ``{path: digest}``
        mapping (a bundle's ``files``) is read as the same entries."""
        files = manifest.get("files", [])
        if isinstance(files, dict):
            files = [{"path": path, **(digest or {})} for path, digest in files.items()]
        where = f"{self.uri}/{self.kind.manifest}"
        patterns = ", ".join(self.kind.files or self.kind.layout)
        check_entries(files, where, self.kind.may_list, f"this {self.kind.name}'s files ({patterns})")
        return files

    def read_file(self, entry: dict[str, Any], verify: bool = True) -> bytes:
        """One listed file's bytes, checked against its entry (size always, sha256 if ``verify``)."""
        return read_listed(self.uri, entry, what=f"{self.kind.name} {self.uri}", verify=verify)

    def verify(self, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check every listed file against its size and sha256, streaming (a multi-GB weights
        file is never held whole); returns the manifest."""
        manifest = manifest if manifest is not None else self.read()
        what = f"{self.kind.name} {self.uri}"
        for entry in self.entries(manifest):
            uri = self.join(entry["path"])
            storage.check_inside(self.uri, uri)
            fs, path = storage.filesystem(uri)
            if not fs.exists(path):
                raise DamagedArtifactError(f"{what} is incomplete: {entry['path']} is missing")
            _check_digest(what, entry, int(fs.size(path)), lambda uri=uri: storage.sha256(uri))
        return manifest


def load_manifest(uri: str, root: str) -> Any | None:
    """The JSON at ``uri`` (None when absent): at most ``MAX_MANIFEST_BYTES``, and not a link out
    of ``root``."""
    fs, path = storage.filesystem(uri)
    with storage.errors(uri, "read"):
        try:
            size = fs.size(path)
        except FileNotFoundError:
            return None
    storage.check_inside(root, uri)
    if size > MAX_MANIFEST_BYTES:
        raise DamagedArtifactError(
            f"{uri} is {size:,} bytes, more than a manifest holds ({MAX_MANIFEST_BYTES:,}): "
            "refusing to read it"
        )
    with storage.errors(uri, "read"):
        try:
            return storage.read_json(uri)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise DamagedArtifactError(f"{uri} is not a manifest: {e}") from None


def check_entries(entries: Any, where: str, allowed: Callable[[str], bool], allowed_text: str) -> None:
    """Refuse a manifest's file list unless every entry has a path, bytes and sha256, each path is
    relative, without ``..``, ``allowed`` (``allowed_text`` says what lies inside) and listed once."""
    if not isinstance(entries, list):
        raise DamagedArtifactError(f"{where}: 'files' is not a list of file entries")
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not {"path", "bytes", "sha256"} <= entry.keys():
            raise DamagedArtifactError(f"{where}: file entry {entry!r} lacks path, bytes or sha256")
        path = entry["path"]
        parts = path.split("/") if isinstance(path, str) else []
        if not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or not allowed(path):
            raise DamagedArtifactError(f"{where} names {path!r}, which lies outside {allowed_text}")
        if path in seen:
            raise DamagedArtifactError(f"{where} lists {path} more than once")
        seen.add(path)


def read_listed(
    base: str, entry: dict[str, Any], what: str, verify: bool = True, root: str | None = None
) -> bytes:
    """The bytes of the file ``entry`` lists under ``base`` (checked by ``check_entries``): not a
    link out of ``root`` (default ``base``), its size always, its sha256 if ``verify``."""
    uri = storage.join(base, entry["path"])
    storage.check_inside(root or base, uri)
    fs, path = storage.filesystem(uri)
    with storage.errors(uri, "read"):
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise DamagedArtifactError(f"{what} is incomplete: {entry['path']} is missing") from None
    _check_digest(what, entry, len(data), (lambda: hashlib.sha256(data).hexdigest()) if verify else None)
    return data


def _check_digest(what: str, entry: dict[str, Any], size: int, sha256: Callable[[], str] | None) -> None:
    """Raise unless ``size`` and (when ``sha256`` is given: it hashes the file) the digest are
    the entry's. The size is checked always: it costs nothing."""
    if size != entry["bytes"]:
        raise DamagedArtifactError(
            f"{what} is corrupted: {entry['path']} holds {size:,} bytes, its manifest says {entry['bytes']:,}"
        )
    if sha256 is not None and sha256() != entry["sha256"]:
        raise DamagedArtifactError(
            f"{what} is corrupted: {entry['path']} does not match its recorded checksum"
        )
