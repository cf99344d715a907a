"""CF encoders and the training core: plain process and Ray Train (2 workers, DDP on gloo): a
real worker SIGKILL, then the same run name re-run (nothing to do), continued with more epochs,
and refused under a changed config."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from helpers import CF_SOURCE, kill_a_training_worker_after_first_checkpoint

from raylrec.cf.bundle import load_cf_bundle
from raylrec.cf.data import load_split
from raylrec.cf.encoders.lightgcn.model import LightGCN
from raylrec.cf.graph import normalized_adjacency
from raylrec.cf.train import train_cf
from raylrec.config import build_config
from raylrec.data.arrays import pad_histories

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def tiny_dataset(prepared_dataset) -> str:
    return prepared_dataset(CF_SOURCE, history={"max_len": 10})


def _config(dataset: str, tmp_path, **sections):
    raw = {
        "dataset": dataset,
        "cf": {"model": "mf", "dim": 16, "loss": "bce"},
        "train": {
            "epochs": 4,
            "batch_size": 256,
            "lr": 1e-2,
            "patience": 10,
            "num_workers": 2,
            "storage_path": str(tmp_path / "runs"),
            "max_failures": 2,
        },
        "output": str(tmp_path / "bundle"),
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return build_config(raw)


def test_pad_histories_keeps_the_newest_items_on_the_right():
    import pyarrow as pa

    got = pad_histories(pa.array([[1, 2, 3, 4], [], [7]], pa.list_(pa.int32())), 3)
    assert got.tolist() == [[2, 3, 4], [0, 0, 0], [0, 0, 7]]


def test_lightgcn_propagates_over_the_normalised_graph():
    adjacency = normalized_adjacency(np.array([1, 1, 2]), np.array([1, 2, 2]), 3, 3)
    dense = adjacency.to_dense()
    assert torch.allclose(dense, dense.T)
    # user 1 (degree 2) - item 1 (degree 1): 1 / sqrt(2 * 1)
    assert dense[1, 3 + 1].item() == pytest.approx(1 / np.sqrt(2))
    model = LightGCN(3, 3, adjacency, dim=4, layers=2).eval()
    users, items = model.propagate()
    assert users.shape == (3, 4) and items.shape == (3, 4)


@pytest.mark.parametrize(
    ("cf", "metric"),
    [
        ({"model": "mf", "loss": "bce"}, "valid/auc"),
        ({"model": "lightgcn", "loss": "bpr", "implicit": True, "reg_weight": 1e-4}, "valid/ndcg@10"),
        ({"model": "sasrec", "loss": "bce", "max_len": 10, "blocks": 1, "heads": 2}, "valid/auc"),
    ],
)
def test_each_encoder_learns_in_a_plain_process(tiny_dataset, tmp_path, cf, metric):
    config = _config(tiny_dataset, tmp_path, cf=cf, train={"metric": metric, "epochs": 6, "num_workers": 0})
    result = train_cf(config, print, use_ray=False)
    losses = [h["train/loss"] for h in result.state.history]
    assert losses[-1] < losses[0]
    assert metric in result.metrics
    bundle = load_cf_bundle(result.bundle)
    assert bundle.items.shape == (bundle.config["num_items"], 16)
    # The bundle scores exactly as the trained model did.
    valid = load_split(tiny_dataset, "valid", cf.get("max_len", 0) if cf["model"] == "sasrec" else 0)
    batch = {k: torch.from_numpy(v[:64]) for k, v in valid.arrays.items() if k != "warm"}
    from raylrec.cf.task import build_encoder

    train = load_split(tiny_dataset, "train", 10 if cf["model"] == "sasrec" else 0)
    trained = build_encoder(config.cf, train)
    trained.load_state_dict(result.state.best_model)
    trained.eval()
    with torch.no_grad():
        assert torch.allclose(bundle.encoder.score(batch), trained.score(batch), atol=1e-5)


@pytest.mark.kill
def test_a_killed_worker_resumes_and_a_reused_run_name_continues_or_refuses(tiny_dataset, tmp_path, caplog):
    """Over 60 s alone: four Ray Train worker-group starts (the killed run and its recovery, the
    uninterrupted reference the resumed metric is compared with, the continuation by one epoch);
    the re-run of the finished run and the refused changed config start none."""
    # A checkpoint inside the first epoch too: the kill lands with most of the run still to go.
    train = {"epochs": 5, "run_name": "mf-killed", "batch_size": 128, "checkpoint_every_steps": 25}
    config = _config(tiny_dataset, tmp_path, train=train)
    killed: list[int] = []
    done = threading.Event()  # the killer waits on the run's state, and stops when the run ends
    killer = threading.Thread(
        target=kill_a_training_worker_after_first_checkpoint,
        args=(tmp_path / "runs" / "mf-killed", killed, done),
    )
    killer.start()
    try:
        interrupted = train_cf(config)
    finally:
        done.set()
        killer.join()
    assert killed, "no Ray Train worker was found to kill"
    # resumed from a checkpoint, not restarted: every epoch once, and the state says where
    assert [h["epoch"] for h in interrupted.state.history] == list(range(1, 6))
    assert len(interrupted.state.resumed_at_steps) == 1 and interrupted.state.resumed_at_steps[0] > 0
    reference_config = _config(tiny_dataset, tmp_path / "ref", train={**train, "run_name": "mf-reference"})
    reference = train_cf(reference_config)
    # Same seed, per-epoch batch order seeded by epoch, resumed from an epoch checkpoint:
    # the final metric matches the uninterrupted run to within float noise of gloo reductions.
    print(
        f"killed worker pid {killed[0]}; valid/auc {interrupted.metrics['valid/auc']:.6f} "
        f"vs uninterrupted {reference.metrics['valid/auc']:.6f}"
    )
    assert interrupted.metrics["valid/auc"] == pytest.approx(reference.metrics["valid/auc"], abs=1e-3)

    # Re-running the finished run starts no workers and gives the same result ...
    with caplog.at_level("INFO", logger="raylrec.train.ray_runner"):
        again = train_cf(reference_config)
    assert "already finished (epoch 5)" in caplog.text
    assert again.state.step == reference.state.step
    assert again.metrics["valid/auc"] == pytest.approx(reference.metrics["valid/auc"])
    # ... more epochs under the same name continue from epoch 5 ...
    longer = reference_config.model_copy(
        update={"train": reference_config.train.model_copy(update={"epochs": 6})}
    )
    continued = train_cf(longer).state
    assert [h["epoch"] for h in continued.history] == list(range(1, 7))
    assert continued.resumed_at_steps == [reference.state.step]
    # ... but a different model under the same name is refused, not mixed in.
    changed = reference_config.model_copy(update={"cf": reference_config.cf.model_copy(update={"dim": 8})})
    with pytest.raises(Exception, match="already exists with a different configuration"):
        train_cf(changed)


def test_a_diverging_run_on_ray_fails_with_the_workers_error(tiny_dataset, tmp_path):
    """A non-finite loss is not a worker failure to recover from (a retry from the last
    checkpoint diverges again): the worker records its verdict, the driver raises the worker's
    own error instead of Ray Train's wrapper, and no bundle is written."""
    from raylrec.train.loop import NonFiniteLossError
    from raylrec.train.ray_runner import FATAL_FILE

    train = {"lr": 1e30, "epochs": 2, "run_name": "diverges", "max_failures": 0}
    with pytest.raises(NonFiniteLossError, match=r"training loss is .* at epoch 1 .*train\.lr"):
        train_cf(_config(tiny_dataset, tmp_path, train=train))
    verdict = json.loads((tmp_path / "runs" / "diverges" / FATAL_FILE).read_text())
    assert verdict["type"] == "NonFiniteLossError"
    assert not (tmp_path / "bundle" / "config.json").exists()


