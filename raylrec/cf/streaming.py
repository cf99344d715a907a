"""The Ray path of CF training: the training split reaches the workers through Ray Data, and no
process holds a split.

- **Training rows**: the driver reads the split with Ray Data (BPR keeps positives) and cuts it
  into one equal, ordered shard per rank that each worker streams every epoch
  (``raylrec.train.shards``: seeded local shuffle, exact mid-epoch resume).
- **What BPR must not sample, what evaluation masks and hits**: each user's items as CSR
  ``ItemSets`` built by one Ray task (``raylrec.data.item_sets``), kept once per node in the
  object store; workers read them zero-copy.
- **Per-epoch validation** runs on a fixed sample of users (``eval.valid_users``), so its cost
  does not grow with the log; the final report (``raylrec.cf.distributed_eval``) uses every user.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raylrec.cf.data import Split, sample_negatives, to_arrays
from raylrec.data.item_sets import build_item_sets
from raylrec.eval.ranking import ItemSets
from raylrec.train.shards import equal_shards, shard_epoch

if TYPE_CHECKING:
    import ray

    from raylrec.cf.graph import GraphRows

__all__ = [
    "StreamedInputs",
    "InteractionSplit",
    "streamed_batches",
    "sample_users",
    "training_shards",
    "item_sets_ref",
]

# Rows a worker shuffles among while it streams its shard (about 20 bytes each for an ID model).
SHUFFLE_BUFFER_ROWS = 200_000
# Rows per block of the stored training rows.
BLOCK_ROWS = 65_536


def _rows_for_training(batch: pa.Table, history_len: int, positives_only: bool) -> dict[str, np.ndarray]:
    """Ray Data map: a split's rows -> the arrays a worker trains on (BPR keeps positives only,
    before the split across workers, so every worker gets the same number of steps)."""
    if positives_only:
        batch = batch.filter(pc.equal(batch["label"], 1))
    arrays = to_arrays(batch, history_len)
    arrays.pop("warm", None)
    return arrays


def training_shards(
    dataset: ray.data.Dataset, workers: int, history_len: int, positives_only: bool, seed: int = 0
) -> tuple[dict[str, ray.data.Dataset], int]:
    """One equal shard of the training rows per rank, in a fixed order (``equal_shards``) of
    blocks drawn with ``seed``; returns the shards and the rows each holds. Prepare writes each
    user's rows together, so blocks in file order would give a rank long runs of few users that
    its shuffle buffer cannot break up: one epoch of MF-BPR on a 5M-event log reached test
    NDCG@10 0.0493 in file order, 0.0625 and 0.0568 with the blocks in random orders of two
    seeds (docs/benchmarks.md, stop 46)."""
    rows = dataset.map_batches(
        _rows_for_training,
        batch_format="pyarrow",
        # bounded blocks: a worker's shuffle buffer copies whole blocks, so a block the size of
        # a prepared file (millions of rows) would make every epoch slower as the log grows
        batch_size=BLOCK_ROWS,
        fn_kwargs={"history_len": history_len, "positives_only": positives_only},
    )
    return equal_shards(rows.randomize_block_order(seed=seed), workers)


def streamed_batches(
    iterator: Any,
    batch_size: int,
    seed: int,
    rank: int,
    epoch: int,
    num_items: int,
    bpr: bool,
    seen: ItemSets | None,
    shuffle_buffer: int = SHUFFLE_BUFFER_ROWS,
) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of a rank's shard (a Ray ``DataIterator``), shuffled within a buffer seeded by
    (seed, rank, epoch); BPR batches get one sampled negative per positive, redrawn while it is
    among the user's training items (``seen``)."""
    rng = np.random.default_rng([seed, rank, epoch])
    for batch in shard_epoch(iterator, batch_size, seed, rank, epoch, shuffle_buffer):
        # Ray hands read-only views of its blocks; torch wants writable memory (a batch's copy)
        out = {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in batch.items()}
        if bpr:
            out.pop("label", None)
            users = batch["uid"]
            out["neg"] = torch.from_numpy(sample_negatives(rng, num_items, len(users), users, seen))
        yield out


