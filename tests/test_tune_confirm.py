"""Confirmed tuning (raylrec/tune/confirm.py): the rule on fixed numbers, the held-out split cut
from valid by time, and a sweep whose best trial is noise (a 1% change of lr) retrained with 3
seeds per config in-process on a small synthetic dataset: the default stands and no tuned config
is written."""

from __future__ import annotations

import argparse
import json
import math

import pyarrow.compute as pc
import pytest
import yaml
from helpers import data_config

from raylrec.data.output import read_meta, read_table
from raylrec.tune.confirm import (
    CONFIRMED,
    DEFAULT_STANDS,
    Arm,
    Confirmation,
    changed_params,
    format_confirmation,
    held_out_dataset,
    split_valid_by_time,
    verdict_confirmed,
)

LR = 0.05
BASE = {
    "cf": {"model": "mf", "dim": 8, "loss": "bce"},
    "train": {"epochs": 3, "batch_size": 256, "lr": LR, "patience": 10, "num_workers": 1},
}


def _confirmation(default: list[float], tuned: list[float], mode: str = "max") -> Confirmation:
    return Confirmation(
        metric="test/auc",
        mode=mode,
        seeds=(0, 1, 2),
        default=Arm("default", held_out=default),
        tuned=Arm("tuned", held_out=tuned),
        params={"train.lr": 2e-3},
        dataset="d",
        held_out="the test split of d",
        overrides=[],
    )


def test_a_gain_inside_the_seeds_spread_leaves_the_default_standing():
    # Means 0.70 and 0.71, sample std 0.02 each: a gain of 0.01 is inside the spread.
    result = _confirmation([0.70, 0.72, 0.68], [0.71, 0.69, 0.73])
    assert math.isclose(result.gain, 0.01, abs_tol=1e-12)
    assert math.isclose(result.spread, 0.02, abs_tol=1e-12)
    assert not result.confirmed and result.verdict == DEFAULT_STANDS
    table = format_confirmation(result)
    assert DEFAULT_STANDS in table and "0.7000 ± 0.0200" in table and "+0.0100" in table
    # A tuned config that is worse is never confirmed, however tight its seeds.
    assert not _confirmation([0.70, 0.70, 0.70], [0.60, 0.60, 0.60]).confirmed


def test_a_clear_gain_confirms_the_tuned_config():
    result = _confirmation([0.70, 0.72, 0.68], [0.75, 0.76, 0.74])
    assert math.isclose(result.gain, 0.05, abs_tol=1e-12) and result.spread == pytest.approx(0.02)
    assert result.confirmed and result.verdict == CONFIRMED
    assert CONFIRMED in format_confirmation(result)
    # The larger std is the spread: a noisy default arm widens it.
    assert not _confirmation([0.60, 0.70, 0.80], [0.75, 0.76, 0.74]).confirmed
    # Minimised metrics: a lower mean is the gain.
    assert _confirmation([0.50, 0.51, 0.49], [0.40, 0.41, 0.39], mode="min").confirmed
    # Equal to the spread does not count; nor does a NaN.
    assert not verdict_confirmed(0.02, 0.02) and not verdict_confirmed(math.nan, 0.0)


def test_changed_params_are_the_tuned_leaves_that_differ():
    default = {"cf": {"dim": 256, "loss": "bce"}, "train": {"lr": 1e-3}, "output": "a"}
    tuned = {"cf": {"dim": 64, "loss": "bce"}, "train": {"lr": 1e-3, "seed": 3}, "output": "a_tuned"}
    assert changed_params(default, tuned) == {"cf.dim": 64, "train.seed": 3}


@pytest.fixture(scope="module")
def no_test_split(ray_session, tmp_path_factory) -> str:
    """A synthetic dataset with train and valid only (as the CoLLM split ships)."""
    from raylrec.data.prepare import prepare

    out = str(tmp_path_factory.mktemp("confirm") / "data")
    source = {"type": "synthetic", "num_events": 6_000, "num_users": 200, "num_items": 150, "seed": 3}
    split = {"protocol": "temporal_fraction", "fractions": [0.7, 0.3, 0.0]}
    prepare(data_config(source, out, history={"max_len": 5}, split=split))
    assert sorted(read_meta(out)["counts"]["splits"]) == ["train", "valid"]
    return out


