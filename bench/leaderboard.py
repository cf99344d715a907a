"""One leaderboard: every registered method and CF encoder trained (or reused) and evaluated on
one protocol per task, one table written as Markdown, CSV and a PNG chart.

- **CTR** on the CoLLM MovieLens-1M split (``configs/collm_ml1m.yaml``): MF, LightGCN and SASRec
  (BCE, every training row), TALLRec, CoLLM-MF, CoLLM-SASRec, CoRA-MF and RecLoRA (one backbone,
  each on the same Few2Many hash sample of training rows); AUC and UAUC on all, warm and cold rows
  of every held-out split the dataset has (valid; test when it has one), every model scored on
  the same hash sample of those rows.
- **Top-K** on MovieLens-100K, random per-user 8:1:1 (``configs/ml100k.yaml``): MF-BPR, LightGCN,
  RLMRec's LightGCN and LightGCN + RLMRec-Con / -Gen (on the metadata-text embeddings of
  ``raylrec profiles embed --text metadata``, labelled so; on LLM-profile embeddings as well
  when they exist), CLLM4Rec (full catalogue), and MF-BPR retrieval + each pointwise LLM
  reranker; Recall@10/20 and NDCG@10/20 (denominator |test items|) on test, training and valid
  items masked. CF rows rank every user; the rerank rows (and CF retrieval alone beside them)
  rank the same sample of test users.

Beside each row: training wall time and samples/s, scoring rate (CTR rows/s, or users/s and
candidates/s) and the hardware.

    python bench/leaderboard.py --scale cpu --local           # a quiet 2-core machine: about 1.5 h
    python bench/leaderboard.py --scale full --device cuda --dtype bfloat16 --local
    python bench/leaderboard.py --scale smoke --local         # a rehearsal: tiny sizes, minutes
    python bench/leaderboard.py --scale cpu --only ctr/mf ctr/tallrec   # a subset (and its inputs)

Every row's result is cached as JSON under ``--out`` (default ``out/leaderboard/<scale>``) keyed
by a fingerprint of the row's fully resolved config, the dataset's content hash, its evaluation
settings and its inputs' fingerprints: a rerun only trains what changed, and a killed run
resumes (finished rows are read back; an unfinished training run resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raylrec import storage  # noqa: E402
from raylrec.config import RaylrecConfig, build_config, load_raw_config  # noqa: E402

CONFIGS = REPO / "configs"
SECTIONS = {
    "ctr": "CTR, CoLLM MovieLens-1M split",
    "topk": "Top-K, MovieLens-100K, random per-user 8:1:1",
}
CTR_SLICES = ("", "warm/", "cold/")
TOPK_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


# --- scales -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """What a scale trains and scores. ``None``: the preset's own value (or every row)."""

    description: str
    backbone: str = "smollm2-135m-instruct"
    llm_train_rows: int | None = None  # Few2Many hash sample of train for every LLM method
    valid_rows: int | None = None  # hash sample of each held-out CTR split, every CTR row
    llm_epochs: int | None = None
    llm_batch: int | None = None
    max_tokens: int | None = None
    cf_epochs: int | None = None  # cap on the CF presets' epochs
    rerank_users: int | None = None  # test users reranked (None: all with test items)
    candidates: int = 50  # MF-BPR candidates per reranked user
    cllm4rec: dict[str, Any] = field(default_factory=dict)  # method overrides
    cllm4rec_epochs: int | None = None
    cllm4rec_max_items: int | None = None
    topk_llm_rows: int | None = None  # Few2Many sample of ML-100K train for the rerankers
    topk_valid_rows: int | None = None


