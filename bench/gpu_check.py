"""The GPU check (issue 22): on one NVIDIA GPU, in one plain process (no Ray, no DeepSpeed), in
bf16, within 10 minutes, the numbers this project could not measure on its CPU machine:

1. ``mf``: the MF CF bundle on the CoLLM MovieLens-1M split (``configs/mf_collm_ml1m.yaml``,
   raylrec's CF trainer in this process), which CoLLM-MF, CoRA-MF and RecLoRA read.
2. ``mfu``: training throughput of each LLM method (raylrec's own training step: the method's
   loss, backward, AdamW), steady state after warm-up steps, and the model FLOPs utilisation
   (bench/train_llm.py's formula: 4 x backbone params per token for a frozen backbone with
   LoRA, over the GPU's peak bf16 FLOP/s). Its rates also size the next stage.
3. ``ctr``: the full-size CTR rows: TALLRec, CoLLM-MF (from TALLRec's bundle), CoRA-MF,
   RecLoRA, one epoch on all 33,891 training rows, AUC/UAUC on all 10,401 validation rows,
   warm and cold (``raylrec.methods.train.train_method(config, use_ray=False)``).
4. ``score``: scoring throughput (bench/score.py's ``measure``): candidates/s of the
   shared-prefix and full-prompt paths of each pointwise method, CLLM4Rec's users/s.

Each stage writes ``<out>/<stage>.json`` the moment it finishes (or fails: the error and its
traceback), runs inside its own time box, and a failure in one never loses another's result.
The summary table goes to stdout and ``<out>/summary.txt``. ``--rehearse`` shrinks every stage
to a CPU-sized run (about a minute of work) that takes the same code path.

    bench/gpu_check.sh                      # on the GPU machine (docs/gpu-check.md)
    bench/gpu_check.sh --rehearse           # the same on CPU, shrunk
    python bench/gpu_check.py --summary-only --out out/gpu_check   # the table from the JSONs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

STAGES = ("env", "mf", "bf16", "mfu", "ctr", "score")
METHODS = ("tallrec", "collm", "cora", "reclora")  # collm starts from tallrec's bundle
NAMES = {"tallrec": "TALLRec", "collm": "CoLLM-MF", "cora": "CoRA-MF", "reclora": "RecLoRA (MF router)"}
TRAIN_ROWS, VALID_ROWS = 33_891, 10_401  # the CoLLM ML-1M split
H200_PEAK_TFLOPS = 989.0  # dense bf16, the H100/H200 SXM datasheet (H200.md); KINDS.md measured ~790
BUDGET_S = 600  # the issue's limit for the whole run, set-up included


@dataclass
class Plan:
    """Every size of one run. ``boxes`` are the stages' time boxes in seconds; the CTR box is
    shared by the methods in proportion to their measured cost."""

    rehearse: bool
    device: str
    dtype: str
    batch: int
    max_tokens: int
    train_rows: int | None  # None: all of train
    valid_rows: int | None  # None: all of valid
    mf_epochs: int
    mf_patience: int
    mfu_warmup: int
    mfu_steps: int
    score_users: int
    score_candidates: int
    score_repeats: int
    boxes: dict[str, float] = field(default_factory=dict)
    methods: tuple[str, ...] = METHODS

    @property
    def total_box_s(self) -> float:
        return sum(self.boxes.values())


def make_plan(rehearse: bool, device: str, dtype: str | None = None, batch: int | None = None) -> Plan:
    """The full run (all rows, configs/mf_collm_ml1m.yaml's 300 epochs with patience 30) or the
    rehearsal (a few batches of everything). The full run's boxes add up to 540 s, leaving 60 s
    of the 10 minutes for bench/gpu_check.sh's set-up (wheels, the GGUF put together, imports)."""
    if rehearse:  # float32: bf16 matmuls on this CPU ran ~5x slower (the bf16 stage checks bf16)
        return Plan(
            rehearse=True,
            device=device,
            dtype=dtype or "float32",
            batch=batch or 2,
            max_tokens=128,  # the history is cut from the oldest side (a title alone needs up to ~80)
            train_rows=8,
            valid_rows=16,  # both labels, or AUC (the selection metric) is undefined
            mf_epochs=2,
            mf_patience=2,
            mfu_warmup=1,
            mfu_steps=1,
            score_users=2,
            score_candidates=4,
            score_repeats=1,
            boxes={"env": 180, "mf": 120, "bf16": 120, "mfu": 240, "ctr": 600, "score": 240},
        )
    return Plan(
        rehearse=False,
        device=device,
        dtype=dtype or "bfloat16",
        batch=batch or 32,
        max_tokens=256,
        train_rows=None,
        valid_rows=None,
        mf_epochs=300,
        mf_patience=30,
        mfu_warmup=5,
        mfu_steps=30,
        score_users=64,
        score_candidates=50,
        score_repeats=2,
        # env: imports + the GGUF's conversion to safetensors (CPU work, 20-60 s)
        boxes={"env": 75, "mf": 60, "mfu": 50, "ctr": 295, "score": 60},
    )


# --------------------------------------------------------------------------------- plumbing


class StageTimeout(Exception):
    """A stage ran past its time box."""


@contextlib.contextmanager
def time_box(seconds: float):
    """SIGALRM raises StageTimeout in this (the main) thread after ``seconds``: the training
    and scoring loops are Python, so the exception lands between two kernels."""

    def expire(signum, frame):
        raise StageTimeout(f"past its {seconds:.0f} s time box")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _plain(value: Any) -> Any:
    """JSON-able: numpy scalars and arrays, tuples, paths."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def write_json(out: Path, stage: str, payload: dict[str, Any]) -> Path:
    """``<out>/<stage>.json``, atomically (a reader or a crash never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(_plain(payload), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_json(out: Path, stage: str) -> dict[str, Any] | None:
    path = out / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_stage(name: str, out: Path, box_s: float, fn, *args) -> dict[str, Any]:
    """Run one stage in its time box; its JSON is written whatever happens."""
    say(f"stage {name}: time box {box_s:.0f} s")
    started = time.perf_counter()
    payload: dict[str, Any]
    try:
        with time_box(box_s):
            payload = {"status": "ok", **fn(*args)}
    except Exception as e:  # noqa: BLE001 - every failure is recorded, the next stage still runs
        payload = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
        say(f"stage {name} FAILED: {payload['error']}")
    payload["wall_s"] = time.perf_counter() - started
    payload["box_s"] = box_s
    write_json(out, name, payload)
    say(f"stage {name}: {payload['status']} in {payload['wall_s']:.1f} s -> {out / (name + '.json')}")
    return payload


# --------------------------------------------------------------------------------- stages


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _matmul_tflops(device: str, dtype) -> float:
    """Achieved dense matmul rate (TFLOP/s): the ceiling MFU is also read against."""
    import torch

    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    repeats = 10 if device.startswith("cuda") else 3
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def stage_env(args, plan: Plan) -> dict[str, Any]:
    """Versions, the device, the matmul ceiling, and the backbone loaded once (the GGUF is
    converted to safetensors here, so no later stage pays for it)."""
    import importlib.metadata as md

    import torch

    from raylrec.config import BackboneConfig
    from raylrec.data.output import read_meta
    from raylrec.llm.backbone import load_backbone

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[plan.dtype]
    versions = {}
    for name in ("torch", "transformers", "peft", "pydantic", "gguf", "pyarrow", "numpy", "ray", "deepspeed"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    importable = {}
    for name in ("ray", "deepspeed"):
        try:
            __import__(name)
            importable[name] = True
        except ImportError:
            importable[name] = False
    started = time.perf_counter()
    backbone = load_backbone(BackboneConfig(name=args.backbone, dtype=plan.dtype), plan.device)
    load_s = time.perf_counter() - started
    params = sum(p.numel() for p in backbone.model.parameters())
    embedding = backbone.model.get_input_embeddings().weight.numel()
    meta = read_meta(args.dataset)
    result = {
        "plan": asdict(plan),
        "python": sys.version.split()[0],
        "versions": versions,
        "importable": importable,
        "device": _device_name(plan.device),
        "cuda": torch.version.cuda,
        "matmul_tflops": _matmul_tflops(plan.device, dtype),
        "peak_tflops": args.peak_tflops,
        "backbone": backbone.identity,
        "backbone_params": params,
        "backbone_params_non_embedding": params - embedding,
        "backbone_load_s": load_s,
        "dataset": args.dataset,
        "dataset_hash": meta.get("content_hash"),
        "dataset_splits": meta["counts"]["splits"],
    }
    del backbone
    return result


def _mf_config(args, plan: Plan, epochs: int, output: bool = True):
    from raylrec.config import load_config

    return load_config(
        REPO / "configs" / "mf_collm_ml1m.yaml",
        [
            f"dataset={args.dataset}",
            f"output={args.work / 'bundles' / 'mf_collm_ml1m'}" if output else "output=null",
            f"train.epochs={epochs}",
            f"train.patience={plan.mf_patience}",
            "train.num_workers=0",
            f"train.use_gpu={str(plan.device.startswith('cuda')).lower()}",
            f"train.storage_path={args.work / 'runs'}",
            "train.run_name=gpu-check-mf",
            "train.log_every_s=10",
        ],
    )


def mf_epochs(plan: Plan, box_s: float, spent_s: float, setup_s: float, per_epoch_s: float) -> int:
    """The config's epochs, or as many as fit 85 % of the box after the probes (``spent_s``),
    each run paying ``setup_s`` once (loading the split, building the encoder)."""
    fit = int((0.85 * box_s - spent_s - setup_s) / max(per_epoch_s, 1e-6))
    return max(min(plan.mf_epochs, fit), min(plan.mf_epochs, 5))


def stage_mf(args, plan: Plan, box_s: float) -> dict[str, Any]:
    """The MF bundle. Without it CoLLM, CoRA and RecLoRA cannot run, so the stage first times
    probes of 1 (a warm-up: the process's one-off costs), 1 and 4 epochs (the last two differ by 3
    epochs' cost, start-up excluded; if noise makes that difference no larger than zero, the
    4-epoch probe's whole wall / 4 is taken instead) and trains no more epochs than fit its box
    (early stopping may end it sooner)."""
    from raylrec.cf.train import train_cf

    epochs, probe_s, per_epoch = plan.mf_epochs, 0.0, None
    if not plan.rehearse:
        walls = []
        for n in (1, 1, 4):
            started = time.perf_counter()
            train_cf(_mf_config(args, plan, n, output=False), say=lambda m: None, use_ray=False)
            walls.append(time.perf_counter() - started)
        probe_s = sum(walls)
        per_epoch = (walls[2] - walls[1]) / 3
        if per_epoch <= 0:
            per_epoch = walls[2] / 4
        setup = max(walls[1] - per_epoch, 0.0)
        epochs = mf_epochs(plan, box_s, probe_s, setup, per_epoch)
        say(
            f"mf: probes of 1, 1 and 4 epochs {walls[0]:.1f}, {walls[1]:.1f}, {walls[2]:.1f} s: "
            f"{per_epoch:.2f} s an "
            f"epoch -> {epochs} epochs (config: {plan.mf_epochs})"
        )
    result = train_cf(_mf_config(args, plan, epochs), say=say, use_ray=False)
    state = result.states[next(iter(result.states))]
    return {
        "bundle": result.bundle,
        "metrics": result.metrics,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "epochs_planned": epochs,
        "epochs_config": plan.mf_epochs,
        "probe_s": probe_s,
        "epoch_s": per_epoch,
        "patience": plan.mf_patience,
        "samples_per_s": state.history[-1].get("train/samples_per_s") if state.history else None,
        "train_s": result.seconds,
    }


def _method_section(args, name: str) -> dict[str, Any]:
    mf = str(args.work / "bundles" / "mf_collm_ml1m")
    return {
        "tallrec": {"name": "tallrec"},
        # CoLLM's stage 1 is TALLRec: it starts from TALLRec's bundle and trains the projector
        "collm": {
            "name": "collm",
            "cf_bundle": mf,
            "stage1_epochs": 0,
            **({"init_from": str(args.work / "bundles" / "tallrec")} if args.init_collm else {}),
        },
        # CoRA-MF as configs/cora_collm_ml1m.yaml and bench/quality.py: generator FFN 3072
        "cora": {"name": "cora", "cf_bundle": mf, "generator_ffn": 3072},
        "reclora": {"name": "reclora", "cf_bundle": mf, "experts": 8},
    }[name]


def _llm_config(args, plan: Plan, name: str, train_rows: int | None, valid_rows: int | None, tag: str):
    """bench/quality.py's settings (lr 1e-3, RecLoRA 5e-4, AdamW, cosine, warm-up 5 %), the
    plan's batch and dtype, one epoch, a plain process."""
    from raylrec.config import build_config

    return build_config(
        {
            "dataset": args.dataset,
            "backbone": {"name": args.backbone, "dtype": plan.dtype},
            "method": _method_section(args, name),
            "prompt": {"max_tokens": plan.max_tokens, "history_items": 10},
            "sample": {"max_train": train_rows, "max_valid": valid_rows, "seed": 2020},
            "train": {
                "epochs": 1,
                "batch_size": plan.batch,
                "lr": {"reclora": 5e-4}.get(name, 1e-3),
                "weight_decay": 1e-3,
                "optimizer": "adamw",
                "schedule": "cosine",
                "warmup_ratio": 0.05,
                "metric": "valid/auc",
                "patience": 1,
                "num_workers": 0,
                "use_gpu": plan.device.startswith("cuda"),
                "storage_path": str(args.work / "runs"),
                "run_name": f"gpu-check-{tag}-{name}",
                "log_every_s": 15,
            },
            "output": str(args.work / "bundles" / name) if tag == "ctr" else None,
        }
    )


def mfu(params: int, tokens_per_s: float, peak_tflops: float) -> float:
    """bench/train_llm.py's model FLOPs utilisation: forward 2N + activation gradients 2N per
    token (the frozen backbone's weight gradients are never computed; LoRA's are negligible)."""
    return 4 * params * tokens_per_s / (peak_tflops * 1e12)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_training(args, plan: Plan, name: str) -> dict[str, Any]:
    """Steady-state rate of raylrec's own training step for ``name`` (the plain-process
    fitting ``train_method`` runs: method loss, backward, AdamW), ``mfu_warmup`` steps first."""
    import torch

    from raylrec.methods.train import MethodDefinition

    steps, warmup = plan.mfu_steps, plan.mfu_warmup
    rows = (steps + warmup + 1) * plan.batch
    config = _llm_config(args, plan, name, rows, plan.batch, "mfu")
    definition = MethodDefinition(config)
    stage = definition.stages()[-1]  # CoLLM: the projector stage, the one it adds to TALLRec
    torch.manual_seed(stage.train.seed)
    fitting = definition.local_fitting(stage, {}, lambda m: None)
    fitting.task.model.train()
    done = samples = tokens = 0
    started = None
    epoch = 0
    while done < warmup + steps:
        epoch += 1
        got = 0
        for batch in fitting.batches(epoch):
            got += 1
            if done == warmup:
                _sync(plan.device)
                started, samples, tokens = time.perf_counter(), 0, 0
            loss = fitting.task.loss(batch)
            fitting.engine.step(loss)
            float(loss.detach())  # the loop's own per-step host sync
            samples += len(batch["uid"])
            tokens += int(batch["attention_mask"].sum())
            done += 1
            if done == warmup + steps:
                break
        if got == 0:
            raise ValueError(f"{name}: no full batch of {plan.batch} in the sampled rows")
    _sync(plan.device)
    seconds = time.perf_counter() - started
    trainable = sum(p.numel() for p in fitting.task.model.parameters() if p.requires_grad)
    del fitting
    if plan.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "steps": steps,
        "warmup": warmup,
        "batch": plan.batch,
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_row": tokens / samples,
        "step_ms": 1000 * seconds / steps,
        "trainable_params": trainable,
    }


def stage_bf16(args, plan: Plan) -> dict[str, Any]:
    """The rehearsal's bf16 check: every method's training step and every scoring path once in
    bfloat16 on the tiny random Llama (seconds on a CPU, where SmolLM2 in bf16 crawls), so a
    dtype mismatch shows here and not on the GPU."""
    import score  # bench/score.py

    tiny = argparse.Namespace(**{**vars(args), "backbone": "tiny-random-llama"})
    small = Plan(**{**asdict(plan), "dtype": "bfloat16", "mfu_warmup": 1, "mfu_steps": 1, "batch": 4})
    rows: dict[str, Any] = {}
    for name in plan.methods:
        try:
            rows[name] = {"train_step": "ok", **measure_training(tiny, small, name)}
        except StageTimeout:
            raise
        except Exception as e:  # noqa: BLE001
            rows[name] = {"train_step": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        say(f"bf16: {name} training step {rows[name]['train_step']}")
    namespace = _score_namespace(tiny, small)
    namespace.users, namespace.candidates = 2, 4
    try:
        result = score.measure(namespace)
        scoring = {"status": "ok", "max_diff": max((r[6] for r in result["rerank"]), default=None)}
    except StageTimeout:
        raise
    except Exception as e:  # noqa: BLE001
        scoring = {"status": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    say(f"bf16: scoring paths {scoring['status']}")
    failed = [n for n, r in rows.items() if r["train_step"] != "ok"] + (
        ["scoring"] if scoring["status"] != "ok" else []
    )
    return {
        "status": "failed" if failed else "ok",
        "backbone": "tiny-random-llama",
        "methods": rows,
        "scoring": scoring,
        "failed": failed,
    }


def stage_mfu(args, plan: Plan, env: dict[str, Any]) -> dict[str, Any]:
    params = env.get("backbone_params") if env else None
    rows: dict[str, Any] = {}
    for name in plan.methods:
        say(f"mfu: {name}")
        try:
            row = measure_training(args, plan, name)
        except StageTimeout as e:  # the box is spent: keep the rates measured so far
            rows[name] = {"error": f"timeout: {e}"}
            say(f"mfu: {name} {rows[name]['error']}; later methods skipped")
            break
        except Exception as e:  # noqa: BLE001 - one method's failure leaves the others' rates
            rows[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            say(f"mfu: {name} failed: {rows[name]['error']}")
            continue
        if params:
            if args.peak_tflops:
                row["mfu_vs_peak"] = mfu(params, row["tokens_per_s"], args.peak_tflops)
            if env.get("matmul_tflops") and plan.device.startswith("cuda"):  # CPU: load noise
                row["mfu_vs_matmul"] = mfu(params, row["tokens_per_s"], env["matmul_tflops"])
        rows[name] = row
        say(
            f"mfu: {name} {row['samples_per_s']:,.1f} samples/s, {row['tokens_per_s']:,.0f} tokens/s"
            + (
                f", MFU {row['mfu_vs_peak']:.2%} of {args.peak_tflops:g} TFLOP/s"
                if "mfu_vs_peak" in row
                else ""
            )
        )
    ok = [n for n, r in rows.items() if "error" not in r]
    status = "ok" if len(ok) == len(plan.methods) else ("partial" if ok else "failed")
    return {"status": status, "params": params, "peak_tflops": args.peak_tflops, "methods": rows}


SAFETY = 1.25  # predicted times are stretched by this much before they are compared


def ctr_rows(plan: Plan, rates: dict[str, float], box_s: float, overhead_s: float) -> dict[str, dict]:
    """How many training rows each method gets. A method's predicted cost is ``overhead_s``
    (backbone, tokenising, export) + SAFETY x (training rows + validation rows / 3: forward
    only) / its measured samples/s. The CTR box is shared by water-filling: cheapest first, each
    method takes its cost when that is within an equal split of what is left, so only a method
    that cannot fit its fair share is cut, to as many rows as fit (the table says so). A method
    with no measured rate gets the plan's rows, uncapped, and an equal part is held back for it."""
    full_train = plan.train_rows or TRAIN_ROWS
    valid = plan.valid_rows or VALID_ROWS
    cost = {
        n: overhead_s + SAFETY * (full_train + valid / 3) / rates[n] for n in plan.methods if rates.get(n)
    }
    sized = {
        n: {"train_rows": plan.train_rows, "predicted_s": None, "capped": False}
        for n in plan.methods
        if n not in cost
    }
    left = box_s * len(cost) / max(len(plan.methods), 1)
    for index, name in enumerate(sorted(cost, key=cost.__getitem__)):
        share = left / (len(cost) - index)
        fits = cost[name] <= share
        left -= min(cost[name], share)
        if fits:
            rows = full_train
        else:
            usable = max(share - overhead_s, 0.0) / SAFETY
            rows = max(plan.batch, int(usable * rates[name] - valid / 3))
        sized[name] = {
            "train_rows": None if (fits and plan.train_rows is None) else rows,
            "predicted_s": cost[name],
            "share_s": share,
            "capped": not fits,
        }
    return {n: sized[n] for n in plan.methods}


def stage_ctr(args, plan: Plan, mfu_result: dict[str, Any] | None, box_s: float, out: Path) -> dict[str, Any]:
    from raylrec.methods.train import train_method

    rates = {}
    for name, row in ((mfu_result or {}).get("methods") or {}).items():
        if row.get("samples_per_s"):
            rates[name] = row["samples_per_s"]
    sizes = ctr_rows(plan, rates, box_s, overhead_s=args.ctr_overhead_s)
    rows: dict[str, Any] = {}
    payload = {"sizes": sizes, "methods": rows, "valid_rows": plan.valid_rows or VALID_ROWS}
    for name in plan.methods:
        tallrec_failed = "tallrec" in rows and rows["tallrec"].get("status") != "ok"
        if (
            name == "collm"
            and args.init_collm
            and (tallrec_failed or not (args.work / "bundles" / "tallrec").is_dir())
        ):
            rows[name] = {
                "status": "skipped",
                "error": "CoLLM starts from TALLRec's bundle, which is missing",
            }
            continue
        size = sizes[name]
        say(
            f"ctr: {name} on {size['train_rows'] or 'all'} training rows"
            + (f" (capped to fit its {size['share_s']:.0f} s share)" if size["capped"] else "")
        )
        started = time.perf_counter()
        try:
            config = _llm_config(args, plan, name, size["train_rows"], plan.valid_rows, "ctr")
            result = train_method(config, say=say, use_ray=False)
        except StageTimeout as e:  # the box is spent: keep the rows done, skip the rest
            rows[name] = {"status": "timeout", "error": str(e), "wall_s": time.perf_counter() - started}
            say(f"ctr: {name} timed out; later methods skipped")
            for later in plan.methods[plan.methods.index(name) + 1 :]:
                rows[later] = {"status": "skipped", "error": "the CTR time box was spent"}
            break
        except Exception as e:  # noqa: BLE001 - the next method still runs
            rows[name] = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
                "wall_s": time.perf_counter() - started,
            }
            say(f"ctr: {name} failed: {rows[name]['error']}")
        else:
            history = result.states[next(reversed(result.states))].history
            last = history[-1] if history else {}
            rows[name] = {
                "status": "ok",
                "metrics": result.metrics,
                "train_rows": size["train_rows"] or TRAIN_ROWS,
                "samples_per_s": last.get("train/samples_per_s"),
                "tokens_per_s": last.get("train/tokens_per_s"),
                "epoch_s": last.get("train/epoch_s"),
                "wall_s": time.perf_counter() - started,
                "bundle": result.bundle,
            }
        write_json(out, "ctr", {"status": "partial", **payload})  # each method as it finishes
    ok = [n for n, r in rows.items() if r.get("status") == "ok"]
    return {"status": "ok" if len(ok) == len(plan.methods) else ("partial" if ok else "failed"), **payload}


def _score_namespace(args, plan: Plan) -> SimpleNamespace:
    """bench/score.py's arguments: every pointwise method, CLLM4Rec, the plan's sizes."""
    return SimpleNamespace(
        dataset=args.dataset,
        cf_bundle=str(args.work / "bundles" / "mf_collm_ml1m"),
        backbone=args.backbone,
        methods=list(plan.methods),
        catalog_methods=["cllm4rec"],
        k=10,
        item_chunk=65_536,
        users=plan.score_users,
        candidates=plan.score_candidates,
        history=10,
        rows=256,
        naive_rows=64,
        pack_tokens=256,
        template=None,
        device=plan.device,
        dtype=plan.dtype,
        repeats=plan.score_repeats,
    )


def stage_score(args, plan: Plan) -> dict[str, Any]:
    import score  # bench/score.py

    namespace = _score_namespace(args, plan)
    result = score.measure(namespace)
    score.print_tables(namespace, result)
    reranker_keys = (
        "method",
        "template",
        "prompt_prefix_tokens",
        "path",
        "path_cand_s",
        "naive_cand_s",
        "max_diff",
    )
    return {
        "users": result["users"],
        "candidates": result["candidates"],
        "retrieval_users_s": result["dataset_users"] / result["retrieval_s"],
        "rerank": [dict(zip(reranker_keys, row, strict=True)) for row in result["rerank"]],
        "catalog": [
            {"method": name, "prompt_items": prompt, "users_s": rate}
            for name, prompt, rate in result["catalog"]
        ],
    }


# --------------------------------------------------------------------------------- summary


def _f(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _in_order(rows: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Methods in the run's order (the JSON's keys are sorted)."""
    rows = rows or {}
    return [(n, rows[n]) for n in METHODS if n in rows] + [
        (n, r) for n, r in rows.items() if n not in METHODS
    ]


def summary(out: Path) -> str:
    """One table from whatever stage JSONs exist (a crashed run still gets its table)."""
    env, mf, bf16, mfu_r, ctr, score_r = (read_json(out, s) for s in STAGES)
    lines = []
    plan = (env or {}).get("plan") or {}
    mode = "REHEARSAL (CPU, shrunk)" if plan.get("rehearse") else "full size"
    lines.append(
        f"GPU check, {mode}: {(env or {}).get('device', '?')}, {plan.get('dtype', '?')}, "
        f"torch {((env or {}).get('versions') or {}).get('torch')}, "
        f"ray importable: {((env or {}).get('importable') or {}).get('ray')}, "
        f"deepspeed importable: {((env or {}).get('importable') or {}).get('deepspeed')}"
    )
    lines.append(
        "stages: "
        + ", ".join(
            f"{s} {(d or {}).get('status', 'missing')} {_f((d or {}).get('wall_s'), '.0f')}s"
            for s, d in zip(STAGES, (env, mf, bf16, mfu_r, ctr, score_r), strict=True)
            if d or s != "bf16"
        )
    )
    if bf16 and "failed" in bf16:
        failed = bf16.get("failed") or []
        lines.append(
            "bf16 check (tiny Llama, every method's training step and scoring paths): "
            + (f"FAILED {failed}" if failed else "all ok")
        )
    if env and env.get("status") == "ok":
        lines.append(
            f"backbone {env['backbone']['name']} ({env['backbone_params'] / 1e6:.0f}M params), "
            f"dataset {Path(env['dataset']).name} {env['dataset_splits']} "
            f"(hash {str(env['dataset_hash'])[:12]}), "
            f"matmul {env['matmul_tflops']:.3g} TFLOP/s"
        )
    lines.append("")
    header = (
        f"{'CTR, CoLLM ML-1M valid':<24}{'train rows':>11}{'AUC':>8}{'UAUC':>8}"
        f"{'warm AUC':>9}{'warm UAUC':>10}"
        f"{'cold AUC':>9}{'cold UAUC':>10}{'samples/s':>11}{'wall s':>8}"
    )
    lines += [header, "-" * len(header)]
    if mf:
        m = mf.get("metrics") or {}
        lines.append(
            f"{'MF (dim 256, BCE)':<24}{TRAIN_ROWS if mf.get('status') == 'ok' else '-':>11}"
            f"{_f(m.get('valid/auc')):>8}{_f(m.get('valid/uauc')):>8}{_f(m.get('valid/warm/auc')):>9}"
            f"{_f(m.get('valid/warm/uauc')):>10}{_f(m.get('valid/cold/auc')):>9}{_f(m.get('valid/cold/uauc')):>10}"
            f"{_f(mf.get('samples_per_s'), ',.0f'):>11}{_f(mf.get('wall_s'), '.0f'):>8}"
            + (
                f"  epochs {mf.get('epochs_run')} of {mf.get('epochs_planned')} "
                f"(config {mf.get('epochs_config')}), best {mf.get('best_epoch')}"
                if mf.get("status") == "ok"
                else f"  {mf.get('error', '')[:60]}"
            )
        )
    for name, row in _in_order((ctr or {}).get("methods")):
        m = row.get("metrics") or {}
        note = "" if row.get("status") == "ok" else f"  {row.get('status')}: {str(row.get('error', ''))[:60]}"
        size = ((ctr or {}).get("sizes") or {}).get(name) or {}
        if size.get("capped"):
            note += "  (rows capped by the time box)"
        lines.append(
            f"{NAMES.get(name, name):<24}{row.get('train_rows', '-'):>11}"
            f"{_f(m.get('valid/auc')):>8}{_f(m.get('valid/uauc')):>8}{_f(m.get('valid/warm/auc')):>9}"
            f"{_f(m.get('valid/warm/uauc')):>10}{_f(m.get('valid/cold/auc')):>9}{_f(m.get('valid/cold/uauc')):>10}"
            f"{_f(row.get('samples_per_s'), ',.1f'):>11}{_f(row.get('wall_s'), '.0f'):>8}{note}"
        )
    if ctr and ctr.get("status") != "ok":
        lines.append(f"ctr stage: {ctr.get('status')} {str(ctr.get('error', ''))[:100]}")
    lines.append("")
    header = (
        f"{'training step (raylrec)':<24}{'batch':>6}{'tokens/row':>11}{'step ms':>9}{'samples/s':>11}"
        f"{'tokens/s':>10}{'MFU/peak':>9}{'MFU/matmul':>11}"
    )
    lines += [header, "-" * len(header)]
    for name, row in _in_order((mfu_r or {}).get("methods")):
        if "error" in row:
            lines.append(f"{NAMES.get(name, name):<24}  failed: {row['error'][:80]}")
            continue
        lines.append(
            f"{NAMES.get(name, name):<24}{row['batch']:>6}{row['tokens_per_row']:>11.0f}"
            f"{row['step_ms']:>9.1f}"
            f"{row['samples_per_s']:>11,.1f}{row['tokens_per_s']:>10,.0f}"
            f"{_f(row.get('mfu_vs_peak'), '.2%'):>9}{_f(row.get('mfu_vs_matmul'), '.2%'):>11}"
        )
    if mfu_r:
        if mfu_r.get("status") != "ok":
            lines.append(f"mfu stage: {mfu_r.get('status')} {str(mfu_r.get('error', ''))[:100]}")
        if mfu_r.get("params"):
            lines.append(
                f"MFU = 4 x {mfu_r.get('params') or 0:,} params x tokens/s / peak "
                f"({_f(mfu_r.get('peak_tflops'), 'g')} TFLOP/s datasheet; matmul: measured above)"
            )
    lines.append("")
    if score_r and score_r.get("status") == "ok":
        lines.append(
            f"scoring: {score_r['users']} users x {score_r['candidates']} candidates; "
            f"CF retrieval {score_r['retrieval_users_s']:,.0f} users/s"
        )
        header = (
            f"{'method':<10}{'scoring path':<30}{'path cand/s':>12}{'full-prompt cand/s':>19}{'max diff':>10}"
        )
        lines += [header, "-" * len(header)]
        for row in score_r["rerank"]:
            lines.append(
                f"{row['method']:<10}{row['path']:<30}{row['path_cand_s']:>12,.1f}{row['naive_cand_s']:>19,.1f}"
                f"{row['max_diff']:>10.1e}"
            )
        for row in score_r["catalog"]:
            lines.append(f"{row['method']:<10}{'full catalogue, top 10':<30}{row['users_s']:>12,.2f} users/s")
    elif score_r:
        lines.append(f"score stage: {score_r.get('status')} {str(score_r.get('error', ''))[:100]}")
    return "\n".join(lines) + "\n"


def print_summary(out: Path) -> None:
    text = summary(out)
    (out / "summary.txt").write_text(text)
    print("\n" + text, flush=True)


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="shrink every stage to a CPU-sized run")
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or "out/gpu_check", help="results (JSON, summary)"
    )
    parser.add_argument("--work", default=None, help="bundles and runs (default: <out>_work)")
    parser.add_argument("--dataset", default="out/collm_ml1m", help="the prepared CoLLM ML-1M split")
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    parser.add_argument(
        "--dtype", default=None, choices=["bfloat16", "float32", "float16"], help="default bfloat16"
    )
    parser.add_argument("--batch", type=int, default=None, help="LLM batch (default: 32, rehearsal 4)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: 989 on a GPU, none on CPU")
    parser.add_argument(
        "--ctr-overhead-s", type=float, default=None, help="per method: load, tokenise, export"
    )
    parser.add_argument(
        "--no-init-collm", dest="init_collm", action="store_false", help="CoLLM without TALLRec's LoRA"
    )
    parser.add_argument(
        "--box-scale", type=float, default=1.0, help="every time box x this (less device time left)"
    )
    parser.add_argument("--summary-only", action="store_true", help="print the table from the JSONs")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    args.out = Path(args.out)
    args.out = args.out.resolve()
    args.work = (Path(args.work) if args.work else args.out.with_name(args.out.name + "_work")).resolve()
    args.dataset = str(Path(args.dataset).resolve())
    return args


def resolve(args: argparse.Namespace) -> Plan:
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = H200_PEAK_TFLOPS
    if args.ctr_overhead_s is None:
        args.ctr_overhead_s = 5.0 if args.rehearse else 20.0
    plan = make_plan(args.rehearse, args.device, args.dtype, args.batch)
    plan.boxes = {k: v * args.box_scale for k, v in plan.boxes.items()}
    plan.methods = tuple(m for m in METHODS if m in args.methods)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary_only:
        print_summary(args.out)
        return 0
    plan = resolve(args)
    if args.plan_only:
        print(json.dumps(asdict(plan), indent=2))
        return 0
    if plan.device.startswith("cuda") and not plan.rehearse and plan.dtype != "bfloat16":
        say(f"note: {plan.dtype}, not bf16")
    os.environ.setdefault("WANDB_MODE", "disabled")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in STAGES:  # a result in <out> is this run's
        (args.out / f"{stale}.json").unlink(missing_ok=True)
    started = time.perf_counter()
    say(f"plan: {json.dumps(asdict(plan))}")
    say(f"out {args.out}, work {args.work}, dataset {args.dataset}")
    env = mfu_r = None
    if "env" in args.stages:
        env = run_stage("env", args.out, plan.boxes["env"], stage_env, args, plan)
    if "mf" in args.stages:
        run_stage("mf", args.out, plan.boxes["mf"], stage_mf, args, plan, plan.boxes["mf"])
    if "bf16" in args.stages and plan.rehearse:
        run_stage("bf16", args.out, plan.boxes["bf16"], stage_bf16, args, plan)
    if "mfu" in args.stages:
        mfu_r = run_stage("mfu", args.out, plan.boxes["mfu"], stage_mfu, args, plan, env)
    if "ctr" in args.stages:
        run_stage(
            "ctr", args.out, plan.boxes["ctr"], stage_ctr, args, plan, mfu_r, plan.boxes["ctr"], args.out
        )
    if "score" in args.stages:
        run_stage("score", args.out, plan.boxes["score"], stage_score, args, plan)
    say(f"all stages done in {time.perf_counter() - started:.0f} s")
    print_summary(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
