"""The CF bundle: what the LLM methods and scoring load from a trained CF encoder.

    <bundle>/config.json          CF config, dataset reference (path + content hash), sizes, metrics
    <bundle>/model.safetensors    the encoder's state dict
    <bundle>/embeddings.safetensors  "users" [num_users, dim] and "items" [num_items, dim]:
                                  final user/item vectors (LightGCN: after propagation). SASRec's
                                  users are each user's vector from their latest training history.
    <bundle>/users.parquet, items.parquet  raw id <-> dense id (user_id/uid, item_id/iid)

``config.json`` is written last, with each file's size and sha256: a bundle without it is
incomplete, and ``check_cf_bundle`` finds a corrupted one without loading it. A model with a
NaN or infinite weight is refused before anything is written (a bundle already there stays).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file

from raylrec.bundle_dir import (
    bundle_kind,
    check_bundle,
    fetch_files,
    parquet_file,
    read_description,
    read_parquet,
    write_bundle,
)
from raylrec.cf.config import CFConfig, encoder_config
from raylrec.cf.data import Split
from raylrec.cf.models import CFEncoder
from raylrec.config import RaylrecConfig
from raylrec.data.output import read_table, train_cutoff

__all__ = [
    "save_cf_bundle",
    "load_cf_bundle",
    "check_cf_bundle",
    "check_finite",
    "bundle_history_len",
    "cf_vocabularies",
    "trained_users",
    "CFBundle",
]

KIND = "CF bundle"
FORMAT = "raylrec.cf_bundle/1"
BUNDLE_FILES = ("model.safetensors", "embeddings.safetensors", "users.parquet", "items.parquet")
CF_BUNDLE = bundle_kind(KIND, FORMAT, BUNDLE_FILES)


def _latest_histories(train: Split, history_len: int) -> np.ndarray:
    """Each user's most recent training history (rows are per event; take the last per user)."""
    arrays = train.arrays
    histories = np.zeros((train.num_users, history_len), np.int64)
    order = np.argsort(arrays["uid"], kind="stable")  # rows come time-ordered within a user
    last = np.r_[arrays["uid"][order][1:] != arrays["uid"][order][:-1], True]
    rows = order[last]
    histories[arrays["uid"][rows]] = arrays["history"][rows]
    return histories


def _tables(
    model: CFEncoder, train: Split, config: CFConfig, histories: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        if config.history_len:  # users are their history: each one's latest training history
            if histories is None:
                histories = _latest_histories(train, config.history_len)
            histories = torch.from_numpy(histories)
            users = torch.cat([model.user_vectors({"history": h}) for h in histories.split(4096)])
        else:
            users = model.user_vectors({"uid": torch.arange(train.num_users)})
        return users.contiguous(), model.item_vectors().contiguous()


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise naming the first tensor with a NaN or infinite value: a diverged run must not leave
    a bundle that loads fine and scores every item NaN."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{what}: tensor {name!r} holds {bad} non-finite value(s) of {tensor.numel()}; nothing was "
                "written (the training diverged: lower train.lr or set train.max_grad_norm)"
            )


def _users_table(dataset: str, train: Split) -> pa.Table:
    """The dataset's users (raw id, dense id) and whether each had a training row (``trained``):
    a user who appeared only in the held-out days has an embedding nothing trained."""
    users = read_table(dataset, "users.parquet").select(["user_id", "uid"])
    trained = train.users_with_rows()
    return users.append_column("trained", pa.array(trained[users["uid"].to_numpy()]))


def save_cf_bundle(
    out: str,
    model: CFEncoder,
    config: RaylrecConfig,
    meta: dict[str, Any],
    metrics: dict[str, float],
    train: Split,
    histories: np.ndarray | None = None,
    started_from: dict[str, Any] | None = None,
) -> str:
    """``histories``: each user's latest training history, when the caller streamed it (the Ray
    path); otherwise read from ``train``'s rows (sequential encoders only). ``started_from``: a
    warm start's record (``raylrec.cf.warm_start.WarmStart.record``)."""
    users, items = _tables(model, train, config.cf, histories)
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if not v.is_sparse and v.layout == torch.strided
    }
    check_finite({**state, "embeddings users": users, "embeddings items": items}, f"CF bundle {out}")
    dataset = config.dataset_path()
    files = {
        "model.safetensors": lambda p: save_file(state, p),
        "embeddings.safetensors": lambda p: save_file({"users": users, "items": items}, p),
        "users.parquet": parquet_file(_users_table(dataset, train)),
        "items.parquet": parquet_file(read_table(dataset, "items.parquet").select(["item_id", "iid"])),
    }
    description = {
        "cf": config.cf.model_dump(mode="json"),
        "dataset": {"path": dataset, "content_hash": meta["content_hash"]},
        "num_users": train.num_users,
        "num_items": train.num_items,
        "dim": int(items.shape[1]),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        # where its training rows ended: what a warm start from this bundle has not seen
        "training": {"train_cutoff": train_cutoff(meta), "dataset_version": meta.get("version")},
        **({"warm_start": started_from} if started_from else {}),
    }
    return write_bundle(out, CF_BUNDLE, files, description)


class CFBundle:
    """A loaded bundle: the frozen tables, and the encoder rebuilt for sequential models."""

    def __init__(self, config: dict[str, Any], users: torch.Tensor, items: torch.Tensor, encoder: CFEncoder):
        self.config = config
        self.users = users
        self.items = items
        self.encoder = encoder

    def user_representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder.user_representation(batch)


def _description(path: str) -> dict[str, Any]:
    return read_description(path, CF_BUNDLE)


def bundle_history_len(description: dict[str, Any]) -> int:
    """Items of each user's history the bundle's encoder reads (0: it knows users by id), from
    the bundle's recorded ``config.json``."""
    return encoder_config(description["cf"]).history_len


def check_cf_bundle(path: str) -> dict[str, Any]:
    """Verify every file of the bundle against its recorded checksum; returns its description."""
    return check_bundle(path, CF_BUNDLE)


def cf_vocabularies(path: str):
    """(users, items) ``Vocabulary`` of the bundle: its own tables, else its dataset's."""
    from raylrec.data.vocab import Vocabulary

    users, items = read_parquet(path, "users.parquet"), read_parquet(path, "items.parquet")
    if users is None or items is None:  # a bundle from before the tables were copied in: its dataset's
        dataset = _description(path)["dataset"]["path"]
        users, items = read_table(dataset, "users.parquet"), read_table(dataset, "items.parquet")
    return Vocabulary.from_table(users, "user_id", "uid"), Vocabulary.from_table(items, "item_id", "iid")


def trained_users(path: str, num_users: int) -> np.ndarray:
    """One flag per dense user id of the bundle: whether training saw a row of that user. A
    bundle written before the flag was recorded counts every user as trained."""
    users = read_parquet(path, "users.parquet")
    if users is None or "trained" not in users.column_names:
        return np.ones(num_users, bool)
    flags = np.zeros(num_users, bool)
    flags[users["uid"].to_numpy()] = users["trained"].to_numpy(zero_copy_only=False)
    return flags


def load_cf_bundle(path: str) -> CFBundle:
    config = _description(path)
    with fetch_files(path, ("model.safetensors", "embeddings.safetensors")) as local:
        tables = load_file(local["embeddings.safetensors"])
        state = load_file(local["model.safetensors"])
    cf = encoder_config(config["cf"])
    sizes = (config["num_users"], config["num_items"])
    encoder = cf.encoder_class().for_serving(cf, sizes, state, tables)
    encoder.eval()
    return CFBundle(config, tables["users"], tables["items"], encoder)
