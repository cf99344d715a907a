"""A profile job SIGKILLed after it committed a chunk: the rerun generates only what is missing
and ends with exactly the rows of an uninterrupted run (RLMRec's profiles, arXiv 2310.15950)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml
from helpers import wait_for
from test_profiles import profiles_config, small_dataset

from raylrec.data.output import read_table
from raylrec.profiles import store
from raylrec.profiles.generate import generate_profiles


def _sorted(table):
    return table.sort_by([("kind", "ascending"), ("id", "ascending")])


@pytest.mark.kill
@pytest.mark.slow
def test_a_killed_profile_job_reruns_only_the_missing_chunks(tmp_path, ray_session):
    """Over 60 s alone: a real profile job (tiny LLM generation on Ray Data) SIGKILLed after its first
    committed chunk, then rerun."""
    dataset = small_dataset(str(tmp_path / "dataset"))
    items, users = (read_table(dataset, f"{k}s.parquet").num_rows for k in ("item", "user"))
    settings = {"generation": {"max_new_tokens": 16, "batch_size": 2}, "chunk_size": 4}
    killed_out = str(tmp_path / "killed")
    config = tmp_path / "profiles.yaml"
    raw = profiles_config(dataset, killed_out, **settings).model_dump(mode="json", exclude_none=True)
    config.write_text(yaml.safe_dump(raw))
    log = tmp_path / "killed.log"  # a file, not a pipe nobody reads while waiting (a full one blocks)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raylrec.cli", "profiles", "generate", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:  # the first chunk is committed: kill the driver and its Ray
        wait_for(lambda: store.existing_files(killed_out), f"a chunk file under {killed_out}", 900, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    survivors = store.existing_files(killed_out)
    kept = {"item": 0, "user": 0}
    for f in survivors:
        kept[f.kind] += f.table.num_rows
    assert store.read_manifest(killed_out) is None  # nothing was committed
    assert 0 < kept["item"] < items and kept["user"] == 0, kept  # killed while writing items

    resumed = generate_profiles(profiles_config(dataset, killed_out, **settings))
    assert resumed["last_run"]["generated"] == {"item": items - kept["item"], "user": users}
    assert {f.path for f in survivors} <= {
        e["path"] for e in resumed["files"]
    }  # the killed run's chunks kept

    whole = generate_profiles(profiles_config(dataset, str(tmp_path / "whole"), **settings))
    assert whole["last_run"]["generated"] == {"item": items, "user": users}
    assert _sorted(store.read_profiles(killed_out)).equals(
        _sorted(store.read_profiles(str(tmp_path / "whole")))
    )
    assert resumed["rows"] == whole["rows"] and resumed["parse"] == whole["parse"]
