"""Date partitions of recommendations that are either published whole or invisible.

    <root>/date=YYYY-MM-DD/_runs/<run_id>/_RUN.json    the run's marker: who, since when, alive
    <root>/date=YYYY-MM-DD/_runs/<run_id>/*.parquet    the run's files (its staging prefix)
    <root>/date=YYYY-MM-DD/_MANIFEST.json              the published run: files, checksums, counts

Dates are strict ``YYYY-MM-DD`` and run ids are single names (``[A-Za-z0-9][A-Za-z0-9._-]*``),
in the library and at the CLI; a partition whose name is not a strict date is ignored.

A run starts by creating its marker, only if no run of that id exists (``If-None-Match: *`` on
S3, ``O_EXCL`` on local disk). The marker records the published run the new one may replace
(none, or the manifest's run and version at that moment), the run's host and process, and a
heartbeat that a background thread renews every quarter of the run's lease (``RUN_LEASE_S``).
The run writes only under its own ``_runs/<run_id>/``.

Publishing checks the files against the counts the job expects, then writes ``_MANIFEST.json``
in one conditional write, only if the manifest is still the version the run saw when it
started (``If-Match`` on its ETag, or ``If-None-Match: *``, on S3; a compare under ``flock`` on
local disk). Of runs of one date that overlap, the first to commit publishes; the others raise
``PublishConflict`` naming the winner, delete their own files and exit non-zero. A run that
starts after a publication replaces it (a rerun). Readers see the old run or the new one,
never a mix.

Cleanup (at a run's start and after it publishes) deletes only runs that are neither published
nor live: a run is live while its marker says ``running``, its heartbeat is younger than its
lease and, when it ran on this host, its process exists; a run without a marker (older raylrec)
is live while its newest file is younger than the lease. The manifest is read after the runs
are judged, so a run that publishes meanwhile is kept. Nothing outside ``_runs/`` is deleted.

Readers resolve every manifest path to ``_runs/<the published run>/<name>.parquet`` and refuse
anything else (``..``, absolute paths, other runs), and by default check each file's size and
sha256 against the manifest on the very bytes they parse (``verify=False`` skips the hash).
Plain Parquet readers pointed at the root see nothing (names starting with ``_`` are hidden):
read through ``read_recommendations``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raylrec import storage
from raylrec.artifacts import check_entries, load_manifest, read_listed

__all__ = [
    "MANIFEST",
    "RUN_MARKER",
    "RUN_LEASE_S",
    "RECS_SCHEMA",
    "PublishConflict",
    "RunLease",
    "check_date",
    "check_run_id",
    "partition",
    "run_prefix",
    "read_manifest",
    "start_run",
    "publish",
    "read_recommendations",
    "published_dates",
    "remove_unpublished",
]

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
RUN_MARKER = "_RUN.json"
# A manifest lists a date's files (about 200 bytes each): 16 MiB is some 80,000 files. A larger
# one is not ours, and reading it whole would cost memory before any check could refuse it.
# How long a run may go without a heartbeat before other runs may delete its files (the
# default of score.run_lease_s).
RUN_LEASE_S = 600.0
FORMAT = "raylrec.recommendations/1"
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

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.parquet")


class PublishConflict(RuntimeError):
    """Another run of the date published after this one started: this run's files are not
    published (and have been removed)."""


def check_date(date: str) -> str:
    """``date`` if it is a calendar date spelled ``YYYY-MM-DD``, else ValueError.

    ``date.fromisoformat`` alone accepts ``20261120`` and week dates, which would sort after
    every real partition."""
    if not isinstance(date, str) or not _DATE.fullmatch(date):
        raise ValueError(f"date {date!r} is not YYYY-MM-DD")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"date {date!r} is not YYYY-MM-DD (no such day)") from None
    return date


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is one safe path component, else ValueError."""
    if not isinstance(run_id, str) or not _NAME.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r} is not a name: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return run_id


def partition(root: str, date: str) -> str:
    return storage.join(root, f"date={check_date(date)}")


def run_prefix(root: str, date: str, run_id: str) -> str:
    return storage.join(partition(root, date), "_runs", check_run_id(run_id))


