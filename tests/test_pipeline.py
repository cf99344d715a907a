"""The one training pipeline's contracts that need no training: one fingerprint (the trajectory
fields declared once; epochs and patience may grow), one result type."""

from __future__ import annotations

from raylrec.cf.train import CFDefinition
from raylrec.config import build_config
from raylrec.methods.train import MethodDefinition
from raylrec.train.loop import TrainState
from raylrec.train.pipeline import TRAJECTORY_FIELDS, TrainResult, fingerprint


def _fingerprints(definition_class, raw, **train):
    config = build_config({**raw, "train": {**raw.get("train", {}), **train}})
    definition = definition_class(config)
    return [fingerprint(definition, stage) for stage in definition.stages()]


def test_the_fingerprint_follows_the_trajectory_fields_only():
    assert "epochs" not in TRAJECTORY_FIELDS and "patience" not in TRAJECTORY_FIELDS
    for definition_class, raw in [
        (CFDefinition, {"dataset": "/d", "cf": {"model": "mf"}}),
        (MethodDefinition, {"dataset": "/d", "method": {"name": "tallrec"}}),
    ]:
        base = _fingerprints(definition_class, raw)
        # a run may be extended or moved under its name
        assert _fingerprints(definition_class, raw, epochs=99, patience=9, storage_path="/elsewhere") == base
        assert _fingerprints(definition_class, raw, lr=0.5) != base  # a different trajectory
    other_model = _fingerprints(CFDefinition, {"dataset": "/d", "cf": {"model": "mf", "dim": 8}})
    assert other_model != _fingerprints(CFDefinition, {"dataset": "/d", "cf": {"model": "mf"}})


def test_a_result_s_state_is_its_last_stage_s():
    first, last = TrainState(epoch=1), TrainState(epoch=2)
    result = TrainResult("run", {"a": first, "b": last}, {}, None, 0.0)
    assert result.state is last and list(result.states) == ["a", "b"]
