"""The main job end to end on the embedded default: MovieLens-100K (from the recbole wheel,
offline) prepared on a local Ray instance, then its statistics. Later stages (CF encoder,
RecLoRA fine-tuning, scoring) join this same command as they land."""

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
    "ray": {"num_cpus": 2},
}


def demo_config(out: str) -> RaylrecConfig:
    raw = {**DEMO_CONFIG, "data": {**DEMO_CONFIG["data"], "output": storage.join(out, "ml100k")}}
    return build_config(raw, "embedded demo config")


def run_demo(out: str, say: Callable[[str], None]) -> None:
    from raylrec.data.prepare import prepare
    from raylrec.data.stats import dataset_stats, format_stats
    from raylrec.runtime import init_ray

    config = demo_config(out)
    say("demo 1/1: preparing MovieLens-100K (recbole==1.2.1 wheel, GroupLens ratings)")
    init_ray(config.ray)
    prepare(config.data, say)
    print(format_stats(dataset_stats(config.data.output)), flush=True)
    say(f"demo finished: processed dataset at {config.data.output}")