def _manifest_uri(root: str, date: str) -> str:
    return storage.join(partition(root, date), MANIFEST)


def _marker_uri(root: str, date: str, run_id: str) -> str:
    return storage.join(run_prefix(root, date, run_id), RUN_MARKER)


def _read_json_if_exists(uri: str) -> Any | None:
    with storage.errors(uri, "read"):
        try:
            return storage.read_json(uri)
        except FileNotFoundError:
            return None


# -- manifests ---------------------------------------------------------------------------


def read_manifest(root: str, date: str) -> dict[str, Any] | None:
    """The published manifest of ``date`` (None when unpublished), checked: at most
    ``MAX_MANIFEST_BYTES``, its run id, its date, and that every file it names lies in its own
    run's staging prefix, once."""
    uri = _manifest_uri(root, date)
    manifest = load_manifest(uri, root)  # at most MAX_MANIFEST_BYTES, not a link out of the root
    if manifest is None:
        return None
    return _checked_manifest(manifest, date, uri)


def _checked_manifest(manifest: Any, date: str, uri: str) -> dict[str, Any]:
    def refuse(why: str) -> storage.StorageError:
        return storage.StorageError(f"{uri}: {why}: refusing to read it")

    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise refuse("not a manifest")
    try:
        run_id = check_run_id(manifest.get("run_id"))
    except ValueError as e:
        raise refuse(str(e)) from None
    if manifest.get("date") != date:
        raise refuse(f"it is the manifest of date {manifest.get('date')!r}, not {date}")

    def in_run(path: str) -> bool:
        parts = path.split("/")
        return len(parts) == 3 and parts[:2] == ["_runs", run_id] and bool(_FILE.fullmatch(parts[2]))

    check_entries(manifest["files"], uri, in_run, f"run {run_id}'s files (_runs/{run_id}/*.parquet)")
    for entry in manifest["files"]:
        if not isinstance(entry.get("rows"), int):
            raise refuse(f"file entry {entry['path']} has no row count")
    return manifest


def _published_run_id(root: str, date: str) -> str | None:
    """The run id the manifest names, unchecked (cleanup only needs to know what to keep)."""
    try:
        manifest = _read_json_if_exists(_manifest_uri(root, date))
    except ValueError:
        return None
    run_id = manifest.get("run_id") if isinstance(manifest, dict) else None
    return run_id if isinstance(run_id, str) else None


# -- runs and their leases ---------------------------------------------------------------


