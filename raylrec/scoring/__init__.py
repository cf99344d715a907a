"""Offline batch scoring: CF retrieval, LLM reranking with a shared prompt prefix, and date
partitions of top-K recommendations published with a manifest.

The names below load on first use: Ray Data workers import ``raylrec.scoring.profiles`` to run
its functions, and importing the reranker (torch, transformers) with it cost each new worker
process about 4 s.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "exact_top_n": "retrieval",
    "FaissIndex": "retrieval",
    "Reranker": "rerank",
    "RerankRequest": "rerank",
    "read_recommendations": "publish",
    "read_manifest": "publish",
    "published_dates": "publish",
    "PublishConflict": "publish",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
