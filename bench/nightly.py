"""The nightly job two ways on a growing log: full rebuild every night against incremental.

A date-partitioned synthetic log whose users and items grow every day (``--growth``, e.g. 2%),
with structure a CF model can learn (each user prefers one of ``--clusters`` item clusters), and
for each night D from the third day on (the first whose dataset has a training day),
``raylrec nightly --date D`` run two ways:

- **full** (what a user runs without incremental preparation): a fresh dataset of every day up to
  D (``rolling_days`` split), MF-BPR trained from scratch on it, every user scored;
- **incremental** (ours): day D appended to one dataset (``data prepare --append``), the CF
  encoder warm-started from night D-1's bundle (``nightly.warm_start_cf``: the rows it has not
  seen plus ``warm_start.replay`` of the older ones), every user scored.

Each night is one process tree measured from outside (``bench/scale.py``'s sampler): wall time
per step (the nightly summary's), peak RSS of the driver. Quality: the recommendations published
for D are scored against day D+1's events (users active on D+1 who got a list; the items they
interacted with that day are relevant): NDCG@10 and Recall@20, as a user would judge a nightly.

    python bench/nightly.py --days 10 --events-per-day 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PYTHON, gib, measure  # noqa: E402  (bench/ is a folder of scripts)

FIRST_DAY = dt.date(2026, 10, 1)
# rolling_days (1 valid day, 1 test day) on night D trains on days 0..D-2: the first night that
# has a training day is day 2
FIRST_NIGHT = 2


def day_name(day: int) -> str:
    return str(FIRST_DAY + dt.timedelta(days=day))


def write_log(logs: Path, args: argparse.Namespace) -> None:
    """``--days`` + 1 days (the last one only judges the last night), one file per day. Day d
    has ``users * growth**d`` users and as many more items; a user draws from their cluster's
    items (Zipf within it) with probability ``--affinity``, else from all items (Zipf)."""
    rng = np.random.default_rng(args.seed)
    for day in range(args.days + 1):
        path = logs / f"date={day_name(day)}" / "events.parquet"
        if path.exists():
            continue
        users = int(args.users * args.growth**day)
        items = int(args.items * args.growth**day)
        n = args.events_per_day
        user = rng.integers(0, users, n)
        cluster = user % args.clusters
        per_cluster = items // args.clusters
        own = cluster + args.clusters * (np.minimum(rng.zipf(1.3, n), per_cluster) - 1)
        anywhere = np.minimum(rng.zipf(1.2, n), items) - 1
        item = np.where(rng.random(n) < args.affinity, own, anywhere)
        start = int(dt.datetime.fromisoformat(day_name(day)).replace(tzinfo=dt.UTC).timestamp())
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table(
                {
                    "user_id": user.astype(str),
                    "item_id": item.astype(str),
                    "timestamp": (start + np.sort(rng.integers(0, 86_400, n))).astype(np.int64),
                    "rating": np.full(n, 5.0),
                }
            ),
            path,
        )


def config(args: argparse.Namespace, root: Path, paths: list[str], recs: Path, incremental: bool) -> dict:
    return {
        "data": {
            "source": {"type": "logs", "paths": paths},
            "split": {"protocol": "rolling_days", "valid_days": 1, "test_days": 1},
            "history": {"max_len": 20},
            "output": "replaced-by-nightly",
        },
        "cf": {"model": "mf", "dim": 64, "loss": "bpr", "implicit": True, "negatives": "unseen"},
        "warm_start": {"replay": args.replay},
        "train": {
            "epochs": args.warm_epochs if incremental else args.epochs,
            "batch_size": 4096,
            "lr": args.lr,
            "metric": "valid/ndcg@10",
            "patience": 100,
            "num_workers": 2,
            "storage_path": str(root / "runs"),
        },
        "eval": {"final_users": 5000, "valid_users": 5000},
        "score": {"output": str(recs), "k": 20, "candidates": 20},
        "nightly": {"root": str(root), "refresh_cf": True, "warm_start_cf": incremental},
    }


def next_day_quality(recs: Path, date: str, next_log: Path) -> dict[str, float]:
    """NDCG@10 and Recall@20 of the lists published for ``date`` against the next day's events."""
    from raylrec.scoring.publish import read_recommendations

    lists = read_recommendations(str(recs), date).select(["user_id", "item_id", "rank"]).to_pandas()
    events = pq.read_table(next_log, columns=["user_id", "item_id"]).to_pandas().drop_duplicates()
    relevant = events.groupby("user_id")["item_id"].apply(set).to_dict()
    ndcg, recall = [], []
    discounts = 1.0 / np.log2(np.arange(2, 12))
    for user, group in lists.sort_values("rank").groupby("user_id"):
        truth = relevant.get(user)
        if not truth:
            continue
        ranked = group["item_id"].tolist()
        hits = np.array([item in truth for item in ranked[:10]], float)
        ideal = discounts[: min(len(truth), 10)].sum()
        ndcg.append(float((hits * discounts[: len(hits)]).sum() / ideal))
        recall.append(len(truth & set(ranked[:20])) / len(truth))
    return {"ndcg@10": float(np.mean(ndcg)), "recall@20": float(np.mean(recall)), "users": len(ndcg)}