def _rows(table) -> list[tuple]:
    return sorted(zip(*(table[c].to_pylist() for c in ("uid", "iid", "timestamp", "label")), strict=True))


def test_the_held_out_split_is_the_later_half_of_valid(no_test_split, tmp_path):
    out = str(tmp_path / "held_out")
    meta = split_valid_by_time(no_test_split, out)
    original = {s: read_table(no_test_split, s) for s in ("train", "valid")}
    new = {s: read_table(out, s) for s in ("train", "valid", "test")}
    # Rows in = rows out: train unchanged, valid = earlier half + later half.
    assert sum(t.num_rows for t in new.values()) == sum(t.num_rows for t in original.values())
    assert _rows(new["train"]) == _rows(original["train"])
    assert sorted(_rows(new["valid"]) + _rows(new["test"])) == _rows(original["valid"])
    assert pc.max(new["valid"]["timestamp"]).as_py() < pc.min(new["test"]["timestamp"]).as_py()
    assert abs(new["valid"].num_rows - new["test"].num_rows) <= 0.1 * original["valid"].num_rows
    assert meta["counts"]["splits"] == {s: t.num_rows for s, t in new.items()}
    derived_from = read_meta(out)["protocol"]["held_out"]["from_content_hash"]
    assert derived_from == read_meta(no_test_split)["content_hash"]
    assert read_table(out, "items.parquet").equals(read_table(no_test_split, "items.parquet"))
    # A dataset with a test split is used as it is, and never cut again.
    assert held_out_dataset(out, str(tmp_path / "unused")) == (out, f"the test split of {out}")
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match="already has a test split"):
        split_valid_by_time(out, str(tmp_path / "again"))


def test_a_sweep_whose_best_trial_is_noise_reports_that_the_default_stands(no_test_split, tmp_path, capsys):
    """The must-show of confirmed tuning: a sweep's "best" trial that differs from the default by
    lr x 1.01 (what MF learns hardly changes; on its own split it may well have won by noise) is
    retrained with seeds 0, 1, 2 against the default, in-process, selected on the earlier half of
    valid and scored on the later half. The gain is inside the seeds' spread: the default stands,
    the tuned config is not written outside the experiment, and the experiment says why."""
    from raylrec.tune.confirm import confirm_sweep
    from raylrec.tune.sweep import SweepResult

    config = tmp_path / "mf_tiny.yaml"
    config.write_text(yaml.safe_dump({**BASE, "dataset": no_test_split, "output": str(tmp_path / "bundle")}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"model": "mf", "params": {"train.lr": {"loguniform": [1e-3, 0.1]}}}))
    experiment = tmp_path / "sweep"
    experiment.mkdir()
    (experiment / "best_config.yaml").write_text("# best of the sweep\n" + config.read_text())
    noise = {"train.lr": LR * 1.01, "trial_id": "t1", "metric": 0.9}  # a trials-table row
    result = SweepResult(str(experiment), None, None, noise, None, 0.0)
    tuned = tmp_path / "configs" / "mf_tiny_tuned.yaml"
    args = argparse.Namespace(
        space=str(space), config=str(config), overrides=[], confirm_override=[], seeds=[0, 1, 2]
    )

    confirm_sweep(
        result, args.space, args.config, args.overrides, args.confirm_override, args.seeds, str(tuned)
    )

    record = json.loads((experiment / "confirmation.json").read_text())
    default, trained = record["arms"]["default"], record["arms"]["tuned"]
    print((experiment / "confirmation.md").read_text())
    assert record["params"] == {"train.lr": pytest.approx(LR * 1.01)}
    assert record["seeds"] == [0, 1, 2] and record["metric"] == "test/auc"
    assert len(default["held_out"]) == len(trained["held_out"]) == 3
    assert all(0.5 < v <= 1.0 for v in default["held_out"] + trained["held_out"])  # MF did learn
    assert record["spread"] > 0  # the seeds differ
    assert abs(record["gain"]) <= record["spread"]
    assert not record["confirmed"] and record["verdict"] == DEFAULT_STANDS
    assert "later half" in record["held_out"]
    assert DEFAULT_STANDS in (experiment / "confirmation.md").read_text()
    assert not tuned.exists()
    assert "the default stands" in capsys.readouterr().out
    # The derived held-out dataset stays in the experiment, next to the result.
    assert sorted(read_meta(str(experiment / "confirm_data"))["counts"]["splits"]) == [
        "test",
        "train",
        "valid",
    ]


