"""bench/leaderboard.py without training anything: every registered model has a row, the
fingerprint decides reuse, and the table writers produce Markdown, CSV and a PNG."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lb():
    sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("bench_leaderboard", REPO / "bench" / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_every_registered_model_has_a_row(lb):
    """A newly registered CF encoder or LLM method without a leaderboard row fails here."""
    from raylrec.cf.config import ENCODERS
    from raylrec.methods import METHODS

    assert lb.uncovered_models() == set(), "add a Row for each in bench/leaderboard.py"
    assert lb.registered_models() == {f"cf:{n}" for n in ENCODERS.names()} | {
        f"method:{n}" for n in METHODS.names()
    }
    # and the check bites: drop the rows of one method and it is reported
    rows = {n: r for n, r in lb.ROWS.items() if "method:cora" not in r.covers}
    assert lb.uncovered_models(rows) == {"method:cora"}


def test_rows_are_well_formed(lb):
    for row in lb.ROWS.values():
        assert row.section in lb.SECTIONS and row.kind in ("cf", "llm", "rerank", "catalog")
        assert all(n in lb.ROWS for n in row.needs), row.name
        if row.preset:
            assert (REPO / "configs" / f"{row.preset}.yaml").exists(), row.preset
        for _, value in row.overrides:
            if isinstance(value, str) and value.startswith("out:"):
                assert value[4:] in row.needs, (row.name, value)
    assert {"ctr", "topk"} == {r.section for r in lb.ROWS.values()}


def test_with_needs_orders_inputs_first(lb):
    order = lb.with_needs(["ctr/collm-mf"])
    assert set(order) == {"ctr/mf", "ctr/tallrec", "ctr/collm-mf"}
    assert order.index("ctr/collm-mf") > max(order.index("ctr/mf"), order.index("ctr/tallrec"))
    everything = lb.with_needs(list(lb.ROWS))
    assert sorted(everything) == sorted(lb.ROWS)
    for i, name in enumerate(everything):
        assert all(everything.index(n) < i for n in lb.ROWS[name].needs)
    with pytest.raises(SystemExit, match="unknown row"):
        lb.with_needs(["ctr/nope"])


def test_fingerprint_changes_with_what_matters_only(lb):
    config = {
        "dataset": "/d",
        "train": {"lr": 1e-3, "run_name": "a", "storage_path": "/x", "log_every_s": 60},
        "output": "/o/1",
    }
    base = lb.fingerprint(config, "hash1", {"valid_rows": 10}, {"ctr/mf": "f1"})
    moved = {**config, "train": {**config["train"], "run_name": "b", "storage_path": "/y"}, "output": "/o/2"}
    assert lb.fingerprint(moved, "hash1", {"valid_rows": 10}, {"ctr/mf": "f1"}) == base
    changed = [
        lb.fingerprint(
            {**config, "train": {**config["train"], "lr": 2e-3}},
            "hash1",
            {"valid_rows": 10},
            {"ctr/mf": "f1"},
        ),
        lb.fingerprint(config, "hash2", {"valid_rows": 10}, {"ctr/mf": "f1"}),
        lb.fingerprint(config, "hash1", {"valid_rows": 20}, {"ctr/mf": "f1"}),
        lb.fingerprint(config, "hash1", {"valid_rows": 10}, {"ctr/mf": "f2"}),
    ]
    assert len({base, *changed}) == 5


def test_cache_reuses_only_a_matching_finished_result(lb, tmp_path):
    cache = lb.Cache(tmp_path)
    assert cache.load("ctr/mf", "f" * 64) is None
    bundle = tmp_path / "bundles" / "b"
    cache.save("ctr/mf", "f" * 64, {"row": "ctr/mf", "metrics": {"valid/auc": 0.6}, "bundle": str(bundle)})
    assert cache.load("ctr/mf", "e" * 64) is None  # another fingerprint: retrain
    assert cache.load("ctr/mf", "f" * 64)["metrics"] == {"valid/auc": 0.6}
    assert cache.load("ctr/mf", "f" * 64, needs_bundle=True) is None  # a later row reads it: gone
    bundle.mkdir(parents=True)
    assert cache.load("ctr/mf", "f" * 64, needs_bundle=True)["fingerprint"] == "f" * 64
    assert not list(tmp_path.rglob("*.partial"))


def _results():
    ctr = {
        "row": "ctr/mf",
        "label": "MF",
        "section": "ctr",
        "fingerprint": "ab",
        "hardware": "CPU x",
        "metrics": {
            "valid/auc": 0.66,
            "valid/uauc": 0.61,
            "valid/warm/auc": 0.7,
            "valid/cold/auc": 0.45,
            "valid/rows": 500.0,
            "valid/score_s": 0.5,
        },
        "cost": {"train_wall_s": 125.0, "train_samples_per_s": 41000.0},
    }
    topk = {
        "row": "topk/rerank-tallrec",
        "label": "MF-BPR + TALLRec",
        "section": "topk",
        "fingerprint": "cd",
        "hardware": "CPU x",
        "metrics": {
            "test/recall@10": 0.2,
            "test/ndcg@10": 0.25,
            "test/recall@20": 0.3,
            "test/ndcg@20": 0.27,
            "test/users": 48.0,
            "score/users_per_s": 0.5,
            "score/candidates_per_s": 15.0,
        },
        "cost": {"train_wall_s": 30.0, "train_samples_per_s": 2.5},
    }
    return [ctr, topk]


def test_table_writers(lb, tmp_path):
    import argparse

    results = _results()
    md, table_csv, png = tmp_path / "lb.md", tmp_path / "lb.csv", tmp_path / "lb.png"
    lb.write_markdown(md, results, ["## title"])
    text = md.read_text()
    assert "### CTR, CoLLM MovieLens-1M split" in text and "### Top-K, MovieLens-100K" in text
    ctr_line = next(line for line in text.splitlines() if line.startswith("| ctr/mf"))
    assert "0.6600" in ctr_line and "2m05s" in ctr_line and "1,000 rows/s" in ctr_line and "| - |" in ctr_line
    topk_line = next(line for line in text.splitlines() if line.startswith("| topk/rerank-tallrec"))
    assert "0.3000" in topk_line and "0.50 users/s, 15.00 cand/s" in topk_line and "| 48 |" in topk_line
    header = next(line for line in text.splitlines() if line.startswith("| row | model | valid AUC"))
    assert header.count("|") == ctr_line.count("|")

    lb.write_csv(table_csv, results)
    rows = list(csv.DictReader(table_csv.open()))
    assert [r["row"] for r in rows] == ["ctr/mf", "topk/rerank-tallrec"]
    assert float(rows[0]["valid/auc"]) == 0.66 and rows[0]["test/recall@20"] == ""
    assert float(rows[1]["train_wall_s"]) == 30.0

    lb.write_chart(png, results, "title")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    args = argparse.Namespace(scale="smoke", backbone=None, dtype="auto", device="cpu", local=True)
    lb.write_outputs(tmp_path, results, args, lb.SCALES["smoke"])
    assert {p.name for p in tmp_path.iterdir()} >= {"leaderboard.md", "leaderboard.csv", "leaderboard.png"}
    short = (tmp_path / "leaderboard_short.md").read_text().splitlines()
    assert short[2] == "| ctr/mf | MF | 0.6600 / 0.6100 | 2m05s |"
    assert short[3] == "| topk/rerank-tallrec | MF-BPR + TALLRec | 0.3000 / 0.2700 | 30s |"
    assert "training wall time summed over rows: 2m35s" in (tmp_path / "leaderboard.md").read_text()


def test_topk_metrics_match_the_definitions(lb):
    # user 1: relevant {1, 2}, ranked [1, 3, 2]; user 2: relevant {9}, nothing found
    got = lb._topk_metrics([[1, 3, 2], [4, 5]], [{1, 2}, {9}], ks=(10, 20))
    assert got["test/recall@10"] == pytest.approx((1.0 + 0.0) / 2)
    import math

    dcg = 1 + 1 / math.log2(4)
    ideal = 1 + 1 / math.log2(3)
    assert got["test/ndcg@10"] == pytest.approx(dcg / ideal / 2)
    assert got["test/users"] == 2


def test_learning_curve_writer(lb, tmp_path):
    """One line per (row, size) in size order, the sampled row count (not the requested one),
    and MF on every row as the last line; the PNG is a PNG."""
    import argparse

    mf = _results()[0]
    points = []
    for size, auc in ((300, 0.55), (100, 0.52)):
        points.append(
            {
                **mf,
                "row": "ctr/tallrec",
                "label": "TALLRec",
                "train_rows": size,
                "metrics": {**mf["metrics"], "valid/auc": auc},
                "cost": {"train_samples": size - 3.0, "train_epochs": 1.0, "train_wall_s": 61.0},
            }
        )
    args = argparse.Namespace(scale="cpu")
    lb.write_curve(tmp_path, points, mf, args)
    lines = [
        line
        for line in (tmp_path / "learning_curve.md").read_text().splitlines()
        if line.startswith("| ctr/")
    ]
    assert [line.split(" | ")[2] for line in lines] == ["97", "297", "all"]
    assert "0.5200" in lines[0] and "0.5500" in lines[1] and "1m01s" in lines[0]
    assert lines[-1].startswith("| ctr/mf | MF, every training row") and "0.6600" in lines[-1]
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(csv.reader((tmp_path / "learning_curve.csv").open()))) == 4


def test_curve_takes_ctr_llm_rows_only(lb):
    with pytest.raises(SystemExit, match="CTR LLM rows only; not: topk/mf-bpr"):
        lb.main(["--curve", "100", "--only", "topk/mf-bpr"])