SCALES = {
    "smoke": Scale(
        "rehearsal only: a randomly initialised 2-layer Llama, 16 LLM training rows, CF 2 epochs",
        backbone="tiny-random-llama",
        llm_train_rows=16,
        valid_rows=64,
        llm_epochs=1,
        llm_batch=4,
        max_tokens=160,
        cf_epochs=2,
        rerank_users=8,
        candidates=30,
        cllm4rec={"content_epochs": 1, "pretrain_epochs": 1, "max_items": 16},
        cllm4rec_epochs=1,
        topk_llm_rows=16,
        topk_valid_rows=64,
    ),
    "cpu": Scale(
        "a quiet 2-core CPU in about an hour and a half: SmolLM2-135M, 300 LLM training rows, 1 epoch; "
        "CF at most 100 epochs",
        llm_train_rows=300,
        valid_rows=500,
        llm_epochs=1,
        llm_batch=8,
        max_tokens=200,
        cf_epochs=100,
        rerank_users=48,
        candidates=30,
        # CLLM4Rec: no separate content warm-up and no content pass while fine-tuning (the
        # pretraining epoch still trains both models), else it alone takes 40 minutes here
        cllm4rec={"content_epochs": 0, "pretrain_epochs": 1, "finetune_content": False, "max_items": 50},
        cllm4rec_epochs=1,
        topk_llm_rows=300,
        topk_valid_rows=200,  # the rerankers' validation while training; the table's metrics are test's
    ),
    "full": Scale("the papers' sizes: every training and held-out row, the presets' epochs"),
}


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One leaderboard row. ``covers``: the registered models it runs (``cf:<encoder>``,
    ``method:<name>``); ``needs``: rows whose bundles it reads; ``kind``: ``cf`` (train_cf),
    ``llm`` (train_method, CTR), ``rerank`` (MF-BPR retrieval, then the LLM trained on ML-100K
    reranks; ``None`` config: retrieval alone), ``catalog`` (a full-catalogue LLM method)."""

    name: str
    label: str
    section: str
    kind: str
    covers: tuple[str, ...]
    needs: tuple[str, ...] = ()
    preset: str | None = None  # configs/<preset>.yaml
    overrides: tuple[tuple[str, Any], ...] = ()
    optional: str | None = None  # a file that must exist, else the row is skipped (why)


def _rows() -> list[Row]:
    mf_ctr, sas_ctr = "out:ctr/mf", "out:ctr/sasrec"
    mf_bpr = "out:topk/mf-bpr"
    lightgcn_ctr = (("cf", {"model": "lightgcn", "dim": 64, "loss": "bce", "layers": 3, "combine": "mean"}),)
    rows = [
        Row("ctr/mf", "MF (dim 256, BCE)", "ctr", "cf", ("cf:mf",), preset="mf_collm_ml1m"),
        Row(
            "ctr/lightgcn",
            "LightGCN (3 layers, dim 64, BCE)",
            "ctr",
            "cf",
            ("cf:lightgcn",),
            preset="mf_collm_ml1m",
            overrides=lightgcn_ctr,
        ),
        Row(
            "ctr/sasrec",
            "SASRec (2 blocks, dim 64, BCE)",
            "ctr",
            "cf",
            ("cf:sasrec",),
            preset="sasrec_collm_ml1m",
        ),
        Row(
            "ctr/tallrec",
            "TALLRec (LoRA, text only)",
            "ctr",
            "llm",
            ("method:tallrec",),
            preset="tallrec_collm_ml1m",
        ),
        Row(
            "ctr/collm-mf",
            "CoLLM-MF",
            "ctr",
            "llm",
            ("method:collm",),
            ("ctr/mf", "ctr/tallrec"),
            preset="collm_collm_ml1m",
            overrides=(
                ("method.cf_bundle", mf_ctr),
                ("method.stage1_epochs", 0),
                ("method.init_from", "out:ctr/tallrec"),
            ),
        ),
        Row(
            "ctr/collm-sasrec",
            "CoLLM-SASRec",
            "ctr",
            "llm",
            ("method:collm",),
            ("ctr/sasrec", "ctr/tallrec"),
            preset="collm_collm_ml1m",
            overrides=(
                ("method.cf_bundle", sas_ctr),
                ("method.stage1_epochs", 0),
                ("method.init_from", "out:ctr/tallrec"),
            ),
        ),
        Row(
            "ctr/cora-mf",
            "CoRA-MF",
            "ctr",
            "llm",
            ("method:cora",),
            ("ctr/mf",),
            preset="cora_collm_ml1m",
            overrides=(("method.cf_bundle", mf_ctr),),
        ),
        Row(
            "ctr/reclora",
            "RecLoRA (SASRec router, 8 experts)",
            "ctr",
            "llm",
            ("method:reclora",),
            ("ctr/sasrec",),
            preset="reclora_collm_ml1m",
            overrides=(("method.cf_bundle", sas_ctr), ("sample.train_fraction", 1.0)),
        ),
        # top-K
        Row("topk/mf-bpr", "MF-BPR (dim 64)", "topk", "cf", ("cf:mf",), preset="mf_bpr_ml100k"),
        Row(
            "topk/lightgcn",
            "LightGCN (3 layers, mean, dim 64)",
            "topk",
            "cf",
            ("cf:lightgcn",),
            preset="lightgcn_ml100k",
        ),
        Row(
            "topk/lightgcn-rlmrec",
            "LightGCN, RLMRec's (3 layers, sum, dim 32)",
            "topk",
            "cf",
            ("cf:lightgcn",),
            preset="lightgcn_rlmrec_ml100k",
        ),
        # RLMRec-Con and -Gen on each kind of embeddings: metadata text (no LLM), then the LLM
        # profiles (run only when their embeddings exist)
        *(
            Row(
                f"topk/rlmrec-{variant}-{kind}",
                f"LightGCN + RLMRec-{variant.capitalize()}, {text} embeddings",
                "topk",
                "cf",
                ("cf:rlmrec",),
                preset=f"rlmrec_{variant}_ml100k",
                overrides=(("cf.profiles", f"emb:{kind}"),),
                optional=None if kind == "metadata" else f"emb:{kind}",
            )
            for kind, text in (("metadata", "metadata-text"), ("profiles", "LLM-profile"))
            for variant in ("con", "gen")
        ),
        Row(
            "topk/cllm4rec",
            "CLLM4Rec (full catalogue)",
            "topk",
            "catalog",
            ("method:cllm4rec",),
            preset="cllm4rec_ml100k",
        ),
        Row(
            "topk/retrieval",
            "MF-BPR retrieval alone (the rerank users)",
            "topk",
            "rerank",
            (),
            ("topk/mf-bpr",),
        ),
    ]
    rerankers = {
        "tallrec": ("TALLRec", "tallrec_collm_ml1m", ()),
        "collm": ("CoLLM-MF", "collm_collm_ml1m", ("method.cf_bundle", mf_bpr)),
        "cora": ("CoRA-MF", "cora_collm_ml1m", ("method.cf_bundle", mf_bpr)),
        "reclora": ("RecLoRA (MF router)", "reclora_collm_ml1m", ("method.cf_bundle", mf_bpr)),
    }
    for name, (label, preset, cf) in rerankers.items():
        overrides = [("dataset", "data:topk"), ("sample.train_fraction", 1.0)]
        if cf:
            overrides.append(cf)
        needs = ["topk/mf-bpr"]
        if name == "collm":  # CoLLM's stage 1 is TALLRec: start from its bundle, as on the CTR split
            overrides += [("method.stage1_epochs", 0), ("method.init_from", "out:topk/rerank-tallrec")]
            needs.append("topk/rerank-tallrec")
        rows.append(
            Row(
                f"topk/rerank-{name}",
                f"MF-BPR retrieval + {label} rerank",
                "topk",
                "rerank",
                (f"method:{name}",),
                tuple(needs),
                preset=preset,
                overrides=tuple(overrides),
            )
        )
    return rows


ROWS: dict[str, Row] = {r.name: r for r in _rows()}


def registered_models() -> set[str]:
    """Every registered CF encoder and LLM method, as ``cf:<name>`` / ``method:<name>``."""
    from raylrec.cf.config import ENCODERS
    from raylrec.methods import METHODS

    return {f"cf:{n}" for n in ENCODERS.names()} | {f"method:{n}" for n in METHODS.names()}


def uncovered_models(rows: dict[str, Row] | None = None) -> set[str]:
    """Registered models no row runs (a new method needs its row here)."""
    covered = {c for r in (rows or ROWS).values() for c in r.covers}
    return registered_models() - covered


def with_needs(names: list[str], rows: dict[str, Row] | None = None) -> list[str]:
    """``names`` and every row they read from, inputs first, in registry order."""
    rows = rows or ROWS
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in rows:
            raise SystemExit(f"unknown row {name!r}; rows: {', '.join(rows)}")
        if name not in wanted:
            wanted.add(name)
            for need in rows[name].needs:
                add(need)

    for name in names:
        add(name)
    order = list(rows)
    done: list[str] = []
    while len(done) < len(wanted):  # topological, stable by registry order
        for name in order:
            if name in wanted and name not in done and all(n in done for n in rows[name].needs):
                done.append(name)
                break
    return done


# --- fingerprints and the cache ------------------------------------------------------------------

# Config fields that name where things go or how loudly, not what is computed.
VOLATILE = {
    ("output",),
    ("train", "storage_path"),
    ("train", "run_name"),
    ("train", "wandb_project"),
    ("train", "log_every_s"),
    ("train", "checkpoint_every"),
    ("ray",),
}


def _strip(value: Any, path: tuple[str, ...] = ()) -> Any:
    if path in VOLATILE:
        return None
    if isinstance(value, dict):
        return {k: _strip(v, (*path, k)) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_strip(v, path) for v in value]
    return value


def fingerprint(
    resolved: dict[str, Any], dataset_hash: str, evaluation: dict[str, Any], inputs: dict[str, str]
) -> str:
    """sha256 of what determines a row's numbers: the fully resolved config (paths of outputs and
    logging left out), the dataset's content hash, the evaluation settings and the fingerprints of
    the rows it reads (not their paths: a moved cache still matches)."""
    payload = {
        "config": _strip(resolved),
        "dataset": dataset_hash,
        "evaluation": evaluation,
        "inputs": dict(sorted(inputs.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _slug(name: str) -> str:
    return name.replace("/", "__")


class Cache:
    """Row results as JSON, ``<root>/rows/<row>/<fingerprint>.json``; bundles under
    ``<root>/bundles/<row>-<fingerprint[:12]>``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def result_path(self, row: str, fp: str) -> Path:
        return self.root / "rows" / _slug(row) / f"{fp}.json"

    def bundle_path(self, row: str, fp: str) -> Path:
        return self.root / "bundles" / f"{_slug(row)}-{fp[:12]}"

    def load(self, row: str, fp: str, needs_bundle: bool = False) -> dict[str, Any] | None:
        """The cached result of ``row`` at ``fp``; None when there is none (or its bundle, which
        a later row reads, is gone)."""
        path = self.result_path(row, fp)
        if not path.exists():
            return None
        result = json.loads(path.read_text())
        if result.get("fingerprint") != fp:
            return None
        if needs_bundle and result.get("bundle") and not Path(result["bundle"]).exists():
            return None
        return result

    def save(self, row: str, fp: str, result: dict[str, Any]) -> Path:
        path = self.result_path(row, fp)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(
            json.dumps({**result, "fingerprint": fp}, indent=2, sort_keys=True, default=str) + "\n"
        )
        os.replace(partial, path)  # a killed run never leaves half a result
        return path


