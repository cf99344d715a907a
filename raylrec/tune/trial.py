"""One Ray Tune trial: the base config with this trial's hyperparameters, trained by the same
code as ``raylrec train-cf`` / ``raylrec train`` (a Ray Train run the trial drives), with every
epoch's metrics going on to Tune."""

from __future__ import annotations

import math
import time
from typing import Any

from raylrec import storage
from raylrec.config import RaylrecConfig, build_config
from raylrec.train.loop import TrainState
from raylrec.tune.space import apply_params, stage_epochs

__all__ = ["TRIAL_RESULT", "learning_curve", "run_trial", "trial_config"]

TRIAL_RESULT = "trial_result.json"  # written when a trial's training ran to its end


def trial_config(base: dict[str, Any], params: dict[str, Any], runs: str, trial_id: str) -> RaylrecConfig:
    """The config one trial trains: its own Ray Train run under ``runs``, no bundle export, and
    checkpoints only on evaluated epochs (everything a trial reports must carry the metric the
    scheduler compares)."""
    raw = apply_params(base, params)
    config = build_config({**raw, "output": None}, f"trial {trial_id}")
    every = config.train.eval_every
    train = config.train.model_copy(
        update={
            "storage_path": runs,
            "run_name": trial_id,
            "checkpoint_every": every * math.ceil(config.train.checkpoint_every / every),
            "checkpoint_every_steps": None,
        }
    )
    return config.model_copy(update={"train": train})


def learning_curve(states: list[TrainState], planned: list[int], metric: str) -> list[list[float]]:
    """``[total_epoch, metric]`` of every evaluated epoch, from the training states themselves:
    complete even when a resumed run had nothing left to report to Tune."""
    curve, offset = [], 0
    for state, epochs in zip(states, planned, strict=True):
        curve += [[offset + h["epoch"], h[metric]] for h in state.history if metric in h]
        offset += epochs
    return curve


def run_trial(params: dict[str, Any], base: dict[str, Any], group: str, runs: str) -> None:
    """Tune's function trainable (a trial driver: it holds no CPU; the Ray Train workers it
    starts do). A resumed trial re-runs the same Ray Train run name, which continues from that
    run's last checkpoint."""
    import ray.data
    import ray.tune

    from raylrec.train.hooks import TrialHooks

    # One line per trial, not Ray Data's per-operator bars (the driver's setting stays there).
    ray.data.DataContext.get_current().enable_progress_bars = False

    trial_id = ray.tune.get_context().get_trial_id()
    config = trial_config(base, params, runs, trial_id)
    started = time.perf_counter()
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    print(f"[tune] trial {trial_id} starts: {shown}", flush=True)

    def say(message: str) -> None:
        print(f"[tune {trial_id}] {message}", flush=True)

    hooks = TrialHooks(group=group, metric=config.train.metric)
    if config.method is not None:
        from raylrec.methods.train import train_method

        result = train_method(config, say, use_ray=True, trial=hooks)
        states = list(result.states.values())
    else:
        from raylrec.cf.train import train_cf

        result = train_cf(config, say, use_ray=True, trial=hooks)
        states = [result.state]
    storage.write_json(
        storage.join(runs, trial_id, TRIAL_RESULT),
        {
            "trial_id": trial_id,
            "params": params,
            "metrics": result.metrics,
            "curve": learning_curve(states, stage_epochs(config), config.train.metric),
            "epochs": sum(s.epoch for s in states),
            "early_stopped": any(s.stale_evals >= config.train.patience for s in states),
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"[tune] trial {trial_id} finished in {time.perf_counter() - started:.0f}s", flush=True)
