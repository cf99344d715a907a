"""The model bundle: everything batch scoring needs, in one directory (local or s3://).

    <bundle>/config.json          method, prompt and backbone config, backbone identity, metrics
    <bundle>/method.safetensors   the method's own weights (adapters, projector, router, ...)
    <bundle>/cf/                  the CF bundle it was trained with (a copy)
    <bundle>/items.parquet        item ids and titles (prompts are built from them)

``config.json`` is written last, with each file's size and sha256: a bundle without it is
incomplete and refuses to load, and ``check_model_bundle`` finds a corrupted one cheaply.
Weights with a NaN or infinite value are refused before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from raylrec import storage
from raylrec.bundle_dir import claim_bundle_dir
from raylrec.cf.bundle import check_cf_bundle, check_finite, load_cf_bundle
from raylrec.config import BackboneConfig, PromptConfig, RaylrecConfig
from raylrec.data.output import read_table
from raylrec.llm.prompts import PromptBuilder
from raylrec.methods.base import RecMethod
from raylrec.methods.config import METHODS, template_text

__all__ = ["save_model_bundle", "load_model_bundle", "check_model_bundle", "ModelBundle", "CONFIG_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "method.safetensors"


def save_model_bundle(
    out: str,
    config: RaylrecConfig,
    weights: dict[str, torch.Tensor],
    identity: dict[str, Any],
    metrics: dict[str, float],
    run: str,
) -> str:
    check_finite(weights, f"model bundle {out}")
    claim_bundle_dir(out, "raylrec.model_bundle/", (WEIGHTS_FILE, "items.parquet", "cf"))
    fs, path = storage.filesystem(out)
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(tmp, WEIGHTS_FILE))
        pq.write_table(read_table(config.dataset_path(), "items.parquet"), os.path.join(tmp, "items.parquet"))
        for name in (WEIGHTS_FILE, "items.parquet"):
            fs.put_file(os.path.join(tmp, name), storage.join(path, name))
    if config.method.cf_bundle:
        _copy_tree(config.method.cf_bundle, storage.join(out, "cf"))
    storage.write_json(
        storage.join(out, CONFIG_FILE),
        {
            "format": "raylrec.model_bundle/1",
            "method": config.method.model_dump(mode="json", exclude={"cf_bundle"}),
            "prompt": config.prompt.model_dump(mode="json"),
            "backbone": config.backbone.model_dump(mode="json"),
            "backbone_identity": identity,
            "dataset": config.dataset_path(),
            "cf_bundle_source": config.method.cf_bundle,
            "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            "run": run,
            "files": storage.file_digests(out, [WEIGHTS_FILE, "items.parquet"]),
        },
    )
    return out


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
    fs, root = storage.filesystem(path)
    if not fs.exists(storage.join(root, CONFIG_FILE)):
        raise FileNotFoundError(f"{path} is not a model bundle (no {CONFIG_FILE}: missing or interrupted)")
    try:
        return storage.read_json(storage.join(path, CONFIG_FILE))
    except ValueError as e:
        raise storage.StorageError(f"model bundle {path}: {CONFIG_FILE} is not valid JSON ({e})") from None


def check_model_bundle(path: str) -> dict[str, Any]:
    """Verify the bundle's files (and its CF copy) against their checksums without loading the
    model: what a job runs before it writes anything. Returns the bundle's description."""
    description = _description(path)
    storage.verify_digests(path, description.get("files", {}), "model bundle")
    fs, root = storage.filesystem(path)
    if fs.exists(f"{root}/cf"):
        check_cf_bundle(storage.join(path, "cf"))
    return description


@dataclass
class ModelBundle:
    method: RecMethod
    prompts: PromptBuilder
    config: dict[str, Any]
    items: pa.Table  # iid, item_id, title, ...: the id space the method scores in


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
    with tempfile.TemporaryDirectory() as tmp:
        fs.get_file(storage.join(root, WEIGHTS_FILE), os.path.join(tmp, WEIGHTS_FILE))
        fs.get_file(storage.join(root, "items.parquet"), os.path.join(tmp, "items.parquet"))
        method.load_method_state_dict(load_file(os.path.join(tmp, WEIGHTS_FILE)))
        items = pq.read_table(os.path.join(tmp, "items.parquet"))
    titles = dict(zip(items["iid"].to_pylist(), items["title"].to_pylist(), strict=True))
    prompt = PromptConfig.model_validate(description["prompt"])
    template = method.stages()[-1].template if prompt.template is None else prompt.template
    builder = PromptBuilder(
        backbone.tokenizer, template_text(template), titles, prompt.max_tokens, prompt.history_items
    )
    return ModelBundle(method.to(device).eval(), builder, description, items)