# --- hardware -----------------------------------------------------------------------------------


def hardware(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (1 GPU)"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} cores"


# --- configs ------------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    scale: Scale
    cache: Cache
    datasets: dict[str, str]  # section -> prepared dataset
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # row -> result (this run)
    embeddings: dict[str, str] = field(default_factory=dict)  # kind -> directory

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _resolve_value(value: Any, ctx: Context) -> Any:
    if not isinstance(value, str):
        return value
    if value.startswith("out:"):
        return ctx.results[value[4:]]["bundle"]
    if value.startswith("data:"):
        return ctx.datasets[value[5:]]
    if value.startswith("emb:"):
        return ctx.embeddings[value[4:]]
    return value


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **value}
    else:
        node[last] = value


def row_config(row: Row, ctx: Context) -> RaylrecConfig:
    """The row's preset with this run's dataset, scale, device and inputs; ``output`` and the run
    name are filled in once the fingerprint is known."""
    args, scale = ctx.args, ctx.scale
    raw = load_raw_config(CONFIGS / f"{row.preset}.yaml", [])
    raw["dataset"] = ctx.datasets[row.section]
    for key, value in row.overrides:
        _set(raw, key, _resolve_value(value, ctx))
    train = raw.setdefault("train", {})
    train["storage_path"] = str(ctx.cache.root / "runs")
    train.pop("wandb_project", None)
    train["log_every_s"] = 60
    workers = 0 if args.local else train.get("num_workers", 2)
    train["num_workers"] = workers
    train["use_gpu"] = args.device.startswith("cuda")
    if row.kind == "cf":
        if scale.cf_epochs is not None:
            train["epochs"] = min(train.get("epochs", scale.cf_epochs), scale.cf_epochs)
        if row.section == "topk":
            raw["eval"] = {**raw.get("eval", {}), "ks": [10, 20], "recall_denominator": "test_items"}
        return build_config(raw, f"{row.preset}.yaml ({row.name})")
    # LLM rows: one backbone, one sample, one dtype
    raw["backbone"] = {
        **raw.get("backbone", {}),
        "name": args.backbone or scale.backbone,
        "dtype": args.dtype,
    }
    if row.kind == "catalog":
        raw["method"].update(scale.cllm4rec)
        if scale.cllm4rec_epochs is not None:
            train["epochs"] = scale.cllm4rec_epochs
            train["patience"] = scale.cllm4rec_epochs
        raw["eval"] = {"ks": [10, 20], "recall_denominator": "test_items"}
        return build_config(raw, f"{row.preset}.yaml ({row.name})")
    sample = raw.setdefault("sample", {})
    if row.section == "ctr":
        train_rows, valid_rows = scale.llm_train_rows, scale.valid_rows
    else:
        train_rows, valid_rows = scale.topk_llm_rows, scale.topk_valid_rows
    sample["max_train"] = train_rows
    sample["max_valid"] = valid_rows
    sample["seed"] = 2020
    if scale.max_tokens:
        raw.setdefault("prompt", {})["max_tokens"] = scale.max_tokens
    if scale.llm_epochs:
        train["epochs"] = scale.llm_epochs
        train["patience"] = scale.llm_epochs
    if scale.llm_batch:
        train["batch_size"] = scale.llm_batch
    return build_config(raw, f"{row.preset}.yaml ({row.name})")


