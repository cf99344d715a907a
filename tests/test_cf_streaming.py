"""The streamed Ray path of train-cf: no process reads a whole split (the driver and both Ray
Train workers run under ``RAYLREC_FORBID_WHOLE_SPLITS=1``), and the Ray Data evaluation gives the
single-process numbers to 1e-6 on MovieLens-100K (top-K) and on the CoLLM ML-1M split (CTR)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import COLLM_DIR
from helpers import ML100K_RANDOM_SPLIT, data_config

from raylrec.cf.bundle import load_cf_bundle
from raylrec.cf.data import load_split
from raylrec.cf.distributed_eval import distributed_metrics
from raylrec.cf.graph import shared_graph_ref
from raylrec.cf.streaming import item_sets_ref
from raylrec.cf.task import build_encoder
from raylrec.cf.train import _final_metrics, train_cf
from raylrec.config import build_config
from raylrec.data.output import FORBID_WHOLE_SPLITS
from raylrec.data.prepare import prepare
from raylrec.timeline import TIMELINE

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def ml100k(prepared_dataset) -> str:
    return prepared_dataset({"type": "movielens_100k"}, **ML100K_RANDOM_SPLIT)  # test_scoring's too


def _config(dataset: str, tmp_path, cf: dict, **train):
    return build_config(
        {
            "dataset": dataset,
            "cf": {"dim": 16, **cf},
            "train": {
                "epochs": 2,
                "batch_size": 1024,
                "lr": 1e-2,
                "num_workers": 2,
                "storage_path": str(tmp_path / "runs"),
                "max_failures": 0,
                **train,
            },
            # 0: the final report by Ray Data tasks even on this small split (the large-log path)
            "eval": {"ks": [10, 20], "in_process_max_rows": 0},
            "output": str(tmp_path / "bundle"),
        }
    )


def _equal(distributed: dict[str, float], local: dict[str, float]) -> None:
    assert distributed.keys() == local.keys()
    for name, value in local.items():
        assert distributed[name] == pytest.approx(value, abs=1e-6), name


def test_train_cf_on_ray_streams_every_split(ml100k, tmp_path, monkeypatch):
    """MF-BPR on Ray Train with 2 workers and the Ray Data evaluation and export: any whole-split
    read in the driver or a worker raises (the guard reaches the workers: see the LightGCN
    test below), and the bundle is written."""
    monkeypatch.setenv(FORBID_WHOLE_SPLITS, "1")
    config = _config(
        ml100k, tmp_path, {"model": "mf", "loss": "bpr", "implicit": True}, metric="valid/ndcg@10"
    )
    said: list[str] = []
    result = train_cf(config, said.append)
    assert any("with Ray Data" in line for line in said), said
    assert result.state.epoch == 2
    assert result.metrics["test/users"] > 0 and 0 < result.metrics["test/ndcg@10"] < 1
    bundle = load_cf_bundle(result.bundle)
    assert bundle.items.shape == (config_items(ml100k), 16)


def config_items(dataset: str) -> int:
    from raylrec.data.output import read_meta

    return read_meta(dataset)["counts"]["num_items"]


def test_lightgcn_trains_on_one_shared_graph_without_reading_a_split_whole(ml100k, tmp_path, monkeypatch):
    """LightGCN (issue 36, item 4): its graph is built once, from item sets streamed from the
    files, and both workers, the Ray Data evaluation and the export read that one copy from the
    object store, so the run trains under the whole-split guard. The guard was on in the
    workers: their timeline marks reach the same file through the same forwarding of RAYLREC_*
    variables (before this, LightGCN read the split whole in every worker and this guard
    stopped it there)."""
    timeline = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(FORBID_WHOLE_SPLITS, "1")
    monkeypatch.setenv(TIMELINE, str(timeline))
    config = _config(
        ml100k,
        tmp_path,
        {"model": "lightgcn", "loss": "bpr", "implicit": True, "layers": 2},
        epochs=1,
        metric="valid/ndcg@10",
    )
    said: list[str] = []
    result = train_cf(config, said.append)
    assert any("interaction graph built once" in line for line in said), said
    assert any("with Ray Data" in line for line in said), said
    assert result.metrics["test/users"] > 0 and 0 < result.metrics["test/ndcg@10"] < 1
    marks = [json.loads(line) for line in timeline.read_text().splitlines()]
    workers = {m["pid"] for m in marks if m["role"] == "worker" and m["event"] == "worker fitting built"}
    assert len(workers) == 2, marks
    assert load_cf_bundle(result.bundle).items.shape == (config_items(ml100k), 16)


def test_distributed_ranking_with_the_shared_graph_equals_the_single_process_one(ml100k, tmp_path):
    """The Ray Data evaluation of LightGCN, its processes reading the graph from the object
    store (zero-copy: the arrays come back read-only), gives the plain process's numbers."""
    import ray

    config = _config(
        ml100k,
        tmp_path,
        {"model": "lightgcn", "loss": "bpr", "implicit": True, "layers": 2},
        metric="valid/ndcg@10",
    )
    train = load_split(ml100k, "train")
    held_out = {s: load_split(ml100k, s) for s in ("valid", "test")}
    torch.manual_seed(0)
    model = build_encoder(config.cf, train)
    local = _final_metrics(config, model, train, held_out)
    sets = item_sets_ref(ml100k, ["train"], train.num_users, positives_only=False, distinct=True)
    graph = shared_graph_ref(sets, train.num_items)
    assert not ray.get(graph).col_indices.flags.writeable  # the object store's pages, not a copy
    distributed = distributed_metrics(
        config, model.state_dict(), ["valid", "test"], train.num_users, train.num_items, graph=graph
    )
    _equal(distributed, local)


def test_distributed_ranking_equals_the_single_process_one(ml100k, tmp_path):
    config = _config(
        ml100k, tmp_path, {"model": "mf", "loss": "bpr", "implicit": True}, metric="valid/ndcg@10"
    )
    train = load_split(ml100k, "train")
    held_out = {s: load_split(ml100k, s) for s in ("valid", "test")}
    torch.manual_seed(0)
    model = build_encoder(config.cf, train)
    local = _final_metrics(config, model, train, held_out)
    distributed = distributed_metrics(
        config, model.state_dict(), ["valid", "test"], train.num_users, train.num_items
    )
    _equal(distributed, local)


@pytest.mark.skipif(not COLLM_DIR.exists(), reason="../shared/datasets/collm-ml1m is not beside the repo")
def test_distributed_ctr_equals_the_single_process_one(tmp_path_factory, tmp_path):
    out = str(tmp_path_factory.mktemp("collm") / "data")
    prepare(data_config({"type": "collm_ml1m", "path": str(COLLM_DIR)}, out, split={"protocol": "given"}))
    config = _config(out, tmp_path, {"model": "mf", "loss": "bce"})
    train = load_split(out, "train")
    held_out = {"valid": load_split(out, "valid")}  # the CoLLM split ships train and valid
    torch.manual_seed(0)
    model = build_encoder(config.cf, train)
    local = _final_metrics(config, model, train, held_out)
    assert "valid/warm/auc" in local and "valid/cold/uauc" in local
    distributed = distributed_metrics(config, model.state_dict(), ["valid"], train.num_users, train.num_items)
    _equal(distributed, local)
