"""Synthetic interaction logs of any size: Zipf-distributed users and items, timestamps over a
span, ratings that lean on a hidden user-item affinity, and item titles. Generated in
independent seeded chunks by Ray read tasks, so no process ever holds the whole log."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raylrec import storage
from raylrec.data.config import ValidationConfig
from raylrec.data.files import FILE_COLUMN, ROW_COLUMN
from raylrec.data.loaded import LoadedSource
from raylrec.data.sources.synthetic import SyntheticSource

__all__ = ["SyntheticDatasource", "generate_chunk", "item_titles", "load_synthetic", "write_synthetic"]

# fmt: off
_WORDS = (
    "night", "dark", "river", "star", "lost", "city", "dream", "blue", "last", "road", "iron",
    "heart", "secret", "king", "summer", "garden", "ghost", "storm", "glass", "silent", "wild",
    "golden", "fire", "winter", "shadow", "ocean", "empire", "echo", "broken", "little",
)
# fmt: on


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _permutation(n: int, seed: int) -> np.ndarray:
    """Popularity rank -> id, so popular ids are not simply the smallest numbers."""
    return np.random.default_rng([seed, 7]).permutation(n) + 1


def generate_chunk(source: SyntheticSource, chunk: int) -> pa.Table:
    """Events ``[chunk * events_per_chunk, ...)``: a pure function of (config, chunk)."""
    start = chunk * source.events_per_chunk
    n = min(source.events_per_chunk, source.num_events - start)
    rng = np.random.default_rng([source.seed, chunk])
    users = _permutation(source.num_users, source.seed)[
        np.searchsorted(
            _zipf_cdf(source.num_users, source.user_zipf_exponent or source.zipf_exponent), rng.random(n)
        )
    ]
    items = _permutation(source.num_items, source.seed + 1)[
        np.searchsorted(_zipf_cdf(source.num_items, source.zipf_exponent), rng.random(n))
    ]
    timestamps = source.start + rng.integers(0, source.span_days * 86_400, n)
    # A hidden affinity makes ratings learnable: hash(user, item) -> [0, 1).
    affinity = (
        (users.astype(np.uint64) * np.uint64(2654435761) ^ items.astype(np.uint64) * np.uint64(40503))
        % np.uint64(1000)
    ).astype(np.float64) / 1000.0
    ratings = np.clip(np.round(1 + 4 * (0.7 * affinity + 0.3 * rng.random(n))), 1, 5)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int64()),
            "timestamp": pa.array(timestamps, pa.int64()),
            "rating": pa.array(ratings, pa.float64()),
        }
    )


def item_titles(num_items: int, seed: int) -> pa.Table:
    rng = np.random.default_rng([seed, 11])
    words = np.array(_WORDS)
    first, second = rng.integers(0, len(words), num_items), rng.integers(0, len(words), num_items)
    years = rng.integers(1950, 2026, num_items)
    titles = [
        f"The {words[a].title()} {words[b].title()} ({y})"
        for a, b, y in zip(first, second, years, strict=True)
    ]
    return pa.table({"item_id": pa.array(np.arange(1, num_items + 1).astype(str)), "title": pa.array(titles)})


class SyntheticDatasource(Datasource):
    def __init__(self, source: SyntheticSource, tag_rows: bool = True):
        self._source = source
        self._tag_rows = tag_rows

    def estimate_inmemory_data_size(self) -> int:
        return self._source.num_events * 32

    def get_name(self) -> str:
        return "GenerateSyntheticLog"

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        s = self._source
        chunks = -(-s.num_events // s.events_per_chunk)
        tasks = []
        for chunk in range(chunks):
            rows = min(s.events_per_chunk, s.num_events - chunk * s.events_per_chunk)
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * 32, exec_stats=None, input_files=None)
            tasks.append(ReadTask(self._reader(chunk), meta, per_task_row_limit=per_task_row_limit))
        return tasks

    def _reader(self, chunk: int):
        source, tag = self._source, self._tag_rows

        def read() -> Iterable[pa.Table]:
            table = generate_chunk(source, chunk)
            if tag:
                first = chunk * source.events_per_chunk
                table = table.append_column(FILE_COLUMN, pa.array(np.full(table.num_rows, chunk, np.int32)))
                table = table.append_column(ROW_COLUMN, pa.array(np.arange(first, first + table.num_rows)))
            yield table

        return read


def load_synthetic(source: SyntheticSource, validation: ValidationConfig | None = None) -> LoadedSource:
    return LoadedSource(
        events=ray.data.read_datasource(SyntheticDatasource(source)),
        items=item_titles(source.num_items, source.seed),
        files=[f"synthetic:chunk-{i}" for i in range(-(-source.num_events // source.events_per_chunk))],
        description={"type": "synthetic", **source.model_dump(exclude={"type"})},
    )


def write_synthetic(source: SyntheticSource, out: str) -> dict[str, int]:
    """Write a synthetic log as Parquet files (``events/``) plus ``items.parquet``, streaming."""
    import pyarrow.parquet as pq

    storage.check_reachable(out)
    fs, path = storage.arrow_filesystem(out)
    ray.data.read_datasource(SyntheticDatasource(source, tag_rows=False)).write_parquet(
        storage.join(path, "events"), filesystem=fs
    )
    pq.write_table(
        item_titles(source.num_items, source.seed), storage.join(path, "items.parquet"), filesystem=fs
    )
    return {"events": source.num_events, "items": source.num_items}
