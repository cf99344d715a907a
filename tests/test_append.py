"""`raylrec data prepare --append` (issue 38, part 1): appending days one by one gives the rows,
histories and splits a full preparation of the same days gives, ids stay stable, late events
are quarantined, and a dataset or config that cannot take an append is refused up front."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import data_config, read_all, wait_for

from raylrec.artifacts import ArtifactDir, CommitConflict
from raylrec.config import load_config
from raylrec.data.append import AppendError, check_appendable
from raylrec.data.output import DATASET, read_meta, read_table
from raylrec.data.prepare import prepare
from raylrec.data.stats import dataset_stats, format_stats

pytestmark = pytest.mark.usefixtures("ray_session")

DAY = 86_400
START = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp())
SPLIT = {"protocol": "rolling_days", "valid_days": 1, "test_days": 1}
HISTORY = {"max_len": 3}  # short: most rows' histories are cut, so the carried tails matter


def _day_log(day: int, rng: np.random.Generator, users: list[str], items: list[str], n: int) -> pa.Table:
    ts = START + day * DAY + np.sort(rng.integers(0, DAY // 8, n)) * 8  # shared instants: ties
    table = pa.table(
        {
            "user_id": rng.choice(users, n),
            "item_id": rng.choice(items, n),
            "timestamp": ts.astype(np.int64),
            "rating": rng.integers(1, 6, n).astype(np.float64),
        }
    )
    return pa.concat_tables([table, table.slice(0, 3)])  # three duplicate events per day


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Five days of a log, one Parquet file per day (a date-partitioned log). Day 3 brings a new
    user and a new item whose raw ids sort before every earlier one, and lacks four users who
    come back on day 4 (their tails must pass through day 3's append untouched)."""
    root = tmp_path_factory.mktemp("log")
    rng = np.random.default_rng(7)
    users = [f"u{i:02d}" for i in range(12)]
    items = [f"i{i:02d}" for i in range(15)]
    paths = []
    for day in range(5):
        if day == 3:
            users, items = ["a-new-user", *users], ["a-new-item", *items]
        path = root / f"date={dt.date(2026, 11, 20) + dt.timedelta(days=day)}" / "events.parquet"
        path.parent.mkdir()
        present = [u for u in users if u not in ("u00", "u01", "u02", "u03")] if day == 3 else users
        pq.write_table(_day_log(day, rng, present, items, 60), path)
        paths.append(str(path))
    pq.write_table(
        pa.table({"item_id": items, "title": [f"Title of {i}" for i in items]}), root / "items.parquet"
    )
    return paths


def _config(paths: list[str], out: str, **data):
    items = str(Path(paths[0]).parents[1] / "items.parquet")  # the log's item titles
    source = {"type": "logs", "paths": paths, "items": {"path": items}}
    return data_config(source, out, split=SPLIT, history=HISTORY, **data)


def _by_raw_ids(out: str) -> list[tuple]:
    """Every row with users and items (history too) as raw ids, sorted: what must not depend on
    how the dense ids were assigned."""
    table = read_all(out)
    users = dict(
        zip(*(read_table(out, "users.parquet")[c].to_pylist() for c in ("uid", "user_id")), strict=True)
    )
    items = dict(
        zip(*(read_table(out, "items.parquet")[c].to_pylist() for c in ("iid", "item_id")), strict=True)
    )
    rows = []
    for r in table.to_pylist():
        history = tuple(items[i] for i in r["history"])
        rows.append(
            (users[r["uid"]], items[r["iid"]], r["timestamp"], r["rating"], r["label"], history, r["split"])
        )
    return sorted(rows)


@pytest.fixture(scope="module")
def runs(days, tmp_path_factory):
    """The five days prepared in one run, and prepared as days 0-1 then appended one by one
    (version 1 to 4), with each version's meta and users table: what several tests check."""
    root = tmp_path_factory.mktemp("runs")
    full, appended = str(root / "full"), str(root / "appended")
    full_meta = prepare(_config(days, full))
    metas = [prepare(_config(days[:2], appended))]
    users = [read_table(appended, "users.parquet").select(["user_id", "uid"]).to_pylist()]
    for day in days[2:]:
        metas.append(prepare(_config([day], appended, append=True)))
        users.append(read_table(appended, "users.parquet").select(["user_id", "uid"]).to_pylist())
    return {"full": full, "full_meta": full_meta, "appended": appended, "metas": metas, "users": users}


