"""The scale benchmark: the streamed Ray path at growing log sizes, users and items fixed.

For each size: a synthetic Zipf log (``raylrec data synth``), then, each in its own process
tree, measured from outside:

- **prepare**: ``raylrec data prepare`` (random 8:1:1 per user, histories of 20, the items'
  titles joined), beside the
  single-process scripts a user would otherwise write: pandas, polars, DuckDB
  (``bench/*_prepare.py``), same steps, same data, as ratios of events/s;
- **train-cf**: MF-BPR (dim 64, batches of ``--batch-size`` per rank), one epoch on Ray Train
  with 2 workers, the Ray Data final evaluation on a fixed sample of users
  (``eval.final_users``) and the CF bundle export;
- **score**: the nightly's scoring step with that CF bundle (``raylrec score``): every user's
  top 10 by exact search over every item, training and validation items excluded, published
  (``--no-score`` stops before it);
- **rerank**: the same step for a sample of ``--rerank-users`` users (default 1,000) with an LLM
  rerank: ``--rerank-candidates`` CF candidates per user scored by a tiny TALLRec bundle (the
  test backbone), trained first on Ray Train and not measured (``--rerank-users 0``: none).

Measured per stage: wall time, events/s, the peak RSS of the driver and of every Ray worker
process (sampled from /proc every ``--interval`` s, all processes of the stage's tree), the peak
of the machine's shared memory above its level before the stage (the object store lives there),
and the bytes Ray spilled to disk. Each size's results go to ``<workdir>/results-<N>.json`` as
soon as it is done, so a killed run keeps the sizes it finished; ``--table`` prints the Markdown
table from those files.

    python bench/scale.py --sizes 5000000 20000000 50000000
    python bench/scale.py --sizes 50000000 --from-stage score   # on what a --keep run left
    python bench/scale.py --sizes 5000000 --from-stage rerank  # the rerank alone, kept data
    python bench/scale.py --sizes 50000000 --until prepare --baselines --keep  # prepare alone
    python bench/scale.py --table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "train", "score", "rerank"]
PYTHON = sys.executable


def shared_memory_bytes() -> int:
    """Shmem of /proc/meminfo: tmpfs pages, the object store's among them."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


ROLE_RANK = {"": 0, "gone": 0, "ray system": 1, "ray worker": 2, "train worker": 3, "driver": 4}


