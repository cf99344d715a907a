"""CLLM4Rec at catalogue scale (arXiv 2311.01343, section 3.5): each user's top-K over every item
in one forward pass of the recommendation prompt, no generation.

The prompt's last hidden state goes through the tied item head one item chunk at a time, keeping
a running top-K, so memory is ``users x item_chunk`` for any catalogue size: the same
``raylrec.eval.topk.running_top_k`` as CF retrieval's exact search. The user's training items,
and the padding item 0, are masked before each chunk's top-K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raylrec.eval.topk import running_top_k
from raylrec.methods.cllm4rec.corpora import Corpora

__all__ = ["recommend"]


@torch.no_grad()
def recommend(
    method,
    corpora: Corpora,
    users: Sequence[int],
    k: int,
    *,
    seed: int = 0,
    users_per_batch: int = 64,
    item_chunk: int = 65_536,
    exclude_seen: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, item ids) ``[len(users), k]`` for ``users``: one forward pass of each
    user's prompt (``Corpora.serving_row``), then the chunked item head. ``method`` is a
    ``CLLM4Rec`` (or the module a training engine wraps it in)."""
    inner = method.module if hasattr(method, "module") else method
    device = next(inner.parameters()).device
    users = np.asarray(users, np.int64)
    out_scores = np.full((len(users), k), -np.inf, np.float32)
    out_ids = np.zeros((len(users), k), np.int64)
    for start in range(0, len(users), users_per_batch):
        chunk = users[start : start + users_per_batch]
        batch = {
            key: torch.from_numpy(value).to(device)
            for key, value in corpora.serving_batch(chunk.tolist(), seed).items()
        }
        hidden = inner.user_states(batch)
        exclude = [corpora.items_of(int(u)) for u in chunk] if exclude_seen else None
        scores, ids = running_top_k(
            lambda lo, hi, states=hidden: inner.item_logits(states, lo, hi),
            len(chunk),
            inner.num_items,
            k,
            exclude,
            item_chunk,
        )
        out_scores[start : start + len(chunk)] = scores.cpu().numpy()
        out_ids[start : start + len(chunk)] = ids.cpu().numpy()
    return out_scores, out_ids
