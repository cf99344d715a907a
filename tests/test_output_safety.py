"""`data prepare` deletes only what raylrec can prove it wrote (issue 16, line 1): a directory
holding a user's files, a meta.json of another tool, an output equal to, inside or above an
input, and an empty output are refused before anything is deleted or read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import data_config

from raylrec.data.output import OWNER_FILE, OutputExistsError, prepare_output_dir
from raylrec.data.prepare import prepare


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _logs(directory) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [1, 2], "rating": [4, 5]}
    )
    pq.write_table(table, directory / "events.parquet")
    return {"type": "logs", "paths": [str(directory)]}


def test_the_cli_refuses_a_directory_holding_a_users_files(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("precious")
    before = _tree(d)
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  source: {json.dumps(_logs(tmp_path / 'logs'))}\n  output: {d}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, "-m", "raylrec.cli", "data", "prepare", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "raylrec did not write it" in run.stderr and "thesis.txt" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert _tree(d) == before and (d / "sub").is_dir()


@pytest.mark.parametrize("where", ["equal", "inside", "above"])
def test_an_output_overlapping_an_input_is_refused_before_anything_runs(tmp_path, where):
    logs = tmp_path / "logs"
    source = _logs(logs)
    out = {"equal": logs, "inside": logs / "prepared", "above": tmp_path}[where]
    before = _tree(tmp_path)
    with pytest.raises(OutputExistsError, match=r"lies (inside|over) the input"):
        prepare(data_config(source, str(out)))  # refused before Ray or the source is touched
    assert _tree(tmp_path) == before


def test_an_empty_output_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="data.output is empty"):
        prepare_output_dir("", overwrite=True)
    assert (tmp_path / "keep.txt").exists()


def test_a_foreign_meta_json_or_a_stray_file_in_an_owned_directory_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"format": "someone-else/2"}))
    with pytest.raises(OutputExistsError, match="raylrec did not write"):
        prepare_output_dir(str(other), overwrite=True)
    assert (other / "meta.json").exists()

    interrupted = tmp_path / "interrupted"
    prepare_output_dir(str(interrupted), overwrite=False)  # a run that then died
    (interrupted / "train").mkdir()
    (interrupted / "train" / "part.parquet").write_bytes(b"PAR1")
    (interrupted / "notes.md").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"'notes.md'.*nothing was deleted"):
        prepare_output_dir(str(interrupted), overwrite=True)
    assert (interrupted / "notes.md").exists() and (interrupted / "train" / "part.parquet").exists()

    (interrupted / "notes.md").unlink()  # only raylrec's entries left: an interrupted run is cleared
    prepare_output_dir(str(interrupted), overwrite=False)
    assert sorted(p.name for p in interrupted.iterdir()) == [OWNER_FILE]


def test_an_empty_directory_or_a_file_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_output_dir(str(empty), overwrite=False)
    assert (empty / OWNER_FILE).exists()
    a_file = tmp_path / "file.parquet"
    a_file.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="is a file"):
        prepare_output_dir(str(a_file), overwrite=True)
    assert a_file.read_bytes() == b"x"


def test_a_bundle_never_replaces_a_file_raylrec_did_not_write(tmp_path):
    from raylrec.artifacts import ArtifactDir
    from raylrec.bundle_dir import BundleDirError
    from raylrec.cf.bundle import CF_BUNDLE

    def claim(directory):
        bundle = ArtifactDir(str(directory), CF_BUNDLE)
        bundle.claim()
        bundle.uncommit()

    hf_model = tmp_path / "hf"
    hf_model.mkdir()
    (hf_model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BundleDirError, match=r"raylrec did not write for a CF bundle \(format None"):
        claim(hf_model)
    assert json.loads((hf_model / "config.json").read_text()) == {"model_type": "llama"}

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "meta.json").write_text("{}")
    (dataset / "items.parquet").write_bytes(b"the dataset's")
    with pytest.raises(BundleDirError, match="'meta.json'"):
        claim(dataset)
    assert (dataset / "items.parquet").read_bytes() == b"the dataset's"

    ours = tmp_path / "bundle"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"format": "raylrec.cf_bundle/1"}))
    (ours / "model.safetensors").write_bytes(b"old")
    claim(ours)  # an earlier bundle: uncommitted
    assert sorted(p.name for p in ours.iterdir()) == ["model.safetensors"]


def test_an_output_inside_a_named_file_source_directory_is_allowed(tmp_path):
    """A MovieLens directory is read by file name: an output inside it is read by no one."""
    from raylrec.data.output import InputPath, refuse_overlap

    movielens = [InputPath(str(tmp_path / "ml-100k"), walked=False)]
    refuse_overlap(str(tmp_path / "ml-100k" / "prepared"), movielens)
    with pytest.raises(OutputExistsError, match="over the input"):
        refuse_overlap(str(tmp_path), [InputPath(str(tmp_path / "ml-100k"), walked=False)])
    with pytest.raises(OutputExistsError, match="over the input"):
        refuse_overlap(str(tmp_path / "logs"), [InputPath(str(tmp_path / "logs" / "*.csv"), walked=True)])
