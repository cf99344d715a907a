"""One way to reach local paths and s3:// URIs: fsspec filesystems (s3fs for s3), with the
endpoint and credentials from the environment (``AWS_ENDPOINT_URL``, the usual AWS variables,
or an instance role), and pyarrow wrappers of the same objects for Ray Data.

Filesystem objects pickle with their settings, so Ray workers reach the same endpoint as the
driver whatever their own environment says.

Storage and network failures (botocore, aiohttp, fsspec, also when Ray wraps them) become one
``StorageError`` naming the endpoint and the path (``errors``). Two conditional writes let
concurrent writers agree on a winner: ``create`` (only if absent: ``If-None-Match: *`` on S3,
``O_EXCL`` on local disk) and ``write_if`` (only if the object is still the ``version`` the
writer saw: ``If-Match`` on its ETag on S3, a ``flock``-guarded compare on local disk).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import posixpath
import threading
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow.fs as pafs

__all__ = [
    "StorageError",
    "filesystem",
    "arrow_filesystem",
    "join",
    "absolute",
    "is_remote",
    "check_reachable",
    "check_inside",
    "list_files",
    "entry_names",
    "write_bytes",
    "write_json",
    "read_json",
    "endpoint",
    "storage_failure",
    "errors",
    "version",
    "create",
    "write_if",
    "newest_mtime",
]

_S3_SCHEMES = ("s3://", "s3a://")


class StorageError(OSError):
    """A path that cannot be reached or read; the message names it."""


def is_remote(uri: str) -> bool:
    return uri.startswith(_S3_SCHEMES)


def _s3_options() -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {
        # Fail within seconds on an unreachable endpoint instead of retrying for minutes.
        "config_kwargs": {
            "connect_timeout": float(os.environ.get("RAYLREC_S3_CONNECT_TIMEOUT", "5")),
            "read_timeout": 60,
            "retries": {"max_attempts": 3, "mode": "standard"},
        },
        "skip_instance_cache": True,
    }
    if endpoint:
        options["endpoint_url"] = endpoint
    if os.environ.get("AWS_ACCESS_KEY_ID") is None and os.environ.get("AWS_PROFILE") is None:
        # No explicit credentials: let botocore find a role; anonymous only if asked.
        options["anon"] = os.environ.get("RAYLREC_S3_ANON", "") == "1"
    return options


# What a client is made from besides the options: it reads credentials from the environment.
_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (no scheme)."""
    if is_remote(uri):
        credentials = hashlib.sha256(
            json.dumps([os.environ.get(v) for v in _CREDENTIAL_VARIABLES]).encode()
        ).hexdigest()
        key = json.dumps(_s3_options(), sort_keys=True)
        return _s3_filesystem(key, credentials, os.getpid()), uri.split("://", 1)[1].rstrip("/")
    fs = fsspec.filesystem("file")
    return fs, os.path.abspath(os.path.expanduser(uri))


@functools.lru_cache(maxsize=16)
def _s3_filesystem(options: str, credentials: str, pid: int) -> fsspec.AbstractFileSystem:
    """One S3 filesystem per set of options, credentials and process: making one (its botocore
    client) costs about 250 ms, a call on it about 20 ms. Listings are never cached, so every
    call sees what other processes wrote (publishing and cleanup depend on it)."""
    import s3fs

    return s3fs.S3FileSystem(**json.loads(options), use_listings_cache=False)


def arrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem over the same fsspec object (what Ray Data's readers take)."""
    fs, path = filesystem(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def absolute(uri: str) -> str:
    """A local path made absolute (Ray workers run in other directories); URIs unchanged."""
    return uri if is_remote(uri) else os.path.abspath(os.path.expanduser(uri))


def check_inside(root: str, uri: str) -> None:
    """Refuse a local ``uri`` that resolves, symlinks followed, outside ``root`` (resolved the
    same way): a reader's path checks are on text, and a symlinked file or directory under the
    root would otherwise serve anything the process can read. Object stores have no links."""
    if is_remote(uri):
        return
    real_root, real = os.path.realpath(root), os.path.realpath(uri)
    if os.path.commonpath([real_root, real]) != real_root:
        raise StorageError(f"{uri} resolves to {real}, outside {root} (a symbolic link?): refusing it")


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def check_reachable(uri: str) -> None:
    """Fail early and clearly when ``uri``'s bucket or endpoint cannot be reached."""
    if not is_remote(uri):
        return
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    endpoint = _s3_options().get("endpoint_url", "the default AWS endpoint")
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise StorageError(f"{uri}: bucket {bucket!r} does not exist at {endpoint}") from None
    except PermissionError as e:
        raise StorageError(f"{uri}: access to bucket {bucket!r} at {endpoint} denied: {e}") from None
    except Exception as e:  # botocore raises many types; all mean "unreachable" here
        raise StorageError(f"cannot reach s3 endpoint {endpoint} for {uri}: {e}") from None


def entry_names(uri: str) -> set[str]:
    """The names of the files and folders directly under ``uri``; empty when it does not exist."""
    fs, path = filesystem(uri)
    try:
        listed = fs.ls(path, detail=False)
    except FileNotFoundError:
        return set()
    return {posixpath.basename(p.rstrip("/")) for p in listed} - {""}


def list_files(uri: str, extensions: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """Files under ``uri`` (a file, a directory walked recursively, or a glob) with their sizes,
    sorted by path. Hidden files and markers such as ``_SUCCESS`` are skipped."""
    fs, path = filesystem(uri)
    scheme = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    try:
        if any(ch in path for ch in "*?["):
            found = fs.glob(path, detail=True)
        elif fs.isdir(path):
            found = fs.find(path, detail=True)
        elif fs.exists(path):
            found = {path: fs.info(path)}
        else:
            raise StorageError(f"no such file or directory: {uri}")
    except StorageError:
        raise
    except Exception as e:
        raise StorageError(f"cannot list {uri}: {e}") from None
    files = []
    for name, info in sorted(found.items()):
        base = posixpath.basename(name)
        if info.get("type") == "directory" or base.startswith((".", "_")):
            continue
        if extensions and not base.lower().endswith(extensions):
            continue
        files.append((scheme + name, int(info.get("size") or 0)))
    return files


def write_bytes(uri: str, data: bytes) -> None:
    """Readers see the old file or the new one, never a part: one PUT on object storage, a
    rename on local disk (whose folders are made as needed)."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.{os.getpid()}-{threading.get_ident()}.partial"  # one per writer thread
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def json_bytes(obj: Any) -> bytes:
    """How raylrec writes JSON: indented, keys sorted, a final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json_bytes(obj))


def sha256(uri: str) -> str:
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(root: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {bytes, sha256}} of files under ``root``: what a bundle records to verify itself."""
    fs, path = filesystem(root)
    return {n: {"bytes": int(fs.size(join(path, n))), "sha256": sha256(join(root, n))} for n in names}


def verify_digests(root: str, digests: dict[str, dict[str, Any]], what: str) -> None:
    """Raise naming the first file under ``root`` that is missing or differs from ``digests``."""
    fs, path = filesystem(root)
    for name, expected in sorted(digests.items()):
        location = join(root, name)
        if not fs.exists(join(path, name)):
            raise StorageError(f"{what} {root} is incomplete: {name} is missing")
        if int(fs.size(join(path, name))) != expected["bytes"] or sha256(location) != expected["sha256"]:
            raise StorageError(f"{what} {root} is corrupted: {name} does not match its recorded checksum")


def read_json(uri: str) -> Any:
    fs, path = filesystem(uri)
    return json.loads(fs.cat_file(path))  # one GET on S3 (open() asks for the size first)


def endpoint(uri: str) -> str:
    """Where ``uri`` lives, for error messages: the S3 endpoint, or local disk."""
    if not is_remote(uri):
        return "local disk"
    return _s3_options().get("endpoint_url", "the default AWS endpoint")


def _failure_types() -> tuple[type[BaseException], ...]:
    import botocore.exceptions
    from fsspec.exceptions import FSTimeoutError

    types: list[type[BaseException]] = [
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        FSTimeoutError,
        ConnectionError,
        TimeoutError,
    ]
    with contextlib.suppress(ImportError):
        import aiohttp

        types.append(aiohttp.ClientError)
    return tuple(types)


def storage_failure(error: BaseException) -> BaseException | None:
    """The storage or network failure behind ``error``: the deepest one among itself, what
    Ray wrapped as ``cause`` and explicit ``__cause__`` links (Ray's wrapper is an instance
    of its cause's class too, but its message is a traceback), or None when there is none."""
    types = _failure_types()
    found: BaseException | None = None
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, types):
            found = e
        wrapped = getattr(e, "cause", None)
        e = wrapped if isinstance(wrapped, BaseException) else e.__cause__
    return found


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def errors(uri: str, action: str) -> Iterator[None]:
    """Turn a storage or network failure while ``action``-ing ``uri`` into one StorageError
    naming the path and the endpoint. Missing files, existing files (the answers callers
    handle) and our own errors pass unchanged."""
    try:
        yield
    except (StorageError, FileNotFoundError, FileExistsError):
        raise
    except Exception as e:
        failure = storage_failure(e)
        if failure is None and type(e) in (OSError, PermissionError):  # s3fs's translations
            failure = e
        if failure is None:
            raise  # not storage: a bug or a domain error with its own message
        raise StorageError(f"cannot {action} {uri} on {endpoint(uri)}: {_one_line(failure)}") from e


def version(uri: str) -> str | None:
    """A token that changes whenever the object at ``uri`` is rewritten (its ETag on S3, the
    sha256 of its bytes on local disk); None when there is no object."""
    fs, path = filesystem(uri)
    try:
        if is_remote(uri):
            return str(fs.info(path)["ETag"])
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def create(uri: str, data: bytes) -> bool:
    """Write ``data`` only if nothing is at ``uri``; False if something is (another writer
    won). A conditional PUT on S3, ``O_EXCL`` on local disk."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def _precondition_failed(error: BaseException) -> bool:
    """Whether S3 refused a conditional write (412; 409 when two conditional writes collide)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def write_if(uri: str, data: bytes, expected: str | None) -> bool:
    """Write ``data`` to ``uri`` only if the object there is still version ``expected`` (None:
    only if there is none); False when it changed. Readers see the old object or the new one."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        match = {"IfMatch": expected} if expected is not None else {"IfNoneMatch": "*"}
        bucket, key = path.split("/", 1)
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **match)
        except FileExistsError:
            return False
        except FileNotFoundError:
            if expected is None:
                raise
            return False  # If-Match on an object deleted since: it changed
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        return True
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # flock, not a lock file: the kernel releases it when a killed writer's process goes.
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if version(uri) != expected:
                return False
            write_bytes(uri, data)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def newest_mtime(uri: str) -> float | None:
    """The newest modification time (seconds since the epoch) of ``uri`` and the files under
    it; None when nothing is there."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return None
    found = fs.find(path, detail=True, withdirs=True)
    infos = [*found.values()] if found else []
    if not is_remote(uri):
        infos.append(fs.info(path))
    times = [_mtime(info) for info in infos]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _mtime(info: dict[str, Any]) -> float | None:
    if info.get("mtime") is not None:
        return float(info["mtime"])
    modified = info.get("LastModified")
    return modified.timestamp() if modified is not None else None
