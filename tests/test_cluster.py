"""The README's cluster workflow on a real multi-node Ray cluster on one machine (`make cluster-test`).

The shape of cluster/aws.yaml in miniature: a head node (one CPU: drivers and Ray Data) and two
GPU-style nodes (one CPU each, custom resources `train` and `score`), started with `ray start`
and token authentication on. The pipeline is submitted with `ray job submit --working-dir .`:
prepare MovieLens-100K -> train the MF encoder -> train RecLoRA (tiny Llama, DeepSpeed ZeRO-2, 2
Ray Train workers asking for `train`, so one per training node) -> score a users file (actors
asking for `score`), every path on the moto S3 server, nothing on the submitting machine's disk.
During RecLoRA's training one training node is killed after the first checkpoint; a replacement
joins (what the autoscaler does) and the same job resumes from that checkpoint. Node count,
worker placement and each job's duration are printed at the end of the suite's output.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import s3fs
import torch
from helpers import wait_for
from local_cluster import LocalCluster

from raylrec.data.output import read_meta, read_table
from raylrec.scoring import read_recommendations
from raylrec.train.ray_runner import TRAIN_SNAPSHOT
from raylrec.train.reporting import STATE_FILE

DATE = "2026-11-24"
USERS = 40
EPOCHS = 4
# What cluster/aws.yaml's GPU nodes declare (here one node type serves both, as a small cluster's might)
NODE_RESOURCES = {"train": 1, "score": 1}


@pytest.fixture
def cluster(tmp_path, record_property):
    def say(message: str) -> None:
        print(message, flush=True)  # live with `pytest -s` (make cluster-test)
        record_property("summary", message)  # and in the suite's closing summary (conftest.py)

    cluster = LocalCluster.start(head_cpus=1)
    cluster.log_dir = tmp_path  # every job's log stays here
    cluster.say = say
    try:
        cluster.add_node("train-1", cpus=1, resources=NODE_RESOURCES)
        cluster.add_node("train-2", cpus=1, resources=NODE_RESOURCES)
        yield cluster
    finally:
        cluster.stop()


def _nodes_table(cluster: LocalCluster) -> list[dict]:
    names = {node_id: name for name, node_id in cluster.nodes.items()}
    return [
        {
            "name": names.get(n["node_id"], "?"),
            "state": n["state"],
            "cpus": n["resources_total"].get("CPU", 0),
        }
        for n in cluster.list_state("nodes")
    ]


def _train_workers(cluster: LocalCluster) -> list[dict]:
    """Every Ray Train worker actor (alive or dead) of the latest job, from the State API."""
    names = {node_id: name for name, node_id in cluster.nodes.items()}
    actors = cluster.list_state("actors", "class_name=RayTrainWorker")
    job_id = max(a["job_id"] for a in actors)
    return [
        {
            "node": names.get(a["node_id"], a["node_id"]),
            "state": a["state"],
            "pid": a["pid"],
            "job": a["job_id"],
        }
        for a in actors
        if a["job_id"] == job_id
    ]


def _checkpoints(fs: s3fs.S3FileSystem, run_dir: str) -> list[str]:
    """Ray Train's checkpoint directories (checkpoint_<timestamp>) of a run, oldest first."""
    if not fs.exists(run_dir):
        return []
    found = fs.ls(run_dir, detail=True, refresh=True)
    return sorted(
        f["name"]
        for f in found
        if f["type"] == "directory" and f["name"].rsplit("/", 1)[-1].startswith("checkpoint_")
    )