def night(args, work: Path, way: str, day: int, logs: Path) -> dict[str, Any]:
    date = day_name(day)
    incremental = way == "incremental"
    root = work / way / ("nightly" if incremental else f"date={date}")
    recs = work / way / "recs"
    partitions = [str(logs / f"date={day_name(d)}") for d in range(day + 1)]
    # the incremental dataset is prepared once from the days before (its first night), then
    # each night appends its own partition ("{date}": nightly's placeholder)
    paths = [str(logs / "date={date}")] if incremental and day > FIRST_NIGHT else partitions
    yaml_path = work / way / f"config-{date}.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(yaml.safe_dump(config(args, root, paths, recs, incremental)))
    cmd = [PYTHON, "-m", "raylrec.cli", "nightly", "--config", str(yaml_path), "--date", date]
    print(f"{date} {way} ...", flush=True)
    result = measure(cmd, work / way / f"nightly-{date}.log", args.interval, work / "ray")
    if "failed" in result:
        raise SystemExit(f"{date} {way}: {result['failed']}")
    log = (work / way / f"nightly-{date}.log").read_text()
    summary = [
        json.loads(line[line.index('{"nightly"') :]) for line in log.splitlines() if '{"nightly"' in line
    ]
    steps = {s["step"]: s["seconds"] for s in summary[-1]["steps"]} if summary else {}
    quality = next_day_quality(recs, date, logs / f"date={day_name(day + 1)}" / "events.parquet")
    return {"wall_s": result["wall_s"], "driver_rss": result["driver_rss"], "steps": steps, **quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=10, help="nights are days 2..days-1")
    parser.add_argument("--events-per-day", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000, help="on day 0")
    parser.add_argument("--items", type=int, default=5_000, help="on day 0")
    parser.add_argument("--growth", type=float, default=1.02, help="users and items per day")
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--affinity", type=float, default=0.7)
    parser.add_argument("--epochs", type=int, default=10, help="full: from scratch")
    parser.add_argument("--warm-epochs", type=int, default=10, help="incremental: on the new rows + replay")
    parser.add_argument("--replay", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--workdir", default="/tmp/raylrec-nightly-bench")
    parser.add_argument("--plot", help="write the plot (PNG) here at the end")
    parser.add_argument("--replot", help="a finished run's results.json: print its table, plot it to --plot")
    args = parser.parse_args()
    if args.replot:
        replot(Path(args.replot), Path(args.plot or "nightly.png"))
        return
    work = Path(args.workdir)
    for way in ("full", "incremental"):
        shutil.rmtree(work / way, ignore_errors=True)
    logs = work / "logs"
    write_log(logs, args)
    rows = []
    for day in range(FIRST_NIGHT, args.days):
        row = {"date": day_name(day)}
        for way in ("full", "incremental"):
            row[way] = night(args, work, way, day, logs)
        rows.append(row)
        (work / "results.json").write_text(json.dumps({"args": vars(args), "nights": rows}, indent=1))
        print(table(rows), flush=True)
    if args.plot:
        plot(rows, Path(args.plot))


def replot(results: Path, out: Path) -> None:
    """The table and plot of a finished run's ``results.json``."""
    rows = json.loads(results.read_text())["nights"]
    print(table(rows))
    plot(rows, out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Each night's wall time and next-day NDCG@10, both ways, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = [r["date"][5:] for r in rows]
    fig, (cost, quality) = plt.subplots(1, 2, figsize=(10, 3.6))
    for way, style in (("full", "o-"), ("incremental", "s-")):
        cost.plot(nights, [r[way]["wall_s"] for r in rows], style, label=way)
        quality.plot(nights, [r[way]["ndcg@10"] for r in rows], style, label=way)
    cost.set(title="nightly wall time (s)", xlabel="night", ylim=(0, None))
    quality.set(title="next-day NDCG@10", xlabel="night")
    for axes in (cost, quality):
        axes.legend()
        axes.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| night | full s (prepare / cf / score) | incremental s (prepare / cf / score) | incr / full "
        "| next-day NDCG@10 full / incr | Recall@20 full / incr | driver GiB full / incr |\n"
        "|---|---|---|---:|---|---|---|"
    )
    lines = [head]
    for r in rows:
        f, i = r["full"], r["incremental"]

        def parts(x):
            return " / ".join(f"{x['steps'].get(s, 0):.0f}" for s in ("prepare", "cf", "score"))

        lines.append(
            f"| {r['date']} | {f['wall_s']:.0f} ({parts(f)}) | {i['wall_s']:.0f} ({parts(i)}) "
            f"| {i['wall_s'] / f['wall_s']:.2f}x | {f['ndcg@10']:.4f} / {i['ndcg@10']:.4f} "
            f"| {f['recall@20']:.4f} / {i['recall@20']:.4f} "
            f"| {gib(f['driver_rss'])} / {gib(i['driver_rss'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
