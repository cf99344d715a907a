"""Does the next LLM stage tokenise in warm worker processes? Ray's default against raylrec's.

An LLM method's stage tokenises its prompts with Ray Data in the driver before its Ray Train
run starts (``raylrec.llm.samples.build_samples``); each task's process imports the tokenizer
path once (torch and transformers, ~5 s of CPU) and keeps the tokenizer. Ray keeps as many idle
worker processes as the node has CPUs and kills the others within a second; a Ray Train run's
actors (its controller, the workers) push the count over that, so the processes that had
tokenised were gone when the next stage began. raylrec's local instance keeps
``IDLE_WORKERS_ABOVE_CPUS`` more (``raylrec/runtime.py``).

Each configuration runs in its own process with a fresh 2-CPU local instance: tokenise the
tiny-Llama TALLRec samples of ML-100K (128 training prompts, as in ``bench/startup.py``) cold,
again warm, then after a Ray Train run of 2 workers that does nothing:

    python bench/idle_workers.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.startup import _prepare  # noqa: E402  (ML-100K prepared once, as bench/startup.py does)

OVERRIDES = [
    "backbone.name=tiny-random-llama",
    "prompt.max_tokens=96",
    "prompt.history_items=3",
    "sample.max_train=128",
    "sample.max_valid=48",
    "train.num_workers=2",
]


def _one(dataset: str, extra_idle: int, storage: str) -> dict[str, float]:
    import raylrec.runtime
    from raylrec.config import RayConfig, load_config
    from raylrec.llm.samples import build_samples
    from raylrec.methods.config import template_text
    from raylrec.train.shards import equal_shards

    if extra_idle < 0:  # Ray's own default: raylrec's setting taken out of ray.init
        import ray

        ray_init = ray.init

        def without_limit(*args, **kwargs):
            kwargs.pop("_system_config", None)
            return ray_init(*args, **kwargs)

        ray.init = without_limit
    else:
        raylrec.runtime.IDLE_WORKERS_ABOVE_CPUS = extra_idle
    config = load_config(
        str(Path(__file__).resolve().parents[1] / "configs" / "tallrec_collm_ml1m.yaml"),
        [f"dataset={dataset}", *OVERRIDES],
    )
    raylrec.runtime.init_ray(RayConfig(num_cpus=2))
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def tokenise() -> float:
        started = time.perf_counter()
        equal_shards(build_samples(config, "train", template_text("tallrec"), 0), 2)
        return time.perf_counter() - started

    times = {"cold": tokenise(), "warm": tokenise()}
    TorchTrainer(
        lambda: None, scaling_config=ScalingConfig(num_workers=2), run_config=RunConfig(storage_path=storage)
    ).fit()
    times["after a Ray Train run"] = tokenise()
    return times


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--work", default="/tmp/raylrec-startup")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # DATASET EXTRA_IDLE, as JSON
    args = parser.parse_args()
    work = Path(args.work)
    if args.one:
        print(json.dumps(_one(args.one[0], int(args.one[1]), str(work / "idle-runs"))))
        return
    work.mkdir(parents=True, exist_ok=True)
    dataset = _prepare(work)
    from raylrec.runtime import IDLE_WORKERS_ABOVE_CPUS

    rows = {}
    configurations = (
        ("Ray's default", -1),
        ("1 per CPU", 0),
        (f"raylrec: 1 per CPU + {IDLE_WORKERS_ABOVE_CPUS}", None),
    )
    for label, extra in configurations:
        extra = IDLE_WORKERS_ABOVE_CPUS if extra is None else extra
        out = subprocess.run(
            [sys.executable, __file__, "--work", str(work), "--one", dataset, str(extra)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows[label] = json.loads(out.strip().splitlines()[-1])
    labels = list(rows)
    print(f"| tokenise 128 prompts, s | {' | '.join(labels)} | raylrec / Ray's default |")
    print("|---|" + "---:|" * (len(labels) + 1))
    for phase in rows[labels[0]]:
        times = [rows[label][phase] for label in labels]
        print(f"| {phase} | {' | '.join(f'{t:.2f}' for t in times)} | {times[-1] / times[0]:.2f}x |")


if __name__ == "__main__":
    main()