def sample_users(num_users: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """The fixed users of per-epoch validation: every user when ``limit`` is None or covers
    them all, else ``limit`` users drawn once with ``seed`` (sorted ids; 0 is padding)."""
    everyone = np.arange(1, num_users, dtype=np.int64)
    if limit is None or limit >= len(everyone):
        return everyone
    return np.sort(np.random.default_rng(seed).choice(everyone, size=limit, replace=False))


@dataclass
class StreamedInputs:
    """What the driver hands every worker (small values and object-store references)."""

    rows_per_rank: int
    seen: ray.ObjectRef | None  # ItemSets of the training rows (BPR's rejection)
    known: ray.ObjectRef | None  # ItemSets a top-K evaluation masks (training positives)
    target: ray.ObjectRef | None  # ItemSets of every user's valid positives
    users: np.ndarray | None  # the sampled validation users (top-K)
    graph: ray.ObjectRef | None = None  # a graph encoder's normalised graph (raylrec.cf.graph)


def item_sets_ref(
    dataset: str, splits: list[str], num_users: int, positives_only: bool, distinct: bool = False
) -> ray.ObjectRef:
    """``build_item_sets`` run as one Ray task, finished when this returns: its result is in the
    object store, not in this process (the driver only holds the reference)."""
    return item_sets_refs(dataset, [(splits, positives_only, distinct)], num_users)[0]


def item_sets_refs(
    dataset: str, wanted: list[tuple[list[str], bool, bool]], num_users: int
) -> list[ray.ObjectRef]:
    """``item_sets_ref`` for each (splits, positives_only, distinct) of ``wanted``, the tasks
    running side by side (one wait for all, not one per set)."""
    import ray

    build = ray.remote(num_cpus=1, max_retries=2)(build_item_sets)
    refs = [build.remote(dataset, splits, num_users, *flags) for splits, *flags in wanted]
    # Built before anything that reads them starts: actors and Ray Train workers that wait on
    # them while holding every CPU would leave the tasks none to run on. Nothing is fetched here.
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    return refs


class InteractionSplit(Split):
    """A ``Split`` of sizes only, for the Ray path: an ID or sequential encoder needs nothing
    more. A graph encoder's ``graph`` comes from the object store when ``graph_ref`` holds it
    (``raylrec.cf.graph.shared_graph_ref``: one copy per node), else it is built here from item
    sets streamed from the files. No method reads the split whole (``arrays`` refuses)."""

    def __init__(self, dataset: str, num_users: int, num_items: int, graph_ref: ray.ObjectRef | None = None):
        self.dataset, self.num_users, self.num_items = dataset, num_users, num_items
        self.graph_ref = graph_ref

    @property
    def arrays(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        raise RuntimeError(
            f"the training split of {self.dataset} is streamed on the Ray path: its rows are not "
            "held in one process (use raylrec.cf.data.load_split in a plain process)"
        )

    def users_with_rows(self) -> np.ndarray:
        """One flag per dense user id (``Split.users_with_rows``), from the split's ``uid``
        column read batch by batch in this process: one bool per user is held, never the rows."""
        found = np.zeros(self.num_users, bool)
        for batch in train_batches(self.dataset, ["uid"], 1 << 20):
            found[batch["uid"].to_numpy(zero_copy_only=False)] = True
        return found

    def graph(self, rows: GraphRows) -> torch.Tensor:
        from raylrec.cf.graph import graph_from_item_sets

        if self.graph_ref is not None:
            import ray

            return ray.get(self.graph_ref).tensor()
        sets = build_item_sets(self.dataset, ["train"], self.num_users, rows == "positives", distinct=True)
        return graph_from_item_sets(sets, self.num_items).tensor()


def train_batches(dataset: str, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of the dataset's training split, batch by batch in file order, in this
    process (never the split whole)."""
    import pyarrow.dataset as pads

    from raylrec.data.output import read_meta, split_paths

    fs, files = split_paths(dataset, "train", read_meta(dataset))
    return pads.dataset(files, filesystem=fs, format="parquet").to_batches(
        columns=columns, batch_size=batch_size
    )


def latest_histories(dataset: str, history_len: int, num_users: int) -> np.ndarray:
    """Each user's most recent training history (``[num_users, history_len]``), read batch by
    batch in file order: a later row of a user replaces an earlier one, as the plain path's
    ``raylrec.cf.bundle`` takes each user's last row."""
    from raylrec.data.arrays import pad_histories

    histories = np.zeros((num_users, history_len), np.int64)
    for batch in train_batches(dataset, ["uid", "history"], 1 << 18):
        users = batch["uid"].to_numpy(zero_copy_only=False).astype(np.int64)
        if not len(users):
            continue
        order = np.argsort(users, kind="stable")
        last = order[np.r_[users[order][1:] != users[order][:-1], True]]
        padded = pad_histories(batch["history"].take(pa.array(last)), history_len)
        histories[users[last]] = padded
    return histories
