"""CLLM4Rec (Zhu et al., "Collaborative Large Language Model for Recommender Systems", WWW 2024,
arXiv 2311.01343; code yaochenzhu/LLM4Rec): user and item ID tokens in the LLM's vocabulary,
backed by embedding tables outside the frozen backbone, pretrained as two language models (a
collaborative one over users' item lists, a content one over the data's text) pulled together
by mutual regularisation, then fine-tuned to recommend the whole catalogue in one forward pass.

This module is the torch-free config and registration; the model is ``model.py``, its prompts
``corpora.py``, its training task ``task.py`` and its full-catalogue top-K ``serve.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raylrec.config_types import Bool, Float, Int, OptionalInt
from raylrec.methods.config import MethodConfig, Stage, register_method
from raylrec.metric_names import ranking_metric_names

__all__ = ["CLLM4RecConfig", "SELECTION_METRIC", "PAPER_KS"]

# The paper's model selection: Recall@20 + Recall@40 + NDCG@100 on validation.
PAPER_KS = (20, 40, 100)
SELECTION_METRIC = "valid/recall@20+recall@40+ndcg@100"


@register_method
class CLLM4RecConfig(MethodConfig):
    """CLLM4Rec's hyperparameters: prompt sizes, the masking of the recommendation objective,
    the mutual regularisation and the pretraining schedule (``train.epochs`` is the
    fine-tuning's)."""

    name: Literal["cllm4rec"] = "cllm4rec"
    num_users: OptionalInt = Field(
        default=None, ge=1, description="rows of the user tables (set from the dataset when training)"
    )
    num_items: OptionalInt = Field(
        default=None, ge=2, description="rows of the item tables (set from the dataset when training)"
    )
    max_items: Int = Field(
        default=100, ge=1, description="items of a user's training history in one prompt (a random subset)"
    )
    mask_ratio: Float = Field(
        default=0.2, gt=0, lt=1, description="fine-tuning: fraction of a user's items held out (at least one)"
    )
    mr_weight: Float = Field(
        default=1.0, ge=0, description="lambda of the mutual regularisation (squared distance per ID token)"
    )
    content_epochs: Int = Field(
        default=10, ge=0, description="content-LM warm-up epochs (no regularisation); 0 skips"
    )
    pretrain_epochs: Int = Field(
        default=10, ge=0, description="pretraining epochs, each a collaborative then a content pass; 0 skips"
    )
    finetune_content: Bool = Field(
        default=True, description="fine-tuning epochs also run a content pass regularised to the rec tables"
    )
    content_max_tokens: Int = Field(default=48, ge=1, description="tokens of one user's or item's text")
    item_noun: str = Field(default="movie", description='the content prompt: "item_j is the <noun> <text>"')
    implicit: Bool = Field(
        default=True, description="every training interaction is a positive (False: label-1 rows only)"
    )
    sampled_negatives: OptionalInt = Field(
        default=None,
        ge=1,
        description=(
            "training only: the item softmax over each row's targets plus this many uniform negatives "
            "shared by the batch, importance-corrected (log N/S); None: the full catalogue"
        ),
    )

    implementation = "raylrec.methods.cllm4rec.model:CLLM4Rec"
    definition = "raylrec.methods.cllm4rec.task:CLLM4RecDefinition"
    paper = "CLLM4Rec, arXiv 2311.01343"
    role = "full_catalog"
    score_kinds = ("item_head",)  # the tied item head; no Yes/No answer
    default_score = "item_head"

    def stages(self) -> list[Stage]:
        # The prompts are CLLM4Rec's own (corpora.py), not a registered text template.
        stages = []
        if self.content_epochs:
            stages.append(Stage("content", "", ("content",), epochs=self.content_epochs))
        if self.pretrain_epochs:
            stages.append(Stage("pretrain", "", ("collab", "content"), epochs=self.pretrain_epochs))
        trainable = ("collab", "content") if self.finetune_content else ("collab",)
        return [*stages, Stage("finetune", "", trainable)]

    def reported_metrics(self, ks: list[int]) -> frozenset[str]:
        """Full-ranking metrics at ``ks`` and the paper's cut-offs, and the selection sum."""
        return ranking_metric_names(sorted({*ks, *PAPER_KS})) | {SELECTION_METRIC}
