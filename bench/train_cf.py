"""Training throughput of the CF encoders: MF-BPR and LightGCN on raylrec (a plain process, and Ray
Train with 1 and 2 workers) beside the loop a user would otherwise write (a plain single-process
PyTorch loop), on the same prepared dataset, batches and hyper-parameters, in one run.

Run from the repository root, after ``raylrec data prepare --config configs/ml100k.yaml``:

    python bench/train_cf.py                                   # MF + LightGCN, 5 epochs, 1 and 2 workers
    python bench/train_cf.py --epochs 2 --models mf --workers 1

Models and hyper-parameters come from configs/mf_bpr_ml100k.yaml and configs/lightgcn_ml100k.yaml
(BPR, every interaction a positive, one sampled negative); ``--batch`` and ``--epochs`` override
them, evaluation runs only after the last epoch and checkpoints only at the end, so they never
fall inside a timed epoch.

samples/s is the steady-state training rate: the median over epochs 2..N (epoch 1 is warm-up;
with ``--epochs 1`` it is epoch 1) of training samples / seconds of the epoch's training steps
(batch making included; evaluation, checkpoints and start-up excluded), the same measure for
every row. raylrec rows read it from ``state.history``, measured by rank 0 inside fit(); on Ray
Train the ranks hold equal shards and step in lockstep (DDP), so the total is rank 0's rate x
workers. Each Ray configuration gets all the machine's CPUs (``cpus_per_worker`` = CPUs /
workers; Ray sets OMP_NUM_THREADS, hence torch's threads, to a worker's CPUs). "train s" is the
summed epoch time; "wall s" is the whole call: loading, Ray Data, worker start-up, training,
the final evaluation on valid and test (raylrec rows only) and the checkpoint, what a user waits
for. ``ray.init`` is done once before the first Ray row and reported apart.

Run it on an otherwise idle machine: with other processes on the cores, torch's OpenMP threads
wait on each other at every parallel region and the rates drop by orders of magnitude (seen
here: one MF epoch at 1.0M samples/s with 1 thread, 3.3k samples/s with 2, on 2 busy cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raylrec.cf.data import load_split  # noqa: E402
from raylrec.cf.task import build_encoder, epoch_batches, seen_pairs  # noqa: E402
from raylrec.config import RaylrecConfig, build_config  # noqa: E402

CONFIGS = {
    "mf": REPO / "configs" / "mf_bpr_ml100k.yaml",
    "lightgcn": REPO / "configs" / "lightgcn_ml100k.yaml",
}
NAMES = {"mf": "MF-BPR (dim 64)", "lightgcn": "LightGCN (3 layers, dim 64)"}


def _config(args: argparse.Namespace, model: str, workers: int, storage: str) -> RaylrecConfig:
    """The shipped config for ``model`` with the bench's data, size, scale and quiet evaluation."""
    raw: dict[str, Any] = yaml.safe_load(CONFIGS[model].read_text())
    raw["dataset"] = args.dataset
    raw["output"] = None
    raw["train"].update(
        {
            "epochs": args.epochs,
            "batch_size": args.batch,
            "eval_every": 10**6,  # fit() still evaluates after the last epoch
            "checkpoint_every": 10**6,  # one checkpoint, at the end
            "num_workers": max(workers, 1),
            "cpus_per_worker": max(1, args.cpus // max(workers, 1)),
            "storage_path": storage,
            "run_name": f"bench-{model}-{workers}w-{time.strftime('%H%M%S')}-{os.getpid()}",
            "log_every_s": 10**6,  # no step lines; epoch lines for the first and last epochs only
        }
    )
    return build_config(raw, str(CONFIGS[model]))


def steady_rate(rates: list[float]) -> float:
    """Median samples/s over epochs 2..N (all of them when there is only one)."""
    return statistics.median(rates[1:] or rates)


def plain_loop(config: RaylrecConfig) -> tuple[float, float, float]:
    """What a user writes without raylrec: model, BPR loss, Adam, the same batches, one process.
    Returns (steady samples/s, training seconds, wall seconds)."""
    started = time.perf_counter()
    torch.manual_seed(config.train.seed)
    train = load_split(config.dataset_path(), "train")
    model = build_encoder(config.cf, train)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    rates, seconds = [], 0.0
    seen = seen_pairs(train, config.cf)  # the same negative sampler (RecBole's: unseen items)
    for epoch in range(1, config.train.epochs + 1):
        model.train()
        epoch_started, samples = time.perf_counter(), 0
        for batch in epoch_batches(
            train, config.train.batch_size, config.train.seed, epoch, config.cf, seen=seen
        ):
            users, pos, neg = model(batch, batch["iid"], batch["neg"])
            loss = -F.logsigmoid((users * pos).sum(-1) - (users * neg).sum(-1)).mean()
            if config.cf.reg_weight:
                items = torch.cat([batch["iid"], batch["neg"]])
                loss = loss + config.cf.reg_weight * model.regularisation(batch, items)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(batch["uid"])
        elapsed = time.perf_counter() - epoch_started
        rates.append(samples / elapsed)
        seconds += elapsed
        print(f"[plain] epoch {epoch}: loss {loss.item():.4f}, {rates[-1]:,.1f} samples/s", flush=True)
    return steady_rate(rates), seconds, time.perf_counter() - started


def raylrec_run(config: RaylrecConfig, use_ray: bool, workers: int) -> tuple[float, float, float]:
    """``train_cf`` as a user calls it; (steady samples/s summed over workers, training s, wall s)."""
    from raylrec.cf.train import train_cf

    started = time.perf_counter()
    result = train_cf(config, say=lambda message: None, use_ray=use_ray)
    wall = time.perf_counter() - started
    history = result.state.history
    rate = steady_rate([h["train/samples_per_s"] for h in history]) * workers
    return rate, sum(h["train/epoch_s"] for h in history), wall


def start_ray(cpus: int) -> float:
    """``ray.init`` once for every Ray row; returns the seconds it took."""
    from raylrec.config import RayConfig
    from raylrec.runtime import init_ray

    started = time.perf_counter()
    init_ray(RayConfig(num_cpus=cpus))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="out/ml100k", help="a prepared dataset (run from the repo root)")
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["mf", "lightgcn"])
    parser.add_argument(
        "--workers", nargs="*", type=int, default=[1, 2], help="Ray Train workers (none: no Ray rows)"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2048, help="per worker")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")

    rows: list[tuple[str, str, str, float, float, float, float]] = []
    ray_seconds = None
    with tempfile.TemporaryDirectory(prefix="raylrec-bench-cf-") as storage:
        for model in args.models:
            print(f"... {model}: plain PyTorch loop", flush=True)
            plain = plain_loop(_config(args, model, 1, storage))
            rows.append((NAMES[model], "plain PyTorch loop", "1", *plain, plain[0]))
            print(f"... {model}: raylrec, plain process", flush=True)
            local = raylrec_run(_config(args, model, 1, storage), use_ray=False, workers=1)
            rows.append((NAMES[model], "raylrec, plain process", "1", *local, plain[0]))
            for workers in args.workers:
                if ray_seconds is None:
                    ray_seconds = start_ray(args.cpus)
                print(f"... {model}: raylrec on Ray Train, {workers} worker(s)", flush=True)
                ray_run = raylrec_run(_config(args, model, workers, storage), use_ray=True, workers=workers)
                rows.append((NAMES[model], "raylrec on Ray Train", str(workers), *ray_run, plain[0]))

    rows_n = len(load_split(args.dataset, "train"))
    measure = "epoch 1" if args.epochs == 1 else "median of epochs 2..N"
    started = f"; ray.init {ray_seconds:.1f}s, once, not in the rows" if ray_seconds is not None else ""
    print()
    print(
        f"dataset {args.dataset} ({rows_n:,} training rows), batch {args.batch}/worker, "
        f"{args.epochs} epoch(s) (samples/s: {measure}), {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()} in this process (Ray workers: CPUs / workers){started}"
    )
    print("| model | runner | workers | samples/s | vs plain loop | train s | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, runner, workers, rate, train_s, wall, plain_rate in rows:
        print(
            f"| {name} | {runner} | {workers} | {rate:,.0f} | {rate / plain_rate:.2f}x | "
            f"{train_s:.1f} | {wall:.1f} |"
        )


if __name__ == "__main__":
    main()