def evaluation_settings(row: Row, ctx: Context) -> dict[str, Any]:
    """What the row's scoring after training depends on (in the fingerprint)."""
    scale = ctx.scale
    if row.section == "ctr":
        return {"valid_rows": scale.valid_rows, "seed": 2020, "device": ctx.args.device}
    if row.kind == "rerank":
        return {
            "users": scale.rerank_users,
            "candidates": scale.candidates,
            "seed": 0,
            "history": 10,
            "ks": [10, 20],
            "device": ctx.args.device,
        }
    return {"ks": [10, 20], "device": ctx.args.device, "dtype": ctx.args.dtype}


# --- evaluation ---------------------------------------------------------------------------------


def _sample_fraction(dataset: str, split: str, limit: int | None) -> float:
    from raylrec.data.output import read_meta

    rows = int(read_meta(dataset)["counts"]["splits"][split])
    return 1.0 if limit is None or not rows else min(1.0, limit / rows)


def held_out_splits(dataset: str) -> list[str]:
    from raylrec.data.output import read_meta

    return [s for s in ("valid", "test") if s in read_meta(dataset)["counts"]["splits"]]


def ctr_cf_eval(config: RaylrecConfig, bundle: str, ctx: Context) -> dict[str, float]:
    from bench.common import cf_ctr_metrics

    metrics: dict[str, float] = {}
    for split in held_out_splits(config.dataset_path()):
        fraction = _sample_fraction(config.dataset_path(), split, ctx.scale.valid_rows)
        metrics.update(cf_ctr_metrics(config.dataset_path(), bundle, split, 2020, fraction))
    return metrics


RATE_ROWS = 64  # rows scored to time a split whose metrics training already computed


def ctr_llm_eval(
    config: RaylrecConfig, bundle_path: str, ctx: Context, trained: dict[str, float] | None = None
) -> dict[str, float]:
    """The trained bundle scored on each held-out split's sample (the rows training validated on,
    and test's when there is one) through the method's own scoring of CTR rows; rows/s timed.
    ``trained``: the training run's metrics of the exported (best) epoch. Training validated on
    this very sample, so valid's metrics are taken from there and only ``RATE_ROWS`` rows are
    scored again, to time the rate."""
    import torch

    from raylrec.cf.bundle import bundle_history_len
    from raylrec.llm.samples import local_samples
    from raylrec.methods.bundle import load_model_bundle
    from raylrec.methods.task import ctr_metrics, score_arrays
    from raylrec.methods.train import _stage_template

    device = torch.device(ctx.args.device)
    bundle = load_model_bundle(bundle_path, device)
    stages = bundle.method.stages()
    template = _stage_template(config, stages[-1], last=True)
    cf = storage.join(bundle_path, "cf")
    history = (
        bundle_history_len(storage.read_json(storage.join(cf, "config.json"))) if bundle.method.cf else 0
    )
    metrics: dict[str, float] = {}
    for split in held_out_splits(config.dataset_path()):
        arrays = local_samples(config, split, template, history, bundle.tokenizer)
        rows = len(arrays["uid"])
        known = trained is not None and trained.get(f"{split}/rows") == rows
        timed = {k: v[:RATE_ROWS] for k, v in arrays.items()} if known else arrays
        started = time.perf_counter()
        logits = score_arrays(bundle.method, timed, max(8, config.train.batch_size), device)
        seconds = time.perf_counter() - started
        if known:
            metrics.update({k: v for k, v in trained.items() if k.startswith(f"{split}/")})
        else:
            metrics.update(ctr_metrics(arrays, logits, config.eval, split))
        metrics[f"{split}/rows"] = float(rows)
        metrics[f"{split}/score_rows_per_s"] = len(timed["uid"]) / max(seconds, 1e-9)
    return metrics


def _truth(dataset: str) -> dict[int, set[int]]:
    """Test items per uid (every test interaction is relevant: ML-100K's implicit protocol)."""
    from raylrec.data.output import read_table

    table = read_table(dataset, "test", columns=["uid", "iid"])
    truth: dict[int, set[int]] = {}
    for u, i in zip(table["uid"].to_numpy().tolist(), table["iid"].to_numpy().tolist(), strict=True):
        truth.setdefault(u, set()).add(i)
    return truth


def _topk_metrics(ranked: list[list[int]], truth: list[set[int]], ks=(10, 20)) -> dict[str, float]:
    import torch

    from raylrec.eval.ranking import topk_metric_sums

    width = max(ks)
    hits = torch.zeros(len(ranked), width, dtype=torch.float64)
    for r, (items, relevant) in enumerate(zip(ranked, truth, strict=True)):
        for c, item in enumerate(items[:width]):
            hits[r, c] = float(item in relevant)
    relevant = torch.tensor([len(t) for t in truth], dtype=torch.float64)
    sums = topk_metric_sums(hits, relevant, tuple(ks), "test_items")
    out = {f"test/{k}": v / len(ranked) for k, v in sums.items() if k.split("@")[0] in ("recall", "ndcg")}
    out["test/users"] = float(len(ranked))
    return out


