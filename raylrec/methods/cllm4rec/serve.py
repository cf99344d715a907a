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
from raylrec.methods.cllm4rec.corpora import Corpora, Pieces, pad_rows, serving_row

__all__ = ["recommend", "recommend_known"]


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
    """Top-``k`` (scores, item ids) ``[len(users), k]`` for ``users`` of ``corpora`` (their
    training items are what the prompt shows and what is masked). ``method`` is a ``CLLM4Rec``
    (or the module a training engine wraps it in)."""
    known = [corpora.items_of(int(u)) for u in users]
    return recommend_known(
        method,
        corpora.pieces,
        users,
        known,
        k,
        max_items=corpora.max_items,
        seed=seed,
        users_per_batch=users_per_batch,
        item_chunk=item_chunk,
        exclude_seen=exclude_seen,
    )


@torch.no_grad()
def recommend_known(
    method,
    pieces: Pieces,
    users: Sequence[int],
    known: Sequence[np.ndarray],
    k: int,
    *,
    max_items: int,
    seed: int = 0,
    users_per_batch: int = 64,
    item_chunk: int = 65_536,
    exclude_seen: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, item ids) ``[len(users), k]``: one forward pass of each user's serving
    prompt over ``known[i]`` (their known items, dense ids; ``corpora.serving_row``), then the
    chunked item head, the known items and the padding item masked. Batch scoring calls it with
    the users' known items from the scored dataset's profiles."""
    inner = method.module if hasattr(method, "module") else method
    device = next(inner.parameters()).device
    users = np.asarray(users, np.int64)
    out_scores = np.full((len(users), k), -np.inf, np.float32)
    out_ids = np.zeros((len(users), k), np.int64)
    for start in range(0, len(users), users_per_batch):
        chunk = users[start : start + users_per_batch]
        items = known[start : start + len(chunk)]
        rows = [serving_row(pieces, int(u), i, max_items, seed) for u, i in zip(chunk, items, strict=True)]
        batch = {key: torch.from_numpy(value).to(device) for key, value in pad_rows(rows).items()}
        hidden = inner.user_states(batch)
        exclude = [np.asarray(i, np.int64) for i in items] if exclude_seen else None
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
