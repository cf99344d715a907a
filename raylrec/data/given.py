"""The CoLLM MovieLens-1M split: already split, labelled and with histories.

Its splits, labels, histories and warm flag are kept exactly; only the representation is
aligned with the processed-dataset contract: the history's leading 0 (CoLLM's padding) is
dropped, ``not_cold`` stays as is, and the ids (already dense, 1-based) are kept unchanged so
they match the CoLLM authors' CF checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raylrec import storage
from raylrec.config import DataConfig
from raylrec.data.files import SourceError
from raylrec.data.hashing import row_hashes
from raylrec.data.output import commit, input_paths, new_write_id, prepare_output_dir, write_dataset

__all__ = ["COLLM_COLUMNS", "prepare_given", "strip_padding"]

COLLM_COLUMNS = ["user_id", "item_id", "label", "timestamp", "history", "history_titles", "title", "not_cold"]
OUTPUT = ["uid", "iid", "timestamp", "label", "history", "history_titles", "title", "not_cold"]
SPLIT_FILES = {"train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet"}


def strip_padding(history: pa.ListArray, titles: pa.ListArray) -> tuple[pa.ListArray, pa.ListArray]:
    """Drop history entries whose item is 0 (and their titles, where the lists align)."""
    flat = history.flatten().to_numpy(zero_copy_only=False)
    offsets = history.offsets.to_numpy()
    keep = flat != 0
    kept = np.r_[0, np.cumsum(keep)]
    new_offsets = kept[offsets - offsets[0]].astype(np.int32)
    items = pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(flat[keep].astype(np.int32)))
    t_offsets = titles.offsets.to_numpy()
    t_flat = titles.flatten()
    # CoLLM stores '' as the padding title; titles sometimes omit it when history is just [0].
    t_keep = pc.not_equal(t_flat, "").to_numpy(zero_copy_only=False)
    t_kept = np.r_[0, np.cumsum(t_keep)]
    new_titles = pa.ListArray.from_arrays(
        pa.array(t_kept[t_offsets - t_offsets[0]].astype(np.int32)), t_flat.filter(pa.array(t_keep))
    )
    return items, new_titles


def _convert(batch: pa.Table) -> pa.Table:
    history, titles = strip_padding(
        batch["history"].combine_chunks(), batch["history_titles"].combine_chunks()
    )
    return pa.table(
        {
            "uid": batch["user_id"].cast(pa.int64()),
            "iid": batch["item_id"].cast(pa.int64()),
            "timestamp": batch["timestamp"].cast(pa.int64()),
            "label": batch["label"].cast(pa.int8()),
            "history": history,
            "history_titles": titles,
            "title": batch["title"],
            "not_cold": batch["not_cold"].cast(pa.int8()),
        }
    )


def _check(batch: pa.Table, path: str) -> pa.Table:
    bad = pc.or_(
        pc.invert(pc.is_in(batch["label"], value_set=pa.array([0, 1], pa.int64()))),
        pc.less_equal(batch["user_id"], 0),
    )
    if pc.any(bad).as_py():
        raise SourceError(
            f"{path}: rows with labels outside {{0, 1}} or non-positive user ids; this is not the CoLLM split"
        )
    return batch


def _summary(batch: pa.Table) -> pa.Table:
    with np.errstate(over="ignore"):
        digest = np.sum(row_hashes(batch.select(OUTPUT)), dtype=np.uint64) if batch.num_rows else np.uint64(0)
    # Item titles from the targets and, where a row's lists align, from its history.
    ids, names = [batch["iid"].combine_chunks()], [batch["title"].combine_chunks()]
    history, history_titles = batch["history"].combine_chunks(), batch["history_titles"].combine_chunks()
    aligned = pc.equal(pc.list_value_length(history), pc.list_value_length(history_titles))
    if pc.any(aligned).as_py():
        ids.append(pc.list_flatten(history.filter(aligned)).cast(pa.int64()))
        names.append(pc.list_flatten(history_titles.filter(aligned)))
    titles = pa.concat_arrays(ids), pa.concat_arrays(names)
    return pa.table(
        {
            "rows": [batch.num_rows],
            "positives": [int(pc.sum(batch["label"]).as_py() or 0)],
            "warm": [int(pc.sum(batch["not_cold"]).as_py() or 0)],
            "hash": pa.array([int(digest)], pa.uint64()),
            "items": [titles[0].to_pylist()],
            "users": [np.unique(batch["uid"].to_numpy()).tolist()],
            "titles": [titles[1].to_pylist()],
        }
    )


def prepare_given(config: DataConfig, say: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    root = config.source.path
    storage.check_reachable(root)
    fs, root_path = storage.filesystem(root)
    present = {
        s: storage.join(root, f) for s, f in SPLIT_FILES.items() if fs.exists(storage.join(root_path, f))
    }
    if "train" not in present:
        raise SourceError(f"{root}: no train.parquet (is this the CoLLM split directory?)")
    prepare_output_dir(config.output, config.overwrite, input_paths(config.source))
    write_id = new_write_id()
    files: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    positives: dict[str, int] = {}
    warm: dict[str, int] = {}
    hashes: dict[str, str] = {}
    titles: dict[int, str] = {}
    users: set[int] = set()
    for split, path in present.items():
        in_fs, in_path = storage.arrow_filesystem(path)
        raw = ray.data.read_parquet(in_path, filesystem=in_fs)
        missing = [c for c in COLLM_COLUMNS if c not in raw.schema().names]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}; this is not the CoLLM split")
        ds = (
            raw.select_columns(COLLM_COLUMNS)
            .map_batches(_check, batch_format="pyarrow", fn_kwargs={"path": path})
            .map_batches(_convert, batch_format="pyarrow")
            .materialize()
        )
        summary = pa.concat_tables(
            list(
                ds.map_batches(_summary, batch_format="pyarrow", batch_size=None).iter_batches(
                    batch_format="pyarrow", batch_size=None
                )
            )
        )
        counts[split] = int(pc.sum(summary["rows"]).as_py())
        positives[split] = int(pc.sum(summary["positives"]).as_py())
        warm[split] = int(pc.sum(summary["warm"]).as_py())
        with np.errstate(over="ignore"):
            hashes[split] = f"{int(np.sum(summary['hash'].to_numpy(), dtype=np.uint64)):016x}"
        for ids, names in zip(summary["items"].to_pylist(), summary["titles"].to_pylist(), strict=True):
            titles.update(zip(ids, names, strict=True))
        users.update(int(u) for block in summary["users"].to_pylist() for u in block)
        say(f"{split}: {counts[split]:,} rows ({warm[split]:,} warm)")
        files[split] = write_dataset(ds, config.output, split, write_id)

    user_ids = np.array(sorted(users), np.int64)
    item_ids = np.array(sorted(titles), np.int64)
    users_table = pa.table({"user_id": pa.array(user_ids.astype(str)), "uid": user_ids})
    items_table = pa.table(
        {"item_id": pa.array(item_ids.astype(str)), "iid": item_ids, "title": [titles[i] for i in item_ids]}
    )
    total = sum(counts.values())
    meta_counts = {
        "rows_in": total,
        "rows_out": total,
        "rows_quarantined": 0,
        "quarantine_reasons": {},
        "splits": counts,
        "positives": positives,
        "warm": warm,
        "users": len(user_ids),
        "items": len(item_ids),
        # Embedding tables must cover the largest id: CoLLM's ids are 1-based but not gap-free.
        "num_users": int(user_ids.max()) + 1,
        "num_items": int(item_ids.max()) + 1,
    }
    protocol = {
        "split": {"protocol": "given", "source": "CoLLM train_ood2/valid_ood2 (monthly)"},
        "label": {"threshold": 4.0},
        "history": {"max_len": None, "padding": "stripped"},
    }
    meta = commit(
        config.output,
        protocol=protocol,
        counts=meta_counts,
        split_hashes=hashes,
        users=users_table,
        items=items_table,
        source={"type": "collm_ml1m", "path": root},
        columns=OUTPUT,
        files=files,
        started=started,
    )
    say(f"committed {config.output} (content hash {meta['content_hash'][:16]}…)")
    return meta
