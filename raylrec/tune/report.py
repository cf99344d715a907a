"""``raylrec tune report``: a finished sweep drawn to PNG files beside its results: the metric
against each hyperparameter, and every trial's learning curve (the ones ASHA stopped dashed)."""

from __future__ import annotations

import io
import re

import pandas as pd

from raylrec import storage
from raylrec.tune.results import STOPPED, read_results

__all__ = ["draw_report"]

TABLE_COLUMNS = {"rank", "trial_id", "metric", "best_epoch", "epochs", "seconds", "status", "is_default"}


def _save(figure, uri: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(uri, buffer.getvalue())


def _log_scale(values: pd.Series) -> bool:
    numeric = pd.to_numeric(values, errors="coerce").dropna()
    return len(numeric) > 1 and (numeric > 0).all() and numeric.max() / numeric.min() >= 20


def draw_report(experiment: str, metric_name: str | None = None) -> list[str]:
    """Write ``report/<metric>_vs_<key>.png`` per hyperparameter and ``report/learning_curves.png``
    under ``experiment``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    trials, curves, record = read_results(experiment)
    metric = metric_name or record.get("metric", "metric")
    keys = [c for c in trials.columns if c not in TABLE_COLUMNS]
    stopped = trials["status"] == STOPPED
    best = trials.iloc[0]
    written = []
    for key in keys:
        figure, axis = plt.subplots(figsize=(5, 3.6))
        numeric = pd.api.types.is_numeric_dtype(trials[key])
        x = trials[key] if numeric else trials[key].astype(str)
        axis.scatter(x[~stopped], trials["metric"][~stopped], label="ran to the end", color="tab:blue")
        axis.scatter(
            x[stopped],
            trials["metric"][stopped],
            label="stopped by ASHA",
            facecolors="none",
            edgecolors="tab:gray",
        )
        default = trials["is_default"]
        if default.any():
            axis.scatter(
                x[default], trials["metric"][default], marker="*", s=160, color="tab:orange", label="default"
            )
        axis.scatter([x.iloc[0]], [best["metric"]], marker="D", color="tab:red", label="best")
        if numeric and _log_scale(trials[key]):
            axis.set_xscale("log")
        axis.set_xlabel(key)
        axis.set_ylabel(f"best {metric}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        uri = storage.join(experiment, "report", f"{_slug(metric)}_vs_{_slug(key)}.png")
        _save(figure, uri)
        plt.close(figure)
        written.append(uri)
    figure, axis = plt.subplots(figsize=(6, 4))
    status = dict(zip(trials["trial_id"], trials["status"], strict=True))
    for trial_id, curve in curves.groupby("trial_id", sort=False):
        curve = curve.sort_values("total_epoch")
        is_best = trial_id == best["trial_id"]
        axis.plot(
            curve["total_epoch"],
            curve["metric"],
            marker="o",
            markersize=3,
            linestyle="--" if status.get(trial_id) == STOPPED else "-",
            color="tab:red" if is_best else None,
            linewidth=2.5 if is_best else 1,
            alpha=1 if is_best else 0.7,
            label=f"{trial_id} (best)" if is_best else None,
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.set_title(f"{len(trials)} trials; dashed: stopped by ASHA", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    uri = storage.join(experiment, "report", "learning_curves.png")
    _save(figure, uri)
    plt.close(figure)
    written.append(uri)
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", text)
