"""ASHA whose rung records survive a resumed sweep.

Tune restores a sweep's trials but not its scheduler: after ``Tuner.restore`` ASHA starts with
empty rungs, so a trial still to run meets no cutoff and is never stopped, however bad it is. This
scheduler writes its records (per rung: trial id -> reward) to the experiment's storage each time
one is added and reads them back on first use, so a resumed sweep stops the trials an
uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler

from raylrec import storage

__all__ = ["ResumableASHA", "SCHEDULER_STATE"]

SCHEDULER_STATE = "asha_rungs.json"


class ResumableASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` (ASHA) persisting its rungs to ``state_uri``.

    It reads Ray's private bracket bookkeeping (``_brackets``, each ``_rungs`` a list of
    ``(milestone, {trial_id: reward})``), which the tests check against the pinned Ray."""

    def __init__(self, state_uri: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_uri = state_uri
        self._loaded = False

    def _rung_records(self) -> list[list[dict[str, float]]]:
        return [[dict(recorded) for _, recorded in bracket._rungs] for bracket in self._brackets]

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        fs, path = storage.filesystem(self._state_uri)
        if not fs.exists(path):
            return
        saved = storage.read_json(self._state_uri)["brackets"]
        for bracket, rungs in zip(self._brackets, saved, strict=True):
            for (_, recorded), saved_rung in zip(bracket._rungs, rungs, strict=True):
                recorded.update(saved_rung)

    @contextlib.contextmanager
    def _saving_new_records(self) -> Iterator[None]:
        """Load the saved rungs once, then save them whenever the wrapped call adds a record."""
        self._load()
        before = self._rung_records()
        yield
        after = self._rung_records()
        if after != before:
            storage.write_json(self._state_uri, {"brackets": after})

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        with self._saving_new_records():
            return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        with self._saving_new_records():
            super().on_trial_complete(tune_controller, trial, result)
