"""Does a Ray worker process that runs Ray Data's key shuffle grow with the rows shuffled?

The diagnostic behind prepare's memory at 50M events (docs/benchmarks.md, stop 48): a bare
``repartition(keys=["uid"])`` of a synthetic table (6 numeric columns, 400,000 rows per
partition, so every partition has the same size at every row count), with no raylrec code, on
Ray Data's default shuffle and on its disk-based one. Each configuration runs in its own process
with a fresh 2-CPU local Ray instance; a sampler reads every ``ray::`` process's private memory
(RSS less the object store's pages, ``RssShmem``) every half second and keeps each process's
peak and the task names it ran. The table lists the largest process per configuration.

    python bench/shuffle_memory.py --rows 4000000 16000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import shared_rss  # noqa: E402  (RssShmem: the object store's pages)

ROWS_PER_PARTITION = 400_000


def _one(rows: int, disk: bool) -> dict:
    import numpy as np
    import psutil
    import pyarrow as pa
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.use_disk_based_hash_shuffle = disk
    peaks: dict[int, tuple[int, set[str]]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    title = " ".join(proc.info["cmdline"] or [])
                    if not title.startswith("ray::"):
                        continue
                    private = proc.memory_info().rss - shared_rss(proc.pid)
                except (psutil.Error, OSError):
                    continue
                peak, names = peaks.get(proc.pid, (0, set()))
                peaks[proc.pid] = (max(peak, private), names | {title.split("(")[0].strip()})
            done.wait(0.5)

    def events(batch: dict) -> pa.Table:
        n = len(batch["id"])
        rng = np.random.default_rng(int(batch["id"][0]))
        return pa.table(
            {
                "uid": rng.integers(0, 200_000, n),
                "iid": rng.integers(0, 50_000, n),
                "timestamp": batch["id"],
                **{name: rng.random(n) for name in ("a", "b", "c")},
            }
        )

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    shuffled = (
        ray.data.range(rows, override_num_blocks=max(8, rows // 250_000))
        .map_batches(events, batch_format="numpy")
        .repartition(max(1, rows // ROWS_PER_PARTITION), keys=["uid"], sort=False)
        .map_batches(lambda table: table, batch_format="pyarrow", batch_size=None)
        .materialize()
    )
    assert shuffled.count() == rows
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    peak, names = max(peaks.values(), key=lambda entry: entry[0])
    return {"rows": rows, "disk": disk, "wall_s": wall, "largest_private": peak, "ran": sorted(names)}


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[4_000_000, 16_000_000])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # ROWS DISK: a single run, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(int(args.one[0]), args.one[1] == "1")))
        return
    print("| shuffle | rows | partitions | wall s | largest Ray process, private GiB | what it ran |")
    print("|---|---:|---:|---:|---:|---|")
    for disk in (False, True):
        for rows in args.rows:
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(rows), "1" if disk else "0"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| {'disk-based' if disk else 'object store'} | {rows:,} | {rows // ROWS_PER_PARTITION} | "
                f"{r['wall_s']:.0f} | {r['largest_private'] / 2**30:.2f} | {', '.join(r['ran'])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
