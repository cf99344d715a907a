"""Appending a day vs preparing the whole log again: what a nightly job pays as history grows.

A date-partitioned synthetic log (one Parquet file per day, ``--events-per-day`` events, Zipf
items, users uniform, both fixed), and for each history length H in ``--history-days``:

- **full** (the baseline a user would otherwise run every night): ``raylrec data prepare`` of
  days 0..H, ``rolling_days`` split;
- **append** (ours): ``raylrec data prepare --append`` of day H onto a dataset of days 0..H-1
  (prepared first, not measured).

Each in its own process tree, measured from outside with ``bench/scale.py``'s sampler: wall
time, the new day's events/s (the append's work is the day; the full run's is the whole log),
peak RSS of the driver and peak private RSS of the largest Ray worker. Both must give the same
rows (``tests/test_append.py`` checks that); this measures what they cost.

    python bench/append.py --history-days 5 20 --events-per-day 200000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PYTHON, gib, measure  # noqa: E402  (bench/ is a folder of scripts)

FIRST_DAY = dt.date(2026, 10, 1)


def write_log(logs: Path, days: int, per_day: int, users: int, items: int, seed: int) -> list[Path]:
    """One file per day under ``logs/date=YYYY-MM-DD/``; returns them in day order."""
    rng = np.random.default_rng(seed)
    paths = []
    for day in range(days):
        date = FIRST_DAY + dt.timedelta(days=day)
        path = logs / f"date={date}" / "events.parquet"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        start = int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp())
        table = pa.table(
            {
                "user_id": rng.integers(1, users + 1, per_day).astype(str),
                "item_id": np.minimum(rng.zipf(1.1, per_day), items).astype(str),
                "timestamp": (start + np.sort(rng.integers(0, 86_400, per_day))).astype(np.int64),
                "rating": rng.integers(1, 6, per_day).astype(np.float64),
            }
        )
        pq.write_table(table, path)
    return paths


def prepare_cmd(paths: list[Path], out: Path, append: bool) -> list[str]:
    listed = ",".join(str(p) for p in paths)
    cmd = [PYTHON, "-m", "raylrec.cli", "data", "prepare", "-q", "data.source.type=logs"]
    cmd += [f"data.source.paths=[{listed}]", "data.split.protocol=rolling_days", "data.history.max_len=20"]
    cmd += [f"data.output={out}"] + (["--append"] if append else ["data.overwrite=true"])
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history-days", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--events-per-day", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/raylrec-append"))
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    paths = write_log(
        work / "logs", max(args.history_days) + 1, args.events_per_day, args.users, args.items, args.seed
    )
    rows = []
    for h in args.history_days:
        full, appended = work / f"full-{h}", work / f"appended-{h}"
        print(f"H={h}: full preparation of {h + 1} days ...", flush=True)
        base = measure(
            prepare_cmd(paths[: h + 1], full, False), work / f"full-{h}.log", args.interval, work / "ray"
        )
        print(f"H={h}: preparing {h} days, then appending day {h} ...", flush=True)
        shutil.rmtree(appended, ignore_errors=True)
        first = measure(
            prepare_cmd(paths[:h], appended, False), work / f"first-{h}.log", args.interval, work / "ray"
        )
        ours = measure(
            prepare_cmd(paths[h : h + 1], appended, True),
            work / f"append-{h}.log",
            args.interval,
            work / "ray",
        )
        for name, result in (("full", base), ("first", first), ("append", ours)):
            if result.get("failed"):
                raise SystemExit(f"H={h} {name}: {result['failed']}")
        result = {"history_days": h, "events_per_day": args.events_per_day, "full": base, "append": ours}
        (work / f"results-{h}.json").write_text(json.dumps(result, indent=2))
        log_events = (h + 1) * args.events_per_day
        rows.append(
            [
                f"{h}",
                f"{log_events:,}",
                f"{base['wall_s']:.1f}",
                f"{ours['wall_s']:.1f}",
                f"{ours['wall_s'] / base['wall_s']:.2f}x",
                f"{args.events_per_day / ours['wall_s']:,.0f}",
                f"{gib(base['driver_rss'])} / {gib(ours['driver_rss'])}",
                f"{gib(base['ray_worker_private_max'])} / {gib(ours['ray_worker_private_max'])}",
            ]
        )
    header = [
        "history days",
        "log events",
        "full prepare s",
        "append s",
        "append / full",
        "appended events/s",
        "driver GiB full / append",
        "largest worker private GiB full / append",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
