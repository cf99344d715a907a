"""The CoLLM split, s3:// in and out against a real S3-compatible server on loopback (moto's
ThreadedMotoServer), the synthetic generator, and the command line."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import COLLM_DIR
from helpers import assert_point_in_time, data_config, read_all

from raylrec import storage
from raylrec.cli import main
from raylrec.data.files import SourceError
from raylrec.data.given import strip_padding
from raylrec.data.hashing import table_digest
from raylrec.data.output import read_meta, read_table
from raylrec.data.prepare import prepare
from raylrec.data.sources.synthetic import SyntheticSource
from raylrec.data.synthetic import generate_chunk, write_synthetic

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.mark.skipif(not COLLM_DIR.exists(), reason="../shared/datasets/collm-ml1m is not beside the repo")
def test_collm_split_is_kept_exactly(tmp_path):
    out = str(tmp_path / "collm")
    meta = prepare(
        data_config({"type": "collm_ml1m", "path": str(COLLM_DIR)}, out, split={"protocol": "given"})
    )
    counts = meta["counts"]
    assert counts["splits"] == {"train": 33_891, "valid": 10_401}
    got = read_all(out)
    for split in ("train", "valid"):
        source = pq.read_table(COLLM_DIR / f"{split}.parquet")
        mine = got.filter(pc.equal(got["split"], split))
        assert int(pc.sum(mine["not_cold"]).as_py()) == int(pc.sum(source["not_cold"]).as_py())
        assert counts["warm"][split] == int(pc.sum(source["not_cold"]).as_py())
        # Row by row: same users, items, labels, timestamps, warm flags and histories (minus padding).
        key = ["user_id", "item_id", "timestamp"]
        src = source.sort_by([(k, "ascending") for k in key])
        ours = mine.sort_by([("uid", "ascending"), ("iid", "ascending"), ("timestamp", "ascending")])
        assert ours["uid"].to_pylist() == src["user_id"].to_pylist()
        assert ours["iid"].to_pylist() == src["item_id"].to_pylist()
        assert ours["label"].to_pylist() == src["label"].to_pylist()
        assert ours["not_cold"].to_pylist() == src["not_cold"].to_pylist()
        expected = [[i for i in h if i != 0] for h in src["history"].to_pylist()]
        assert ours["history"].to_pylist() == expected
    assert counts["warm"]["valid"] == 6609  # the not_cold slice the paper evaluates on
    items = read_table(out, "items.parquet")
    assert items.filter(pc.equal(items["iid"], 1))["title"].to_pylist() == [
        "Shawshank Redemption, The (1994)"
    ]


def test_strip_padding_keeps_titles_aligned():
    history = pa.array([[0], [0, 5, 6], [0, 7]], pa.list_(pa.int64()))
    titles = pa.array([[], ["", "a", "b"], ["", "c"]], pa.list_(pa.string()))
    items, names = strip_padding(history, titles)
    assert items.to_pylist() == [[], [5, 6], [7]]
    assert names.to_pylist() == [[], ["a", "b"], ["c"]]


def test_logs_on_s3_in_three_formats_prepared_to_s3(s3_bucket, tmp_path):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = s3_bucket.removeprefix("s3://")
    table = generate_chunk(SyntheticSource(num_events=3_000, num_users=200, num_items=150), 0)
    parts = [table.slice(0, 1000), table.slice(1000, 1000), table.slice(2000, 1000)]
    with fs.open(f"{bucket}/logs/day=1/part-0.parquet", "wb") as f:
        pq.write_table(parts[0], f)
    with fs.open(f"{bucket}/logs/day=2/part-1.csv", "w") as f:
        f.write(parts[1].to_pandas().to_csv(index=False))
    with fs.open(f"{bucket}/logs/day=3/part-2.jsonl", "w") as f:
        f.write(parts[2].to_pandas().to_json(orient="records", lines=True))
    with fs.open(f"{bucket}/logs/_SUCCESS", "w") as f:
        f.write("")
    out = f"{s3_bucket}/processed/v1"
    meta = prepare(data_config({"type": "logs", "paths": [f"{s3_bucket}/logs/"]}, out))
    assert meta["counts"]["rows_in"] == 3_000 == meta["counts"]["rows_out"]
    assert read_meta(out)["content_hash"] == meta["content_hash"]
    assert fs.exists(f"{bucket}/processed/v1/items.parquet")
    assert len(fs.ls(f"{bucket}/processed/v1/train")) >= 1
    # The same rows from a local copy give the same content hash: the storage is transparent.
    local = tmp_path / "logs"
    local.mkdir()
    pq.write_table(table, local / "all.parquet")
    local_meta = prepare(data_config({"type": "logs", "paths": [str(local)]}, str(tmp_path / "out")))
    assert local_meta["content_hash"] == meta["content_hash"]
    assert table_digest(read_all(out)) == table_digest(read_all(str(tmp_path / "out")))


def test_unreachable_endpoint_fails_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("RAYLREC_S3_CONNECT_TIMEOUT", "1")
    started = time.perf_counter()
    with pytest.raises(storage.StorageError, match=r"cannot reach s3 endpoint http://127\.0\.0\.1:9"):
        prepare(data_config({"type": "logs", "paths": ["s3://nowhere/logs"]}, str(tmp_path / "o")))
    print(f"unreachable endpoint reported after {time.perf_counter() - started:.1f}s")


def test_missing_bucket_is_named(s3_server, tmp_path):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket'"):
        prepare(data_config({"type": "logs", "paths": ["s3://no-such-bucket/logs"]}, str(tmp_path / "o")))


def test_synthetic_generator_is_seeded_skewed_and_streams_to_files(tmp_path):
    source = SyntheticSource(
        num_events=40_000, num_users=1_000, num_items=500, events_per_chunk=10_000, seed=3
    )
    a, b = generate_chunk(source, 1), generate_chunk(source, 1)
    assert a.equals(b) and not a.equals(generate_chunk(source, 2))
    users = np.bincount(a["user_id"].to_numpy())
    top = np.sort(users)[::-1]
    assert top[:10].sum() > 10 * top[100:110].sum()  # Zipf: the head is far heavier than the body
    assert set(np.unique(a["rating"].to_numpy())) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    # the users' exponent apart: the same items, a flatter spread of users
    flatter = generate_chunk(source.model_copy(update={"user_zipf_exponent": 0.5}), 1)
    assert flatter["item_id"].equals(a["item_id"])
    assert np.bincount(flatter["user_id"].to_numpy()).max() < top[0] / 5
    write_synthetic(source, str(tmp_path / "synth"))
    events = pq.ParquetDataset(tmp_path / "synth" / "events").read()
    assert events.num_rows == 40_000
    titles = pq.read_table(tmp_path / "synth" / "items.parquet")
    assert titles.num_rows == 500 and all(t.startswith("The ") for t in titles["title"].to_pylist())


def test_cli_prepare_stats_and_config_errors(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    out = tmp_path / "out"
    config.write_text(
        "data:\n"
        "  source: {type: synthetic, num_events: 4000, num_users: 300, num_items: 200}\n"
        "  split: {protocol: leave_last_out}\n"
        f"  output: {out}\n"
    )
    assert main(["data", "prepare", "--config", str(config), "data.history.max_len=3", "--quiet"]) == 0
    assert read_meta(str(out))["protocol"]["history"]["max_len"] == 3
    assert_point_in_time(read_all(str(out)), max_len=3, max_users=40)
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows_out"] == 4000 and set(stats["splits"]) == {"train", "valid", "test"}
    # A bad config fails before any work, naming the field and the file.
    assert main(["data", "prepare", "--config", str(config), "data.split.min_events=0"]) == 2
    assert "data.split.min_events: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert main(["data", "prepare", "--config", str(config), "data.histroy.max_len=3"]) == 2
    assert "data.histroy: Extra inputs are not permitted" in capsys.readouterr().err
    # A finished dataset is not overwritten by accident.
    assert main(["data", "prepare", "--config", str(config)]) == 1
    assert "already holds a prepared dataset" in capsys.readouterr().err


def test_demo_writes_ml100k_to_s3_and_stats_read_it_back(s3_bucket, capsys):
    from raylrec.data.stats import dataset_stats
    from raylrec.demo import run_demo

    run_demo(f"{s3_bucket}/demo", print, train=False)
    out = f"{s3_bucket}/demo/ml100k"
    stats = dataset_stats(out)
    assert stats["rows_out"] == 100_000 and stats["users"] == 943
    assert sum(s["rows"] for s in stats["splits"].values()) == 100_000
    # One Ray Data pass over every split gives what reading each split whole gives.
    for split, got in stats["splits"].items():
        table = read_table(out, split)
        lengths = pc.list_value_length(table["history"]).to_numpy()
        assert got["rows"] == table.num_rows and got["positive_rate"] == pytest.approx(
            pc.mean(table["label"]).as_py()
        )
        assert (got["first_timestamp"], got["last_timestamp"]) == (
            pc.min(table["timestamp"]).as_py(),
            pc.max(table["timestamp"]).as_py(),
        )
        assert got["mean_history"] == pytest.approx(lengths.mean())
        assert (
            got["history_lengths"]["0"] == (lengths == 0).sum()
            and got["history_lengths"]["50-99"] == ((lengths >= 50) & (lengths < 100)).sum()
        )
        assert sum(got["history_lengths"].values()) == table.num_rows
    assert "history lengths" in capsys.readouterr().out


def test_movielens_1m_grouplens_files_on_s3(s3_bucket):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    root = f"{s3_bucket}/raw/ml-1m"
    bucket_path = root.removeprefix("s3://")
    ratings = "".join(
        f"{u}::{i}::{1 + (u * i) % 5}::{978300000 + 7 * u + i}\n" for u in range(1, 21) for i in range(1, 16)
    )
    with fs.open(f"{bucket_path}/ratings.dat", "w") as f:
        f.write(ratings)
    with fs.open(f"{bucket_path}/movies.dat", "wb") as f:
        f.write("".join(f"{i}::Movie: Part {i} (1999)::Drama\n" for i in range(1, 16)).encode("latin-1"))
    out = f"{s3_bucket}/processed/ml1m"
    meta = prepare(
        data_config({"type": "movielens_1m", "path": root}, out, split={"protocol": "leave_last_out"})
    )
    assert meta["counts"]["splits"] == {"train": 260, "valid": 20, "test": 20}
    assert read_table(out, "items.parquet")["title"].to_pylist()[0] == "Movie: Part 1 (1999)"


def test_a_column_of_the_wrong_type_names_the_file(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(
        pa.table({"user_id": [[1, 2]], "item_id": ["a"], "timestamp": [1600000000], "rating": [4.0]}),
        logs / "events.parquet",
    )
    with pytest.raises(
        SourceError, match=r"events\.parquet: column types cannot be read as an interaction log"
    ):
        prepare(data_config({"type": "logs", "paths": [str(logs)]}, str(tmp_path / "o")))
    # The same problem in a later file surfaces from inside a Ray task, still as one clear error.
    good = pa.table({"user_id": ["u"], "item_id": ["a"], "timestamp": [1600000000], "rating": [4.0]})
    pq.write_table(good, logs / "a-first.parquet")
    with pytest.raises(SourceError, match=r"events\.parquet: column types cannot be read .*user_id \(list"):
        prepare(data_config({"type": "logs", "paths": [str(logs)]}, str(tmp_path / "o2")))