def test_a_clear_gain_is_confirmed_and_the_tuned_config_written(no_test_split, tmp_path):
    """The other branch of ``raylrec tune --confirm``: a default that cannot learn (lr 1e-6)
    against a best trial that does (lr 0.05) is confirmed, and the tuned config is written with
    the confirmation's numbers in its header."""
    from raylrec.tune.confirm import confirm_sweep
    from raylrec.tune.sweep import SweepResult

    config = tmp_path / "mf_tiny.yaml"
    slow = {**BASE, "train": {**BASE["train"], "lr": 1e-6}}
    config.write_text(yaml.safe_dump({**slow, "dataset": no_test_split}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"model": "mf", "params": {"train.lr": {"loguniform": [1e-6, 0.1]}}}))
    experiment = tmp_path / "sweep"
    experiment.mkdir()
    (experiment / "best_config.yaml").write_text("# Best of sweep s\n" + config.read_text())
    result = SweepResult(str(experiment), None, None, {"train.lr": LR}, None, 0.0)
    tuned = tmp_path / "configs" / "mf_tiny_tuned.yaml"
    args = argparse.Namespace(
        space=str(space), config=str(config), overrides=[], confirm_override=[], seeds=[0, 1]
    )

    confirm_sweep(
        result, args.space, args.config, args.overrides, args.confirm_override, args.seeds, str(tuned)
    )

    record = json.loads((experiment / "confirmation.json").read_text())
    assert record["confirmed"] and record["verdict"] == CONFIRMED and record["seeds"] == [0, 1]
    assert record["gain"] > record["spread"]
    text = tuned.read_text()
    assert text.startswith("# Confirmed on the later half") and "# Best of sweep s" in text


def test_tune_confirm_is_a_cli_command():
    from raylrec.cli import main, parse_args
    from raylrec.commands.tune import cmd_confirm, cmd_report, cmd_tune

    with pytest.raises(SystemExit) as done:
        main(["tune", "confirm", "--help"])
    assert done.value.code == 0
    for verb in (["tune", "confirm"], ["tune-confirm"]):  # the sub-verb, and its earlier name
        args = parse_args([*verb, "-c", "a.yaml", "-t", "b.yaml", "train.epochs=5", "--set", "eval.ks=[5]"])
        assert (args.config, args.tuned, args.seeds, args.func) == (
            "a.yaml",
            "b.yaml",
            [0, 1, 2],
            cmd_confirm,
        )
        assert args.overrides == ["train.epochs=5", "eval.ks=[5]"]
    args = parse_args(["tune", "report", "out/sweep"])
    assert (args.experiment, args.func) == ("out/sweep", cmd_report)
    # the sweep itself: bare overrides beside --confirm-override's own key=value
    args = parse_args(
        ["tune", "-s", "s.yaml", "-c", "c.yaml", "train.epochs=4", "--confirm-override", "train.lr=0.1"]
    )
    assert (args.space, args.func, args.overrides) == ("s.yaml", cmd_tune, ["train.epochs=4"])
    assert args.confirm_override == ["train.lr=0.1"]
