"""Benchmark: `raylrec data prepare` beside a single-process pandas script (bench/pandas_prepare.py)
on the same synthetic Parquet logs, same steps, in one run.

Prints events/s, wall time, the driver's peak RSS and the peak memory of the whole process tree
(for raylrec: driver + GCS + raylet + object store + workers, as the sum of PSS so that shared
object-store pages count once).

    python bench/data_prepare.py --sizes 1000000 10000000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


class PeakMemory(threading.Thread):
    """Samples the driver's RSS and the whole process tree's PSS until stopped."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.driver_rss = 0
        self.tree = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.driver_rss = max(self.driver_rss, self.root.memory_info().rss)
                total = 0
                for proc in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        total += proc.memory_full_info().pss
                self.tree = max(self.tree, total)
            except psutil.NoSuchProcess:
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monitor = PeakMemory(proc.pid)
    monitor.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    monitor.stop()
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{output[-3000:]}")
    return {"wall": wall, "driver_rss": monitor.driver_rss, "tree": monitor.tree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", default="/tmp/raylrec-bench")
    parser.add_argument("--max-len", type=int, default=20)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    python = sys.executable
    results = []
    for n in args.sizes:
        users, items = max(1_000, n // 50), max(1_000, n // 200)
        logs = work / f"logs-{n}"
        if not (logs / "items.parquet").exists():
            print(f"generating {n:,} events ({users:,} users, {items:,} items) ...", flush=True)
            shutil.rmtree(logs, ignore_errors=True)
            subprocess.run(
                [
                    python,
                    "-m",
                    "raylrec.cli",
                    "data",
                    "synth",
                    "--out",
                    str(logs),
                    "--events",
                    str(n),
                    "--users",
                    str(users),
                    "--items",
                    str(items),
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        out_r, out_p = work / f"out-raylrec-{n}", work / f"out-pandas-{n}"
        print(f"{n:,} events: raylrec ...", flush=True)
        ray_m = measure(
            [
                python,
                "-m",
                "raylrec.cli",
                "data",
                "prepare",
                "-q",
                "data.source.type=logs",
                f"data.source.paths=[{logs / 'events'}]",
                "data.validation.rating_range=[1,5]",
                "data.split.protocol=random_ratio",
                f"data.history.max_len={args.max_len}",
                f"data.output={out_r}",
                "data.overwrite=true",
            ],
            env,
        )
        print(f"{n:,} events: pandas ...", flush=True)
        pd_m = measure(
            [
                python,
                str(REPO / "bench" / "pandas_prepare.py"),
                "--logs",
                str(logs / "events"),
                "--out",
                str(out_p),
                "--max-len",
                str(args.max_len),
            ],
            env,
        )
        results.append((n, ray_m, pd_m))
        shutil.rmtree(out_r, ignore_errors=True)
        shutil.rmtree(out_p, ignore_errors=True)

    gib = 1024**3
    print()
    print(
        f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / gib:.0f} GiB RAM; "
        f"history max_len {args.max_len}; random per-user 8:1:1 split"
    )
    print("| events | implementation | wall s | events/s | driver peak RSS | whole-tree peak (PSS) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, r, p in results:
        for name, m in (("raylrec (Ray Data, local)", r), ("pandas, one process", p)):
            print(
                f"| {n:,} | {name} | {m['wall']:.1f} | {n / m['wall']:,.0f} | "
                f"{m['driver_rss'] / gib:.2f} GiB | {m['tree'] / gib:.2f} GiB |"
            )
        print(
            f"| {n:,} | ratio (raylrec ÷ pandas) | {r['wall'] / p['wall']:.2f}x | "
            f"{p['wall'] / r['wall']:.2f}x | {r['driver_rss'] / p['driver_rss']:.2f}x | "
            f"{r['tree'] / p['tree']:.2f}x |"
        )


if __name__ == "__main__":
    main()
