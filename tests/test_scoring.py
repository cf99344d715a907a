"""The batch-scoring job end to end on a real local Ray instance and a loopback S3 server
(moto's ThreadedMotoServer): MovieLens-100K, an MF CF bundle and a CoLLM model bundle on the
tiny Llama, both on S3. A run killed midway publishes nothing and its rerun publishes every
user once, with the model's scores; CF-only scoring reproduces the trainer's full-ranking
metrics and serves unknown users the popularity fallback; a rerun replaces the partition; a
corrupted bundle or a missing bucket fails before any output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import s3fs
from helpers import ML100K_RANDOM_SPLIT, wait_for

from raylrec import storage
from raylrec.cf.bundle import cf_vocabularies
from raylrec.cf.train import train_cf
from raylrec.config import build_config
from raylrec.data.output import read_table
from raylrec.data.vocab import Vocabulary
from raylrec.methods.bundle import load_model_bundle
from raylrec.methods.train import train_method
from raylrec.scoring import publish as recs
from raylrec.scoring.job import run_scoring
from raylrec.scoring.quality import evaluate_published
from raylrec.scoring.rerank import Reranker, RerankRequest

pytestmark = pytest.mark.usefixtures("ray_session")

DATE = "2026-11-24"
USERS = 943


def _s3() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_server, prepared_dataset) -> dict[str, str]:
    """ML-100K prepared locally (the session's, shared with tests/test_cf_streaming.py); MF-BPR
    and CoLLM (tiny Llama) bundles on S3."""
    root = tmp_path_factory.mktemp("scoring")
    bucket = f"s3://raylrec-{uuid.uuid4().hex[:10]}"
    _s3().mkdir(bucket.removeprefix("s3://"))
    dataset = prepared_dataset({"type": "movielens_100k"}, **ML100K_RANDOM_SPLIT)
    cf = f"{bucket}/bundles/mf"
    train_cf(
        build_config(
            {
                "dataset": dataset,
                "cf": {"model": "mf", "dim": 16, "loss": "bpr", "implicit": True, "init": "xavier"},
                "train": {"epochs": 5, "batch_size": 2048, "lr": 5e-3, "metric": "valid/ndcg@10"},
                "output": cf,
            }
        ),
        use_ray=False,
    )
    model = f"{bucket}/bundles/collm"
    train_method(
        build_config(
            {
                "dataset": dataset,
                "backbone": {"name": "tiny-random-llama"},
                "method": {"name": "collm", "cf_bundle": cf, "stage1_epochs": 0},
                "prompt": {"max_tokens": 256, "history_items": 4},  # budget never bites
                "sample": {"max_train": 64, "max_valid": 32},
                "train": {"epochs": 1, "batch_size": 16, "lr": 1e-2, "storage_path": str(root / "runs")},
                "output": model,
            }
        ),
        use_ray=False,
    )
    return {"root": str(root), "bucket": bucket, "dataset": dataset, "cf": cf, "model": model}


def _config(world, output: str, **score):
    return build_config(
        {
            "dataset": world["dataset"],
            "score": {
                "model_bundle": world["model"],
                "output": output,
                "candidates": 12,
                "k": 5,
                "splits": ["train", "valid"],
                "users_per_batch": 128,
                **score,
            },
        }
    )


def _known_events(dataset: str, columns: list[str]):
    parts = [read_table(dataset, split, columns=columns) for split in ("train", "valid")]
    return pa.concat_tables(parts)


def _known_items(dataset: str) -> dict[str, set[str]]:
    table = _known_events(dataset, ["uid", "iid"])
    users = Vocabulary.from_table(read_table(dataset, "users.parquet"), "user_id", "uid")
    items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    known: dict[str, set[str]] = {}
    for u, i in zip(
        users.to_raw(table["uid"].to_numpy()), items.to_raw(table["iid"].to_numpy()), strict=True
    ):
        known.setdefault(u, set()).add(i)
    return known


def _check_every_user_has_the_models_scores(world, output: str) -> None:
    """Every user has ranks 1..5, no item they already interacted with, and the reranker's
    full-prompt logits as scores (three users recomputed), best first."""
    table = recs.read_recommendations(output, DATE, verify=True)
    assert table.num_rows == USERS * 5 and set(table["source"].to_pylist()) == {"rerank"}
    known = _known_items(world["dataset"])
    ranks: dict[str, list[int]] = {}
    for row in table.to_pylist():
        ranks.setdefault(row["user_id"], []).append(row["rank"])
        assert row["item_id"] not in known.get(row["user_id"], set()), row
    assert len(ranks) == USERS and all(r == [1, 2, 3, 4, 5] for r in ranks.values())

    bundle = load_model_bundle(world["model"])
    reranker = Reranker(bundle.method, bundle.prompts)
    items = Vocabulary.from_table(bundle.items, "item_id", "iid")
    bundle_users = cf_vocabularies(f"{world['model']}/cf")[0]
    profiles = read_table(world["dataset"], "users.parquet")
    for user in ("1", "405", "943"):
        rows = table.filter(pc.equal(table["user_id"], user))
        history = _latest_positives(world["dataset"], user, profiles, 4)
        request = RerankRequest(
            int(bundle_users.to_dense([user])[0]),
            items.to_dense(history).tolist(),
            items.to_dense(rows["item_id"].to_pylist()).tolist(),
        )
        want = reranker.score_full([request])[0]
        np.testing.assert_allclose(rows["score"].to_numpy(), want, rtol=1e-4, atol=1e-4)
        assert (np.diff(rows["score"].to_numpy()) <= 0).all()


def _latest_positives(dataset: str, user: str, users_table, n: int) -> list[str]:
    uid = users_table.filter(pc.equal(users_table["user_id"], user))["uid"][0].as_py()
    table = _known_events(dataset, ["uid", "iid", "timestamp", "label"])
    table = table.filter((pc.field("uid") == uid) & (pc.field("label") > 0))
    order = np.lexsort((table["iid"].to_numpy(), table["timestamp"].to_numpy()))
    iids = table["iid"].to_numpy()[order][-n:]
    items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    return items.to_raw(iids).tolist()


def test_cf_only_run_matches_the_trainer_serves_cold_users_and_a_rerun_replaces_it(world, tmp_path):
    """Over 60 s alone: it trains the CF encoder on Ray Train, then runs the scoring job twice.
    Scoring every user plus two unknown ones with the CF bundle alone: the published top 10
    (seen items excluded) must score exactly the trainer's full-ranking test metrics (which
    mask train+valid and rank the whole catalogue); the unknown users get the popularity
    fallback; a second run of the date replaces the first and removes its files."""
    users = tmp_path / "users.csv"
    known = read_table(world["dataset"], "users.parquet")["user_id"].to_pylist()
    users.write_text("user_id\n" + "\n".join([*known, "ghost-1", "ghost-2", "1"]) + "\n")  # "1" twice
    output = str(tmp_path / "recs")
    config = _config(
        world, output, model_bundle=None, cf_bundle=world["cf"], k=10, candidates=10, users=str(users)
    )
    first = run_scoring(config, DATE)
    assert first["users"] == USERS + 2 and first["rows"] == (USERS + 2) * 10

    published = evaluate_published(output, DATE, world["dataset"], "test", (10,), implicit=True)
    trained = storage.read_json(f"{world['cf']}/config.json")["metrics"]
    print(f"published recall@10 {published['recall@10']:.4f} vs trainer {trained['test/recall@10']:.4f}")
    assert published["users"] == trained["test/users"]
    assert published["recall@10"] == pytest.approx(trained["test/recall@10"], abs=1e-6)
    assert published["ndcg@10"] == pytest.approx(trained["test/ndcg@10"], abs=1e-6)

    table = recs.read_recommendations(output, DATE)
    source = {
        u: set(table.filter(pc.equal(table["user_id"], u))["source"].to_pylist()) for u in ("1", "ghost-1")
    }
    assert source == {"1": {"cf"}, "ghost-1": {"popular"}}
    ghosts = [table.filter(pc.equal(table["user_id"], g)) for g in ("ghost-1", "ghost-2")]
    assert ghosts[0]["item_id"].to_pylist() == ghosts[1]["item_id"].to_pylist()
    assert ghosts[0].num_rows == 10 and (np.diff(ghosts[0]["score"].to_numpy()) <= 0).all()

    second = run_scoring(config, DATE)
    assert second["run_id"] != first["run_id"]
    assert os.listdir(tmp_path / "recs" / f"date={DATE}" / "_runs") == [second["run_id"]]
    again = recs.read_recommendations(output, DATE)
    assert set(again["run_id"].to_pylist()) == {second["run_id"]}
    # Replaced whole, with the same lists. Scores agree to float32 rounding, not bit for bit: a
    # user's scores come out of a matrix product whose blocking follows the batch it landed in,
    # and Ray Data's batches need not be the same in two runs.
    lists = ["user_id", "rank", "item_id", "source", "model"]
    assert again.select(lists).equals(table.select(lists))
    np.testing.assert_allclose(again["score"].to_numpy(), table["score"].to_numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.kill
def test_a_killed_run_publishes_nothing_and_its_rerun_publishes_every_user_once(world, tmp_path):
    """Over 60 s alone: a real ``raylrec score`` with its own Ray instance, SIGKILLed mid-run, then
    rerun to the end."""
    output = f"{world['bucket']}/recs-killed"
    config = tmp_path / "score.yaml"
    config.write_text(
        f"dataset: {world['dataset']}\n"
        f"score: {{model_bundle: {world['model']}, output: {output}, candidates: 40, k: 5, "
        "splits: [train, valid], users_per_batch: 8}\n"
        "ray: {num_cpus: 2}\n"
    )
    cmd = [sys.executable, "-m", "raylrec.cli", "score", "--config", str(config), "--date", DATE]
    log = tmp_path / "killed.log"  # a file, not a pipe nobody reads while waiting (a full one blocks)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    runs = f"{output}/date={DATE}/_runs"
    fs = _s3()

    def first_files_written() -> list[str]:
        fs.invalidate_cache()
        return fs.glob(f"{runs}/*/*.parquet") if fs.exists(runs) else []

    try:  # the first files of the run are written: kill the driver and its Ray
        wait_for(first_files_written, f"a Parquet file under {runs}/<run>/", 900, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    fs.invalidate_cache()
    assert recs.read_manifest(output, DATE) is None and recs.published_dates(output) == []
    with pytest.raises(FileNotFoundError, match="not published"):
        recs.read_recommendations(output, DATE)
    manifest = run_scoring(_config(world, output), DATE)
    table = recs.read_recommendations(output, DATE, verify=True)
    counts = table.group_by("user_id").aggregate([("rank", "count")])
    assert manifest["users"] == USERS == counts.num_rows and set(counts["rank_count"].to_pylist()) == {5}
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(runs)] == [
        manifest["run_id"]
    ]  # the killed run's files removed


def test_a_corrupted_bundle_or_a_missing_bucket_fails_before_any_output(world):
    fs = _s3()
    broken = f"{world['bucket']}/bundles/collm-broken"
    fs.copy(world["model"].removeprefix("s3://"), broken.removeprefix("s3://"), recursive=True)
    weights = f"{broken}/method.safetensors".removeprefix("s3://")
    data = bytearray(fs.cat_file(weights))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(weights, bytes(data))
    output = f"{world['bucket']}/recs-broken"
    with pytest.raises(storage.StorageError, match=r"collm-broken is corrupted: method.safetensors"):
        run_scoring(_config(world, output, model_bundle=broken), DATE)
    fs.invalidate_cache()
    assert not fs.exists(output.removeprefix("s3://"))
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' does not exist"):
        run_scoring(_config(world, "s3://no-such-bucket/recs"), DATE)
