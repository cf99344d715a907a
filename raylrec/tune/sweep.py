"""``raylrec tune``: a Ray Tune sweep of one config over one search space.

The experiment lives at ``<storage>/<name>``; re-running the same name continues it (finished
trials are kept, unfinished ones resume from their Ray Train checkpoints, ASHA keeps its rungs).
A sweep writes its trials table, learning curves and best config there, and the best config
also to ``configs/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raylrec import storage
from raylrec.config import ConfigError, RaylrecConfig, build_config, load_raw_config
from raylrec.tune.results import (
    SWEEP_FILE,
    best_config_yaml,
    default_tuned_path,
    format_leaderboard,
    trials_tables,
    write_results,
)
from raylrec.tune.space import SearchSpace, load_space, total_epochs
from raylrec.tune.trial import run_trial

__all__ = ["SweepResult", "default_values", "plan_concurrency", "run_sweep"]


@dataclass
class SweepResult:
    path: str
    trials: pd.DataFrame
    curves: pd.DataFrame
    best: dict[str, Any]
    best_config: str | None
    seconds: float


def plan_concurrency(config: RaylrecConfig, resources: dict[str, float]) -> int:
    """Trials at once: as many Ray Train worker groups as the cluster holds (trial drivers
    themselves hold no CPU)."""
    train = config.train
    fits = [int(resources.get("CPU", 0) // (train.num_workers * train.cpus_per_worker))]
    if train.use_gpu:
        fits.append(int(resources.get("GPU", 0) // train.num_workers))
    return max(1, min(fits))


def default_values(space: SearchSpace, config: RaylrecConfig) -> dict[str, Any] | None:
    """The config's own values of the swept keys, evaluated first as the baseline trial. Random
    and grid search take any point; Optuna only one inside its distributions, so there a value
    outside the space gives None (no baseline)."""
    values: dict[str, Any] = {}
    for param in space.params:
        node: Any = config
        for part in param.key.split("."):
            node = getattr(node, part)
        values[param.key] = node
        if space.search != "optuna":
            continue
        if param.kind in ("choice", "grid"):
            if node not in param.args:
                return None
        elif not param.args[0] <= node <= param.args[1]:
            return None
    return values


def _fingerprint(space_path: str, raw: dict[str, Any]) -> str:
    payload = {"space": Path(space_path).read_text(), "config": raw}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _claim(experiment: str, fingerprint: str, record: dict[str, Any]) -> bool:
    """Record the sweep's inputs; a name reused for different inputs is refused (it would mix
    two sweeps in one table). Returns whether the sweep already existed."""
    path = storage.join(experiment, SWEEP_FILE)
    fs, local = storage.filesystem(path)
    if fs.exists(local):
        stored = storage.read_json(path)
        if stored["fingerprint"] != fingerprint:
            raise ConfigError(
                f"sweep {experiment} exists with a different space or config ({stored['space']}, "
                f"{stored['config']}); pass --name to start a new sweep"
            )
        return True
    storage.write_json(path, {**record, "fingerprint": fingerprint})
    return False


def _search(space: SearchSpace, baseline: dict[str, Any] | None, concurrency: int):
    points = [baseline] if baseline else None
    if space.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(points_to_evaluate=points, seed=space.seed), concurrency)
    from ray.tune.search import BasicVariantGenerator

    # Tune ignores max_concurrent_trials for this generator: it takes the limit itself.
    return BasicVariantGenerator(
        points_to_evaluate=points, random_state=space.seed, max_concurrent=concurrency
    )


def _scheduler(space: SearchSpace, max_t: int, experiment: str):
    from ray.tune.schedulers import FIFOScheduler

    from raylrec.tune.scheduler import SCHEDULER_STATE, ResumableASHA

    if space.scheduler.type == "fifo":
        return FIFOScheduler()
    return ResumableASHA(
        storage.join(experiment, SCHEDULER_STATE),
        time_attr="total_epoch",
        max_t=max_t,
        grace_period=space.scheduler.grace_period,
        reduction_factor=space.scheduler.reduction_factor,
    )


def run_sweep(
    space_path: str,
    config_path: str,
    overrides: list[str] | None = None,
    name: str | None = None,
    storage_path: str | None = None,
    best_config: str | None = "auto",
    include_default: bool = True,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Sweep ``config_path`` (with ``overrides``, which every trial shares) over the space at
    ``space_path``; returns the trials table and the best trial. Needs a connected Ray."""
    import ray
    from ray import tune

    started = time.perf_counter()
    raw = load_raw_config(config_path, overrides)
    config = build_config(raw, config_path + (" + overrides" if overrides else ""))
    space = load_space(space_path, config, raw)
    if config.train.num_workers < 1:
        raise ConfigError("tune: train.num_workers must be >= 1 (each trial drives a Ray Train run)")
    if config.method is None:
        config.dataset_path()
    name = name or f"{Path(space_path).stem}-{Path(config_path).stem}"
    root = storage.absolute(storage_path or config.train.storage_path)
    storage.check_reachable(root)  # a clear error before any trial, not a botocore trace
    experiment = storage.join(root, name)
    raw = {**raw, "dataset": storage.absolute(config.dataset_path())}
    for key in ("cf_bundle", "init_from"):  # trials run elsewhere: paths must not depend on cwd
        if config.method is not None and getattr(config.method, key):
            raw["method"] = {**raw["method"], key: storage.absolute(getattr(config.method, key))}
    metric, mode = config.train.metric, config.train.mode
    max_t = space.scheduler.max_t or total_epochs(config)
    record = {"space": space_path, "config": config_path, "overrides": overrides or [], "metric": metric}
    existed = _claim(experiment, _fingerprint(space_path, raw), {**record, "created": time.time()})
    concurrency = plan_concurrency(config, ray.cluster_resources())
    baseline = default_values(space, config) if include_default else None
    if include_default and baseline is None:
        say(f"sweep {name}: the config's own values lie outside the space; no baseline trial")
    runs = storage.join(experiment, "runs")
    # A trial driver holds no CPU (its Ray Train workers do); Tune needs some resource in the
    # request, so it asks for a token amount of memory.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=raw, group=name, runs=runs), {"CPU": 0, "memory": 2**20}
    )
    fs, fs_root = storage.arrow_filesystem(root) if storage.is_remote(root) else (None, root)
    restore_path = experiment if fs is None else f"{fs_root}/{name}"
    if existed and tune.Tuner.can_restore(restore_path, storage_filesystem=fs):
        say(f"sweep {name}: continuing {experiment} (finished trials are kept)")
        tuner = tune.Tuner.restore(restore_path, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        say(
            f"sweep {name}: {space.trials(baseline is not None)} trials of {space.model} "
            f"({space.search} search, "
            f"{space.scheduler.type} on {metric} over {max_t} epochs), {concurrency} at a time, "
            f"in {experiment}" + (" (the config's own values first)" if baseline else "")
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=_search(space, baseline, concurrency),
                scheduler=_scheduler(space, max_t, experiment),
                num_samples=space.tune_samples(baseline is not None),
            ),
            run_config=tune.RunConfig(name=name, storage_path=fs_root, storage_filesystem=fs, verbose=1),
        )
    grid = tuner.fit()
    trials, curves = trials_tables(grid, space, metric, mode, runs, baseline, max_t)
    if trials.empty or trials["metric"].isna().all():
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error]
        first = f"; first error: {errors[0]}" if errors else ""
        raise RuntimeError(f"sweep {name}: no trial reported {metric}{first}")
    text = best_config_yaml(load_raw_config(config_path), trials, name, space, metric, overrides)
    if best_config == "auto":
        best_config = default_tuned_path(config_path)
    written = write_results(experiment, trials, curves, text, best_config)
    say(format_leaderboard(trials, metric, [p.key for p in space.params]))
    best = trials.iloc[0].to_dict()
    say(f"best config ({metric} {best['metric']:.4f}, trial {best['trial_id']}) written to {written}")
    return SweepResult(experiment, trials, curves, best, written, time.perf_counter() - started)