def role(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "driver"
    try:
        title = " ".join(proc.cmdline())[:120]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "RayTrainWorker" in title:
        return "train worker"
    if title.startswith("ray::"):
        return "ray worker"  # Ray Data tasks and actors, Ray Train's controller, ...
    return "ray system"  # raylet, GCS, dashboard, log monitor


def shared_rss(pid: int) -> int:
    """The part of a process's RSS that is shared memory it mapped (``RssShmem``): for a Ray
    worker, the object store's pages it has read zero-copy, which the store owns and every
    reader on the node counts again."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Monitor(threading.Thread):
    """Peak RSS per process of a tree (with its role), and its peak private RSS (RSS less the
    shared-memory pages it has mapped: the object store's), the shared-memory peak, spill
    bytes."""

    def __init__(self, pid: int, interval: float, spill_dirs: list[Path]):
        super().__init__(daemon=True)
        self.root, self.interval, self.spill_dirs = pid, interval, spill_dirs
        self.peaks: dict[int, tuple[str, int]] = {}
        self.private_peaks: dict[int, int] = {}
        self.private_titles: dict[int, str] = {}  # the process title (a Ray task's name) at that peak
        self.shm_base = shared_memory_bytes()
        self.shm_peak = 0
        self.spilled = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                tree = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss = proc.memory_info().rss
                    private = rss - shared_rss(proc.pid)
                    if private > self.private_peaks.get(proc.pid, 0):
                        self.private_peaks[proc.pid] = private
                        self.private_titles[proc.pid] = " ".join(proc.cmdline())[:80]
                    name, peak = self.peaks.get(proc.pid, ("", 0))
                    # a process keeps its most telling role: a pooled worker seen once as a train
                    # worker stays one, and a Ray worker stays one when, exiting, its command
                    # line reads empty (that once filed every prepare worker as "ray system")
                    name = max(name, role(proc, self.root), key=ROLE_RANK.get)
                    self.peaks[proc.pid] = (name, max(rss, peak))
            self.shm_peak = max(self.shm_peak, shared_memory_bytes() - self.shm_base)
            self.spilled = max(self.spilled, sum(_size(d) for d in self.spill_dirs))
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        by_role: dict[str, list[int]] = {}
        private: dict[str, list[int]] = {}
        largest = (0, "")
        for pid, (name, peak) in self.peaks.items():
            by_role.setdefault(name, []).append(peak)
            private.setdefault(name, []).append(self.private_peaks.get(pid, 0))
            if name == "ray worker":
                largest = max(largest, (self.private_peaks.get(pid, 0), self.private_titles.get(pid, "")))
        return {
            "driver_rss": max(by_role.get("driver", [0])),
            "train_worker_rss": sorted(by_role.get("train worker", []), reverse=True),
            "driver_private": max(private.get("driver", [0])),
            "train_worker_private": sorted(private.get("train worker", []), reverse=True),
            "ray_worker_private_max": max(private.get("ray worker", [0])),
            "ray_worker_private_max_title": largest[1],
            "ray_worker_rss_max": max(by_role.get("ray worker", [0])),
            "ray_system_rss_max": max(by_role.get("ray system", [0])),
            "shm_peak": self.shm_peak,
            "spilled": self.spilled,
        }


def _size(path: Path) -> int:
    """Bytes of the spill files under ``path`` (Ray's temp dir: ``*spilled_objects*``)."""
    total = 0
    for root, _, files in os.walk(path):
        if "spill" not in root:
            continue
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def measure(cmd: list[str], log: Path, interval: float, temp_dir: Path) -> dict[str, Any]:
    """Run ``cmd`` (its output to ``log``), sampling its process tree until it exits."""
    env = {**os.environ, "RAY_TMPDIR": str(temp_dir)}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        monitor = Monitor(proc.pid, interval, [temp_dir])
        monitor.start()
        code = proc.wait()
    result = {**monitor.stop(), "wall_s": time.perf_counter() - started, "returncode": code}
    if code != 0:
        killed = code in (-9, 137)
        result["failed"] = "killed (memory?)" if killed else f"exit {code}: see {log}"
    return result


def synth(logs: Path, events: int, users: int, items: int, user_zipf: float | None = None) -> None:
    if (logs / "items.parquet").exists():
        return
    shutil.rmtree(logs, ignore_errors=True)
    print(f"generating {events:,} events ({users:,} users, {items:,} items) ...", flush=True)
    subprocess.run(
        [PYTHON, "-m", "raylrec.cli", "data", "synth", "--out", str(logs), "--events", str(events)]
        + ["--users", str(users), "--items", str(items)]
        + (["--user-zipf", str(user_zipf)] if user_zipf else []),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def prepare_stage(args, n: int, logs: Path, work: Path) -> dict[str, Any]:
    out = work / f"data-{n}"
    cmd = [PYTHON, "-m", "raylrec.cli", "data", "prepare", "-q", "data.source.type=logs"]
    cmd += [f"data.source.paths=[{logs / 'events'}]", "data.validation.rating_range=[1,5]"]
    cmd += [f"data.source.items.path={logs / 'items.parquet'}"]  # titles, for the LLM rerank
    cmd += ["data.split.protocol=random_ratio", "data.history.max_len=20"]
    cmd += [f"data.output={out}", "data.overwrite=true"]
    print(f"{n:,} events: prepare (raylrec) ...", flush=True)
    result = {"raylrec": measure(cmd, work / f"prepare-{n}.log", args.interval, work / "ray")}
    previous = work / f"results-{n}.json"
    earlier = json.loads(previous.read_text())["prepare"] if previous.exists() else {}
    for tool in args.baselines:
        if args.reuse_baselines and tool in earlier and "wall_s" in earlier[tool]:
            # the same script on the same log, measured by an earlier run of this bench
            result[tool] = {**earlier[tool], "reused": True}
            continue
        limits = dict(item.split("=") for item in args.baseline_max_events)
        if tool in limits and n > int(limits[tool]):
            result[tool] = {"skipped": f"skipped above {int(limits[tool]):,} events (--baseline-max-events)"}
            continue
        print(f"{n:,} events: prepare ({tool}) ...", flush=True)
        script = REPO / "bench" / f"{tool}_prepare.py"
        base_out = work / f"{tool}-{n}"
        cmd = [PYTHON, str(script), "--logs", str(logs / "events"), "--out", str(base_out), "--max-len", "20"]
        result[tool] = measure(cmd, work / f"{tool}-{n}.log", args.interval, work / "ray")
        shutil.rmtree(base_out, ignore_errors=True)
    return result


def train_stage(args, n: int, work: Path) -> dict[str, Any]:
    config = work / f"train-{n}.json"
    config.write_text(
        json.dumps(
            {
                "dataset": str(work / f"data-{n}"),
                "cf": {"model": "mf", "dim": 64, "loss": "bpr", "implicit": True},
                "train": {
                    "epochs": 1,
                    "batch_size": args.batch_size,
                    "lr": args.lr,
                    "metric": "valid/ndcg@10",
                    "num_workers": 2,
                    "storage_path": str(work / "runs"),
                    "run_name": f"scale-{n}",
                    "log_every_s": 30,
                },
                "eval": {"ks": [10, 20], "valid_users": args.eval_users, "final_users": args.eval_users},
                "output": str(work / f"bundle-{n}"),
            }
        )
    )
    shutil.rmtree(work / "runs" / f"scale-{n}", ignore_errors=True)
    print(f"{n:,} events: train-cf (MF-BPR, 1 epoch, 2 workers) ...", flush=True)
    log = work / f"train-{n}.log"
    cmd = [PYTHON, str(Path(__file__).resolve()), "--train-driver", str(config)]
    result = measure(cmd, log, args.interval, work / "ray")
    marks = [
        json.loads(line[len("SCALE ") :])
        for line in log.read_text().splitlines()
        if line.startswith("SCALE ")
    ]
    for mark in marks:
        result.update(mark)
    return result


def _measured_scoring(
    args, n: int, work: Path, name: str, score: dict[str, Any], what: str
) -> dict[str, Any]:
    """``raylrec score`` of the size's dataset with the ``score`` section (its output is
    ``<name>-recs-<n>``, removed afterwards), measured; adds the users published and users/s."""
    output = work / f"{name}-recs-{n}"
    config = work / f"{name}-{n}.json"
    section = {**score, "output": str(output), "k": 10, "splits": ["train", "valid"]}
    config.write_text(json.dumps({"dataset": str(work / f"data-{n}"), "score": section}))
    shutil.rmtree(output, ignore_errors=True)
    print(f"{n:,} events: {what} ...", flush=True)
    cmd = [PYTHON, "-m", "raylrec.cli", "score", "--config", str(config), "--date", "2026-01-01"]
    result = measure(cmd, work / f"{name}-{n}.log", args.interval, work / "ray")
    if "failed" not in result:
        from raylrec.scoring import read_manifest

        manifest = read_manifest(str(output), "2026-01-01")
        result["users"] = manifest["users"]
        result["users_per_s"] = manifest["users"] / result["wall_s"]
    shutil.rmtree(output, ignore_errors=True)
    return result


def score_stage(args, n: int, work: Path) -> dict[str, Any]:
    """The nightly's scoring step, CF only: every user's top 10 from the train-cf bundle (exact
    search over every item, the user's training and validation items excluded), published."""
    score = {"cf_bundle": str(work / f"bundle-{n}"), "candidates": 10, "users_per_batch": 1024}
    return _measured_scoring(args, n, work, "score", score, "score (CF retrieval for every user, top 10)")


def rerank_stage(args, n: int, work: Path) -> dict[str, Any]:
    """The nightly's scoring step with an LLM rerank, for a sample of ``--rerank-users`` users:
    the train-cf bundle retrieves ``--rerank-candidates`` items per user (seen items excluded),
    a tiny TALLRec bundle (the test backbone: a seeded random two-layer Llama) reranks them by
    shared-prefix scoring, and the top 10 are published. The reranker is trained first, on Ray
    Train (1 worker, 256 sampled prompts: the splits are streamed, never read whole), and not
    measured: only the scoring command is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = work / f"data-{n}"
    users = pq.read_table(data / "users.parquet", columns=["user_id"])["user_id"]
    picked = np.random.default_rng(0).choice(
        len(users), size=min(args.rerank_users, len(users)), replace=False
    )
    users_file = work / f"rerank-users-{n}.parquet"
    pq.write_table(pa.table({"user_id": users.take(pa.array(np.sort(picked)))}), users_file)
    reranker = work / f"reranker-{n}"
    if not (reranker / "config.json").exists():
        print(f"{n:,} events: training the tiny reranker (not measured) ...", flush=True)
        train_config = work / f"reranker-{n}.json"
        train_config.write_text(
            json.dumps(
                {
                    "dataset": str(data),
                    "backbone": {"name": "tiny-random-llama"},
                    "method": {"name": "tallrec"},
                    "sample": {"max_train": 256, "max_valid": 64},
                    "train": {
                        "epochs": 1,
                        "batch_size": 16,
                        "num_workers": 1,
                        "storage_path": str(work / "runs"),
                        "run_name": f"reranker-{n}",
                    },
                    "output": str(reranker),
                }
            )
        )
        cmd = [PYTHON, "-m", "raylrec.cli", "train", "--config", str(train_config)]
        with open(work / f"reranker-{n}.log", "w") as out:
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
    score = {
        "cf_bundle": str(work / f"bundle-{n}"),
        "model_bundle": str(reranker),
        "users": str(users_file),
        "candidates": args.rerank_candidates,
        "users_per_batch": 64,
    }
    what = f"score with LLM rerank ({args.rerank_users:,} users)"
    result = _measured_scoring(args, n, work, "rerank", score, what)
    result["candidates"] = args.rerank_candidates
    return result


def train_driver(config_path: str) -> None:
    """The train-cf stage's own process: the CLI's steps, with the moments of its phases."""
    sys.path.insert(0, str(REPO))
    from raylrec.cf.train import train_cf
    from raylrec.config import build_config
    from raylrec.runtime import init_ray

    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the raylrec CLI sets it (raylrec/cli.py)
    config = build_config(json.loads(Path(config_path).read_text()))
    started = time.perf_counter()
    marks: dict[str, float] = {}

    def say(message: str) -> None:
        print(message, flush=True)
        if message.startswith("evaluating on"):
            marks["train_done_s"] = time.perf_counter() - started
        if "written to" in message:
            marks["export_done_s"] = time.perf_counter() - started

    init_ray(config.ray)
    marks["ray_up_s"] = time.perf_counter() - started
    result = train_cf(config, say)
    epoch = result.state.history[-1]
    rows = result.state.step * config.train.batch_size * config.train.num_workers
    print(
        "SCALE "
        + json.dumps(
            {
                **marks,
                "rows_trained": rows,
                "epoch_s": epoch["train/epoch_s"],
                "train_events_per_s": rows / epoch["train/epoch_s"],
                "final_eval_s": marks.get("export_done_s", 0) - marks.get("train_done_s", 0),
                "metrics": {k: v for k, v in result.metrics.items() if k.startswith("test/")},
            }
        ),
        flush=True,
    )


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def _scoring_row(n: int, stage: str, c: dict[str, Any] | None, rate: str, detail: str) -> list[str]:
    """The table row of a scoring stage's result (none when the stage did not run)."""
    if not c:
        return []
    if "failed" in c:
        return [f"| {n:,} | {stage} | failed: {c['failed']} | | | | | | |"]
    return [
        f"| {n:,} | {stage} | {c['wall_s']:.0f} | {c['users_per_s']:{rate}} users/s | "
        f"{gib(c['driver_rss'])} | "
        f"other {gib(c['ray_worker_rss_max'])} (private {gib(c.get('ray_worker_private_max', 0))}) | "
        f"{gib(c['shm_peak'])} | {gib(c['spilled'])} | {c['users']:,} users, {detail} |"
    ]


def _private(c: dict[str, Any]) -> str:
    """The largest Ray worker's private peak and what it ran then, where recorded."""
    if "ray_worker_private_max_title" not in c:
        return ""
    return f" (private {gib(c['ray_worker_private_max'])}: {c['ray_worker_private_max_title'].strip()})"


def table(work: Path) -> str:
    rows = []
    for path in sorted(work.glob("results-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        r = json.loads(path.read_text())
        n = r["events"]
        prep = r["prepare"]["raylrec"]
        rate = n / prep["wall_s"]
        ratios = []
        for tool in ("pandas", "polars", "duckdb"):
            other = r["prepare"].get(tool)
            if not other:
                continue
            if "skipped" in other or "failed" in other:
                ratios.append(f"{tool}: {other.get('skipped') or other.get('failed')}")
            else:
                ratios.append(
                    f"{tool} {n / other['wall_s']:,.0f}/s ({rate / (n / other['wall_s']):.2f}x), "
                    f"RSS {gib(other['driver_rss'])}"
                )
        rows.append(
            f"| {n:,} | prepare | {prep['wall_s']:.0f} | {rate:,.0f} | {gib(prep['driver_rss'])} | "
            f"{gib(prep['ray_worker_rss_max'])}{_private(prep)} | {gib(prep['shm_peak'])} | "
            f"{gib(prep['spilled'])} | "
            f"{'; '.join(ratios)} |"
        )
        t = r.get("train")
        if t is None:  # --until prepare
            continue
        if "failed" in t:
            rows.append(f"| {n:,} | train-cf | failed: {t['failed']} | | | | | | |")
            continue
        workers = " / ".join(gib(x) for x in t["train_worker_rss"])
        if "train_worker_private" in t:
            workers += " (private " + " / ".join(gib(x) for x in t["train_worker_private"]) + ")"
        other = gib(t["ray_worker_rss_max"])
        if "ray_worker_private_max" in t:
            other += f" (private {gib(t['ray_worker_private_max'])})"
        rows.append(
            f"| {n:,} | train-cf | {t['wall_s']:.0f} (epoch {t['epoch_s']:.0f}, final eval + export "
            f"{t['final_eval_s']:.0f}) | {t['train_events_per_s']:,.0f} | {gib(t['driver_rss'])} | "
            f"workers {workers}; other {other} | {gib(t['shm_peak'])} | "
            f"{gib(t['spilled'])} | test NDCG@10 {t['metrics'].get('test/ndcg@10', float('nan')):.4f} |"
        )
        rows += _scoring_row(n, "score", r.get("score"), ",.0f", "top 10 each")
        rerank = r.get("rerank")
        if rerank:
            picked = f"{rerank.get('candidates')} CF candidates reranked by the tiny TALLRec, top 10 each"
            rows += _scoring_row(n, "score + rerank", rerank, ",.1f", picked)
    head = (
        "| events | stage | wall s | events/s | driver RSS GiB | worker RSS GiB | shm peak GiB | spilled GiB "
        "| beside |\n|---:|---|---|---:|---:|---|---:|---:|---|"
    )
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000_000, 20_000_000, 50_000_000])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument(
        "--user-zipf",
        type=float,
        help="the users' Zipf exponent (default: the items', 1.1: the top user holds 13%% of the log); "
        "use a fresh --workdir, logs are reused by size",
    )
    parser.add_argument("--workdir", default="/tmp/raylrec-scale")
    parser.add_argument("--baselines", nargs="*", default=["pandas", "polars", "duckdb"])
    parser.add_argument(
        "--baseline-max-events",
        nargs="*",
        default=["pandas=20000000"],
        help="TOOL=N: skip TOOL above N events (pandas holds the whole log: 6.9 GiB at 10M events)",
    )
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=16_384, help="per rank")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument(
        "--reuse-baselines",
        action="store_true",
        help="keep the pandas/polars/DuckDB numbers of an earlier run's results-N.json (same log)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's prepared data")
    parser.add_argument(
        "--from-stage",
        choices=STAGES,
        default="prepare",
        help="start at this stage on what an earlier --keep run left in --workdir (data-N, "
        "bundle-N); the earlier stages' numbers are carried over from its results-N.json",
    )
    parser.add_argument("--no-score", action="store_true", help="stop after train-cf")
    parser.add_argument(
        "--until", choices=STAGES, default=STAGES[-1], help="stop after this stage (e.g. prepare alone)"
    )
    parser.add_argument(
        "--rerank-users", type=int, default=1000, help="users of the LLM-rerank scoring (0: none)"
    )
    parser.add_argument("--rerank-candidates", type=int, default=20, help="CF candidates reranked per user")
    parser.add_argument("--table", action="store_true", help="print the table of finished sizes")
    parser.add_argument("--train-driver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_driver:
        train_driver(args.train_driver)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(work))
        return
    for n in args.sizes:
        logs = work / f"logs-{n}"
        result: dict[str, Any] = {"events": n, "users": args.users, "items": args.items}
        if args.user_zipf:
            result["user_zipf"] = args.user_zipf
        start = STAGES.index(args.from_stage)
        earlier = work / f"results-{n}.json"
        carried = json.loads(earlier.read_text()) if start and earlier.exists() else {}
        for stage in STAGES[:start]:
            needed = work / f"{'data' if stage == 'prepare' else 'bundle'}-{n}"
            if not needed.exists():
                raise SystemExit(f"--from-stage {args.from_stage}: no {needed} (run with --keep first)")
            result[stage] = {**carried.get(stage, {}), "carried_over": True}
        if start <= 0:
            synth(logs, n, args.users, args.items, args.user_zipf)
            result["prepare"] = prepare_stage(args, n, logs, work)
        last = STAGES.index(args.until)
        if start <= 1 <= last:
            no_data = "failed" in result["prepare"].get("raylrec", {})
            result["train"] = {"failed": "no dataset"} if no_data else train_stage(args, n, work)
        if last >= 2 and not args.no_score and "failed" not in result["train"]:
            if start <= 2:
                result["score"] = score_stage(args, n, work)
            if args.rerank_users and last >= 3:
                result["rerank"] = rerank_stage(args, n, work)
        (work / f"results-{n}.json").write_text(json.dumps(result, indent=1))
        if not args.keep and args.from_stage == "prepare":
            for leftover in (work / f"data-{n}", work / f"bundle-{n}", work / f"reranker-{n}", work / "runs"):
                shutil.rmtree(leftover, ignore_errors=True)
        print(table(work), flush=True)


if __name__ == "__main__":
    main()
