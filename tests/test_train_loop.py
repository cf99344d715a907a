"""The training loop in a plain process: a mid-epoch checkpoint resumes exactly where it was
taken (same final weights as an uninterrupted run) with a torch optimiser and with DeepSpeed ZeRO
(optimiser state, LR schedule and step counters restored), and LR schedules have the right shape.
A lost rank on Ray Train resuming from such a checkpoint is the cluster test's job."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from helpers import CheckpointingReporter, Interrupt
from torch import nn

from raylrec.config import TrainConfig
from raylrec.train.engines import DeepSpeedEngine, Engine, TorchEngine, lr_lambda
from raylrec.train.loop import fit


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


def _config(**kw) -> TrainConfig:
    base = {"epochs": 3, "lr": 0.05, "metric": "valid/mse", "mode": "min", "checkpoint_every_steps": 5}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo process group in this process, as DeepSpeed needs one (Ray Train sets
    the same up in its workers). One per module: DeepSpeed keeps a handle on the first group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()
    if saved is None:
        os.environ.pop("LOCAL_RANK")
    else:
        os.environ["LOCAL_RANK"] = saved


def _torch_engine(task: _Regression, config: TrainConfig) -> Engine:
    return TorchEngine(task.model, config, total_steps=config.epochs * 8)


def _deepspeed_engine(task: _Regression, config: TrainConfig) -> Engine:
    return DeepSpeedEngine(task.model, config, total_steps=config.epochs * 8, world_size=1)


@pytest.mark.parametrize(
    ("build", "train"),
    [
        (_torch_engine, {}),
        (_deepspeed_engine, {"strategy": "deepspeed", "zero_stage": 2, "optimizer": "adamw"}),
        (_deepspeed_engine, {"strategy": "deepspeed", "zero_stage": 3, "optimizer": "adamw"}),
    ],
    ids=["torch", "zero2", "zero3"],
)
def test_a_mid_epoch_checkpoint_resumes_exactly(tmp_path, request, build, train):
    if build is _deepspeed_engine:
        request.getfixturevalue("process_group")
    config = _config(**train)
    reference = _Regression(seed=1)
    fit(reference, reference.batches, config, CheckpointingReporter(tmp_path / "a"), build(reference, config))
    expected = _weights(reference, config)

    first = _Regression(seed=1)
    reporter = CheckpointingReporter(tmp_path / "b", fail_at_step=10)  # epoch 2, batch 2 of 8
    with pytest.raises(Interrupt):
        fit(first, first.batches, config, reporter, build(first, config))
    assert reporter.saved is not None and reporter.saved.epoch == 1 and reporter.saved.epoch_step == 2

    resumed = _Regression(seed=99)  # different initial weights: everything must come from the checkpoint
    engine = build(resumed, config)
    engine.load(str(tmp_path / "b"))
    state = fit(
        resumed, resumed.batches, config, CheckpointingReporter(tmp_path / "c"), engine, reporter.saved
    )
    assert state.step == 3 * 8
    for name, value in _weights(resumed, config).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def _weights(task: _Regression, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The trained weights (gathered first under ZeRO-3, which partitions them)."""
    if config.strategy == "deepspeed" and config.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(task.model.parameters())):
            return {n: p.detach().clone() for n, p in task.model.named_parameters()}
    return {n: p.detach().clone() for n, p in task.model.named_parameters()}


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


class _RunsCode:
    """A pickle that runs code when unpickled (what a hostile writer of train.storage_path
    could put in a checkpoint): it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("target", ["state", "torch_engine", "zero2", "run_store"])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, request, target):
    from raylrec.train.checkpoint_io import UnsafeCheckpointError
    from raylrec.train.engines import DEEPSPEED_DIR, ENGINE_FILE
    from raylrec.train.ray_runner import TRAIN_SNAPSHOT, refuse_changed_run
    from raylrec.train.reporting import STATE_FILE, load_state

    marker = tmp_path / "ran"
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    hostile = {"fingerprint": "f", "state": _RunsCode(marker)}
    if target == "state":
        torch.save(hostile, directory / STATE_FILE)
        load = lambda: load_state(str(directory), "f", "run")  # noqa: E731
    elif target == "run_store":
        # A reused run name reads the latest committed checkpoint from (possibly shared) storage.
        (directory / "checkpoint_000001").mkdir()
        torch.save(hostile, directory / "checkpoint_000001" / STATE_FILE)
        snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000001"}}
        (directory / TRAIN_SNAPSHOT).write_text(json.dumps(snapshot))
        load = lambda: refuse_changed_run(str(tmp_path), "checkpoint", "f")  # noqa: E731
    else:
        train = {"strategy": "deepspeed", "zero_stage": 2, "optimizer": "adamw"} if target == "zero2" else {}
        if train:
            request.getfixturevalue("process_group")
        task = _Regression(seed=1)
        engine = (_deepspeed_engine if train else _torch_engine)(task, _config(**train))
        engine.save(str(directory), 0)
        files = [directory / ENGINE_FILE] if not train else sorted((directory / DEEPSPEED_DIR).rglob("*.pt"))
        assert files and all(f.exists() for f in files)
        for f in files:
            torch.save(_RunsCode(marker), f)
        load = lambda: engine.load(str(directory))  # noqa: E731
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load()
    assert not marker.exists()


class _ShardedRegression(_Regression):
    """One rank's view: its own shard of the data (a different target scale per rank), so its
    local training loss and validation error differ from every other rank's."""

    def __init__(self, rank: int):
        super().__init__(seed=1)
        self.y = self.y * (1 + rank)


class _SilentReporter:
    def report(self, metrics, state, engine):
        pass

    def log(self, message):
        pass


def _fit_one_rank(rank: int, port: int, metric: str, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        task = _ShardedRegression(rank)
        config = _config(metric=metric, epochs=4, checkpoint_every_steps=None)
        state = fit(task, task.batches, config, _SilentReporter(), _torch_engine(task, config))
        local = [float(nn.functional.mse_loss(task.model(task.x), task.y))]
        record = {
            "history": [h[metric] for h in state.history],
            "best_epoch": state.best_epoch,
            "local": local,
        }
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(record, f)
        torch.distributed.barrier()  # neither rank closes its gloo pairs while the other still uses them
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("metric", ["train/loss", "valid/mse"])
def test_every_rank_selects_on_the_same_number(tmp_path, metric):
    """Two gloo ranks with different shards: the metric the loop selects on is one number on
    every rank (the reduced training loss; rank 0's evaluation), so the best-epoch decision that
    starts a ZeRO-3 gather is the same everywhere. Each rank deciding on its own local loss is
    what hung CLLM4Rec's pretraining under ZeRO-3."""
    import torch.multiprocessing

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_fit_one_rank, args=(port, metric, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["local"] != ranks[1]["local"]  # the shards really differ
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"]


def test_a_zero_engine_on_cpu_compiles_no_op(process_group):
    """DeepSpeed's CPU comm backend JIT-compiles its shared-memory all-reduce op when it starts
    (54 s of g++ in the first worker on a fresh 2-core machine, before any step; only DeepSpeed's
    inference tensor parallelism calls it). The engine marks the op unavailable: ZeRO's
    collectives go through the gloo process group either way."""
    import deepspeed.comm.comm as ds_comm

    task = _Regression(seed=1)
    _deepspeed_engine(task, _config(strategy="deepspeed", zero_stage=2, optimizer="adamw"))
    assert ds_comm.cdb is not None and ds_comm.cdb.shm_comm_op is None