def _raylrec(*args: str) -> str:
    """The `raylrec` CLI on the submitting machine (it reads s3:// directly); returns stdout."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("raylrec")), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.kill
def test_pipeline_on_a_multi_node_cluster_survives_losing_a_node(cluster, s3_bucket, s3_server):
    """Over 60 s alone (about 10 minutes on the 2-core machine): a 3-node Ray cluster started with
    ``ray start``, four ``ray job submit`` jobs, RecLoRA's worker group started twice around a lost
    node and a node joining; the multi-node and node-loss properties need all of it."""
    started = time.perf_counter()
    bucket = s3_bucket
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True, use_listings_cache=False)
    nodes = _nodes_table(cluster)
    cluster.say(f"\n[cluster] {len(nodes)} nodes: {nodes}")
    assert sorted(n["name"] for n in nodes if n["state"] == "ALIVE") == ["head", "train-1", "train-2"]

    # Without the cluster's token the Jobs API refuses the client (Ray 2.59+ token auth).
    stranger = cluster.ray("job", "list", timeout=600, RAY_AUTH_TOKEN="0" * 64)
    assert stranger.returncode != 0
    assert "Invalid authentication token" in stranger.stderr, stranger.stderr[-2000:]

    data, cf, model, runs = (
        f"{bucket}/{p}" for p in ("datasets/ml100k", "bundles/mf", "bundles/reclora", "runs")
    )
    cluster.submit(
        "prepare", "python", "jobs/prepare.py", "--config", "configs/ml100k.yaml", f"data.output={data}"
    )
    counts = read_meta(data)["counts"]  # read back from the submitting machine
    assert counts["rows_out"] == 100_000 and sum(counts["splits"].values()) == 100_000, counts
    cluster.submit(
        "train-cf", "python", "jobs/train_cf.py", "--config", "configs/mf_bpr_ml100k.yaml",
        f"dataset={data}", f"output={cf}", f"train.storage_path={runs}", "train.epochs=1",
    )  # fmt: skip

    # RecLoRA: one Ray Train worker per training node, so losing train-2 loses a rank.
    training = time.perf_counter()
    train = cluster.start_job(
        "train", "python", "jobs/train.py", "--config", "configs/reclora_collm_ml1m.yaml",
        f"dataset={data}", f"method.cf_bundle={cf}", f"output={model}", f"train.storage_path={runs}",
        "backbone.name=tiny-random-llama", "method.experts=2", "prompt.max_tokens=128",
        "prompt.history_items=3", "sample.max_train=384", "sample.max_valid=64", "train.batch_size=8",
        f"train.epochs={EPOCHS}", "train.patience=10", "train.zero_stage=2", "train.num_workers=2",
        "train.run_name=reclora-cluster", "train.resources_per_worker={train: 1}",
    )  # fmt: skip
    run_dir = f"{runs}/reclora-cluster-mixture"
    # Ray Train writes its snapshot once every rank's part of a checkpoint is stored: committed.
    # The kill waits on that state (the cap is a safety net, many times its normal minute or two).
    wait_for(
        lambda: fs.exists(f"{run_dir}/{TRAIN_SNAPSHOT}"), f"the first committed checkpoint of {run_dir}",
        cap_s=1800, proc=train, log=cluster.job_log("train"),
    )  # fmt: skip
    placement = cluster.processes_by_node("ray::RayTrainWorker")
    cluster.kill_node("train-2")
    cluster.say(f"[cluster] training workers (pids) by node at the first checkpoint: {placement}")
    assert sorted(placement) == ["train-1", "train-2"] and all(len(p) == 1 for p in placement.values())
    cluster.say(
        "[cluster] train-2 killed (its raylet and every process under it); train-3 joins in its place"
    )
    cluster.add_node("train-3", cpus=1, resources=NODE_RESOURCES)
    log = cluster.wait_job("train", train)
    assert train.returncode == 0, f"training did not recover:\n{log[-8000:]}"
    assert "resumed after epoch" in log, "the new workers started over instead of resuming"
    workers = _train_workers(cluster)
    cluster.say(
        f"[cluster] RecLoRA trained in {time.perf_counter() - training:.0f}s; "
        f"its workers, all attempts: {workers}"
    )
    assert {w["node"] for w in workers if w["state"] == "DEAD"} >= {"train-2"}
    assert {w["node"] for w in workers} == {"train-1", "train-2", "train-3"}
    nodes = _nodes_table(cluster)
    cluster.say(f"[cluster] nodes after recovery: {nodes}")
    assert {n["name"]: n["state"] for n in nodes}["train-2"] == "DEAD"

    # Resumed from the checkpoint, not restarted: every epoch was trained exactly once.
    last = _checkpoints(fs, run_dir)[-1]
    state = torch.load(io.BytesIO(fs.cat_file(f"{last}/{STATE_FILE}")), weights_only=False)["state"]
    assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1))
    assert len(state["resumed_at_steps"]) == 1, state["resumed_at_steps"]

    # Score a users file (the nightly job's active users) and read what was published.
    users = read_table(data, "users.parquet")["user_id"][:USERS]
    with fs.open(f"{bucket}/active_users.csv", "wb") as f:
        pacsv.write_csv(pa.table({"user_id": users}), f)
    cluster.submit(
        f"score-{DATE}", "python", "jobs/score.py", "--config", "configs/score_ml100k.yaml", "--date", DATE,
        f"dataset={data}", f"score.model_bundle={model}", f"score.cf_bundle={cf}",
        f"score.users={bucket}/active_users.csv", f"score.output={bucket}/recs",
        "score.resources_per_actor={score: 1}",
    )  # fmt: skip
    recs = read_recommendations(f"{bucket}/recs", DATE)
    assert sorted(set(recs["user_id"].to_pylist())) == sorted(users.to_pylist())
    per_user = recs.group_by("user_id").aggregate([("item_id", "count_distinct"), ("rank", "max")])
    assert set(per_user["item_id_count_distinct"].to_pylist()) == {10}
    assert set(per_user["rank_max"].to_pylist()) == {10}
    assert f"{USERS * 10} rows for {USERS} users" in _raylrec(
        "recs", "read", f"{bucket}/recs", "--date", DATE
    )
    cluster.say(
        f"[cluster] {recs.num_rows} recommendations for {USERS} users; "
        f"pipeline took {time.perf_counter() - started:.0f}s"
    )
