"""The CoLLM paper's MovieLens-1M split (Zhang et al., arXiv 2310.19488): already split,
labelled and with histories, kept as it is (``raylrec.data.given``)."""

from __future__ import annotations

from typing import Literal

from raylrec.data.config import SourceConfig, register_source

__all__ = ["DEFAULT_COLLM_PATH", "CoLLMSource"]

DEFAULT_COLLM_PATH = "../shared/datasets/collm-ml1m"


@register_source
class CoLLMSource(SourceConfig):
    """The CoLLM paper's MovieLens-1M split: already split, labelled and with histories."""

    type: Literal["collm_ml1m"] = "collm_ml1m"
    path: str = DEFAULT_COLLM_PATH

    carries_splits = True
    prepare = "raylrec.data.given:prepare_given"
