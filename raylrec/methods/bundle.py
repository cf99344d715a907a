"""The model bundle: everything batch scoring needs, in one directory (local or s3://).

    <bundle>/config.json          method, prompt and backbone config, backbone identity, metrics
    <bundle>/method.safetensors   the method's own weights (adapters, projector, router, ...)
    <bundle>/cf/                  the CF bundle it was trained with (a copy)
    <bundle>/items.parquet        item ids and titles (prompts are built from them)
    <bundle>/users.parquet        user ids and their dense ids (a full-catalog method's user tokens)

``config.json`` is written last, with each file's size and sha256: a bundle without it is
incomplete and refuses to load, and ``check_model_bundle`` finds a corrupted one cheaply.
Weights with a NaN or infinite value are refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from raylrec import storage
from raylrec.bundle_dir import (
    CONFIG_FILE,
    bundle_kind,
    check_bundle,
    fetch_files,
    parquet_file,
    read_description,
    read_parquet,
    write_bundle,
)
from raylrec.cf.bundle import check_cf_bundle, check_finite, load_cf_bundle
from raylrec.config import BackboneConfig, PromptConfig, RaylrecConfig
from raylrec.data.output import read_table
from raylrec.llm.prompts import PromptBuilder
from raylrec.methods.base import RecMethod
from raylrec.methods.config import METHODS, template_text

__all__ = ["save_model_bundle", "load_model_bundle", "check_model_bundle", "ModelBundle", "CONFIG_FILE"]

KIND = "model bundle"
FORMAT = "raylrec.model_bundle/1"
WEIGHTS_FILE = "method.safetensors"
# "cf": the CF bundle the method was trained with, copied in (a bundle of its own)
MODEL_BUNDLE = bundle_kind(KIND, FORMAT, (WEIGHTS_FILE, "items.parquet", "users.parquet", "cf"))


def save_model_bundle(
    out: str,
    config: RaylrecConfig,
    weights: dict[str, torch.Tensor],
    identity: dict[str, Any],
    metrics: dict[str, float],
    run: str,
) -> str:
    check_finite(weights, f"model bundle {out}")
    state = {k: v.contiguous() for k, v in weights.items()}
    files = {
        WEIGHTS_FILE: lambda p: save_file(state, p),
        "items.parquet": parquet_file(read_table(config.dataset_path(), "items.parquet")),
        "users.parquet": parquet_file(
            read_table(config.dataset_path(), "users.parquet").select(["user_id", "uid"])
        ),
    }
    description = {
        "method": config.method.model_dump(mode="json", exclude={"cf_bundle"}),
        "prompt": config.prompt.model_dump(mode="json"),
        "backbone": config.backbone.model_dump(mode="json"),
        "backbone_identity": identity,
        "dataset": config.dataset_path(),
        "cf_bundle_source": config.method.cf_bundle,
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "run": run,
    }
    source = config.method.cf_bundle
    return write_bundle(
        out,
        MODEL_BUNDLE,
        files,
        description,
        # the CF bundle it was trained with, copied in before the commit
        before_commit=(lambda: _copy_tree(source, storage.join(out, "cf"))) if source else None,
    )


def _copy_tree(source: str, target: str) -> None:
    src_fs, src = storage.filesystem(source)
    dst_fs, dst = storage.filesystem(target)
    dst_fs.makedirs(dst, exist_ok=True)
    names = sorted(p.rsplit("/", 1)[-1] for p in src_fs.ls(src, detail=False))
    # config.json last: the copied CF bundle is complete only once it is there
    for name in sorted(names, key=lambda n: n == "config.json"):
        with src_fs.open(f"{src}/{name}", "rb") as fin, dst_fs.open(f"{dst}/{name}", "wb") as fout:
            fout.write(fin.read())


def _description(path: str) -> dict[str, Any]:
    return read_description(path, MODEL_BUNDLE)


def check_model_bundle(path: str) -> dict[str, Any]:
    """Verify the bundle's files (and its CF copy) against their checksums without loading the
    model: what a job runs before it writes anything. Returns the bundle's description."""
    description = check_bundle(path, MODEL_BUNDLE)
    fs, root = storage.filesystem(path)
    if fs.exists(f"{root}/cf"):
        check_cf_bundle(storage.join(path, "cf"))
    return description


@dataclass
class ModelBundle:
    method: RecMethod
    prompts: PromptBuilder | None  # None: the method builds its own prompts (its stages name no template)
    config: dict[str, Any]
    items: pa.Table  # iid, item_id, title, ...: the id space the method scores in
    tokenizer: Any = None  # the backbone's
    users: pa.Table | None = None  # user_id, uid (None: a bundle written before bundles held it)


def load_model_bundle(path: str, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the method from the bundle alone (backbone by its recorded config) and load its
    weights; ``prompts`` builds its template for scoring."""
    from raylrec.llm.backbone import load_backbone

    fs, root = storage.filesystem(path)
    description = _description(path)
    method_config = METHODS.validate_recorded(
        {**description["method"], "cf_bundle": storage.join(path, "cf") if fs.exists(f"{root}/cf") else None}
    )
    backbone = load_backbone(BackboneConfig.model_validate(description["backbone"]), device)
    cf = load_cf_bundle(method_config.cf_bundle) if method_config.cf_bundle else None
    method = method_config.build(backbone, cf)
    with fetch_files(path, (WEIGHTS_FILE, "items.parquet")) as local:
        method.load_method_state_dict(load_file(local[WEIGHTS_FILE]))
        items = pq.read_table(local["items.parquet"])
    titles = dict(zip(items["iid"].to_pylist(), items["title"].to_pylist(), strict=True))
    prompt = PromptConfig.model_validate(description["prompt"])
    template = method.stages()[-1].template if prompt.template is None else prompt.template
    builder = None
    if template:  # a full-catalog method (CLLM4Rec) assembles its own prompts and names none
        builder = PromptBuilder(
            backbone.tokenizer, template_text(template), titles, prompt.max_tokens, prompt.history_items
        )
    users = read_parquet(path, "users.parquet")
    return ModelBundle(method.to(device).eval(), builder, description, items, backbone.tokenizer, users)
