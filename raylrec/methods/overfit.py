"""The overfit check: the first thing a pointwise LLM method must pass.

A method that cannot fit a few dozen training rows in a few dozen optimiser steps is broken
(labels, answer tokens, score position, trainable parameters, learning rate), whatever its
validation numbers say. ``overfit_check`` trains the method in this process on ``rows``
training rows for about ``steps`` steps of its last stage, then scores those same rows: train
AUC and logloss before and after. ``bench/overfit.py`` runs it with SmolLM2-135M,
``tests/test_overfit.py`` with the tiny test Llama.

Why it matters here: SmolLM2's raw " Yes" logit is about +15.8 on every prompt at the start, so
a loss on that logit alone (``score: yes_logit``, TALLRec's objective) spends its first steps
pushing every score down before it ranks anything; the Yes-vs-No log-odds (``score: yes_no``)
starts near 0 (issue 39).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from raylrec.config import RaylrecConfig
from raylrec.methods.task import ctr_metrics, score_arrays

__all__ = ["OverfitResult", "overfit_check"]


@dataclass(frozen=True)
class OverfitResult:
    """Train AUC and logloss of the same rows before and after fitting them."""

    method: str
    score: str
    lr: float
    rows: int
    positives: int
    steps: int
    auc_before: float
    auc_after: float
    logloss_before: float
    logloss_after: float
    mean_logit_before: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scored(
    config: RaylrecConfig, weights: dict[str, torch.Tensor], device: torch.device
) -> dict[str, float]:
    """The training rows' metrics under ``weights`` (empty: the seeded initial model)."""
    from raylrec.llm.samples import local_samples
    from raylrec.methods.train import _build, _cf_history, _stage_template

    stage = config.method.stages()[-1]
    torch.manual_seed(config.train.seed)  # the initial values training starts from
    method, backbone = _build(config, stage, weights, device)
    samples = local_samples(
        config, "train", _stage_template(config, stage, last=True), _cf_history(config), backbone.tokenizer
    )
    logits = score_arrays(method, samples, config.train.batch_size, device)
    metrics = ctr_metrics(samples, logits, config.eval, "train")
    return {
        **metrics,
        "rows": float(len(logits)),
        "positives": float(np.sum(samples["label"])),
        "mean_logit": float(np.mean(logits)),
    }


def overfit_config(config: RaylrecConfig, rows: int, steps: int, storage_path: str) -> RaylrecConfig:
    """``config`` narrowed to the check: ``rows`` training rows, about ``steps`` steps of the
    last stage (whole epochs of ``rows // batch_size`` steps), selected on the training loss, in
    this process, nothing exported."""
    train = config.train
    per_epoch = max(1, rows // train.batch_size)
    epochs = max(1, round(steps / per_epoch))
    return config.model_copy(
        update={
            "sample": config.sample.model_copy(update={"max_train": rows, "max_valid": min(rows, 32)}),
            "train": train.model_copy(
                update={
                    "epochs": epochs,
                    "patience": epochs,
                    "metric": "train/loss",
                    "mode": "min",
                    "num_workers": 0,
                    "storage_path": storage_path,
                    "run_name": None,
                }
            ),
            "output": None,
        }
    )


def overfit_check(
    config: RaylrecConfig, rows: int = 48, steps: int = 50, say: Callable[[str], None] = lambda _: None
) -> OverfitResult:
    """Fit ``rows`` training rows of ``config``'s pointwise method for about ``steps`` steps and
    score them before and after (see the module docstring)."""
    from raylrec.methods.train import train_method

    if config.method is None or config.method.role != "pointwise":
        raise ValueError("the overfit check scores pointwise methods (one Yes/No logit per prompt)")
    started = time.perf_counter()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as runs:
        narrowed = overfit_config(config, rows, steps, runs)
        before = _scored(narrowed, {}, device)
        result = train_method(narrowed, say, use_ray=False)
    weights = {k: v for state in result.states.values() for k, v in state.best_model.items()}
    after = _scored(narrowed, weights, device)
    last = result.states[next(reversed(result.states))]
    return OverfitResult(
        method=config.method.name,
        score=config.method.score or config.method.default_score,
        lr=narrowed.train.lr,
        rows=int(before["rows"]),
        positives=int(before["positives"]),
        steps=int(last.step),
        auc_before=before["train/auc"],
        auc_after=after["train/auc"],
        logloss_before=before["train/logloss"],
        logloss_after=after["train/logloss"],
        mean_logit_before=before["mean_logit"],
        seconds=time.perf_counter() - started,
    )
