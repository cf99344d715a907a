"""CLLM4Rec at catalogue scale (arXiv 2311.01343, section 3.5): each user's top-K over every item
in one forward pass of the recommendation prompt, no generation.

The prompt's last hidden state goes through the tied item head one item chunk at a time, keeping
a running top-K, so memory is ``users x item_chunk`` for any catalogue size: the approach of
CF retrieval's exact search (``raylrec.scoring.retrieval.exact_top_n``, which sits a layer
above the methods and is not imported here). The user's training items, and the padding item
0, are masked before each chunk's top-K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from raylrec.methods.cllm4rec.corpora import Corpora

__all__ = ["running_top_k", "recommend"]


def _exclusion_pairs(exclude: Sequence[np.ndarray] | None, users: int) -> tuple[np.ndarray, np.ndarray]:
    if exclude is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sizes = np.fromiter((len(e) for e in exclude), np.int64, users)
    rows = np.repeat(np.arange(users), sizes)
    cols = (
        np.concatenate([np.asarray(e, np.int64) for e in exclude]) if sizes.sum() else np.zeros(0, np.int64)
    )
    return rows, cols


@torch.no_grad()
def running_top_k(
    scores_of: Callable[[int, int], torch.Tensor],
    users: int,
    num_items: int,
    k: int,
    exclude: Sequence[np.ndarray] | None = None,
    item_chunk: int = 65_536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores_of(start, stop)`` -> ``[users, stop - start]`` scores of items start..stop-1;
    returns (scores, item ids), both ``[users, k]``, best first. Item 0 and each user's
    ``exclude`` items never appear; where fewer than ``k`` items remain the tail is id 0, -inf."""
    rows, cols = _exclusion_pairs(exclude, users)
    best_scores: torch.Tensor | None = None
    best_ids: torch.Tensor | None = None
    for start in range(0, num_items, item_chunk):
        stop = min(start + item_chunk, num_items)
        scores = scores_of(start, stop).float().clone()
        device = scores.device
        if best_scores is None:
            best_scores = torch.full((users, k), -torch.inf, device=device)
            best_ids = torch.zeros((users, k), dtype=torch.long, device=device)
        if start == 0:
            scores[:, 0] = -torch.inf
        inside = (cols >= start) & (cols < stop)
        scores[
            torch.from_numpy(rows[inside]).to(device), torch.from_numpy(cols[inside] - start).to(device)
        ] = -torch.inf
        top = scores.topk(min(k, stop - start), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)
        merged_ids = torch.cat([best_ids, top.indices + start], dim=1)
        keep = merged_scores.topk(k, dim=1).indices
        best_scores, best_ids = merged_scores.gather(1, keep), merged_ids.gather(1, keep)
    assert best_scores is not None and best_ids is not None, "an empty catalogue"
    best_ids[torch.isinf(best_scores)] = 0
    return best_scores, best_ids


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