def test_a_retry_after_a_recorded_verdict_stops_before_training(tmp_path):
    """What Ray Train's retry of a diverged worker group meets: the recorded verdict, raised
    before the checkpoint is restored or a step is taken (no Ray needed to get there)."""
    from raylrec.config import TrainConfig
    from raylrec.storage import write_json
    from raylrec.train.loop import NonFiniteLossError
    from raylrec.train.ray_runner import fit_in_worker

    marker = str(tmp_path / "raylrec_fatal.json")
    write_json(marker, {"type": "NonFiniteLossError", "message": "training loss is nan at epoch 3"})
    never = lambda *_: pytest.fail("trained after the verdict")  # noqa: E731
    with pytest.raises(NonFiniteLossError, match="epoch 3"):
        fit_in_worker(None, never, None, TrainConfig(), {"fatal_marker": marker}, {}, 1)


def test_zero_workers_through_the_ray_path_trains_in_the_driver_and_exports(tiny_dataset, tmp_path):
    """``train.num_workers: 0`` from the command line (``use_ray`` left on): Ray Train's local
    mode would keep its checkpoint only in the reporter's temporary directory, gone by the end
    of the run; the pipeline trains in this process instead and the bundle is written."""
    config = _config(tiny_dataset, tmp_path, train={"metric": "valid/auc", "epochs": 2, "num_workers": 0})
    said: list[str] = []
    result = train_cf(config, said.append)
    assert any("training in this process" in line for line in said)
    assert result.state.epoch == 2 and "valid/auc" in result.metrics
    assert load_cf_bundle(result.bundle).items.shape == (result.state.best_model["items.weight"].shape[0], 16)
