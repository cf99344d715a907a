"""Bad config values fail at load, naming the dotted field (issue 16, items 9-12); a non-finite
training loss stops the run naming where it happened; no bundle with non-finite weights is
written. Nothing here needs Ray: configs are loaded from overrides, the loop runs in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from raylrec import storage
from raylrec.cf.bundle import save_cf_bundle
from raylrec.cf.data import Split
from raylrec.cf.encoders.mf.model import MF
from raylrec.cf.encoders.sasrec.model import SASRec
from raylrec.cli import main
from raylrec.config import ConfigError, RaylrecConfig, TrainConfig, build_config, load_config, task_metrics
from raylrec.eval import CTRAccumulator, ItemSets, RankingAccumulator
from raylrec.methods.bundle import save_model_bundle
from raylrec.train.engines import TorchEngine
from raylrec.train.loop import NonFiniteLossError, fit

DATA = ["data.source.type=synthetic", "data.output=out/x"]


def _refused(overrides: list[str], *fragments: str) -> str:
    """The ConfigError loading ``overrides`` raises; it must contain every fragment."""
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    return message


class _Regression:
    """A linear model on fixed data; ``report`` drops a metric name to play a wrong task."""

    def __init__(self, report: str = "valid/mse"):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.report, self.epochs_started = report, 0

    def loss(self, batch):
        return nn.functional.mse_loss(self.model(batch["x"]), batch["y"])

    def evaluate(self):
        with torch.no_grad():
            return {self.report: float(nn.functional.mse_loss(self.model(self.x), self.y))}

    def batches(self, epoch: int):
        self.epochs_started += 1
        for start in range(0, 64, 8):
            yield {"x": self.x[start : start + 8], "y": self.y[start : start + 8]}


class _Reporter:
    def __init__(self):
        self.reports: list[dict[str, float]] = []

    def report(self, metrics, state, engine):
        self.reports.append(metrics)

    def log(self, message):
        pass


def _fit(task: _Regression, **train) -> tuple[_Reporter, TrainConfig]:
    config = TrainConfig(**{"epochs": 3, "lr": 0.05, "metric": "valid/mse", "mode": "min", **train})
    reporter = _Reporter()
    fit(task, task.batches, config, reporter, TorchEngine(task.model, config, total_steps=config.epochs * 8))
    return reporter, config


# --- 9: a metric the task does not report ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["train.metric=valid/bogus@10"], ["train.metric", "'valid/bogus@10'", "valid/auc"]),
        (["cf.loss=bpr", "train.metric=valid/auc"], ["train.metric", "'valid/auc'", "valid/ndcg@10"]),
        (["cf.loss=bpr", "eval.ks=[10]", "train.metric=valid/ndcg@20"], ["train.metric", "'valid/ndcg@20'"]),
        (["method.name=tallrec", "train.metric=valid/ndcg@10"], ["train.metric", "tallrec"]),
        (["train.metric=valid/logloss"], ["train.mode", "'max'", "lower is better"]),
    ],
    ids=["bogus", "bpr-reports-no-auc", "k-not-in-ks", "llm-reports-no-ranking", "logloss-max"],
)
def test_a_metric_the_task_does_not_report_is_refused_at_load(overrides, fragments):
    _refused(overrides, *fragments)


def test_the_metrics_each_task_reports_are_accepted():
    for overrides in (
        ["train.metric=valid/uauc"],
        ["train.metric=valid/warm/auc"],
        ["train.metric=valid/logloss", "train.mode=min"],
        ["cf.loss=bpr", "train.metric=valid/ndcg@20"],
        ["cf.loss=bpr", "eval.ks=[5]", "train.metric=valid/recall@5"],
        ["method.name=tallrec", "train.metric=valid/auc"],
        ["train.metric=train/loss", "train.mode=min"],
    ):
        load_config(None, overrides)


def test_the_metric_names_accepted_are_the_ones_evaluation_reports():
    """The names config.py accepts (it cannot import the evaluators: torch) stay in step with
    what CTRAccumulator and RankingAccumulator report."""
    rng = np.random.default_rng(0)
    ctr = CTRAccumulator()
    users = np.repeat(np.arange(8), 4)
    ctr.update(users, np.tile([0, 1], 16), rng.random(32), warm=users < 4)
    counts = {"uauc_users", "rows", "users"}
    reported = {
        f"valid/{k.removeprefix('all/')}" for k in ctr.compute() if k.rsplit("/", 1)[-1] not in counts
    }
    assert reported == task_metrics(load_config(None, [])) - {"train/loss"}

    ranking = RankingAccumulator((3, 5))
    sets = ItemSets.from_pairs(np.array([0, 1]), np.array([2, 3]), 2)
    ranking.update(torch.randn(2, 10), 0, ItemSets.from_pairs(np.array([0]), np.array([4]), 2), sets)
    reported = {f"valid/{k}" for k in ranking.compute() if k not in counts}
    bpr = load_config(None, ["cf.loss=bpr", "eval.ks=[3,5]", "train.metric=valid/hit@3"])
    assert reported == task_metrics(bpr) - {"train/loss"}


def test_the_cli_refuses_an_unreported_metric_before_training(tmp_path, capsys):
    config = tmp_path / "mf.yaml"
    config.write_text("dataset: nowhere\ncf: {model: mf}\n")
    assert main(["train-cf", "--config", str(config), "--local", "train.metric=valid/bogus@10"]) == 2
    assert "train.metric" in capsys.readouterr().err


def test_the_loop_stops_at_the_first_evaluation_without_the_metric():
    """A task that reports other names than the config expects fails after one epoch, not
    after all of them with an empty best state."""
    task = _Regression(report="valid/rmse")
    with pytest.raises(ValueError, match=r"train.metric 'valid/mse'.*valid/rmse"):
        _fit(task, epochs=5)
    assert task.epochs_started == 1


# --- 10: non-finite learning rate, loss and weights --------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.weight_decay=.inf", "train.weight_decay"),
        ("train.max_grad_norm=.nan", "train.max_grad_norm"),
        ("train.resources_per_worker={train: .inf}", "train.resources_per_worker.train"),
        ("score.gpus_per_actor=.inf", "score.gpus_per_actor"),
    ],
)
def test_a_non_finite_number_is_refused_at_load(override, field):
    _refused([override], f"{field}: Input should be a finite number")


def test_a_non_finite_loss_stops_training_naming_the_step():
    """lr 1e30 (finite, so the config takes it) sends Adam's weights to 1e30 after one step; the
    next loss overflows: training stops there, before any report carries those weights."""
    task = _Regression()
    reporter = _Reporter()
    config = TrainConfig(epochs=3, lr=1e30, metric="valid/mse", mode="min", checkpoint_every_steps=1)
    engine = TorchEngine(task.model, config, total_steps=24)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 step 2 \(step 2 of the run\).*train\.lr"):
        fit(task, task.batches, config, reporter, engine)
    assert [r["step"] for r in reporter.reports] == [1]
    assert all(np.isfinite(r["train/loss"]) for r in reporter.reports)


def test_a_run_whose_evaluations_are_all_nan_ends_with_an_error():
    """No evaluation ever gave a comparable value: there are no best weights to keep, which
    used to surface later as a state-dict error in the bundle export."""

    class _Nan(_Regression):
        def evaluate(self):
            return {"valid/mse": float("nan")}

    with pytest.raises(ValueError, match=r"no evaluation gave a number for valid/mse"):
        _fit(_Nan(), epochs=2)


def _committed(path) -> dict:
    storage.write_json(storage.join(str(path), "config.json"), {"format": "old"})
    return storage.read_json(storage.join(str(path), "config.json"))


def test_a_cf_bundle_with_non_finite_weights_is_not_written(tmp_path):
    out = tmp_path / "bundle"
    old = _committed(out)
    config = build_config({"dataset": str(tmp_path / "dataset"), "cf": {"model": "mf", "dim": 4}})
    model = MF(5, 6, dim=4)
    with torch.no_grad():
        model.items.weight[3, 1] = float("nan")
    train = Split({"uid": np.array([1, 2]), "iid": np.array([1, 2])}, 5, 6)
    with pytest.raises(ValueError, match=r"items\.weight.*1 non-finite"):
        save_cf_bundle(str(out), model, config, {"content_hash": "x"}, {}, train)
    # the bundle that was there is still committed, and nothing else was written
    assert storage.read_json(storage.join(str(out), "config.json")) == old
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_model_bundle_with_non_finite_weights_is_not_written(tmp_path):
    out = tmp_path / "bundle"
    old = _committed(out)
    config = build_config({"dataset": str(tmp_path / "dataset"), "method": {"name": "tallrec"}})
    weights = {"lora.a": torch.zeros(2, 2), "lora.b": torch.tensor([[0.0, float("inf")], [1.0, 2.0]])}
    with pytest.raises(ValueError, match=r"lora\.b.*1 non-finite"):
        save_model_bundle(str(out), config, weights, {}, {}, "run")
    assert storage.read_json(storage.join(str(out), "config.json")) == old
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


# --- 11: k below 1 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ks", "fragment"),
    [("[0]", "eval.ks.0: Input should be greater than or equal to 1"),
     ("[10, -5]", "eval.ks.1: Input should be greater than or equal to 1"),
     ("[]", "eval.ks: List should have at least 1 item")],
)  # fmt: skip
def test_a_k_below_one_is_refused_at_load(ks, fragment):
    _refused([f"eval.ks={ks}", "cf.loss=bpr", "train.metric=valid/ndcg@10"], fragment)


# --- 12: dates, CSV options, shapes, booleans, NaN thresholds -------------------------------------


WINDOW = [*DATA, "data.split.protocol=temporal_window", "data.split.test_start=2026-12-01"]
LOGS = ["data.source.type=logs", "data.source.paths=[a.csv]", "data.output=out/x"]


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ([*WINDOW, "data.split.valid_start=2026-13-45"], ["data.split.valid_start", "month must be in 1"]),
        ([*WINDOW, "data.split.valid_start=someday"], ["data.split.valid_start", "'someday'"]),
        ([*LOGS, "data.source.csv.delimiter=';;'"], ["data.source.csv.delimiter", "ASCII", "';;'"]),
        ([*LOGS, "data.source.csv.delimiter=§"], ["data.source.csv.delimiter", "'§'"]),
        ([*LOGS, "data.source.csv.quote_char=','"], ["data.source.csv.quote_char", "the delimiter"]),
        (["cf.model=sasrec", "cf.dim=10", "cf.heads=3"], ["cf.heads", "cf.dim 10", "3 heads"]),
        (["cf.model=sasrec", "cf.loss=bpr"], ["cf.loss", "sasrec", "'bpr' is not supported"]),
        (["train.epochs=true"], ["train.epochs", "got true"]),
        (["train.use_gpu=1"], ["train.use_gpu", "valid boolean"]),
        ([*DATA, "data.label.threshold=.nan"], ["data.label.threshold", "finite number"]),
    ],
    ids=["bad-date", "not-a-date", "two-char-delimiter", "non-ascii-delimiter", "quote-is-delimiter",
         "sasrec-heads", "sasrec-bpr", "bool-epochs", "int-bool", "nan-threshold"],
)  # fmt: skip
def test_a_bad_value_is_refused_at_load_naming_its_field(overrides, fragments):
    _refused(overrides, *fragments)


def test_a_bad_date_in_a_file_names_its_field(tmp_path):
    path = tmp_path / "window.yaml"
    path.write_text(
        "data:\n  source: {type: synthetic}\n  output: out/x\n"
        "  split: {protocol: temporal_window, valid_start: 2026-13-45, test_start: 2026-12-01}\n"
    )
    with pytest.raises(ConfigError, match=r"data\.split\.valid_start: .*month must be in 1\.\.12"):
        load_config(path)


def test_good_dates_still_load():
    config = load_config(None, [*WINDOW, "data.split.valid_start=2026-10-01"])
    assert config.data.split.cutoffs()[0] == 1790812800


def test_sasrec_names_the_shape_it_cannot_build():
    with pytest.raises(ValueError, match="dim 10 is not divisible by heads 3"):
        SASRec(4, 4, dim=10, heads=3)


def test_the_shipped_defaults_still_load():
    assert isinstance(load_config(None, []), RaylrecConfig)


def test_a_config_that_is_not_utf8_is_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("dataset: café\n".encode("latin-1"))
    assert main(["train-cf", "--config", str(path), "--local"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not UTF-8" in err and "Traceback" not in err


def test_prepare_without_a_config_says_what_to_pass(capsys):
    assert main(["data", "prepare"]) == 2
    err = capsys.readouterr().err
    assert "None" not in err and "--config" in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--k", "0"], "--k takes list lengths of 1 or more, got 0"),
        (["--split", "nosuch"], "--split nosuch:"),
    ],
)
def test_recs_eval_refuses_a_bad_k_or_split_naming_it(tmp_path, capsys, args, fragment):
    """Checked before the published lists are read (there are none here)."""
    from helpers import DATA_DIR

    dataset = str(DATA_DIR / "plugins-synthetic")
    assert main(["recs", "eval", str(tmp_path / "recs"), "--dataset", dataset, *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize(
    "overrides",
    [['output=""'], ["output='  '"], [*DATA[:1], 'data.output=""'], ['score.output=""']],
    ids=["output", "blank output", "data.output", "score.output"],
)
def test_an_empty_output_path_is_refused_at_load(overrides):
    """'' would mean the current directory to one writer and fail after a whole training run in
    another; ``output=`` (no value) still means no output, as any unset field."""
    _refused(overrides, "output: ", "is empty")


def test_an_empty_profiles_output_is_refused_at_load():
    from raylrec.profiles.config import build_profiles_config

    with pytest.raises(ConfigError, match="output: .*is empty"):
        build_profiles_config({"dataset": "d", "output": ""})


def test_score_and_stats_check_their_inputs_before_starting_ray(tmp_path, monkeypatch, capsys):
    """A missing bundle, an output on a bucket that does not exist, a missing dataset: each is
    named, and no Ray instance is started to find out."""
    from raylrec.commands import common

    monkeypatch.setattr(
        common, "init_ray", lambda *a, **k: pytest.fail("Ray started before the inputs were checked")
    )
    config = tmp_path / "score.yaml"
    config.write_text(f"score: {{model_bundle: {tmp_path / 'no-bundle'}, output: {tmp_path / 'recs'}}}\n")
    assert main(["score", "--config", str(config), "--date", "2026-11-24"]) != 0
    assert "no-bundle" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_an_empty_source_path_is_named():
    _refused(
        ["data.source.type=logs", 'data.source.paths=["a.csv", ""]', "data.output=out/x"],
        "paths",
        "path 1 of 2 is empty",
    )
