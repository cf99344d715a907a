"""bench/rlmrec_quality.py's --merge: seeds run as separate processes make one table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_rlmrec_quality", REPO / "bench" / "rlmrec_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(bench, seed: int, recall: float) -> dict:
    return {
        "seed": seed,
        "embeddings": None,
        **{m: recall for m in bench.METRICS},
        "s_per_epoch": 1.0,
        "epochs": 9,
        "best_epoch": 6,
        "wall_s": 10.0,
    }


def test_merged_files_give_one_table_in_seed_order(bench, tmp_path):
    files = []
    for seed, con in ((2021, 0.30), (2020, 0.20)):
        path = tmp_path / f"s{seed}.json"
        runs = {"811": {"con": [_run(bench, seed, con)], "lightgcn": [_run(bench, seed, 0.25)]}}
        path.write_text(json.dumps(runs))
        files.append(str(path))
    lines = bench.merged_tables(files)
    con = next(line for line in lines if line.startswith("| +RLMRec-Con, LLM profiles"))
    assert "0.2500 ± 0.0707" in con and con.endswith("| 9 (6)/9 (6) |")
    assert lines.index(con) > lines.index(next(x for x in lines if x.startswith("| LightGCN")))
    assert any("higher on 0 of 6" in line for line in lines)  # mean 0.25 is not above 0.25

    (tmp_path / "again.json").write_text(json.dumps({"811": {"con": [_run(bench, 2020, 0.2)]}}))
    with pytest.raises(SystemExit, match="more than one file"):
        bench.merged_tables([*files, str(tmp_path / "again.json")])