@functools.cache
def _host() -> str | None:
    """This machine and PID namespace, so that a PID can be checked only where it means the
    same process; None where that cannot be told (then only the lease counts)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    return True


class RunLease:
    """A started run of a date: its claimed staging prefix, the published version it may
    replace, and a heartbeat that tells other runs' cleanup it is alive.

    Use it as a context manager (or call ``close``): leaving stops the heartbeat and marks the
    run ended, so the next cleanup may remove it unless it is published."""

    def __init__(
        self, root: str, date: str, run_id: str, lease_s: float, replaces: str | None, version: str | None
    ) -> None:
        self.root, self.date, self.run_id, self.lease_s = root, date, run_id, float(lease_s)
        self.replaces, self.replaces_version = replaces, version
        self.prefix = run_prefix(root, date, run_id)
        self._marker = _marker_uri(root, date, run_id)
        self._started = dt.datetime.now(dt.UTC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._removed = False
        self._closed = False

    def _record(self, state: str) -> dict[str, Any]:
        now = time.time()
        return {
            "run_id": self.run_id,
            "date": self.date,
            "state": state,
            "started_at": self._started.isoformat(timespec="seconds"),
            "heartbeat_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
            "heartbeat_unix": now,
            "lease_s": self.lease_s,
            "replaces": self.replaces,
            "replaces_version": self.replaces_version,
            "host": _host(),
            "pid": os.getpid(),
        }

    def _claim(self) -> None:
        data = json.dumps(self._record("running"), indent=2, sort_keys=True).encode()
        with storage.errors(self._marker, "create the run marker"):
            created = storage.create(self._marker, data)
        if not created:
            raise FileExistsError(
                f"run id {self.run_id} is already in use under {partition(self.root, self.date)}: "
                "pick another --run-id"
            )
        self._thread = threading.Thread(target=self._beat, name=f"raylrec-lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.renew()
            except Exception as e:  # the run goes on; publishing renews once more, or fails
                log.warning("run %s: heartbeat failed: %s", self.run_id, e)

    def _rewrite_marker(self, state: str, action: str) -> bool:
        """Rewrite the marker with ``state`` and a new heartbeat; False (nothing written) when
        it is gone: never recreate a run another run's cleanup removed."""
        with storage.errors(self._marker, action):
            fs, path = storage.filesystem(self._marker)
            if not fs.exists(path):
                return False
            storage.write_json(self._marker, self._record(state))
        return True

    def renew(self) -> None:
        """Renew the heartbeat; fail when the run's files were removed (its lease lapsed and
        another run judged it dead), since then it must not publish."""
        if not self._rewrite_marker("running", "renew the lease in"):
            raise storage.StorageError(
                f"run {self.run_id}'s files under {self.prefix} were removed: its lease of "
                f"{self.lease_s:g}s lapsed without a heartbeat"
            )

    def publish(self, expected_users: int, details: dict[str, Any]) -> dict[str, Any]:
        """Renew the lease, then ``publish`` this run; a lost race removes its own files."""
        self.renew()
        try:
            return publish(self.root, self.date, self.run_id, expected_users, details, self.lease_s)
        except PublishConflict:
            self._stop_heartbeat()  # else a last beat could recreate the marker
            self._remove_own_files()
            raise

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _remove_own_files(self) -> None:
        try:
            with storage.errors(self.prefix, "remove"):
                fs, path = storage.filesystem(self.prefix)
                fs.rm(path, recursive=True)
            self._removed = True
        except Exception as e:
            log.warning("run %s: could not remove its unpublished files: %s", self.run_id, e)

    def close(self) -> None:
        """Stop the heartbeat and mark the run ended (best effort: a run that cannot is
        removed once its lease lapses)."""
        if self._closed:
            return
        self._closed = True
        self._stop_heartbeat()
        if self._removed:
            return
        try:
            self._rewrite_marker("ended", "mark the run ended in")
        except Exception as e:
            log.warning("run %s: not marked ended (%s); removable once its lease lapses", self.run_id, e)

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_run(root: str, date: str, run_id: str, lease_s: float = RUN_LEASE_S) -> RunLease:
    """Claim ``run_id`` for ``date`` (FileExistsError when the id is in use), record the
    published version the run may replace, and keep its lease alive until it is closed."""
    check_date(date)
    check_run_id(run_id)
    # The version first: if the manifest changes before its run id is read, the run holds an
    # older version and loses the race rather than replacing a run it never saw.
    uri = _manifest_uri(root, date)
    with storage.errors(uri, "read"):
        version = storage.version(uri)
    replaces = _published_run_id(root, date) if version is not None else None
    lease = RunLease(root, date, run_id, lease_s, replaces, version)
    lease._claim()
    return lease


def _read_marker(root: str, date: str, run_id: str) -> dict[str, Any] | None:
    try:
        marker = _read_json_if_exists(_marker_uri(root, date, run_id))
    except ValueError:
        return None  # unreadable: judged like a run without a marker
    return marker if isinstance(marker, dict) else None


