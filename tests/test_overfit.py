"""The overfit check (issue 39): every registered pointwise method fits ~48 training rows of the
checked-in dataset on the tiny random Llama (train AUC >= 0.9 on those same rows after 150
optimiser steps; from ~0.4 at the start). It is the first thing a method must pass: a wrong
label, answer token, score position or frozen parameter leaves the AUC near its start. The
tiny model is slower to fit than a pretrained one (measured on this machine, lr 2e-2: 0.93-0.95
for CoRA and CoLLM, whose trainable parts read the tiny CF bundle, 0.99-1.0 for TALLRec and
RecLoRA); SmolLM2-135M's table, 50 steps: ``bench/overfit.py`` (docs/methods/tallrec.md)."""

from __future__ import annotations

import pytest
from helpers import checked_in_dataset

from raylrec.cf.train import train_cf
from raylrec.config import build_config
from raylrec.methods import METHODS
from raylrec.methods.overfit import overfit_check

POINTWISE = METHODS.names_where(lambda c: c.role == "pointwise")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("overfit")
    dataset = checked_in_dataset("plugins-synthetic", root)
    cf = build_config(
        {
            "dataset": dataset,
            "cf": {"dim": 8},
            "train": {
                "epochs": 1,
                "lr": 1e-2,
                "batch_size": 256,
                "num_workers": 0,
                "storage_path": str(root),
            },
            "output": str(root / "cf"),
        }
    )
    return dataset, train_cf(cf, lambda _: None, use_ray=False).bundle


def _config(name: str, dataset: str, cf: str, **method):
    method = {"name": name, **method}
    if METHODS.get(name).needs_cf:
        method["cf_bundle"] = cf
    return build_config(
        {
            "dataset": dataset,
            "backbone": {"name": "tiny-random-llama"},
            "method": method,
            "prompt": {"max_tokens": 96, "history_items": 3},
            "train": {
                "batch_size": 8,
                "lr": 2e-2,
                "optimizer": "adamw",
                "warmup_ratio": 0.1,
                "metric": "train/loss",  # what every method reports (the check selects on it too)
                "mode": "min",
            },
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", POINTWISE)
def test_every_pointwise_method_fits_its_training_rows(name, inputs):
    """7-20 s per method alone: 150 steps of the tiny Llama in this process (marked slow to keep
    the inner loop under its 3 minutes)."""
    dataset, cf = inputs
    result = overfit_check(_config(name, dataset, cf, score="yes_no"), rows=48, steps=150)
    assert 40 <= result.rows <= 64 and 0 < result.positives < result.rows
    assert result.steps <= 152
    assert result.auc_after >= 0.9, result
    assert result.auc_after > result.auc_before + 0.3, result
    assert result.logloss_after < result.logloss_before, result


def test_the_check_refuses_a_method_that_is_not_pointwise(inputs):
    full_catalog = METHODS.names_where(lambda c: c.role != "pointwise")[0]
    with pytest.raises(ValueError, match="pointwise"):
        overfit_check(_config(full_catalog, *inputs))