def test_appending_day_by_day_equals_one_full_preparation(runs):
    full, full_meta, appended, metas = (runs[k] for k in ("full", "full_meta", "appended", "metas"))
    assert _by_raw_ids(appended) == _by_raw_ids(full)
    meta = read_meta(appended)
    assert meta["version"] == 4 and [m["version"] for m in metas] == [1, 2, 3, 4]
    for key in ("splits", "positives", "rows_in", "rows_out", "rows_quarantined", "users", "items"):
        assert meta["counts"][key] == full_meta["counts"][key], key
    assert meta["watermark"] == full_meta["watermark"]
    assert meta["counts"]["quarantine_reasons"] == full_meta["counts"]["quarantine_reasons"]
    # the split moved forward: the last day is test, the one before valid, the rest train
    assert sorted(meta["days"]) == [f"2026-11-{d}" for d in range(20, 25)]  # each appended as a day
    assert all(p.startswith("days/2026-11-24/") for p in meta["files"]["test"])
    assert all(p.startswith("days/2026-11-23/") for p in meta["files"]["valid"])
    # the first version's day files (its valid and test days) are train now, listed, not rewritten
    first = metas[0]
    assert sorted(first["files"]) == ["quarantine", "test", "valid"]  # the duplicates quarantined
    assert set(first["files"]["valid"] + first["files"]["test"]) <= set(meta["files"]["train"])
    # `raylrec data stats` says which version it is and when its last event was
    stats = format_stats(dataset_stats(appended))
    assert "version   4 (3 append(s); last event 2026-11-24T" in stats
    assert "version" not in format_stats(dataset_stats(full)).split("hash")[0]


def test_ids_stay_stable_and_new_ones_follow(runs, tmp_path):
    users = runs["users"]
    for before, after in zip(users, users[1:], strict=False):
        assert after[: len(before)] == before  # every version keeps every earlier id
    assert users[2][len(users[1]) :] == [{"user_id": "a-new-user", "uid": len(users[1]) + 1}]  # day 3
    table = read_table(runs["appended"], "items.parquet")
    items = table["item_id"].to_pylist()
    assert items.count("a-new-item") == 1
    # an appended item's metadata comes from the source as in a full run
    titles = dict(zip(items, table["title"].to_pylist(), strict=True))
    full = read_table(runs["full"], "items.parquet")
    assert titles == dict(zip(full["item_id"].to_pylist(), full["title"].to_pylist(), strict=True))
    assert items.index("a-new-item") >= runs["metas"][0]["counts"]["items"]  # after version 1's ids
    assert read_meta(runs["appended"])["counts"]["num_users"] == len(users[-1]) + 1
    saved = json.loads((Path(runs["appended"]) / "versions" / "000001.json").read_text())
    assert saved["version"] == 1 and "tables" not in saved  # the version it replaced, kept


def test_a_late_event_is_quarantined_with_its_reason_and_nothing_is_lost(runs, days, tmp_path):
    out = str(tmp_path / "d")
    shutil.copytree(runs["appended"], out)
    next_day = pq.read_table(days[4])
    next_day = next_day.set_column(2, "timestamp", pc.add(next_day["timestamp"], DAY))
    late = pa.table(
        {
            "user_id": ["u01"],
            "item_id": ["i01"],
            "timestamp": pa.array([START + DAY], pa.int64()),
            "rating": [5.0],
        }
    )
    late_path = Path(days[0]).parents[1] / "late" / "events.parquet"  # beside the log's days
    late_path.parent.mkdir()
    pq.write_table(pa.concat_tables([next_day, late]), late_path)
    before = read_meta(out)["counts"]
    meta = prepare(_config([str(late_path)], out, append=True))
    reasons = meta["counts"]["quarantine_reasons"]
    late_reason = [r for r in reasons if r.startswith("late event")]
    assert len(late_reason) == 1 and reasons[late_reason[0]] == 1
    added = meta["appended"][-1]
    assert added["rows_in"] == next_day.num_rows + 1 == added["rows_out"] + added["rows_quarantined"]
    counts = meta["counts"]
    assert counts["rows_in"] == before["rows_in"] + added["rows_in"]
    assert counts["rows_in"] == counts["rows_out"] + counts["rows_quarantined"]
    quarantine = read_table(out, "quarantine")
    assert "late event" in " ".join(quarantine["_reason"].to_pylist())