def _is_live(marker: dict[str, Any], now: float) -> bool:
    try:
        heartbeat, lease = float(marker["heartbeat_unix"]), float(marker["lease_s"])
        pid = int(marker["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if marker.get("state") != "running" or now - heartbeat > lease:
        return False
    here = _host()
    return not (here is not None and marker.get("host") == here and not _pid_alive(pid))


def _is_removable(root: str, date: str, run_id: str, lease_s: float, now: float) -> bool:
    marker = _read_marker(root, date, run_id)
    if marker is not None:
        return not _is_live(marker, now)
    with storage.errors(run_prefix(root, date, run_id), "inspect"):
        newest = storage.newest_mtime(run_prefix(root, date, run_id))
    return newest is not None and now - newest > lease_s


def _run_ids(root: str, date: str) -> list[str]:
    uri = storage.join(partition(root, date), "_runs")
    with storage.errors(uri, "list"):
        names = storage.entry_names(uri)
    return sorted(n for n in names if _NAME.fullmatch(n))  # nothing else is a run of ours


def remove_unpublished(
    root: str, date: str, lease_s: float = RUN_LEASE_S, now: float | None = None
) -> list[str]:
    """Delete the runs of ``date`` that are neither published nor live (see the module
    docstring); returns their ids. ``lease_s`` judges runs without a marker; ``now`` (seconds
    since the epoch) defaults to the clock."""
    now = time.time() if now is None else now
    removable = [r for r in _run_ids(root, date) if _is_removable(root, date, r, lease_s, now)]
    # Read after judging: a run that published meanwhile is named here and kept.
    published = _published_run_id(root, date)
    removed = []
    for run_id in removable:
        if run_id == published:
            continue
        uri = run_prefix(root, date, run_id)
        fs, path = storage.filesystem(uri)
        with storage.errors(uri, "remove"):
            fs.rm(path, recursive=True)
        removed.append(run_id)
    return removed


# -- publishing --------------------------------------------------------------------------


def _replaced_version(root: str, date: str, run_id: str) -> tuple[str | None, str | None]:
    """(run id, version) of the publication ``run_id`` may replace: what its marker recorded
    at its start, or, for a run without a marker, what is published now."""
    marker = _read_marker(root, date, run_id)
    if marker is not None and "replaces_version" in marker:
        return marker.get("replaces"), marker.get("replaces_version")
    uri = _manifest_uri(root, date)
    with storage.errors(uri, "read"):
        version = storage.version(uri)
    return (_published_run_id(root, date) if version else None), version


def _staged_files(root: str, date: str, run_id: str) -> tuple[list[dict[str, Any]], pa.Table]:
    """The run's Parquet files as manifest entries, and their (user_id, rank) columns, from
    one read of each file's bytes."""
    prefix = run_prefix(root, date, run_id)
    fs, path = storage.filesystem(prefix)
    files, keys = [], []
    with storage.errors(prefix, "read the run's files in"):
        names = sorted(
            posixpath.basename(p)
            for p in (fs.ls(path, detail=False) if fs.exists(path) else [])
            if p.endswith(".parquet")
        )
        for name in names:
            if not _FILE.fullmatch(name):  # readers would refuse the manifest naming it
                raise RuntimeError(f"{prefix}: unexpected file name {name!r}: not publishing")
            data = fs.cat_file(storage.join(path, name))
            table = pq.read_table(pa.BufferReader(data), columns=["user_id", "rank"])
            keys.append(table)
            files.append(
                {
                    "path": f"_runs/{run_id}/{name}",
                    "rows": table.num_rows,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    empty = pa.table({"user_id": pa.array([], pa.string()), "rank": pa.array([], pa.int32())})
    return files, (pa.concat_tables(keys) if keys else empty)


def _check_counts(run_id: str, keys: pa.Table, expected_users: int) -> tuple[int, int]:
    """(rows, users) when every expected user has one row set, else RuntimeError."""
    rows = keys.num_rows
    users = pc.count_distinct(keys["user_id"]).as_py() if rows else 0
    distinct = keys.group_by(["user_id", "rank"], use_threads=False).aggregate([]).num_rows if rows else 0
    if users != expected_users or distinct != rows:
        raise RuntimeError(
            f"run {run_id} wrote {rows} rows for {users} users ({rows - distinct} duplicated), "
            f"expected one row set for each of {expected_users} users: not publishing"
        )
    return rows, users


def publish(
    root: str,
    date: str,
    run_id: str,
    expected_users: int,
    details: dict[str, Any],
    lease_s: float = RUN_LEASE_S,
) -> dict[str, Any]:
    """Verify run ``run_id``'s files (one row set per user, ``expected_users`` users), commit
    the manifest if no other run published since ``run_id`` started (else PublishConflict),
    then remove the runs that are neither published nor live. Returns the manifest."""
    check_date(date)
    check_run_id(run_id)
    replaces, version = _replaced_version(root, date, run_id)
    files, keys = _staged_files(root, date, run_id)
    rows, users = _check_counts(run_id, keys, expected_users)
    manifest = {
        "format": FORMAT,
        "date": date,
        "run_id": run_id,
        "replaces": replaces,
        "rows": rows,
        "users": users,
        "files": files,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **details,
    }
    _commit_manifest(root, date, manifest, version)
    try:
        remove_unpublished(root, date, lease_s)
    except Exception as e:  # published all the same; the next run's cleanup retries
        log.warning("published %s, but removing other runs failed: %s", partition(root, date), e)
    return manifest


def _commit_manifest(root: str, date: str, manifest: dict[str, Any], version: str | None) -> None:
    """Write the manifest only if the published one is still ``version`` (None: none is)."""
    uri = _manifest_uri(root, date)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    with storage.errors(uri, "publish"):
        for _ in range(3):
            if storage.write_if(uri, data, version):
                return
            if storage.version(uri) != version:
                break
            # S3 answers 409 to conditional writes that collide: retry while unchanged.
    winner = _published_run_id(root, date)
    raise PublishConflict(
        f"run {manifest['run_id']} lost the race to publish {partition(root, date)}: run {winner} "
        "published it after this run started; this run's files are not published"
    )


# -- reading -----------------------------------------------------------------------------


def published_dates(root: str) -> list[str]:
    """The published dates under ``root``, oldest first. Partitions whose name is not a
    strict ``date=YYYY-MM-DD`` are ignored (with a warning): they are not ours."""
    fs, path = storage.filesystem(root)
    dates = []
    with storage.errors(root, "list"):
        if not fs.exists(path):
            return []
        for entry in fs.ls(path, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if not name.startswith("date="):
                continue
            date = name.removeprefix("date=")
            if not _is_date(date):
                log.warning("ignoring %s: not a date=YYYY-MM-DD partition", storage.join(root, name))
                continue
            if fs.exists(f"{entry.rstrip('/')}/{MANIFEST}"):
                dates.append(date)
    return sorted(dates)  # strict ISO dates sort as text in calendar order


def _is_date(date: str) -> bool:
    try:
        check_date(date)
    except ValueError:
        return False
    return True


def _read_file(root: str, base: str, entry: dict[str, Any], verify: bool) -> pa.Table:
    """One manifest file, checked against its entry on the bytes that are parsed."""
    # a checked entry (_runs/<run>/<name>.parquet), not a link out of the root (file or date directory)
    data = read_listed(base, entry, what=f"recommendation partition {base}", verify=verify, root=root)
    uri = storage.join(base, entry["path"])
    try:
        table = pq.read_table(pa.BufferReader(data), schema=RECS_SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        raise storage.StorageError(f"{uri} is not a recommendations file: {e}") from None
    if table.num_rows != entry["rows"]:
        raise storage.StorageError(f"{uri}: {table.num_rows} rows, manifest says {entry['rows']}")
    return table


def read_recommendations(root: str, date: str | None = None, verify: bool = True) -> pa.Table:
    """The published recommendations of ``date`` (default: the latest published date),
    sorted by (user, rank). ``verify`` (default) checks every file's sha256."""
    if date is None:
        dates = published_dates(root)
        if not dates:
            raise FileNotFoundError(f"no published recommendations under {root}")
        date = dates[-1]
    manifest = read_manifest(root, date)
    base = partition(root, date)
    if manifest is None:
        raise FileNotFoundError(f"{base} is not published (no {MANIFEST})")
    tables = [_read_file(root, base, entry, verify) for entry in manifest["files"]]
    table = pa.concat_tables(tables) if tables else RECS_SCHEMA.empty_table()
    if table.num_rows != manifest["rows"]:
        raise storage.StorageError(f"{base}: {table.num_rows} rows, manifest says {manifest['rows']}")
    keys = table.group_by(["user_id", "rank"]).aggregate([]).num_rows
    if keys != table.num_rows:
        raise storage.StorageError(
            f"recommendations {base} are corrupted: {table.num_rows - keys} (user, rank) rows repeat "
            "another file's: refusing to serve them"
        )
    return table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
