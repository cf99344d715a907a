"""LLM training and evaluation samples from a prepared dataset: rows -> tokenised prompts.

The same ``encode_rows`` runs inside a Ray Data ``map_batches`` (one tokenizer per actor) and
in a plain process. Few2Many sampling is a hash of (uid, iid, seed), so a sample is the same
on every run and every partitioning, and streams without a shuffle.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from raylrec.config import RaylrecConfig
from raylrec.data.arrays import pad_histories
from raylrec.data.output import read_meta, read_split, read_table
from raylrec.llm.prompts import PromptBuilder

__all__ = ["sample_mask", "encode_rows", "sample_fraction", "item_titles", "build_samples"]


def sample_mask(uid: np.ndarray, iid: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Deterministic Bernoulli(fraction) per (uid, iid): a splitmix64 hash, vectorised."""
    if fraction >= 1.0:
        return np.ones(len(uid), bool)
    with np.errstate(over="ignore"):
        x = uid.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + iid.astype(np.uint64)
        x ^= np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def sample_fraction(config: RaylrecConfig, split: str, rows: int) -> float:
    if split == "train":
        fraction = config.sample.train_fraction
        limit = config.sample.max_train
    else:
        fraction, limit = 1.0, config.sample.max_valid
    if limit is not None and rows:
        fraction = min(fraction, limit / rows)
    return fraction


def item_titles(dataset: str) -> dict[int, str]:
    table = read_table(dataset, "items.parquet")
    if "title" not in table.schema.names:
        raise ValueError(f"{dataset}/items has no 'title' column: LLM prompts need item titles")
    return dict(zip(table["iid"].to_pylist(), table["title"].to_pylist(), strict=True))


def encode_rows(
    table: pa.Table, builder: PromptBuilder, cf_history: int, fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Sampled rows of a split -> model inputs (ids, mask, ID slots) plus what the CF side and
    the metrics need (uid, iid, label, the long history, the warm flag)."""
    uid = table["uid"].to_numpy().astype(np.int64)
    iid = table["iid"].to_numpy().astype(np.int64)
    keep = sample_mask(uid, iid, seed, fraction)
    table = table.filter(pa.array(keep))
    uid, iid = uid[keep], iid[keep]
    histories = table["history"].to_pylist()
    prompts = builder.encode_batch(histories, iid.tolist())
    out: dict[str, np.ndarray] = {
        "uid": uid,
        "iid": iid,
        "label": table["label"].to_numpy().astype(np.float32),
        "timestamp": table["timestamp"].to_numpy().astype(np.int64),
        "input_ids": prompts.input_ids,
        "attention_mask": prompts.attention_mask,
        "slots": prompts.slots,
    }
    if cf_history:
        out["history"] = pad_histories(table["history"], cf_history)
    if "not_cold" in table.schema.names:
        out["warm"] = table["not_cold"].to_numpy().astype(bool)
    return out


@functools.lru_cache(maxsize=4)
def _builder(config_json: str, template: str) -> PromptBuilder:
    """One prompt builder (tokenizer + titles) per worker process and configuration: Ray Data
    reuses its worker processes across tasks, so the tokenizer loads once per process."""
    from raylrec.llm.backbone import load_tokenizer

    config = RaylrecConfig.model_validate_json(config_json)
    return PromptBuilder(
        load_tokenizer(config.backbone),
        template,
        item_titles(config.dataset_path()),
        config.prompt.max_tokens,
        config.prompt.history_items,
    )


def _encode_task(
    table: pa.Table, config_json: str, template: str, cf_history: int, fraction: float, seed: int
) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    arrays = encode_rows(table, _builder(config_json, template), cf_history, fraction, seed)
    # Tensor columns built explicitly: Ray's own conversion falls back to pickled objects for
    # a batch the sample left empty, and the blocks would then disagree on the column type.
    return pa.table(
        {k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else pa.array(v) for k, v in arrays.items()}
    )


def split_rows(dataset: str, split: str) -> int:
    return int(read_meta(dataset)["counts"]["splits"].get(split, 0))


def build_samples(config: RaylrecConfig, split: str, template: str, cf_history: int):
    """A Ray Dataset of tokenised samples of ``split``."""
    dataset = config.dataset_path()
    fraction = sample_fraction(config, split, split_rows(dataset, split))
    return read_split(dataset, split).map_batches(
        _encode_task,
        batch_format="pyarrow",
        batch_size=1024,
        fn_kwargs={
            "config_json": config.model_dump_json(include={"dataset", "data", "backbone", "prompt"}),
            "template": template,
            "cf_history": cf_history,
            "fraction": fraction,
            "seed": config.sample.seed,
        },
    )


def local_samples(config: RaylrecConfig, split: str, template: str, cf_history: int, tokenizer):
    """The same samples in a plain process (no Ray)."""
    dataset = config.dataset_path()
    table = read_table(dataset, split)
    builder = PromptBuilder(
        tokenizer,
        template,
        item_titles(dataset),
        config.prompt.max_tokens,
        config.prompt.history_items,
    )
    fraction = sample_fraction(config, split, table.num_rows)
    return encode_rows(table, builder, cf_history, fraction, config.sample.seed)
