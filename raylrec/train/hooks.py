"""What a Ray Tune trial hands the training run it drives. Below ``ray_runner`` and
``reporting``, which both use it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrialHooks"]


@dataclass(frozen=True)
class TrialHooks:
    """A Ray Train run inside a Ray Tune trial: every evaluated epoch's metrics go on to Tune (its
    scheduler acts on ``metric``), and wandb groups the runs by sweep. ``epoch_offset`` counts
    the epochs of earlier stages, so ``total_epoch`` keeps growing across a method's stages."""

    group: str
    metric: str
    epoch_offset: int = 0