def rerank_eval(
    dataset: str, cf_bundle: str, model_bundle: str | None, users: int | None, candidates: int, device: str
) -> dict[str, float]:
    """MF-BPR's top ``candidates`` (train and valid items excluded) for ``users`` test users
    (seeded sample; None: all), reordered by ``model_bundle`` (None: the retrieval order);
    Recall/NDCG@10/20 against test, and the rates."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from score import _profiles  # bench/score.py: latest positives and seen items per user

    from raylrec.cf.bundle import load_cf_bundle
    from raylrec.scoring.retrieval import exact_top_n

    truth = _truth(dataset)
    positives, seen = _profiles(dataset, 10)
    with_test = sorted(u for u in truth if u <= len(seen))
    if users is not None and users < len(with_test):
        with_test = sorted(np.random.default_rng(0).choice(with_test, users, replace=False).tolist())
    cf = load_cf_bundle(cf_bundle)
    started = time.perf_counter()
    vectors = cf.users[torch.as_tensor(with_test)]
    _, ids = exact_top_n(vectors, cf.items, candidates, [seen[u - 1] for u in with_test])
    retrieval_s = time.perf_counter() - started
    ranked = [row[row > 0].tolist() for row in ids]
    metrics = {"score/retrieval_users_per_s": len(with_test) / max(retrieval_s, 1e-9)}
    if model_bundle is not None:
        from raylrec.cf.bundle import bundle_history_len
        from raylrec.methods.bundle import load_model_bundle
        from raylrec.scoring.rerank import Reranker, RerankRequest

        bundle = load_model_bundle(model_bundle, device)
        own_cf = storage.join(model_bundle, "cf")
        history = (
            bundle_history_len(storage.read_json(storage.join(own_cf, "config.json")))
            if bundle.method.cf
            else 0
        )
        reranker = Reranker(bundle.method, bundle.prompts, history)
        requests = [
            RerankRequest(u, positives[u - 1].tolist(), items)
            for u, items in zip(with_test, ranked, strict=True)
        ]
        started = time.perf_counter()
        with torch.no_grad():
            scores = reranker.score(requests)
        seconds = time.perf_counter() - started
        ranked = [
            [items[j] for j in np.argsort(-s, kind="stable")] for items, s in zip(ranked, scores, strict=True)
        ]
        scored = sum(len(r.candidates) for r in requests)
        metrics["score/candidates_per_s"] = scored / max(seconds, 1e-9)
        metrics["score/users_per_s"] = len(requests) / max(seconds, 1e-9)
    else:
        metrics["score/users_per_s"] = metrics["score/retrieval_users_per_s"]
    metrics.update(_topk_metrics(ranked, [truth[u] for u in with_test]))
    return metrics


def cf_topk_rate(dataset: str, bundle: str) -> dict[str, float]:
    """Full-catalogue top-20 for every test user (train and valid items masked): users/s."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from score import _profiles

    from raylrec.cf.bundle import load_cf_bundle
    from raylrec.scoring.retrieval import exact_top_n

    truth = _truth(dataset)
    _, seen = _profiles(dataset, 10)
    users = sorted(u for u in truth if u <= len(seen))
    cf = load_cf_bundle(bundle)
    started = time.perf_counter()
    exact_top_n(cf.users[torch.as_tensor(users)], cf.items, 20, [seen[u - 1] for u in users])
    return {"score/users_per_s": len(users) / max(time.perf_counter() - started, 1e-9)}


def catalog_eval(dataset: str, bundle_path: str, device: str) -> dict[str, float]:
    """A full-catalogue method's top 20 for every test user (train and valid items in its prompt
    and masked): Recall/NDCG@10/20 on test, users/s."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from score import _profiles

    from raylrec.methods.bundle import load_model_bundle

    truth = _truth(dataset)
    _, seen = _profiles(dataset, 10)
    users = sorted(u for u in truth if u <= len(seen))
    bundle = load_model_bundle(bundle_path, device)
    started = time.perf_counter()
    with torch.no_grad():
        _, ids = bundle.method.recommend(np.array(users, np.int64), [seen[u - 1] for u in users], 20)
    seconds = time.perf_counter() - started
    ranked = [np.asarray(row).tolist() for row in ids]
    return {**_topk_metrics(ranked, [truth[u] for u in users]), "score/users_per_s": len(users) / seconds}


# --- running a row ------------------------------------------------------------------------------


def _training_cost(result, workers: int) -> dict[str, float]:
    samples = seconds = 0.0
    for state in result.states.values():
        for h in state.history:
            if "train/samples_per_s" in h and "train/epoch_s" in h:
                samples += h["train/samples_per_s"] * h["train/epoch_s"] * max(workers, 1)
                seconds += h["train/epoch_s"]
    epochs = sum(len(s.history) for s in result.states.values())
    return {
        "train_wall_s": result.seconds,
        "train_samples_per_s": samples / seconds if seconds else float("nan"),
        "train_samples": samples,
        "train_epochs": float(epochs),
    }


def _train(row: Row, config: RaylrecConfig, ctx: Context) -> tuple[dict[str, float], dict[str, float]]:
    """Train the row's model; (its training metrics, its cost)."""
    use_ray = not ctx.args.local
    say = (lambda m: ctx.say(f"  {row.name}: {m}")) if ctx.args.verbose else (lambda m: None)
    workers = config.train.num_workers if use_ray else 1
    if row.kind == "cf":
        from raylrec.cf.train import train_cf

        result = train_cf(config, say=say, use_ray=use_ray)
    else:
        from raylrec.methods.train import train_method

        result = train_method(config, say=say, use_ray=use_ray)
    return dict(result.metrics), _training_cost(result, workers)


