"""Accuracy of MF, TALLRec, CoLLM-MF, RecLoRA and CoRA-MF on the CoLLM MovieLens-1M split, one
backbone, one table: AUC / UAUC on all, warm and cold validation rows, every model scored on the
same validation rows.

    python bench/quality.py --train-rows 2000 --valid-rows 2000          # through Ray (2 workers)
    python bench/quality.py --local --train-rows 33891 --valid-rows 10401 # plain process (GPU box)

Needs the prepared split and the MF bundle:
    raylrec data prepare --config configs/collm_ml1m.yaml
    raylrec train-cf --config configs/mf_collm_ml1m.yaml

``--train-rows`` is the Few2Many sample the LLMs train on (MF always saw all of train);
``--valid-rows`` caps the validation rows every model is scored on (a hash sample, the same rows
for every model). The papers' reading to reproduce: CoLLM-MF and RecLoRA above TALLRec and MF;
CoRA-MF (arXiv 2408.10645: its generator and P_l over the frozen LLM, AdamW lr 1e-3) at or
above CoLLM-MF.

    python bench/quality.py --methods cora --train-rows 16 --valid-rows 32 --max-tokens 128 \
        --out /tmp/bench_quality --tag smoke                                     # a smoke run

Runs and bundles go under ``--out`` (default out/bench_quality).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import cf_ctr_metrics  # noqa: E402
from raylrec.config import build_config  # noqa: E402

SLICES = ("", "warm/", "cold/")
ORDER = ("tallrec", "collm", "reclora", "cora")  # collm starts from tallrec's bundle
NAMES = {"tallrec": "TALLRec", "collm": "CoLLM-MF", "reclora": "RecLoRA (MF router)", "cora": "CoRA-MF"}


def _bundle(args, name: str) -> str:
    return str(Path(args.out) / "bundles" / name)


def _llm_config(args, method: dict, run: str):
    lr = {"reclora": 5e-4}.get(method["name"], 1e-3)  # CoRA's paper: 1e-3
    return build_config(
        {
            "dataset": args.dataset,
            "backbone": {"name": args.backbone},
            "method": method,
            "prompt": {"max_tokens": args.max_tokens, "history_items": 10},
            "sample": {"max_train": args.train_rows, "max_valid": args.valid_rows, "seed": 2020},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch,
                "lr": lr,
                "weight_decay": 1e-3,
                "optimizer": "adamw",
                "schedule": "cosine",
                "warmup_ratio": 0.05,
                "metric": "valid/auc",
                "patience": args.epochs,
                "num_workers": args.workers,
                "use_gpu": args.gpu,
                "strategy": "deepspeed",
                "zero_stage": 2,
                "storage_path": str(Path(args.out) / "runs"),
                "run_name": f"quality-{run}-{args.tag}",
                "wandb_project": "raylrec-bench",
            },
            "output": _bundle(args, run),
        }
    )


def mf_metrics(args) -> dict[str, float]:
    """The MF bundle scored on the same validation rows as the LLMs."""
    from raylrec.cf.data import load_split
    from raylrec.llm.samples import sample_fraction

    config = _llm_config(args, {"name": "tallrec"}, "mf")
    fraction = sample_fraction(config, "valid", len(load_split(args.dataset, "valid")))
    return cf_ctr_metrics(args.dataset, args.mf_bundle, "valid", config.sample.seed, fraction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(REPO / "out" / "collm_ml1m"))
    parser.add_argument("--mf-bundle", default=str(REPO / "out" / "bundles" / "mf_collm_ml1m"))
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--methods", nargs="+", default=list(ORDER), choices=ORDER)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--valid-rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="per worker")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--local", action="store_true", help="a plain process: no Ray, no DeepSpeed")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--out", default=str(REPO / "out" / "bench_quality"), help="runs and bundles")
    parser.add_argument("--tag", default="v1", help="run names: reuse to resume, change to retrain")
    args = parser.parse_args()

    from raylrec.methods.train import train_method

    if not args.local:
        from raylrec.config import RayConfig
        from raylrec.runtime import init_ray

        init_ray(RayConfig())
    methods = {
        "tallrec": {"name": "tallrec"},
        # CoLLM's stage 1 is TALLRec: start from its bundle, train the projector (stage 2)
        "collm": {
            "name": "collm",
            "cf_bundle": args.mf_bundle,
            "stage1_epochs": 0,
            "init_from": _bundle(args, "tallrec"),
        },
        "reclora": {"name": "reclora", "cf_bundle": args.mf_bundle, "experts": 8},
        # CoRA-MF, the paper's best CF encoder, as configs/cora_collm_ml1m.yaml: r 16, alpha 32,
        # q/k/v/o, an 8-layer generator with BERT's FFN width 3072 (the code's)
        "cora": {"name": "cora", "cf_bundle": args.mf_bundle, "generator_ffn": 3072},
    }
    if (
        "collm" in args.methods
        and "tallrec" not in args.methods
        and not Path(_bundle(args, "tallrec")).exists()
    ):
        parser.error("collm starts from the TALLRec bundle: include tallrec in --methods")
    results: dict[str, tuple[dict[str, float], float]] = {"MF (dim 256)": (mf_metrics(args), 0.0)}
    for name in sorted(args.methods, key=ORDER.index):
        started = time.perf_counter()
        result = train_method(_llm_config(args, methods[name], name), use_ray=not args.local)
        results[NAMES[name]] = (
            result.metrics,
            time.perf_counter() - started,
        )

    where = "plain process" if args.local else f"Ray Train, {args.workers} workers, ZeRO-2"
    device = torch.cuda.get_device_name() if args.gpu else "CPU"
    print(
        f"\nCoLLM MovieLens-1M split, valid rows (hash sample <= {args.valid_rows}); "
        f"LLMs on {args.backbone}, "
        f"{args.train_rows} training rows, {args.epochs} epoch(s), {where}, {device}"
    )
    header = (
        f"{'model':<22}"
        + "".join(f" {s or 'all/':>8}AUC {s or 'all/':>7}UAUC" for s in SLICES)
        + "    rows  wall"
    )
    print(header)
    print("-" * len(header))
    for name, (m, seconds) in results.items():
        cells = "".join(
            f" {m.get(f'valid/{s}auc', np.nan):>11.4f} {m.get(f'valid/{s}uauc', np.nan):>11.4f}"
            for s in SLICES
        )
        print(f"{name:<22}{cells} {int(m.get('valid/rows', 0)):>7} {seconds:>5.0f}s")


if __name__ == "__main__":
    main()
