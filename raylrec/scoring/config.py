"""The ``score`` section: batch scoring's configuration (torch-free, composed by ``raylrec.config``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from raylrec.config_types import (
    Bool,
    Float,
    Int,
    OptionalFloat,
    OptionalInt,
    OptionalOutputPath,
    StrictConfig,
    custom_resources,
)

__all__ = ["ScoreConfig"]


class ScoreConfig(StrictConfig):
    """Batch scoring: CF retrieval of ``candidates`` items per user, an optional LLM rerank,
    the top ``k`` written to ``output`` under a date partition."""

    model_bundle: str | None = Field(
        default=None,
        description="LLM bundle: a pointwise reranker, or a full-catalog method (CLLM4Rec) that ranks "
        "alone; None: CF only",
    )
    retriever_bundle: str | None = Field(
        default=None,
        description="a full-catalog model bundle (CLLM4Rec) that retrieves the candidates in place of "
        "the CF bundle, for model_bundle to rerank",
    )
    cf_bundle: str | None = Field(
        default=None, description="retrieval CF bundle (default: the model bundle's own CF copy)"
    )
    dataset: str | None = Field(
        default=None, description="prepared interactions for histories (default: the top-level dataset)"
    )
    users: str | None = Field(
        default=None, description="a Parquet/CSV/JSONL table with user_id to score (default: every user)"
    )
    splits: list[str] | None = Field(
        default=None, description="splits that count as known interactions (default: all)"
    )
    output: OptionalOutputPath = Field(default=None, description="recommendations root, local or s3://")
    model_name: str | None = Field(default=None, description="the 'model' column (default: bundle dir name)")
    candidates: Int = Field(default=50, ge=1, description="retrieved per user, then reranked")
    k: Int = Field(default=10, ge=1, description="recommendations written per user")
    exclude_seen: Bool = Field(default=True, description="never recommend an item the user interacted with")
    index: Literal["exact", "faiss"] = "exact"
    item_chunk: Int = Field(default=65_536, ge=1, description="items per exact-search matmul")
    users_per_batch: Int = Field(default=64, ge=1, description="users per actor call")
    rerank_rows: Int = Field(default=256, ge=1, description="candidates whose users share one prefix pass")
    rerank_pack_tokens: Int = Field(
        default=256, ge=16, description="candidate suffix tokens packed into one row against a prefix"
    )
    run_lease_s: Float = Field(
        default=600,
        gt=0,
        description="seconds a scoring run may go without a heartbeat before other runs of its date may "
        "delete its files",
    )
    actors: OptionalInt = Field(default=None, ge=1, description="scoring actors (default: from resources)")
    gpus_per_actor: OptionalFloat = Field(default=None, ge=0, description="default: 1 when GPUs exist")
    cpus_per_actor: Float = Field(default=1, gt=0)
    resources_per_actor: dict[str, Float] = Field(
        default_factory=dict,
        description="custom Ray resources each actor also takes, e.g. {score: 1} for the scoring nodes",
    )
    _check_resources = field_validator("resources_per_actor")(custom_resources)

    @model_validator(mode="after")
    def _k_within_candidates(self) -> ScoreConfig:
        if self.k > self.candidates:
            raise ValueError(f"k ({self.k}) must not exceed candidates ({self.candidates})")
        return self
