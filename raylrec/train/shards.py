"""Training rows as one ordered shard per Ray Train rank, streamed every epoch.

The driver stores the rows once in the object store (spilled to disk when they outgrow it) and
cuts them into equal shards (``Dataset.split(equal=True)``: every rank takes the same number of
steps, which DDP and ZeRO need). A worker streams its shard each epoch through a local shuffle
buffer seeded by (seed, rank, epoch), so it never holds its shard, and a replay yields the same
batches: a run resumed mid-epoch skips exactly the batches it had trained.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import ray

__all__ = ["equal_shards", "held_out_name", "held_out_shards", "shard_epoch", "shard_name"]


def shard_name(rank: int) -> str:
    return f"train_{rank}"


def held_out_name(split: str, rank: int) -> str:
    return f"{split}_{rank}"


def equal_shards(dataset: ray.data.Dataset, workers: int) -> tuple[dict[str, ray.data.Dataset], int]:
    """``dataset`` materialised in a fixed order and cut into ``workers`` equal shards (the
    remainder is dropped); returns them by ``shard_name`` and the rows each holds. Run before the
    workers start: once they hold every CPU (2 workers on a 2-core machine), read tasks could
    never be scheduled. Its blocks should be bounded in rows (the last map's ``batch_size``):
    the shuffle buffer of ``shard_epoch`` takes a block at a time."""
    shards = _in_fixed_order(dataset).split(workers, equal=True)
    return {shard_name(rank): shard for rank, shard in enumerate(shards)}, shards[0].count()


def held_out_shards(
    dataset: ray.data.Dataset, workers: int, split: str = "valid"
) -> tuple[dict[str, ray.data.Dataset], list[int]]:
    """``dataset`` (held-out rows to score) materialised in a fixed order and cut into
    ``workers`` parts whose sizes differ by at most one row, nothing dropped: each rank streams
    and scores its own part (``held_out_name(split, rank)``), none holds the others'. Returns
    the parts and their rows."""
    materialised = _in_fixed_order(dataset)
    total = materialised.count()
    if total < workers:
        raise ValueError(
            f"{total} {split} rows for {workers} workers: every rank needs at least one to score "
            f"(sample more {split} rows or use fewer workers)"
        )
    rows = [total // workers + (rank < total % workers) for rank in range(workers)]
    parts = materialised.split_at_indices(np.cumsum(rows)[:-1].tolist()) if workers > 1 else [materialised]
    return {held_out_name(split, rank): part for rank, part in enumerate(parts)}, rows


def _in_fixed_order(dataset: ray.data.Dataset) -> ray.data.MaterializedDataset:
    """Materialised with Ray Data's order kept: the same blocks in the same order on a rerun."""
    from ray.data import DataContext

    context = DataContext.get_current()
    keep = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        return dataset.materialize()
    finally:
        context.execution_options.preserve_order = keep


def shard_epoch(
    iterator: Any, batch_size: int, seed: int, rank: int, epoch: int, shuffle_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of a rank's shard (its Ray ``DataIterator``) in full batches, shuffled within a
    buffer of ``shuffle_rows`` rows seeded by (seed, rank, epoch)."""
    yield from iterator.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=shuffle_rows or None,
        local_shuffle_seed=zlib.crc32(f"{seed}/{rank}/{epoch}".encode()),
    )
