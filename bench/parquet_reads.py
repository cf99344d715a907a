"""Ray Data's two Parquet readers on the reads raylrec makes: V1 (raylrec's choice) beside V2
(Ray's default since 2.5x), at growing sizes.

raylrec reads a split as a known list of Parquet files (``raylrec.data.output.read_split``).
Ray Data's DataSourceV2 lists those files on a pool of footer-reading actors it starts for each
read (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``, 32 by default): new worker processes every time.
This bench times a whole read (``materialize``) of N files of a prepared-split-like schema,
alternating the readers in one local Ray instance (the driver plans each read, so
``DataContext.use_datasource_v2`` picks the reader per read):

    python bench/parquet_reads.py                       # 1, 8, 64 files x 100k rows
    python bench/parquet_reads.py --files 1 8 --rows 1000000 --repeats 5

Prints one row per size: median seconds per read for each reader, events/s, and V1's time as a
ratio of V2's. Run it alone on the machine: both readers are CPU-bound on few cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _write_files(root: Path, files: int, rows: int) -> list[str]:
    rng = np.random.default_rng(0)
    per_file = max(1, rows // files)
    paths = []
    for index in range(files):
        table = pa.table(
            {
                "uid": rng.integers(0, 200_000, per_file, dtype=np.int64),
                "iid": rng.integers(0, 50_000, per_file, dtype=np.int64),
                "label": rng.integers(0, 2, per_file).astype(np.float32),
                "timestamp": np.arange(per_file, dtype=np.int64),
            }
        )
        path = root / f"part-{index:05d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def _read_seconds(paths: list[str], v2: bool) -> tuple[float, int]:
    import ray

    ray.data.DataContext.get_current().use_datasource_v2 = v2
    started = time.perf_counter()
    rows = ray.data.read_parquet(paths).materialize().count()
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in all, split over the files")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()

    import logging

    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print("| files | rows | V2 s per read | V1 s per read | V1 events/s | V1 / V2 |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for files in args.files:
            root = Path(tmp) / f"f{files}"
            root.mkdir()
            paths = _write_files(root, files, args.rows)
            _read_seconds(paths, True), _read_seconds(paths, False)  # warm both (imports, caches)
            times: dict[bool, list[float]] = {True: [], False: []}
            rows = 0
            for _ in range(args.repeats):
                for v2 in (True, False):
                    seconds, rows = _read_seconds(paths, v2)
                    times[v2].append(seconds)
            v2, v1 = statistics.median(times[True]), statistics.median(times[False])
            print(f"| {files} | {rows:,} | {v2:.2f} | {v1:.2f} | {rows / v1:,.0f} | {v1 / v2:.2f}x |")
    ray.shutdown()


if __name__ == "__main__":
    main()
