"""bench/gpu_check.py's plan, sizing, time boxes and summary: no model, no GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_full_plan_fits_ten_minutes_with_every_row(gc):
    plan = gc.make_plan(False, "cuda")
    assert plan.dtype == "bfloat16" and plan.train_rows is None and plan.valid_rows is None
    assert (plan.mf_epochs, plan.mf_patience) == (300, 30)  # configs/mf_collm_ml1m.yaml
    assert set(plan.methods) == {"tallrec", "collm", "cora", "reclora"}
    assert plan.total_box_s + 60 <= gc.BUDGET_S  # 60 s for gpu_check.sh's set-up


def test_rehearsal_is_small(gc):
    plan = gc.make_plan(True, "cpu")
    assert plan.rehearse and plan.train_rows <= 32 and plan.valid_rows <= 32
    assert plan.mf_epochs <= 2 and plan.score_users * plan.score_candidates <= 32
    assert "bf16" in plan.boxes  # the bf16 check runs where the rest runs in float32


def test_ctr_rows_all_rows_when_they_fit_and_capped_when_not(gc):
    plan = gc.make_plan(False, "cuda")
    fast = {m: 2000.0 for m in plan.methods}  # samples/s: ~20 s each
    sized = gc.ctr_rows(plan, fast, box_s=300, overhead_s=15)
    assert all(s["train_rows"] is None and not s["capped"] for s in sized.values())
    slow = {**fast, "cora": 50.0}  # ~950 s at full size: more than the whole box
    sized = gc.ctr_rows(plan, slow, box_s=300, overhead_s=15)
    assert not any(sized[m]["capped"] for m in ("tallrec", "collm", "reclora"))  # only cora is cut
    cora = sized["cora"]
    assert cora["capped"] and plan.batch <= cora["train_rows"] < gc.TRAIN_ROWS
    spent = 15 + gc.SAFETY * (cora["train_rows"] + gc.VALID_ROWS / 3) / 50.0
    assert spent <= cora["share_s"] + 1
    assert sum(min(s["predicted_s"], s["share_s"]) for s in sized.values()) <= 300 + 1e-6
    assert gc.ctr_rows(plan, {}, 300, 15)["tallrec"] == {
        "train_rows": None,
        "predicted_s": None,
        "capped": False,
    }


def test_time_box_interrupts_and_run_stage_records_it(gc, tmp_path):
    def slow():
        time.sleep(5)
        return {}

    started = time.perf_counter()
    payload = gc.run_stage("mf", tmp_path, 0.2, slow)
    assert time.perf_counter() - started < 3
    assert payload["status"] == "failed" and "StageTimeout" in payload["error"]
    assert json.loads((tmp_path / "mf.json").read_text())["status"] == "failed"
    ok = gc.run_stage("env", tmp_path, 10, lambda: {"device": "x", "value": float("nan")})
    assert ok["status"] == "ok" and json.loads((tmp_path / "env.json").read_text())["value"] is None


def test_summary_from_partial_results(gc, tmp_path):
    gc.write_json(tmp_path, "mf", {"status": "ok", "metrics": {"valid/auc": 0.66}, "wall_s": 20})
    gc.write_json(
        tmp_path,
        "ctr",
        {
            "status": "ok",
            "sizes": {"tallrec": {"capped": True}},
            "methods": {
                "tallrec": {"status": "ok", "metrics": {"valid/auc": 0.61}, "train_rows": 20000},
                "collm": {"status": "failed", "error": "boom"},
            },
        },
    )
    text = gc.summary(tmp_path)
    assert "0.6600" in text and "0.6100" in text and "capped" in text and "failed: boom" in text
    assert "score missing" in text


def test_mf_epochs_fit_the_box(gc):
    plan = gc.make_plan(False, "cuda")
    assert gc.mf_epochs(plan, 60, spent_s=4, setup_s=1, per_epoch_s=0.1) == 300  # the config's
    assert gc.mf_epochs(plan, 60, spent_s=10, setup_s=2, per_epoch_s=0.5) == 78  # (51-12)/0.5
    assert gc.mf_epochs(plan, 60, spent_s=50, setup_s=5, per_epoch_s=1) == 5  # at least 5


def test_mfu_is_train_llm_formula(gc):
    assert gc.mfu(135e6, 1e6, 989.0) == pytest.approx(4 * 135e6 * 1e6 / 989e12)


def test_scripts_are_valid_bash():
    import subprocess

    for script in ("gpu_check.sh", "gpu_stage.sh"):
        subprocess.run(["bash", "-n", str(REPO / "bench" / script)], check=True)
