"""What a sweep leaves behind: the trials table (config, metric, epochs, time, how it ended),
every trial's learning curve, the best config as ready-to-use YAML, and a printed leaderboard."""

from __future__ import annotations

import datetime as dt
import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from raylrec import storage
from raylrec.tune.space import SearchSpace, apply_params

__all__ = [
    "best_config_yaml",
    "best_params",
    "default_tuned_path",
    "format_leaderboard",
    "read_results",
    "trials_tables",
    "write_results",
    "write_text",
]

# The sweep's own record (space, fingerprint, baseline), written by ``sweep`` when it claims the
# experiment directory and read back with the results.
SWEEP_FILE = "raylrec_sweep.json"
FINISHED, PATIENCE, STOPPED, ERROR, NOT_RUN = "finished", "early stop", "stopped by ASHA", "error", "not run"


def _same(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    if b is None or a.keys() != b.keys():
        return False
    return all(math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(b[k], float) else a[k] == b[k] for k in a)


def _trial_result(runs: str, trial_id: str) -> dict[str, Any] | None:
    from raylrec.tune.trial import TRIAL_RESULT

    path = storage.join(runs, trial_id, TRIAL_RESULT)
    fs, local = storage.filesystem(path)
    return storage.read_json(path) if fs.exists(local) else None


def trials_tables(
    grid: Any,
    space: SearchSpace,
    metric: str,
    mode: str,
    runs: str,
    baseline: dict[str, Any] | None,
    max_t: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) from a Tune ``ResultGrid``; trials best first. A trial that reached
    ``max_t`` epochs finished, even though Tune stops it at that last report."""
    keys = [p.key for p in space.params]
    rows, curves = [], []
    for result in grid:
        history = result.metrics_dataframe
        has_metric = history is not None and metric in history
        trial_id = (result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1]
        params = {k: result.config.get(k) for k in keys}
        finished = _trial_result(runs, trial_id)
        row: dict[str, Any] = {"trial_id": trial_id, **params, "metric": math.nan, "best_epoch": None}
        if finished is not None and finished.get("curve"):
            # The trial's own record: whole even when a resumed run reported nothing new.
            curve = pd.DataFrame(finished["curve"], columns=["total_epoch", "metric"])
        elif has_metric:
            curve = history.dropna(subset=[metric])[["total_epoch", metric]]
            curve = curve.rename(columns={metric: "metric"})
        else:
            curve = None
        if curve is not None and not curve.empty:
            curve = curve.reset_index(drop=True)
            curves.append(curve.assign(trial_id=trial_id))
            best = curve["metric"].idxmax() if mode == "max" else curve["metric"].idxmin()
            row.update(metric=float(curve["metric"][best]), best_epoch=int(curve["total_epoch"][best]))
        row["epochs"] = int(curve["total_epoch"].max()) if curve is not None and not curve.empty else 0
        row["seconds"] = float((result.metrics or {}).get("time_total_s", 0.0))
        if result.error is not None:
            row["status"] = ERROR
        elif finished is not None:
            row["status"] = PATIENCE if finished["early_stopped"] else FINISHED
        elif row["epochs"] >= max_t:
            row["status"] = FINISHED
        else:
            row["status"] = STOPPED if row["epochs"] else NOT_RUN
        row["is_default"] = _same(params, baseline)
        rows.append(row)
    trials = pd.DataFrame(rows)
    if not trials.empty:
        trials = trials.sort_values("metric", ascending=mode == "min", na_position="last", kind="stable")
        trials = trials.reset_index(drop=True)
        trials.insert(0, "rank", range(1, len(trials) + 1))
    columns = ["trial_id", "total_epoch", "metric"]
    return trials, (
        pd.concat(curves, ignore_index=True)[columns] if curves else pd.DataFrame(columns=columns)
    )


def best_config_yaml(
    file_config: dict[str, Any],
    trials: pd.DataFrame,
    name: str,
    space: SearchSpace,
    metric: str,
    overrides: list[str] | None,
) -> str:
    """The swept config file with the best trial's values set (and its bundle written to
    ``<output>_tuned``), as YAML with a header saying where it came from (the sweep's
    command-line overrides are not applied: they usually cut budget)."""
    best = trials.iloc[0]
    params = best_params(best, space)
    lines = [
        f"# Best of sweep {name}: {len(trials)} trials over {space.path} ({space.search} search, "
        f"{space.scheduler.type}), {metric} {best['metric']:.4f} (trial {best['trial_id']}).",
    ]
    default = trials[trials["is_default"]]
    if not default.empty and not math.isnan(default["metric"].iloc[0]):
        lines.append(f"# The config's own values scored {default['metric'].iloc[0]:.4f} in the same sweep.")
    if overrides:
        lines.append(f"# Trials also ran with {' '.join(overrides)} (not applied below).")
    lines.append(f"# Written by raylrec tune on {dt.date.today().isoformat()}; swept values:")
    lines += [f"#   {k}: {v}" for k, v in params.items()]
    tuned = apply_params(file_config, params)
    if isinstance(tuned.get("output"), str):
        tuned["output"] = tuned["output"].rstrip("/") + "_tuned"  # not over the default's bundle
    body = yaml.safe_dump(tuned, sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


def _plain(value: Any) -> Any:
    """numpy scalars from the table -> YAML-friendly Python values."""
    return value.item() if hasattr(value, "item") else value


def best_params(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """The swept values of ``trial`` (a row of the trials table, or its dict), as plain Python."""
    return {p.key: _plain(trial[p.key]) for p in space.params}


def default_tuned_path(config_path: str) -> str:
    """Where a sweep of ``config_path`` writes its best config by default."""
    return f"configs/{Path(config_path).stem}_tuned.yaml"


def write_text(uri: str, text: str) -> None:
    """``text`` to ``uri`` (local or s3://), its parent directory made first."""
    out_fs, out = storage.filesystem(uri)
    parent = out.rsplit("/", 1)[0] if "/" in out else "."
    out_fs.makedirs(parent, exist_ok=True)
    out_fs.pipe_file(out, text.encode())


def write_results(
    experiment: str, trials: pd.DataFrame, curves: pd.DataFrame, best_yaml: str, best_config: str | None
) -> str:
    """Tables and the best config into the experiment directory; the best config also to
    ``best_config`` when given. Returns where the best config was written last."""
    fs, root = storage.filesystem(experiment)
    for table, name in ((trials, "trials"), (curves, "curves")):
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        fs.pipe_file(f"{root}/{name}.parquet", buffer.getvalue())
    fs.pipe_file(f"{root}/trials.csv", trials.to_csv(index=False).encode())
    fs.pipe_file(f"{root}/best_config.yaml", best_yaml.encode())
    if best_config is None:
        return storage.join(experiment, "best_config.yaml")
    write_text(best_config, best_yaml)
    return best_config


def read_results(experiment: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(trials, curves, sweep record) of a finished sweep."""
    fs, root = storage.filesystem(experiment)
    if not fs.exists(f"{root}/trials.parquet"):
        raise FileNotFoundError(
            f"{experiment} holds no sweep results (trials.parquet); run raylrec tune first"
        )
    with fs.open(f"{root}/trials.parquet", "rb") as f:
        trials = pd.read_parquet(f)
    with fs.open(f"{root}/curves.parquet", "rb") as f:
        curves = pd.read_parquet(f)
    return trials, curves, storage.read_json(storage.join(experiment, SWEEP_FILE))


def format_leaderboard(trials: pd.DataFrame, metric: str, keys: list[str], top: int = 10) -> str:
    shown = trials.head(top)
    header = ["#", "trial", metric, "best ep", "epochs", "status", "time"] + keys
    rows = []
    for _, t in shown.iterrows():
        cells = [
            str(t["rank"]),
            t["trial_id"] + (" (default)" if t["is_default"] else ""),
            "-" if math.isnan(t["metric"]) else f"{t['metric']:.4f}",
            "-" if pd.isna(t["best_epoch"]) else str(int(t["best_epoch"])),
            str(t["epochs"]),
            t["status"],
            f"{t['seconds']:.0f}s",
        ]
        cells += [f"{t[k]:.4g}" if isinstance(t[k], float) else str(t[k]) for k in keys]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    more = f"\n({len(trials) - top} more in trials.csv)" if len(trials) > top else ""
    return f"leaderboard ({len(trials)} trials, best first):\n" + "\n".join(lines) + more
