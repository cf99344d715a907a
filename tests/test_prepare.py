"""The preparation pipeline end to end on a real local Ray instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import assert_point_in_time, data_config, read_all, wait_for

from raylrec.config import load_config
from raylrec.data import pipeline
from raylrec.data.files import SourceError
from raylrec.data.hashing import table_digest
from raylrec.data.output import IncompleteDatasetError, OutputExistsError, read_meta, read_split, read_table
from raylrec.data.prepare import prepare

pytestmark = pytest.mark.usefixtures("ray_session")

ML100K = {"type": "movielens_100k"}


@pytest.fixture(scope="module")
def ml100k_prepared(tmp_path_factory, ray_session):
    out = str(tmp_path_factory.mktemp("ml100k") / "out")
    meta = prepare(data_config(ML100K, out, validation={"rating_range": [1, 5]}))
    return out, meta


def test_ml100k_from_the_recbole_wheel(ml100k_prepared):
    out, meta = ml100k_prepared
    counts = meta["counts"]
    assert counts["rows_in"] == 100_000 == counts["rows_out"] + counts["rows_quarantined"]
    assert counts["rows_quarantined"] == 0
    assert (counts["users"], counts["items"]) == (943, 1682)
    assert sum(counts["splits"].values()) == 100_000
    # RecBole's RS rule on 8:1:1 per user: ML-100K users have >= 20 events, so ~10% each.
    assert 0.095 < counts["splits"]["valid"] / 100_000 < 0.1
    items = read_table(out, "items.parquet")
    assert items["iid"].to_pylist() == list(range(1, 1683))  # dense, 0 left for padding
    toy = items.filter(pc.equal(items["item_id"], "1")).to_pylist()[0]
    assert toy["title"] == "Toy Story" and toy["iid"] == 1
    users = read_table(out, "users.parquet")
    assert users.num_rows == 943 and "occupation" in users.schema.names


def test_ml100k_histories_never_see_the_future(ml100k_prepared):
    out, meta = ml100k_prepared
    table = read_all(out)
    assert table.num_rows == 100_000
    lengths = pc.list_value_length(table["history"])
    assert pc.max(lengths).as_py() == 50
    assert assert_point_in_time(table, max_len=50, max_users=60) > 3000


def test_grouplens_format_gives_the_same_rows(ml100k_prepared, ml100k_dir, tmp_path):
    """Write the same ratings in GroupLens's own u.data/u.item/u.user and prepare again."""
    raw = pads.dataset(
        str(ml100k_dir / "ml-100k.inter"),
        format=pads.CsvFileFormat(parse_options=pa.csv.ParseOptions(delimiter="\t")),
    ).to_table()
    lines = [
        "\t".join(map(str, r)) for r in zip(*(raw[c].to_pylist() for c in raw.schema.names), strict=True)
    ]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    (tmp_path / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|GoldenEye (1995)|01-Jan-1995||x|0\n",
        encoding="latin-1",
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    out = str(tmp_path / "out")
    meta = prepare(
        data_config(
            {"type": "movielens_100k", "path": str(tmp_path)}, out, validation={"rating_range": [1, 5]}
        )
    )
    recbole_out, recbole_meta = ml100k_prepared
    assert meta["counts"]["splits"] == recbole_meta["counts"]["splits"]
    assert table_digest(read_all(out)) == table_digest(read_all(recbole_out))
    items = read_table(out, "items.parquet")
    assert items.filter(pc.equal(items["iid"], 1))["title"].to_pylist() == ["Toy Story (1995)"]


def test_ml1m_grouplens_format_and_leave_last_out(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        (u, i, int(rng.integers(1, 6)), 978300000 + 60 * k)
        for k, (u, i) in enumerate(
            (u, i) for u in range(1, 31) for i in rng.choice(np.arange(1, 200), 12, replace=False)
        )
    ]
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    (tmp_path / "movies.dat").write_bytes(
        "".join(f"{i}::Star Wars: Episode {i} (1977)::Action|Sci-Fi\n" for i in range(1, 200)).encode(
            "latin-1"
        )
    )
    (tmp_path / "users.dat").write_text("".join(f"{u}::F::1::10::48067\n" for u in range(1, 31)))
    out = str(tmp_path / "out")
    meta = prepare(
        data_config(
            {"type": "movielens_1m", "path": str(tmp_path)}, out, split={"protocol": "leave_last_out"}
        )
    )
    assert meta["counts"]["splits"] == {"train": 300, "valid": 30, "test": 30}
    titles = read_table(out, "items.parquet")["title"].to_pylist()
    assert all(t.startswith("Star Wars: Episode ") for t in titles)  # '::' split, ':' kept
    table = read_all(out)
    test = table.filter(pc.equal(table["split"], "test")).to_pylist()
    for row in test:  # the test event is each user's latest
        mine = table.filter(pc.equal(table["uid"], row["uid"]))
        assert row["timestamp"] == pc.max(mine["timestamp"]).as_py()
    assert_point_in_time(table, max_len=50)


def test_same_input_same_hash_whatever_the_partitioning(tmp_path, monkeypatch):
    source = {
        "type": "synthetic",
        "num_events": 30_000,
        "num_users": 800,
        "num_items": 500,
        "events_per_chunk": 7_000,
    }
    first = prepare(data_config(source, str(tmp_path / "a")))
    monkeypatch.setattr(pipeline, "BYTES_PER_PARTITION", 1 << 20)  # ~10 shuffle partitions, not 1
    second = prepare(data_config(source, str(tmp_path / "b")))
    assert first["content_hash"] == second["content_hash"]
    assert table_digest(read_all(str(tmp_path / "a"))) == table_digest(read_all(str(tmp_path / "b")))
    changed = prepare(data_config(source, str(tmp_path / "c"), history={"max_len": 5}))
    assert changed["content_hash"] != first["content_hash"]
    assert_point_in_time(read_all(str(tmp_path / "b")), max_len=50, max_users=100)


def test_temporal_fraction_split_and_kcore(tmp_path):
    source = {"type": "synthetic", "num_events": 20_000, "num_users": 2_000, "num_items": 3_000}
    out = str(tmp_path / "t")
    meta = prepare(
        data_config(
            source, out, kcore=5, split={"protocol": "temporal_fraction", "fractions": [0.7, 0.15, 0.15]}
        )
    )
    counts = meta["counts"]
    assert counts["rows_in"] == 20_000 == counts["rows_out"] + counts["rows_quarantined"]
    assert any(r.startswith("k-core") for r in counts["quarantine_reasons"])
    table = read_all(out)
    n = table.num_rows
    assert abs(counts["splits"]["train"] / n - 0.7) < 0.01
    users = table.group_by("uid").aggregate([("iid", "count")])
    items = table.group_by("iid").aggregate([("uid", "count")])
    assert pc.min(users["iid_count"]).as_py() >= 5 and pc.min(items["uid_count"]).as_py() >= 5
    c1, c2 = meta["protocol"]["temporal_cutoffs"]
    for split, lo, hi in (("train", 0, c1), ("valid", c1, c2), ("test", c2, 2**62)):
        ts = table.filter(pc.equal(table["split"], split))["timestamp"]
        assert pc.min(ts).as_py() >= lo and pc.max(ts).as_py() < hi
    assert_point_in_time(table, max_len=50, max_users=300)


def test_temporal_window_split_quarantines_events_after_the_end(tmp_path):
    source = {
        "type": "synthetic",
        "num_events": 5_000,
        "num_users": 300,
        "num_items": 200,
        "start": 1_577_836_800,
        "span_days": 100,
    }
    out = str(tmp_path / "w")
    meta = prepare(
        data_config(
            source,
            out,
            split={
                "protocol": "temporal_window",
                "valid_start": "2020-03-01",
                "test_start": "2020-03-20",
                "end": "2020-04-01",
            },
        )
    )
    late = [r for r in meta["counts"]["quarantine_reasons"] if "split's end" in r]
    assert (
        late and meta["counts"]["rows_in"] == meta["counts"]["rows_out"] + meta["counts"]["rows_quarantined"]
    )
    table = read_all(out)
    assert pc.max(table["timestamp"]).as_py() < 1_585_699_200  # 2020-04-01


def _write_messy_logs(root) -> int:
    """Three formats, good rows and every kind of bad row; returns the number of rows."""
    root.mkdir()
    (root / "a.csv").write_text(
        "uid,iid,ts,stars\n"
        "u1,i1,1600000000,5\n"
        "u1,i2,1600000100,4\n"
        "u1,i2,1600000100,4\n"  # duplicate event
        "u2,i1,1600000200,2\n"
        ",i3,1600000300,5\n"  # missing user
        "u2,i3,not-a-time,5\n"  # bad timestamp
        "u2,i3,-7,5\n"  # negative timestamp
        "u2,i3,1600000000000,5\n"  # milliseconds where seconds are expected
        "u3,i1,1600000400,NaN\n"  # NaN rating
        "u3,i2,1600000500,11\n"  # out of range
        "u3,i3,1600000600,\n"  # missing rating
    )
    (root / "b.jsonl").write_text(
        '{"uid": "u3", "iid": "i4", "ts": 1600000700, "stars": 3}\n'
        '{"uid": "u4", "iid": "i4", "ts": "1600000800", "stars": "five"}\n'
        "this line is not json\n"
    )
    pq.write_table(
        pa.table(
            {"uid": ["u4", "u5"], "iid": ["i1", "i2"], "ts": [1600000900, 1600001000], "stars": [4.0, 1.0]}
        ),
        root / "c.parquet",
    )
    return 11 + 3 + 2


def test_bad_rows_are_quarantined_with_reasons_and_nothing_is_lost(tmp_path):
    n = _write_messy_logs(tmp_path / "logs")
    out = str(tmp_path / "out")
    source = {
        "type": "logs",
        "paths": [str(tmp_path / "logs")],
        "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "stars"},
    }
    meta = prepare(data_config(source, out, validation={"rating_range": [1, 5]}))
    counts = meta["counts"]
    assert counts["rows_in"] == n
    assert counts["rows_out"] == 6 and counts["rows_quarantined"] == 10
    reasons = counts["quarantine_reasons"]
    assert reasons["rating: outside [1.0, 5.0]"] == 1 and reasons["rating: NaN or infinite"] == 1
    assert reasons["rating: missing"] == 1 and reasons["rating: not a number"] == 1
    assert reasons["user_id: missing"] == 1 and reasons["json: not valid JSON"] == 1
    assert sum(v for k, v in reasons.items() if k.startswith("timestamp")) == 3
    assert sum(v for k, v in reasons.items() if k.startswith("duplicate")) == 1
    quarantine = read_table(str(out), "quarantine").to_pylist()
    located = {(r["_file"].rsplit("/", 1)[-1], r["_row"]): r["_reason"] for r in quarantine}
    assert located[("a.csv", 4)] == "user_id: missing"
    assert located[("b.jsonl", 2)] == "json: not valid JSON"
    assert located[("a.csv", 2)].startswith("duplicate")
    raw = next(r for r in quarantine if r["_row"] == 9 and r["_file"].endswith("a.csv"))
    assert json.loads(raw["_raw"])["rating"] == "11"
    # every quarantined row keeps its values, a row dropped after validation (the duplicate) too
    assert all(r["_raw"] for r in quarantine)
    duplicate = next(r for r in quarantine if r["_reason"].startswith("duplicate"))
    assert json.loads(duplicate["_raw"]) == {
        "user_id": "u1",
        "item_id": "i2",
        "timestamp": 1600000100,
        "rating": 4.0,
    }


def test_empty_file_is_an_error_naming_it_unless_skipped(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "part-0.csv").write_text("user_id,item_id,timestamp,rating\n1,2,1600000000,5\n2,2,1600000001,3\n")
    (logs / "part-1.csv").write_text("")
    source = {"type": "logs", "paths": [str(logs)]}
    with pytest.raises(SourceError, match=r"part-1\.csv: empty file"):
        prepare(data_config(source, str(tmp_path / "o")))
    meta = prepare(data_config(source, str(tmp_path / "o2"), validation={"on_empty_file": "skip"}))
    assert meta["counts"]["rows_in"] == 2


def test_truncated_parquet_and_wrong_mapping_fail_before_any_output(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(
        pa.table(
            {
                "user_id": ["1"] * 50,
                "item_id": ["2"] * 50,
                "timestamp": [1600000000] * 50,
                "rating": [5.0] * 50,
            }
        ),
        logs / "ok.parquet",
    )
    (logs / "cut.parquet").write_bytes((logs / "ok.parquet").read_bytes()[:-40])
    with pytest.raises(SourceError, match=r"cut\.parquet: not a readable Parquet file"):
        prepare(data_config({"type": "logs", "paths": [str(logs)]}, str(tmp_path / "o")))
    (logs / "cut.parquet").unlink()
    with pytest.raises(SourceError, match=r"column 'stars' \(for rating\) not found"):
        prepare(
            data_config(
                {"type": "logs", "paths": [str(logs)], "columns": {"rating": "stars"}}, str(tmp_path / "o")
            )
        )
    with pytest.raises(IncompleteDatasetError):
        read_meta(str(tmp_path / "o"))


def test_finished_output_is_protected_and_interrupted_output_is_redone(tmp_path):
    source = {"type": "synthetic", "num_events": 2_000, "num_users": 100, "num_items": 100}
    out = tmp_path / "o"
    first = prepare(data_config(source, str(out)))
    with pytest.raises(OutputExistsError, match="already holds a prepared dataset"):
        prepare(data_config(source, str(out)))
    # Simulate a run killed before its commit: files present, no meta.json.
    (out / "meta.json").unlink()
    (out / "train" / "stray-partial.parquet").write_bytes(b"PAR1 half a file")
    with pytest.raises(IncompleteDatasetError):
        read_meta(str(out))
    again = prepare(data_config(source, str(out)))
    assert again["content_hash"] == first["content_hash"]
    assert not (out / "train" / "stray-partial.parquet").exists()
    # A file a straggling writer adds after the commit is not part of the dataset.
    (out / "train" / "late-partial.parquet").write_bytes(b"PAR1 half a file")
    rows = again["counts"]["splits"]["train"]
    assert read_table(str(out), "train").num_rows == rows == read_split(str(out), "train").count()
    assert prepare(data_config(source, str(out), overwrite=True))["content_hash"] == first["content_hash"]


@pytest.mark.kill
def test_killed_run_leaves_nothing_that_looks_complete_and_the_rerun_succeeds(tmp_path):
    """Over 60 s alone: two real `raylrec data prepare` processes, each starting its own Ray
    instance. SIGKILL the first (driver and its Ray instance) while it writes the splits: the
    directory must not read as a dataset, and the same command then succeeds."""
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n"
        "  source: {type: synthetic, num_events: 1000000, num_users: 20000, num_items: 5000}\n"
        f"  output: {out}\n"
        "ray: {num_cpus: 1}\n"
    )
    cmd = [sys.executable, "-m", "raylrec.cli", "data", "prepare", "--config", str(config), "-q"]
    log = tmp_path / "killed.log"  # a file: a pipe nobody reads while waiting could block the run
    with log.open("w") as output:
        proc = subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # every line in the log when killed
        )  # fmt: skip
    try:
        # Killed on a state, inside the write of the splits: the first split's first file is
        # there. The commit (meta.json) needs the other splits and the vocabularies written after
        # it, seconds of work; the slower the machine, the wider that margin.
        wait_for(lambda: list((out / "train").glob("*")), f"a file in {out / 'train'}", 900, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "writing train" in log.read_text()
    assert out.exists() and not (out / "meta.json").exists()
    with pytest.raises(IncompleteDatasetError):
        read_meta(str(out))
    meta = prepare(load_config(config).data)
    assert (
        meta["counts"]["rows_in"]
        == 1_000_000
        == meta["counts"]["rows_out"] + meta["counts"]["rows_quarantined"]
    )
    # A straggling writer of the killed run (a Ray worker outliving its driver) may still add a
    # file, or half of one, to the split directory; the dataset is the files meta.json lists.
    assert read_table(str(out), "train").num_rows == meta["counts"]["splits"]["train"]