def run_row(row: Row, ctx: Context) -> dict[str, Any] | None:
    """The row's result: read back from the cache when its fingerprint matches, else trained and
    evaluated now and cached."""
    from raylrec.data.output import read_meta

    if row.optional and row.optional.startswith("emb:") and row.optional[4:] not in ctx.embeddings:
        ctx.say(f"skip {row.name}: no {row.optional[4:]} embeddings (raylrec profiles embed)")
        return None
    dataset = ctx.datasets[row.section]
    inputs = {need: ctx.results[need]["fingerprint"] for need in row.needs}
    config = row_config(row, ctx) if row.preset else None
    resolved = config.model_dump(mode="json") if config else {"retrieval": "mf-bpr"}
    if config is not None:  # the inputs' bundle paths hold their fingerprints; compare those instead
        resolved = json.loads(json.dumps(resolved).replace(str(ctx.cache.root), "<out>"))
    fp = fingerprint(resolved, read_meta(dataset)["content_hash"], evaluation_settings(row, ctx), inputs)
    cached = ctx.cache.load(row.name, fp, needs_bundle=True)
    if cached is not None:
        ctx.say(f"reuse {row.name} ({fp[:12]}): cached {ctx.cache.result_path(row.name, fp)}")
        return cached
    ctx.say(f"run {row.name} ({fp[:12]}): {row.label}")
    started = time.perf_counter()
    bundle = None
    train_metrics: dict[str, float] = {}
    cost: dict[str, float] = {}
    if config is not None:
        bundle = str(ctx.cache.bundle_path(row.name, fp))
        config = config.model_copy(
            update={
                "output": bundle,
                "train": config.train.model_copy(update={"run_name": f"lb-{_slug(row.name)}-{fp[:12]}"}),
            }
        )
        train_metrics, cost = _train(row, config, ctx)
    if row.kind == "cf" and row.section == "ctr":
        metrics = ctr_cf_eval(config, bundle, ctx)
    elif row.kind == "cf":
        metrics = {k: v for k, v in train_metrics.items() if k.startswith(("test/", "valid/"))}
        metrics.update(cf_topk_rate(dataset, bundle))
    elif row.kind == "llm":
        metrics = ctr_llm_eval(config, bundle, ctx, train_metrics)
    elif row.kind == "rerank":
        mf = ctx.results["topk/mf-bpr"]["bundle"]
        metrics = rerank_eval(
            dataset, mf, bundle, ctx.scale.rerank_users, ctx.scale.candidates, ctx.args.device
        )
        metrics.update({k: v for k, v in train_metrics.items() if k.startswith("valid/")})
    else:
        metrics = catalog_eval(dataset, bundle, ctx.args.device)
        metrics.update({k: v for k, v in train_metrics.items() if k.startswith("valid/")})
    result = {
        "row": row.name,
        "label": row.label,
        "section": row.section,
        "kind": row.kind,
        "bundle": bundle,
        "metrics": metrics,
        "train_metrics": train_metrics,
        "cost": cost,
        "row_wall_s": time.perf_counter() - started,
        "hardware": hardware(ctx.args.device),
        "runner": "plain process" if ctx.args.local else "Ray Train",
        "scale": ctx.args.scale,
        "backbone": (
            config.backbone.name if config is not None and config.backbone and row.kind != "cf" else None
        ),
        "config": resolved,
        "command": " ".join(sys.argv),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = ctx.cache.save(row.name, fp, result)
    ctx.say(f"done {row.name} in {result['row_wall_s']:.0f}s: {headline(result)} -> {path}")
    return {**result, "fingerprint": fp}


# --- tables -------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _rate(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def headline(result: dict[str, Any]) -> str:
    m = result["metrics"]
    if result["section"] == "ctr":
        return f"valid AUC {_fmt(m.get('valid/auc'))}, UAUC {_fmt(m.get('valid/uauc'))}"
    return f"test R@20 {_fmt(m.get('test/recall@20'))}, N@20 {_fmt(m.get('test/ndcg@20'))}"


def table_rows(results: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per section: (header, rows of cells) for the Markdown and CSV writers."""
    out: dict[str, tuple[list[str], list[list[str]]]] = {}
    cost_header = ["train wall", "train samples/s", "scoring rate", "hardware"]
    ctr = [r for r in results if r["section"] == "ctr"]
    if ctr:
        splits = [s for s in ("valid", "test") if any(f"{s}/auc" in r["metrics"] for r in ctr)]
        header = ["row", "model"]
        for split in splits:
            header += [
                f"{split} {s.rstrip('/')} {m}".replace("  ", " ") for s in CTR_SLICES for m in ("AUC", "UAUC")
            ]
            header.append(f"{split} rows")
        lines = []
        for r in ctr:
            m, c = r["metrics"], r.get("cost", {})
            cells = [r["row"], r["label"]]
            for split in splits:
                cells += [_fmt(m.get(f"{split}/{s}{k}")) for s in CTR_SLICES for k in ("auc", "uauc")]
                cells.append(_fmt(int(m[f"{split}/rows"]) if f"{split}/rows" in m else None))
            rows_s = m.get("valid/score_rows_per_s")
            if rows_s is None and m.get("valid/score_s"):  # results cached before the rate was kept
                rows_s = m.get("valid/rows", 0) / m["valid/score_s"]
            cells += [
                _duration(c.get("train_wall_s")),
                _rate(c.get("train_samples_per_s")),
                f"{_rate(rows_s)} rows/s",
                r.get("hardware", "-"),
            ]
            lines.append(cells)
        out["ctr"] = (
            header + cost_header,
            lines,
        )
    topk = [r for r in results if r["section"] == "topk"]
    if topk:
        header = [
            "row",
            "model",
            *[f"test {k.replace('recall', 'Recall').replace('ndcg', 'NDCG')}" for k in TOPK_METRICS],
            "test users",
        ]
        lines = []
        for r in topk:
            m, c = r["metrics"], r.get("cost", {})
            rate = f"{_rate(m.get('score/users_per_s'))} users/s"
            if "score/candidates_per_s" in m:
                rate += f", {_rate(m['score/candidates_per_s'])} cand/s"
            lines.append(
                [
                    r["row"],
                    r["label"],
                    *[_fmt(m.get(f"test/{k}")) for k in TOPK_METRICS],
                    _fmt(int(m["test/users"]) if "test/users" in m else None),
                    _duration(c.get("train_wall_s")),
                    _rate(c.get("train_samples_per_s")),
                    rate,
                    r.get("hardware", "-"),
                ]
            )
        out["topk"] = (header + cost_header, lines)
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the first two columns (row, model) left-aligned, the rest right."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
        *["| " + " | ".join(cells) + " |" for cells in rows],
    ]


def write_markdown(path: Path, results: list[dict[str, Any]], preamble: list[str]) -> None:
    lines = [*preamble]
    for section, (header, rows) in table_rows(results).items():
        lines += ["", f"### {SECTIONS[section]}", "", *markdown_table(header, rows)]
    path.write_text("\n".join(lines) + "\n")


def write_short(path: Path, results: list[dict[str, Any]]) -> None:
    """One line per row, the headline metrics only (what the README shows): CTR valid AUC /
    UAUC, top-K test Recall@20 / NDCG@20, and the training wall time."""
    lines = ["| row | model | ctr: valid AUC / UAUC; topk: test R@20 / N@20 | train |", "|---|---|---:|---:|"]
    for r in results:
        m = r["metrics"]
        keys = ("valid/auc", "valid/uauc") if r["section"] == "ctr" else ("test/recall@20", "test/ndcg@20")
        value = " / ".join(_fmt(m.get(k)) for k in keys)
        wall = _duration(r.get("cost", {}).get("train_wall_s"))
        lines.append(f"| {r['row']} | {r['label']} | {value} | {wall} |")
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    """One line per row: identity, every metric and cost, flat."""
    metric_keys = sorted({k for r in results for k in r["metrics"]})
    cost_keys = sorted({k for r in results for k in r.get("cost", {})})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "row",
                "section",
                "model",
                "backbone",
                "runner",
                "hardware",
                "fingerprint",
                *metric_keys,
                *cost_keys,
            ]
        )
        for r in results:
            writer.writerow(
                [
                    r["row"],
                    r["section"],
                    r["label"],
                    r.get("backbone") or "",
                    r.get("runner", ""),
                    r.get("hardware", ""),
                    r.get("fingerprint", ""),
                ]
                + [r["metrics"].get(k, "") for k in metric_keys]
                + [r.get("cost", {}).get(k, "") for k in cost_keys]
            )


def write_chart(path: Path, results: list[dict[str, Any]], title: str) -> None:
    """Two panels: CTR valid AUC (all / warm / cold) and top-K test Recall@20 / NDCG@20."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [
        ("ctr", [("valid/auc", "AUC"), ("valid/warm/auc", "warm AUC"), ("valid/cold/auc", "cold AUC")]),
        ("topk", [("test/recall@20", "Recall@20"), ("test/ndcg@20", "NDCG@20")]),
    ]
    panels = [(s, keys) for s, keys in panels if any(r["section"] == s for r in results)]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for ax, (section, keys) in zip(axes[:, 0], panels, strict=True):
        rows = [r for r in results if r["section"] == section]
        x = np.arange(len(rows))
        width = 0.8 / len(keys)
        for j, (key, name) in enumerate(keys):
            values = [r["metrics"].get(key, np.nan) for r in rows]
            ax.bar(x + (j - (len(keys) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(SECTIONS[section], fontsize=10)
        if section == "ctr":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
            ax.set_ylim(0.3, 0.85)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def _embeddings(ctx: Context) -> None:
    """Metadata-text embeddings of the ML-100K dataset (made now when missing: no LLM in the
    loop); LLM-profile embeddings when ``--profiles-embeddings`` names them or the default
    directory holds them."""
    dataset = ctx.datasets["topk"]
    meta_dir = Path(ctx.args.metadata_embeddings or f"{dataset}-profiles/embeddings_metadata")
    if not (meta_dir / "_manifest.json").exists():
        ctx.say(f"... embedding metadata text of {dataset} into {meta_dir} (raylrec profiles embed)")
        subprocess.run(
            [
                str(Path(sys.executable).parent / "raylrec"),
                "profiles",
                "embed",
                "--config",
                str(CONFIGS / "profiles_ml100k.yaml"),
                "--text",
                "metadata",
                f"dataset={dataset}",
                f"output={meta_dir.parent}",
            ],
            check=True,
            cwd=REPO,
        )
    ctx.embeddings["metadata"] = str(meta_dir)
    profiles = Path(ctx.args.profiles_embeddings or f"{dataset}-profiles/embeddings_profiles")
    if (profiles / "_manifest.json").exists():
        ctx.embeddings["profiles"] = str(profiles)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--only", nargs="+", default=None, metavar="ROW", help=f"rows: {' '.join(ROWS)}")
    parser.add_argument("--local", action="store_true", help="a plain process for every row: no Ray")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--backbone", default=None, help="the LLM rows' backbone (default: the scale's)")
    parser.add_argument("--ctr-dataset", default="out/collm_ml1m")
    parser.add_argument("--topk-dataset", default="out/ml100k")
    parser.add_argument("--metadata-embeddings", default=None, help="default <topk-dataset>-profiles/...")
    parser.add_argument(
        "--profiles-embeddings", default=None, help="LLM-profile embeddings (rows run if set)"
    )
    parser.add_argument("--out", default=None, help="default out/leaderboard/<scale>")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--verbose", action="store_true", help="training progress lines")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    parser.add_argument(
        "--curve",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="a learning curve instead of the table: the CTR LLM rows of --only (default ctr/tallrec) "
        "trained on N rows each, beside MF on every row",
    )
    args = parser.parse_args(argv)
    if args.list:
        for row in ROWS.values():
            print(f"{row.name:<28} {row.label}  (needs: {', '.join(row.needs) or '-'})")
        return
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    out = Path(args.out or REPO / "out" / "leaderboard" / args.scale)
    out.mkdir(parents=True, exist_ok=True)
    if args.curve:
        wanted = args.only or ["ctr/tallrec"]
        bad = [n for n in wanted if n not in ROWS or ROWS[n].kind != "llm"]
        if bad:
            raise SystemExit(f"--curve takes CTR LLM rows only; not: {', '.join(bad)}")
        args.curve_rows, args.only = wanted, ["ctr/mf", *wanted]
    names = with_needs(args.only or list(ROWS))
    sections = {ROWS[n].section for n in names}
    from bench.common import ensure_dataset

    datasets = {}
    if "ctr" in sections:
        datasets["ctr"] = storage.absolute(ensure_dataset(CONFIGS / "collm_ml1m.yaml", args.ctr_dataset))
    if "topk" in sections:
        datasets["topk"] = storage.absolute(ensure_dataset(CONFIGS / "ml100k.yaml", args.topk_dataset))
    ctx = Context(args, scale, Cache(out), datasets)
    if "topk" in sections:
        _embeddings(ctx)
    if not args.local:
        from raylrec.config import RayConfig
        from raylrec.runtime import init_ray

        init_ray(RayConfig())
    started = time.perf_counter()
    if args.curve:
        learning_curve(ctx, names, sorted(set(args.curve)), out)
        ctx.say(f"finished the learning curve in {_duration(time.perf_counter() - started)}; tables in {out}")
        return
    ctx.say(f"leaderboard --scale {args.scale} ({scale.description}): {len(names)} rows -> {out}")
    shown = []
    for name in names:
        result = run_row(ROWS[name], ctx)
        if result is not None:
            ctx.results[name] = result
            shown.append(result)
        write_outputs(out, shown, args, scale)  # after every row: a killed run leaves its tables
    ctx.say(f"finished {len(shown)} rows in {_duration(time.perf_counter() - started)}; tables in {out}")


def learning_curve(ctx: Context, names: list[str], sizes: list[int], out: Path) -> None:
    """The CTR LLM rows among ``names`` (and the rows they read) trained on each of ``sizes``
    Few2Many training rows, every other setting the scale's; the same cache as the table, so the
    scale's own size is read back. Writes ``learning_curve.{md,csv,png}``: valid AUC against
    training rows, with MF (trained on every row) as the line to beat."""
    import dataclasses

    base = ctx.scale
    points: list[dict[str, Any]] = []
    for size in sizes:
        ctx.scale = dataclasses.replace(base, llm_train_rows=size)
        ctx.results = {}
        ctx.say(f"curve: {size} training rows")
        for name in names:
            result = run_row(ROWS[name], ctx)
            ctx.results[name] = result
            if name in ctx.args.curve_rows:
                points.append({**result, "train_rows": size})
        write_curve(out, points, ctx.results["ctr/mf"], ctx.args)
    ctx.scale = base


def _sampled_rows(point: dict[str, Any]) -> int:
    """The rows the point trained on: the hash sample's size (its cost's samples per epoch), which
    can fall a little short of the requested size."""
    cost = point.get("cost", {})
    if cost.get("train_samples") and cost.get("train_epochs"):
        return round(cost["train_samples"] / cost["train_epochs"])
    return point["train_rows"]


CURVE_METRICS = (
    ("valid/auc", "valid AUC"),
    ("valid/uauc", "valid UAUC"),
    ("valid/warm/auc", "warm AUC"),
    ("valid/cold/auc", "cold AUC"),
)


def write_curve(
    out: Path, points: list[dict[str, Any]], mf: dict[str, Any], args: argparse.Namespace
) -> None:
    """learning_curve.md / .csv / .png from the curve's points and the MF row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def cells(result: dict[str, Any], label: str, rows: str) -> list[str]:
        m = result["metrics"]
        return [
            result["row"],
            label,
            rows,
            *[_fmt(m.get(k)) for k, _ in CURVE_METRICS],
            _fmt(int(m["valid/rows"]) if "valid/rows" in m else None),
            _duration(result.get("cost", {}).get("train_wall_s")),
        ]

    header = ["row", "model", "train rows", *[n for _, n in CURVE_METRICS], "valid rows", "train wall"]
    points = sorted(points, key=lambda p: (p["row"], p["train_rows"]))
    lines = [cells(p, p["label"], f"{_sampled_rows(p):,}") for p in points]
    lines.append(cells(mf, f"{mf['label']}, every training row", "all"))
    text = [
        f"## Learning curve, `--scale {args.scale}`",
        "",
        f"Command: `python bench/leaderboard.py {' '.join(sys.argv[1:])}`",
        "",
        *markdown_table(header, lines),
    ]
    (out / "learning_curve.md").write_text("\n".join(text) + "\n")
    with (out / "learning_curve.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(lines)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in sorted({p["row"] for p in points}):
        mine = [p for p in points if p["row"] == row]
        ax.plot(
            [_sampled_rows(p) for p in mine],  # the rows trained on, as the table says
            [p["metrics"].get("valid/auc") for p in mine],
            "o-",
            label=mine[0]["label"],
        )
    ax.axhline(mf["metrics"].get("valid/auc", float("nan")), color="grey", ls="--", label="MF, every row")
    ax.axhline(0.5, color="grey", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("LLM training rows (Few2Many hash sample)")
    ax.set_ylabel("valid AUC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)


def write_outputs(out: Path, results: list[dict[str, Any]], args: argparse.Namespace, scale: Scale) -> None:
    trained = [r["cost"]["train_wall_s"] for r in results if r.get("cost", {}).get("train_wall_s")]
    backbone = args.backbone or scale.backbone
    preamble = [
        f"## Leaderboard, `--scale {args.scale}`",
        "",
        f"Command: `python bench/leaderboard.py {' '.join(sys.argv[1:])}`",
        "",
        f"- scale: {scale.description}",
        f"- LLM backbone: {backbone} ({args.dtype}, {args.device}); runner: "
        + ("plain process" if args.local else "Ray Train"),
        f"- CTR: LLM methods on a Few2Many hash sample of <= {scale.llm_train_rows or 'all'} "
        "training rows, every CTR model scored on the same hash sample of "
        f"<= {scale.valid_rows or 'all'} rows per held-out split",
        f"- top-K: CF rows rank every test user; rerank rows rank {scale.rerank_users or 'all'} "
        f"sampled test users' top {scale.candidates} MF-BPR candidates; rerankers trained on "
        f"<= {scale.topk_llm_rows or 'all'} rows",
        "- seeds: 2020 (training, samples); 0 (rerank users)",
        f"- training wall time summed over rows: {_duration(sum(trained))}",
    ]
    write_markdown(out / "leaderboard.md", results, preamble)
    write_short(out / "leaderboard_short.md", results)
    write_csv(out / "leaderboard.csv", results)
    write_chart(out / "leaderboard.png", results, f"raylrec leaderboard --scale {args.scale}, {backbone}")


if __name__ == "__main__":
    main()
