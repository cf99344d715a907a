"""Ray Tune sweeps: search spaces checked before any trial, a real sweep (tiny MF, 2 trials on 1
CPU, its experiment on S3 as on a cluster) whose ASHA scheduler stops trials early, interrupted
with SIGKILL and resumed from the bucket without re-running finished trials, and its results,
best config and report."""

# ruff: noqa: E501  (the table of bad spaces keeps one case, and its message, per line)

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import s3fs
import yaml
from helpers import CF_SOURCE, wait_for

from raylrec.cli import main
from raylrec.config import ConfigError, load_config, load_raw_config
from raylrec.train.loop import TrainState
from raylrec.tune.space import load_space
from raylrec.tune.trial import learning_curve

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "cf": {"model": "mf", "dim": 8, "loss": "bce"},
    "train": {
        "epochs": 4,
        "batch_size": 256,
        "lr": 0.05,
        "patience": 10,
        "num_workers": 1,
        "checkpoint_every": 2,
    },
    "ray": {"num_cpus": 2},
}


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def base_config(tmp_path) -> str:
    raw = {**BASE, "dataset": str(tmp_path / "data"), "output": str(tmp_path / "bundles" / "mf")}
    return _write(tmp_path / "mf_tiny.yaml", raw)


BAD_SPACES = [
    ({"model": "mf", "params": {"train.lr": {"gaussian": [0, 1]}}}, r"params.train.lr: unknown distribution 'gaussian'"),
    ({"model": "mf", "params": {"train.lr": {"loguniform": [1e-2, 1e-4]}}}, r"loguniform needs low < high, got \[0.01, 0.0001\]"),
    ({"model": "mf", "params": {"train.lr": {"loguniform": [0, 1e-2]}}}, r"loguniform needs 0 < low"),
    ({"model": "mf", "params": {"train.learning_rate": {"uniform": [0.1, 0.2]}}}, r"train.learning_rate is not a config field"),
    ({"model": "mf", "params": {"cf.layers": {"randint": [1, 4]}}}, r"cf.layers is not a mf setting \(only lightgcn"),
    ({"model": "mf", "params": {"method.experts": {"choice": [4, 8]}}}, r"method.experts cannot be swept for mf"),
    ({"model": "mf", "params": {"cf.dim": {"uniform": [8, 64]}}}, r"cf.dim is an integer; use randint, choice or grid"),
    ({"model": "mf", "params": {"train.weight_decay": {"uniform": [-1.0, 0.1]}}}, r"-1.0 is not a valid value \(train.weight_decay: Input should be greater than or equal to 0\)"),
    ({"model": "mf", "params": {"train.num_workers": {"choice": [1, 2]}}}, r"train.num_workers is not a hyperparameter"),
    ({"model": "sasrec", "params": {"train.lr": {"uniform": [0.1, 0.2]}}}, r"is a search space for sasrec, but the config trains mf"),
    ({"model": "mf", "search": "optuna", "params": {"train.lr": {"grid": [0.1, 0.2]}}}, r"optuna search cannot take grid values \(train.lr\)"),
    ({"model": "mf", "params": {}}, r"params: Dictionary should have at least 1 item"),
    ({"model": "mf", "schedular": {}, "params": {"train.lr": {"uniform": [0.1, 0.2]}}}, r"schedular: Extra inputs are not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(("space", "message"), BAD_SPACES, ids=[m.split(":")[0][:40] for _, m in BAD_SPACES])
def test_a_bad_space_fails_naming_the_file_and_key(tmp_path, base_config, space, message):
    path = _write(tmp_path / "space.yaml", space)
    with pytest.raises(ConfigError, match=message) as error:
        load_space(path, load_config(base_config), load_raw_config(base_config))
    assert path in str(error.value)


def test_the_shipped_spaces_fit_their_configs():
    repo = REPO
    pairs = {
        "mf": "mf_collm_ml1m",
        "lightgcn": "lightgcn_ml100k",
        "sasrec": "sasrec_collm_ml1m",
        "tallrec": "tallrec_collm_ml1m",
        "collm": "collm_collm_ml1m",
        "reclora": "reclora_collm_ml1m",
        "cora": "cora_collm_ml1m",
        "cllm4rec": "cllm4rec_ml100k",
        "rlmrec": "rlmrec_con_ml100k",
    }
    assert {p.stem for p in (repo / "tune_spaces").glob("*.yaml")} == set(pairs)
    for space, config in pairs.items():
        path = repo / "configs" / f"{config}.yaml"
        loaded = load_space(repo / "tune_spaces" / f"{space}.yaml", load_config(path), load_raw_config(path))
        assert loaded.model == space and loaded.params


def test_the_cli_rejects_a_bad_space_before_ray_starts(tmp_path, base_config, capsys):
    space = _write(tmp_path / "space.yaml", {"model": "mf", "params": {"train.lr": {"uniform": [0.2, 0.1]}}})
    storage = tmp_path / "sweeps"
    code = main(["tune", "--space", space, "--config", base_config, "--storage", str(storage)])
    assert code == 2
    assert "uniform needs low < high, got [0.2, 0.1]" in capsys.readouterr().err
    assert not storage.exists()


def test_an_unreachable_sweep_bucket_fails_before_ray_starts(tmp_path, base_config, s3_server, capsys):
    space = _write(tmp_path / "space.yaml", {"model": "mf", "params": {"train.lr": {"uniform": [0.1, 0.2]}}})
    code = main(
        ["tune", "--space", space, "--config", base_config, "--storage", "s3://no-such-bucket/sweeps"]
    )
    assert code != 0
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


# --- a real sweep ---------------------------------------------------------------------------


def _tune_cmd(space: str, config: str, storage_root: str, tmp_path: Path) -> list[str]:
    # The script `ray job submit -- python jobs/tune.py ...` runs (here on a local Ray instance).
    return [
        sys.executable, str(REPO / "jobs" / "tune.py"), "--space", space, "--config", config,
        "--name", "sweep", "--storage", storage_root,
        "--best-config", str(tmp_path / "configs" / "mf_tiny_tuned.yaml"),
    ]  # fmt: skip


def _terminated_in_saved_state(experiment: str) -> set[str]:
    """Trials Tune's own saved experiment state (as uploaded to the bucket) records as finished."""
    fs = _s3()
    done = set()
    for state in fs.glob(f"{experiment.removeprefix('s3://')}/experiment_state-*.json"):
        try:
            trials = json.loads(fs.cat_file(state))["trial_data"]
        except (ValueError, KeyError, FileNotFoundError):
            continue  # being rewritten
        for trial_json, _ in trials:
            trial = json.loads(trial_json)
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def _s3() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def _read_parquet(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(_s3().cat_file(uri)))


def _started(output: str) -> list[str]:
    return re.findall(r"\[tune\] trial (\w+) starts", output)


def test_asha_rungs_survive_a_new_scheduler_over_the_same_state(tmp_path):
    """What a resumed sweep gets: a fresh scheduler (Tune unpickles the one it started with)
    over the saved rungs stops a trailing trial that an empty one would let run."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from raylrec.tune.scheduler import ResumableASHA

    def scheduler():
        return ResumableASHA(
            str(tmp_path / "asha_rungs.json"), time_attr="total_epoch", metric="auc", mode="max",
            max_t=4, grace_period=1, reduction_factor=2,
        )  # fmt: skip

    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    first = scheduler()
    first.on_trial_add(None, good)
    for epoch, auc in [(1, 0.7), (2, 0.75)]:
        assert (
            first.on_trial_result(None, good, {"total_epoch": epoch, "auc": auc}) == TrialScheduler.CONTINUE
        )
    resumed, empty = (
        scheduler(),
        ResumableASHA(
            str(tmp_path / "elsewhere.json"), time_attr="total_epoch", metric="auc", mode="max", max_t=4
        ),
    )
    for each in (resumed, empty):
        each.on_trial_add(None, bad)
    assert resumed.on_trial_result(None, bad, {"total_epoch": 1, "auc": 0.5}) == TrialScheduler.STOP
    assert empty.on_trial_result(None, bad, {"total_epoch": 1, "auc": 0.5}) == TrialScheduler.CONTINUE


def test_trials_at_once_are_the_worker_groups_the_cluster_holds():
    from raylrec.config import build_config
    from raylrec.tune.sweep import plan_concurrency

    def config(**train):
        return build_config({**BASE, "dataset": "d", "train": {**BASE["train"], **train}})

    assert plan_concurrency(config(), {"CPU": 2}) == 2  # one 1-CPU worker per trial
    assert plan_concurrency(config(num_workers=2), {"CPU": 5}) == 2
    assert plan_concurrency(config(num_workers=2), {"CPU": 1}) == 1  # one, waiting for room
    assert plan_concurrency(config(num_workers=2, use_gpu=True), {"CPU": 8, "GPU": 2}) == 1


def test_learning_curve_continues_across_stages():
    # CoLLM-like: a 1-epoch LoRA stage, then a 2-epoch projector stage evaluated on epoch 2 only.
    lora = TrainState(epoch=1, history=[{"epoch": 1, "valid/auc": 0.6}])
    projector = TrainState(epoch=2, history=[{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "valid/auc": 0.7}])
    assert learning_curve([lora, projector], [1, 2], "valid/auc") == [[1, 0.6], [3, 0.7]]


@pytest.mark.kill
@pytest.mark.slow
def test_a_sweep_stops_trailing_trials_and_resumes_after_a_kill(tmp_path, s3_bucket, prepared_dataset):
    """Over 60 s alone: two Tune driver processes (the first SIGKILLed mid-sweep), each trial a Ray
    Train run with its own worker group, so that ASHA's stopping and the resume are both real."""
    dataset = prepared_dataset(CF_SOURCE, history={"max_len": 10})  # tests/test_cf_train.py's too
    base_config = _write(
        tmp_path / "mf_tiny.yaml", {**BASE, "dataset": dataset, "output": str(tmp_path / "bundles" / "mf")}
    )
    # Two trials, one at a time (one CPU, one Ray Train worker per trial): lr 0.05 (the config's
    # own, run first) learns; 1e-6 does not, and ASHA stops it at the first rung. Each trial
    # costs a Ray Train run's start-up (most of a trial's time): two are all the story needs.
    space = _write(
        tmp_path / "space.yaml",
        {
            "model": "mf",
            "search": "grid",
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "params": {"train.lr": {"grid": [1.0e-6]}},
        },
    )
    config = _write(
        tmp_path / "mf_tiny.yaml", {**yaml.safe_load(Path(base_config).read_text()), "ray": {"num_cpus": 1}}
    )
    sweeps = f"{s3_bucket}/sweeps"
    experiment = f"{sweeps}/sweep"
    # Unbuffered: the killed sweep's log holds every line it printed.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    # Output to a file, not a pipe: nothing reads a pipe while the test waits, and a sweep that
    # fills one (Tune and Ray log more the slower the machine) blocks and never finishes a trial.
    first_log = tmp_path / "first.log"
    with first_log.open("w") as out:
        first = subprocess.Popen(
            _tune_cmd(space, config, sweeps, tmp_path), stdout=out, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, env=env,
        )  # fmt: skip
    try:
        # The kill follows a state, Tune's own saved experiment state in the bucket recording a
        # finished trial; the cap is a safety net (a trial takes about a minute here).
        finished_before_kill = wait_for(
            lambda: _terminated_in_saved_state(experiment),
            f"a TERMINATED trial in {experiment}/experiment_state-*.json",
            cap_s=1200, proc=first, log=first_log, every_s=0.5,
        )  # fmt: skip
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    first_output = first_log.read_text()
    assert not _s3().exists(f"{experiment}/trials.parquet")

    second_log = tmp_path / "second.log"
    with second_log.open("w") as out:
        second = subprocess.run(
            _tune_cmd(space, config, sweeps, tmp_path), stdout=out, stderr=subprocess.STDOUT,
            text=True, env=env, timeout=1800,
        )  # fmt: skip
    output = second_log.read_text()
    assert second.returncode == 0, output[-4000:]
    seconds = time.monotonic() - started
    print(f"sweep: killed after {sorted(finished_before_kill)} finished; whole test {seconds:.0f}s")
    assert "continuing" in output
    assert not set(_started(output)) & finished_before_kill, "a finished trial ran again"
    assert set(_started(first_output)) | set(_started(output)) >= finished_before_kill

    trials = _read_parquet(f"{experiment}/trials.parquet")
    print(trials.to_string())
    assert len(trials) == 2 and sorted(trials["train.lr"]) == [1.0e-6, 0.05]
    assert trials["is_default"].sum() == 1 and trials.loc[trials["is_default"], "train.lr"].item() == 0.05
    stopped = trials[trials["status"] == "stopped by ASHA"]
    assert (stopped["epochs"] < 4).all()
    # The learner runs first, so it reaches the first rung before the trial that cannot learn
    # starts, which is cut there, almost always after the kill: ASHA's rungs survive the resume
    # (Tune alone would restore it with empty rungs, and it would run to the end).
    non_learners = trials[trials["train.lr"] < 1e-5]
    assert (non_learners["status"] == "stopped by ASHA").all() and (non_learners["epochs"] == 1).all()
    assert _s3().exists(f"{experiment}/asha_rungs.json")
    assert (trials.loc[trials["status"] == "finished", "epochs"] == 4).all()
    best = trials.iloc[0]
    assert best["train.lr"] == 0.05 and best["metric"] > trials["metric"].iloc[-1]
    curves = _read_parquet(f"{experiment}/curves.parquet")
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    per_trial = curves.groupby("trial_id")["total_epoch"].max()
    assert (per_trial[stopped["trial_id"]] < 4).all()
    assert (trials.set_index("trial_id")["epochs"] == per_trial.reindex(trials["trial_id"])).all()
    assert "leaderboard (2 trials, best first)" in output

    tuned = tmp_path / "configs" / "mf_tiny_tuned.yaml"
    written = yaml.safe_load(tuned.read_text())
    assert written["train"]["lr"] == pytest.approx(best["train.lr"])
    assert written["ray"] == {"num_cpus": 1}
    assert {k: v for k, v in written["train"].items() if k != "lr"} == {
        k: v for k, v in BASE["train"].items() if k != "lr"
    }
    assert written["output"] == str(tmp_path / "bundles" / "mf_tuned")  # not over the default's
    assert tuned.read_text() == _s3().cat_file(f"{experiment}/best_config.yaml").decode()
    assert load_config(tuned).train.lr == best["train.lr"]

    assert main(["tune", "report", experiment]) == 0
    fs = _s3()
    pngs = sorted(fs.glob(f"{experiment.removeprefix('s3://')}/report/*.png"))
    assert [p.rsplit("/", 1)[-1] for p in pngs] == ["learning_curves.png", "valid_auc_vs_train.lr.png"]
    assert all(fs.cat_file(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
