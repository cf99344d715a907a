"""What every CF encoder's config has, and the registry of CF encoders.

Each encoder lives in its own folder under ``raylrec/cf/encoders/`` (its config class,
registered with ``@register_encoder``, in the torch-free ``__init__.py``; its ``nn.Module`` in
``model.py``). The config class declares what the rest of raylrec needs to know about the
encoder: ``history_len`` (how much of a user's history it reads: 0 for ID-based ones), the
metrics its objective reports, and ``implementation``, the encoder class built from it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from raylrec.config_types import Bool, Float, Int, StrictConfig
from raylrec.metric_names import ctr_metric_names, ranking_metric_names
from raylrec.registry import Registry, import_object

__all__ = ["CFConfig", "ENCODERS", "WarmStartConfig", "register_encoder", "encoder_config"]

ENCODERS: Registry = Registry("CF encoder", "model", "raylrec.cf.encoders", "raylrec.cf_encoders")
register_encoder = ENCODERS.register


class CFConfig(StrictConfig):
    """A collaborative-filtering encoder and its objective (the fields every encoder shares)."""

    model: str
    dim: Int = Field(default=64, ge=1)
    loss: Literal["bce", "bpr"] = Field(
        default="bce", description="bce on CTR labels, or bpr with one sampled negative per positive"
    )
    implicit: Bool = Field(
        default=False, description="bpr: every training row is a positive, not only label 1"
    )
    reg_weight: Float = Field(default=0.0, ge=0, description="L2 on the embeddings a step touches")
    negatives: Literal["unseen", "uniform"] = Field(
        default="unseen",
        description=(
            "bpr: draw negatives among the items the user did not interact with in training "
            "(exactly, without redrawing), or among all items"
        ),
    )

    implementation: ClassVar[str]  # "package.module:Class", a CFEncoder subclass
    paper: ClassVar[str] = ""
    # The encoder propagates its input embeddings over the interaction graph (its model has
    # ``propagate``): what a method that masks nodes before propagation needs (RLMRec-Gen).
    propagates: ClassVar[bool] = False

    @property
    def history_len(self) -> int:
        """Items of each user's history the encoder reads (0: it knows users by id)."""
        return 0

    def reported_metrics(self, ks: list[int]) -> frozenset[str]:
        """What evaluation reports for this objective: CTR metrics for bce, top-K at every
        cut-off for bpr."""
        return ranking_metric_names(ks) if self.loss == "bpr" else ctr_metric_names()

    # The encoder types are named in docstrings, not annotations: this module sits below them
    # (configs load without torch) and imports nothing of theirs, not even for type checkers.
    def encoder_class(self) -> type:
        """The ``raylrec.cf.models.CFEncoder`` subclass ``implementation`` names."""
        return import_object(self.implementation)

    def build(self, train: Any) -> Any:
        """A fresh ``CFEncoder`` for the users and items of ``train`` (a ``cf.data.Split``)."""
        return self.encoder_class().from_config(self, train)


class WarmStartConfig(StrictConfig):
    """``train-cf`` from an earlier CF bundle of the same growing dataset (``raylrec.cf.warm_start``):
    its tables extended for new users and items, trained on the rows it has not seen plus a
    replay sample of the older ones."""

    bundle: str | None = Field(
        default=None,
        description=(
            "a CF bundle to start from (`train-cf --init-from`), trained on an earlier version of this "
            "dataset (ids kept by `data prepare --append`); unset: a fresh model"
        ),
    )
    replay: Float = Field(
        default=0.1,
        ge=0,
        le=1,
        description=(
            "each training row from before the bundle's training cutoff is trained on again with this "
            "probability (a seeded hash of the row); the rows after it always are"
        ),
    )


def encoder_config(raw: dict[str, Any]) -> CFConfig:
    """A recorded ``cf`` section (a CF bundle's config.json) -> its encoder's config."""
    return ENCODERS.validate_recorded({"model": "mf", **raw})
