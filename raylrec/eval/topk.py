"""The chunked running top-K over a catalogue, shared by CF retrieval
(``raylrec.scoring.retrieval.exact_top_n``) and full-catalogue LLM recommenders (CLLM4Rec's
``recommend``): memory bounded by one chunk of items, whatever the catalogue's size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["running_top_k"]


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
        scores = scores_of(start, stop).float()  # the callback's own tensor: masked in place
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
