"""LLM reranking of each user's candidates, with the shared prompt prefix computed once.

Every candidate of a user has the same prompt up to the target title (instructions, history,
the user's ID slot): the prefix runs once per user and its KV cache is repeated over that
user's candidates, which then run only their suffix (title, item slot, question tail). The
logits equal the full-prompt ones up to float rounding: ``score_full`` is that plain
computation, kept as the reference the tests and ``bench/score.py`` compare against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from raylrec.llm.prompts import PromptBuilder, SharedPrompts
from raylrec.methods.base import Batch, RecMethod

__all__ = ["RerankRequest", "Reranker"]


@dataclass
class RerankRequest:
    """One user's candidates, in the reranker's id space."""

    uid: int  # 0 when the user is unknown to the reranker's CF bundle
    history: Sequence[int]  # positive items, oldest first
    candidates: Sequence[int]


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), pad, np.int64)
    for i, row in enumerate(rows):
        out[i, out.shape[1] - len(row) :] = row
    return out


def _padded_history(history: Sequence[int], length: int) -> np.ndarray:
    out = np.zeros(length, np.int64)
    recent = np.asarray([i for i in history if i][-length:], np.int64) if length else np.zeros(0, np.int64)
    out[length - len(recent) :] = recent
    return out


class Reranker:
    """Scores candidates with a trained method (``load_model_bundle(...).method``).

    ``max_rows`` bounds the candidate rows in one forward pass (memory: the prefix cache is
    repeated for each row); a user with more candidates is split over several passes.
    """

    def __init__(self, method: RecMethod, prompts: PromptBuilder, cf_history: int = 0, max_rows: int = 256):
        self.method = method.eval()
        self.prompts = prompts
        self.cf_history = cf_history
        self.max_rows = max_rows
        self.device = next(method.parameters()).device

    # --- batches ------------------------------------------------------------------------------

    def _batch(
        self, ids: Sequence[Sequence[int]], slots: Sequence[Sequence[int]], uid, iid, histories
    ) -> Batch:
        pad = self.prompts.pad_id
        input_ids = _left_pad(ids, pad)
        mask = _left_pad([[1] * len(r) for r in ids], 0)
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "slots": _left_pad(slots, 0),
            "uid": np.asarray(uid, np.int64),
            "iid": np.asarray(iid, np.int64),
        }
        if self.cf_history:
            batch["history"] = np.stack([_padded_history(h, self.cf_history) for h in histories])
        return {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}

    def _passes(self, requests: Sequence[RerankRequest]) -> Iterator[list[tuple[int, slice]]]:
        """Groups of (request index, candidate slice) with at most ``max_rows`` candidates."""
        group: list[tuple[int, slice]] = []
        rows = 0
        for index, request in enumerate(requests):
            for start in range(0, len(request.candidates), self.max_rows):
                part = slice(start, min(start + self.max_rows, len(request.candidates)))
                size = part.stop - part.start
                if group and rows + size > self.max_rows:
                    yield group
                    group, rows = [], 0
                group.append((index, part))
                rows += size
        if group:
            yield group

    # --- scoring ------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, requests: Sequence[RerankRequest]) -> list[np.ndarray]:
        """Logits per request's candidates, prefix computed once per (user, pass)."""
        out = [np.zeros(len(r.candidates), np.float32) for r in requests]
        for group in self._passes(requests):
            users = [requests[i] for i, _ in group]
            encoded: list[SharedPrompts] = [
                self.prompts.encode_shared(u.history, list(u.candidates[part]))
                for u, (_, part) in zip(users, group, strict=True)
            ]
            prefix = self._batch(
                [e.prefix for e in encoded],
                [e.prefix_slots for e in encoded],
                [u.uid for u in users],
                [0] * len(users),
                [u.history for u in users],
            )
            cache = DynamicCache()
            self.method.decode(prefix, past_key_values=cache)

            counts = torch.tensor([len(e.suffixes) for e in encoded], device=self.device)
            owner = torch.repeat_interleave(torch.arange(len(users), device=self.device), counts)
            cache.batch_select_indices(owner)
            suffix = self._batch(
                [s for e in encoded for s in e.suffixes],
                [s for e in encoded for s in e.suffix_slots],
                [u.uid for u, e in zip(users, encoded, strict=True) for _ in e.suffixes],
                [c for u, (_, part) in zip(users, group, strict=True) for c in u.candidates[part]],
                [u.history for u, e in zip(users, encoded, strict=True) for _ in e.suffixes],
            )
            prefix_mask = prefix["attention_mask"][owner]
            positions = prefix_mask.sum(-1, keepdim=True) + suffix["attention_mask"].cumsum(-1) - 1
            hidden = self.method.decode(
                suffix,
                attention_mask=torch.cat([prefix_mask, suffix["attention_mask"]], dim=1),
                position_ids=positions.clamp(min=0),
                past_key_values=cache,
            ).last_hidden_state[:, -1]
            logits = self.method.answer_logit(hidden).cpu().numpy()
            offset = 0
            for (index, part), e in zip(group, encoded, strict=True):
                out[index][part] = logits[offset : offset + len(e.suffixes)]
                offset += len(e.suffixes)
        return out

    @torch.no_grad()
    def score_full(self, requests: Sequence[RerankRequest]) -> list[np.ndarray]:
        """The reference: every candidate's whole prompt (the same tokens) run on its own row."""
        out = [np.zeros(len(r.candidates), np.float32) for r in requests]
        for group in self._passes(requests):
            ids, slots, uid, iid, histories = [], [], [], [], []
            for index, part in group:
                request = requests[index]
                e = self.prompts.encode_shared(request.history, list(request.candidates[part]))
                ids += [e.prefix + s for s in e.suffixes]
                slots += [e.prefix_slots + s for s in e.suffix_slots]
                uid += [request.uid] * len(e.suffixes)
                iid += list(request.candidates[part])
                histories += [request.history] * len(e.suffixes)
            logits = self.method(self._batch(ids, slots, uid, iid, histories)).cpu().numpy()
            offset = 0
            for index, part in group:
                size = part.stop - part.start
                out[index][part] = logits[offset : offset + size]
                offset += size
        return out
