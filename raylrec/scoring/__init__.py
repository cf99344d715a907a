"""Offline batch scoring: CF retrieval, LLM reranking with a shared prompt prefix, and date
partitions of top-K recommendations published with a manifest."""

from raylrec.scoring.publish import published_dates, read_manifest, read_recommendations
from raylrec.scoring.rerank import Reranker, RerankRequest
from raylrec.scoring.retrieval import FaissIndex, exact_top_n

__all__ = [
    "exact_top_n",
    "FaissIndex",
    "Reranker",
    "RerankRequest",
    "read_recommendations",
    "read_manifest",
    "published_dates",
]
