"""The main job end to end on the embedded default, on a local Ray instance: MovieLens-100K
(from the recbole wheel, offline) prepared and summarised, then the MF-BPR CF encoder trained
on Ray Train (2 workers), evaluated by full ranking and exported as a CF bundle. Later stages
(RecLoRA fine-tuning, scoring) join this same command as they land."""

from __future__ import annotations

from collections.abc import Callable

from raylrec import storage
from raylrec.config import RaylrecConfig, build_config

__all__ = ["DEMO_CONFIG", "demo_config", "run_demo"]

DEMO_CONFIG = {
    "data": {
        "source": {"type": "movielens_100k"},
        "validation": {"rating_range": [1, 5]},
        "label": {"threshold": 4},
        "split": {"protocol": "random_ratio", "ratios": [0.8, 0.1, 0.1], "seed": 2020},
        "history": {"max_len": 50},
        "output": "PLACEHOLDER",
        "overwrite": True,
    },
    "cf": {"model": "mf", "dim": 64, "loss": "bpr", "implicit": True},
    "train": {
        "epochs": 100,
        "batch_size": 2048,
        "lr": 1e-3,
        "metric": "valid/ndcg@10",
        "patience": 10,
        "num_workers": 2,
        "cpus_per_worker": 1,
        "checkpoint_every": 10,
    },
    "ray": {"num_cpus": 2},
}


def demo_config(out: str) -> RaylrecConfig:
    raw = {
        **DEMO_CONFIG,
        "data": {**DEMO_CONFIG["data"], "output": storage.join(out, "ml100k")},
        "train": {**DEMO_CONFIG["train"], "storage_path": storage.join(out, "runs")},
        "output": storage.join(out, "bundles", "mf_bpr_ml100k"),
    }
    return build_config(raw, "embedded demo config")


def run_demo(out: str, say: Callable[[str], None], train: bool = True) -> None:
    from raylrec.cf.train import train_cf
    from raylrec.data.prepare import prepare
    from raylrec.data.stats import dataset_stats, format_stats
    from raylrec.runtime import init_ray

    config = demo_config(out)
    stages = 2 if train else 1
    say(f"demo 1/{stages}: preparing MovieLens-100K (recbole==1.2.1 wheel, GroupLens ratings)")
    init_ray(config.ray)
    prepare(config.data, say)
    print(format_stats(dataset_stats(config.data.output)), flush=True)
    if train:
        say(f"demo 2/{stages}: training the MF-BPR CF encoder on Ray Train (2 workers, DDP)")
        train_cf(config, say)
    say(f"demo finished: outputs under {out}")