def test_two_appends_at_once_cannot_both_commit(runs, days, tmp_path, monkeypatch):
    """Two appends to one dataset at once, their interleaving made deterministic: the other
    append's commit lands while this one writes its day files (a stand-in for the second
    process: it rewrites meta.json as that commit would). This one's compare-and-swap commit
    then fails, naming why, and the other's version stands: neither's rows are lost silently."""
    from raylrec.data import append as append_module

    out = str(tmp_path / "d")
    shutil.copytree(runs["appended"], out)
    next_day = pq.read_table(days[4])
    next_day = next_day.set_column(2, "timestamp", pc.add(next_day["timestamp"], DAY))
    path = Path(days[0]).parents[1] / "concurrent" / "events.parquet"
    path.parent.mkdir()
    pq.write_table(next_day, path)
    write_parts = append_module.write_parts

    def write_parts_while_another_commits(*args, **kwargs):
        parts = write_parts(*args, **kwargs)
        other = {**read_meta(out), "elapsed_s": -1.0}  # the other append's commit
        other.pop("format")
        ArtifactDir(out, DATASET).commit(other)
        return parts

    monkeypatch.setattr(append_module, "write_parts", write_parts_while_another_commits)
    with pytest.raises(CommitConflict, match="committed by another writer after this one read it"):
        prepare(_config([str(path)], out, append=True))
    meta = read_meta(out)
    assert meta["elapsed_s"] == -1.0 and meta["version"] == 4  # the other's commit stands


def test_a_dataset_or_config_that_cannot_take_an_append_is_refused_before_ray(runs, days, tmp_path):
    ratio = str(tmp_path / "ratio")
    prepare(data_config({"type": "logs", "paths": days[:1]}, ratio))
    with pytest.raises(ValueError, match="append needs split.protocol rolling_days"):
        data_config({"type": "logs", "paths": days[2:3]}, ratio, append=True)
    other = data_config(
        {"type": "logs", "paths": days[2:3]},
        runs["appended"],
        split=SPLIT,
        history={"max_len": 5},
        append=True,
    )
    with pytest.raises(
        AppendError, match=r"data.history is \{'max_len': 5\}.*prepared with \{'max_len': 3\}"
    ):
        check_appendable(other)
    with pytest.raises(FileNotFoundError, match="holds no committed prepared dataset"):
        check_appendable(_config(days[2:3], str(tmp_path / "nothing"), append=True))
    assert "watermark" not in read_meta(ratio)
    wrong = data_config(
        {"type": "logs", "paths": days[2:3]}, ratio, split=SPLIT, history=HISTORY, append=True
    )
    with pytest.raises(AppendError, match="only a rolling_days dataset takes appends"):
        check_appendable(wrong)


@pytest.mark.kill
def test_an_append_killed_before_its_commit_leaves_the_version_before_and_the_rerun_completes(days, tmp_path):
    """Over 60 s alone: a real `raylrec data prepare --append` process with its own Ray
    instance, SIGKILLed (driver and Ray) once its first day file is written, before the commit:
    the dataset still reads as the version before it, whole, and the same command then commits
    the next version with every row of the day."""
    out = tmp_path / "dataset"
    prepare(_config(days[:2], str(out)))
    rng = np.random.default_rng(5)
    big = tmp_path / "log" / "date=2026-11-22" / "events.parquet"
    big.parent.mkdir(parents=True)
    n = 400_000  # a day large enough that the commit is many seconds after the first day file
    users, items = [f"u{i:05d}" for i in range(20_000)], [f"i{i:04d}" for i in range(2_000)]
    pq.write_table(_day_log(2, rng, users, items, n), big)
    config = tmp_path / "append.yaml"
    config.write_text(
        json.dumps(
            {
                "data": {
                    "source": {"type": "logs", "paths": [str(big)]},
                    "split": SPLIT,
                    "history": HISTORY,
                    "output": str(out),
                    "append": True,
                },
                "ray": {"num_cpus": 1},
            }
        )
    )
    before = read_meta(str(out))
    before_rows = {s: read_table(str(out), s).num_rows for s in before["counts"]["splits"]}
    cmd = [sys.executable, "-m", "raylrec.cli", "data", "prepare", "--config", str(config), "-q"]
    log = tmp_path / "killed.log"  # a file: a pipe nobody reads while waiting could block the run
    with log.open("w") as output:
        proc = subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    day_dir = out / "days" / "2026-11-22"
    try:
        wait_for(lambda: list(day_dir.glob("*.parquet")), f"a day file in {day_dir}", 900, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the version before, whole: its meta, every listed file, its rows
    after_kill = read_meta(str(out))
    assert after_kill["version"] == before["version"] == 1
    assert {s: read_table(str(out), s).num_rows for s in before["counts"]["splits"]} == before_rows
    assert format_stats(dataset_stats(str(out)))  # what `data stats` prints reads it too

    meta = prepare(load_config(config).data)
    assert meta["version"] == 2
    appended = meta["appended"][-1]
    assert appended["rows_in"] == n + 3 == appended["rows_out"] + appended["rows_quarantined"]
    # the killed attempt's day files are not listed: each split holds exactly its counted rows
    for split, rows in meta["counts"]["splits"].items():
        assert read_table(str(out), split).num_rows == rows, split
