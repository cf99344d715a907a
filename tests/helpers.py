"""Test helpers: reading a prepared dataset whole and checking its invariants independently."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from raylrec import storage
from raylrec.config import build_config
from raylrec.data.output import read_meta, read_table
from raylrec.scoring.publish import RECS_SCHEMA
from raylrec.train.loop import TrainState
from raylrec.train.ray_runner import TRAIN_SNAPSHOT

T = TypeVar("T")


def recs_table(run: str, rows: list[tuple[str, int]], item: str = "i") -> pa.Table:
    """Recommendations of run ``run``: one row per (user, rank), item ``<item><rank>``."""
    return pa.table(
        {
            "user_id": [u for u, _ in rows],
            "rank": pa.array([r for _, r in rows], pa.int32()),
            "item_id": [f"{item}{r}" for _, r in rows],
            "score": pa.array([1.0 / r for _, r in rows], pa.float32()),
            "source": ["cf"] * len(rows),
            "model": ["m"] * len(rows),
            "run_id": [run] * len(rows),
        },
        schema=RECS_SCHEMA,
    )


def stage_run(root: str, date: str, run: str, rows: list[tuple[str, int]], item: str = "i") -> None:
    """What the scoring job's writers do: a Parquet file under the run's staging prefix."""
    fs, path = storage.filesystem(storage.join(root, f"date={date}", "_runs", run))
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/part-0.parquet", "wb") as f:
        pq.write_table(recs_table(run, rows, item), f)


def data_config(source: dict, output: str, **data):
    return build_config({"data": {"source": source, "output": output, **data}}).data


def read_all(out: str) -> pa.Table:
    """Every split of a committed dataset, with a ``split`` column."""
    meta = read_meta(out)
    tables = []
    for split in meta["counts"]["splits"]:
        t = read_table(out, split)
        tables.append(t.append_column("split", pa.array([split] * t.num_rows)))
    return pa.concat_tables(tables, promote_options="permissive")


def assert_point_in_time(table: pa.Table, max_len: int | None = None, max_users: int | None = None) -> int:
    """Every history item is a positive event of the same user strictly before the event, and
    the history is exactly the latest such items. Returns the number of rows checked."""
    if max_users is not None:
        keep = pa.compute.less_equal(table["uid"], max_users)
        table = table.filter(keep)
    rows = table.select(["uid", "iid", "timestamp", "label", "history"]).to_pylist()
    by_user: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_user[r["uid"]].append(r)
    for events in by_user.values():
        events.sort(key=lambda r: (r["timestamp"], r["iid"]))
        for r in events:
            earlier = [e for e in events if e["timestamp"] < r["timestamp"] and e["label"] == 1]
            earlier_items = {e["iid"] for e in earlier}
            assert set(r["history"]) <= earlier_items, (r, "sees an item not positively rated before")
            if max_len is not None:
                expected_len = min(len(earlier), max_len)
                assert len(r["history"]) == expected_len, (r, expected_len)
                # the last history item is the latest earlier positive (ties broken by item id)
                if expected_len:
                    latest_ts = max(e["timestamp"] for e in earlier)
                    assert r["history"][-1] in {e["iid"] for e in earlier if e["timestamp"] == latest_ts}
    return len(rows)


def wait_for(
    state: Callable[[], T],
    what: str,
    cap_s: float = 900,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    every_s: float = 0.2,
) -> T:
    """Poll ``state()`` until it returns something truthy, and return that. A wait on a state,
    never on a time: ``cap_s`` is only a safety net for a broken run, many times what the state
    normally takes even on a machine twice as slow; reaching it (or ``proc`` ending first) fails
    naming the state waited for, with the tail of the process's ``log``."""
    started = time.monotonic()
    while True:
        found = state()
        if found:
            return found
        ended = proc is not None and proc.poll() is not None
        if ended or time.monotonic() - started > cap_s:
            why = f"exited with {proc.returncode}" if ended else f"still not there after {cap_s:.0f}s"
            raise AssertionError(f"waited for {what}: {why}\n{tail(log) if log else ''}")
        time.sleep(every_s)


def tail(log: Path, chars: int = 6000) -> str:
    """The end of a subprocess's log file (tests send a subprocess's output to a file, never to
    a pipe nobody reads while they wait: a full pipe blocks the process)."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def kill_a_training_worker_after_first_checkpoint(
    run_dir: Path, killed: list[int], done: threading.Event | None = None
) -> None:
    """SIGKILL one Ray Train worker process as soon as Ray Train has committed a checkpoint of
    the run in ``run_dir`` (its snapshot file is written once every rank's part is stored; a
    checkpoint directory alone may still be uploading, and the run would start over). Gives up
    when ``done`` is set (the run ended: the test then fails on ``killed`` being empty)."""

    def committed_with_a_worker() -> bool:
        if done is not None and done.is_set():
            return True
        if not (run_dir / TRAIN_SNAPSHOT).exists():
            return False
        # Only this test process's own Ray (its raylet is our child): tests running in parallel
        # have Ray Train workers of their own.
        for proc in psutil.Process().children(recursive=True):
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            if "ray::RayTrainWorker" in cmdline:
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return True
        return False

    wait_for(committed_with_a_worker, f"a committed checkpoint ({run_dir / TRAIN_SNAPSHOT})", 1800)


def write_embeddings(
    root: str,
    users: np.ndarray,
    items: np.ndarray,
    dim: int = 16,
    seed: int = 0,
    manifest: bool = True,
    parts: int = 2,
    listed: bool = True,
) -> str:
    """A profile-embeddings directory in the contract's layout: random unit vectors for the
    ``users`` and ``items`` ids, in ``parts`` Parquet files, ``_manifest.json`` last (listing
    the files with their sha256, as ``raylrec profiles embed`` does, when ``listed``)."""
    rng = np.random.default_rng(seed)
    kinds = ["user"] * len(users) + ["item"] * len(items)
    ids = np.concatenate([users, items]).astype(np.int64)
    vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(len(ids))  # rows in no particular order
    files = []
    for part, rows in enumerate(np.array_split(order, parts)):
        table = pa.table(
            {
                "kind": pa.array([kinds[r] for r in rows], pa.string()),
                "id": pa.array(ids[rows], pa.int64()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), dim),
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = f"part-{part:05d}.parquet"
        storage.write_bytes(storage.join(root, name), buffer.getvalue())
        files.append({"path": name, "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})
    if manifest:
        storage.write_json(
            storage.join(root, "_manifest.json"),
            {
                "model": "random-unit-vectors",
                "dim": dim,
                "text": "profiles",
                "dataset": "test",
                "rows": {"user": len(users), "item": len(items)},
                **({"files": files} if listed else {}),
            },
        )
    return root


class Interrupt(Exception):
    """What ``CheckpointingReporter`` raises to stand for a lost worker."""


class CheckpointingReporter:
    """Keeps the last checkpoint in memory (as Ray Train would on disk) and can fail after it."""

    def __init__(self, tmp_path, fail_at_step: int | None = None):
        self.tmp_path, self.fail_at_step = tmp_path, fail_at_step
        tmp_path.mkdir(exist_ok=True)
        self.saved: TrainState | None = None

    def report(self, metrics, state, engine):
        if engine is None:
            return
        engine.save(str(self.tmp_path), 0)
        self.saved = copy.deepcopy(state)
        if self.fail_at_step is not None and state.step >= self.fail_at_step:
            raise Interrupt

    def log(self, message):
        pass
