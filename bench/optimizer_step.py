"""One MF-BPR optimiser step at the scale bench's table sizes, the engine's old step beside the
new: where a step's time goes when nothing is read.

The scale bench's train-cf workers spent as much CPU in the kernel as in torch (``/proc``:
system time equal to user time, ~87,000 minor page faults a second per worker): every step
allocated its gradients afresh (``zero_grad(set_to_none=True)``) and Adam's single-tensor path
made temporaries the size of the tables, each a fresh ``mmap`` that the kernel zero-fills page by
page. This script times the step each way, each in its own process, on the same model and
batches:

- **before**: ``torch.optim.Adam`` as constructed before (the single-tensor path on CPU);
- **fused Adam** (``fused=True``: no temporaries), as ``raylrec.train.engines`` builds it now;
- **gradients kept** between steps (``zero_grad(set_to_none=False)``), which the engine does not
  do (no gain here, and a parameter without a gradient in a step would still be moved);
- **huge pages**: ``THP_MEM_ALLOC_ENABLE=1``, torch's allocator backing large allocations with
  transparent huge pages (one fault per 2 MB), which the raylrec CLI sets.

It prints ms per step, minor page faults per step and user/system CPU seconds per step, and the
largest difference between the two runs' weights (the same update, up to float rounding).

    python bench/optimizer_step.py --users 200000 --items 50000 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from raylrec.cf.config import encoder_config


def _model(users: int, items: int, dim: int, seed: int):
    from raylrec.cf.data import Split

    torch.manual_seed(seed)
    sizes = Split({"uid": np.zeros(0, np.int64)}, users, items)
    return encoder_config({"model": "mf", "dim": dim, "loss": "bpr", "implicit": True}).build(sizes)


def _batches(users: int, items: int, batch: int, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    # Zipf-like users and items, as the synthetic logs
    uid = np.minimum(rng.zipf(1.1, (steps, batch)), users - 1)
    iid = np.minimum(rng.zipf(1.1, (steps, batch)), items - 1)
    neg = rng.integers(1, items, (steps, batch))
    return [
        {"uid": torch.from_numpy(uid[s]), "iid": torch.from_numpy(iid[s]), "neg": torch.from_numpy(neg[s])}
        for s in range(steps)
    ]


def run(fused: bool, keep_grads: bool, args, batches) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model = _model(args.users, args.items, args.dim, args.seed)
    objective = encoder_config({"model": "mf", "dim": args.dim, "loss": "bpr", "implicit": True})
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, **({"fused": True} if fused else {}))
    warm = 3
    for i, batch in enumerate(batches):
        if i == warm:
            usage, faults, start = resource.getrusage(resource.RUSAGE_SELF), _faults(), time.perf_counter()
        optimizer.zero_grad(set_to_none=not keep_grads)
        model.loss(batch, objective).backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    steps = len(batches) - warm
    return {
        "ms_per_step": 1000 * seconds / steps,
        "faults_per_step": (_faults() - faults) / steps,
        "user_s_per_step": (end.ru_utime - usage.ru_utime) / steps,
        "system_s_per_step": (end.ru_stime - usage.ru_stime) / steps,
    }, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _faults() -> int:
    with open(f"/proc/{os.getpid()}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt


VARIANTS = {
    # name: (fused Adam, gradients kept between steps, THP_MEM_ALLOC_ENABLE)
    "before: single-tensor Adam": (False, False, "0"),
    "fused Adam": (True, False, "0"),
    "fused Adam, gradients kept": (True, True, "0"),
    "single-tensor Adam, huge pages": (False, False, "1"),
    "now: fused Adam, huge pages": (True, False, "1"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16_384)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray Train worker: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in its own process
    args = parser.parse_args()
    if args.variant:
        torch.set_num_threads(args.threads)
        fused, keep, _ = VARIANTS[args.variant]
        batches = _batches(args.users, args.items, args.batch, args.steps, args.seed)
        result, weights = run(fused, keep, args, batches)
        torch.save(weights, os.environ["OPTIMIZER_STEP_WEIGHTS"])
        print(json.dumps(result))
        return
    results, weights = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, _, huge_pages) in VARIANTS.items():
            # THP_MEM_ALLOC_ENABLE is read once per process, at its first large allocation
            path = os.path.join(tmp, f"{len(results)}.pt")
            env = {**os.environ, "THP_MEM_ALLOC_ENABLE": huge_pages, "OPTIMIZER_STEP_WEIGHTS": path}
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--variant", name],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[name], weights[name] = json.loads(out.strip().splitlines()[-1]), torch.load(path)
    first = next(iter(weights.values()))
    drift = max(float((first[k] - w[k]).abs().max()) for w in weights.values() for k in first)
    print(
        f"MF-BPR, {args.users:,} users x {args.items:,} items x dim {args.dim}, batches of {args.batch:,}, "
        f"{args.steps - 3} timed steps, {args.threads} thread(s), each variant in its own process\n"
    )
    print("| step | ms per step | minor faults per step | user s per step | system s per step |")
    print("|---|---:|---:|---:|---:|")
    base = next(iter(results.values()))["ms_per_step"]
    for name, r in results.items():
        print(
            f"| {name} | {r['ms_per_step']:.1f} ({r['ms_per_step'] / base:.2f}x) | "
            f"{r['faults_per_step']:,.0f} | {r['user_s_per_step']:.3f} | {r['system_s_per_step']:.3f} |"
        )
    print(f"\nlargest weight difference between the variants after {args.steps} steps: {drift:.2e}")


if __name__ == "__main__":
    main()
