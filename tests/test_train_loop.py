"""The training loop in a plain process: a mid-epoch checkpoint resumes exactly where it was
taken (same final weights as an uninterrupted run), and LR schedules have the right shape."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from raylrec.config import TrainConfig
from raylrec.train.engines import TorchEngine, lr_lambda
from raylrec.train.loop import TrainState, fit


class _Regression:
    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.model = nn.Linear(4, 1)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=generator)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def loss(self, batch):
        return nn.functional.mse_loss(self.model(batch["x"]), batch["y"])

    def evaluate(self):
        with torch.no_grad():
            return {"valid/mse": float(nn.functional.mse_loss(self.model(self.x), self.y))}

    def batches(self, epoch: int):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, 64, 8):
            index = order[start : start + 8]
            yield {"x": self.x[index], "y": self.y[index]}


class _Interrupt(Exception):
    pass


class _CheckpointingReporter:
    """Keeps the last checkpoint in memory (as Ray Train would on disk) and can fail after it."""

    def __init__(self, tmp_path, fail_at_step: int | None = None):
        self.tmp_path, self.fail_at_step = tmp_path, fail_at_step
        tmp_path.mkdir(exist_ok=True)
        self.saved: TrainState | None = None

    def report(self, metrics, state, engine):
        if engine is None:
            return
        engine.save(str(self.tmp_path), 0)
        self.saved = copy.deepcopy(state)
        if self.fail_at_step is not None and state.step >= self.fail_at_step:
            raise _Interrupt

    def log(self, message):
        pass


def _config(**kw) -> TrainConfig:
    base = {"epochs": 3, "lr": 0.05, "metric": "valid/mse", "mode": "min", "checkpoint_every_steps": 5}
    return TrainConfig(**{**base, **kw})


def test_a_mid_epoch_checkpoint_resumes_exactly(tmp_path):
    config = _config()
    reference = _Regression(seed=1)
    fit(
        reference,
        reference.batches,
        config,
        _CheckpointingReporter(tmp_path / "a"),
        _engine(reference, config),
    )

    first = _Regression(seed=1)
    reporter = _CheckpointingReporter(tmp_path / "b", fail_at_step=10)  # epoch 2, batch 2 of 8
    with pytest.raises(_Interrupt):
        fit(first, first.batches, config, reporter, _engine(first, config))
    assert reporter.saved is not None and reporter.saved.epoch == 1 and reporter.saved.epoch_step == 2

    resumed = _Regression(seed=99)  # different initial weights: everything must come from the checkpoint
    engine = _engine(resumed, config)
    engine.load(str(tmp_path / "b"))
    state = fit(
        resumed, resumed.batches, config, _CheckpointingReporter(tmp_path / "c"), engine, reporter.saved
    )
    assert state.step == 3 * 8
    torch.testing.assert_close(resumed.model.weight, reference.model.weight, rtol=0, atol=0)


def _engine(task: _Regression, config: TrainConfig) -> TorchEngine:
    return TorchEngine(task.model, config, total_steps=config.epochs * 8)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedule_warms_up_then_decays(schedule):
    factor = lr_lambda(TrainConfig(schedule=schedule, warmup_ratio=0.1), total_steps=100)
    values = [factor(step) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(values[:9], values[1:10], strict=True))
    if schedule == "constant":
        assert values[-1] == 1.0
    else:
        assert all(a >= b - 1e-12 for a, b in zip(values[10:-1], values[11:], strict=True))
        assert values[-1] < 0.05
