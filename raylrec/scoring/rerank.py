"""LLM reranking of each user's candidates, with the shared prompt prefix computed once.

Every candidate of a user has the same prompt up to the target title (instructions, history,
the user's ID slot). The prefix runs once per user; its KV cache then serves all the user's
candidates, whose suffixes (title, item slot, question tail) are packed side by side into one
row: a 4-D attention mask lets each suffix see the prefix and its own earlier tokens only, and
positions restart after the prefix for each, so every suffix computes exactly what it would
after its own copy of the prefix. Packing (rather than one row per candidate with a copy of
the prefix cache each) keeps the cache one copy per row of up to ``pack_tokens`` tokens, and
the matmuls large. The logits equal the full-prompt ones up to float rounding:
``score_full`` is that plain computation, kept as the reference the tests and
``bench/score.py`` compare against.

The reranker talks to the method through its contract only (``raylrec.methods.base``): batches
with the documented fields (a packed row sets ``token_items``, the candidate each token belongs
to), ``decode`` with a ``DecodeContext`` (the prefix cache, the 4-D mask, the positions), and
``answer_logit`` at each suffix's last token. A method whose config says ``shares_prefix =
False`` (the prefix's keys and values depend on the candidate) is scored with full prompts
instead: every candidate's own prompt through ``forward``, rows sorted by length so that a
forward pads little, ``max_rows`` to a forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from raylrec.llm.prompts import PromptBuilder, SharedPrompts
from raylrec.methods.base import Batch, DecodeContext, RecMethod

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

    ``max_rows`` bounds the candidates whose users share one prefix pass (a user with more is
    split over several); ``pack_tokens`` bounds a packed row of suffixes (attention memory
    grows with its square); ``rows_per_forward`` bounds the packed rows in one forward.
    """

    def __init__(
        self,
        method: RecMethod,
        prompts: PromptBuilder,
        cf_history: int = 0,
        max_rows: int = 256,
        pack_tokens: int = 256,
        rows_per_forward: int = 8,
    ):
        self.method = method.eval()
        self.prompts = prompts
        self.cf_history = cf_history
        self.max_rows = max_rows
        self.pack_tokens = pack_tokens
        self.rows_per_forward = rows_per_forward
        self.device = next(method.parameters()).device

    # --- batches ------------------------------------------------------------------------------

    def _batch(
        self, ids: Sequence[Sequence[int]], slots: Sequence[Sequence[int]], uid, iid, histories
    ) -> Batch:
        """Left-padded rows, each one prompt (or prefix, with ``iid`` 0) of its own."""
        pad = self.prompts.pad_id
        input_ids = _left_pad(ids, pad)
        mask = _left_pad([[1] * len(r) for r in ids], 0)
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "slots": _left_pad(slots, 0),
            "uid": np.asarray(uid, np.int64),
            "iid": np.asarray(iid, np.int64),
            "token_items": _left_pad([[item] * len(r) for item, r in zip(iid, ids, strict=True)], 0),
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

    @property
    def shares_prefix(self) -> bool:
        """Whether the method's candidates can share a cached prefix (its config says)."""
        return bool(getattr(self.method.config, "shares_prefix", True))

    @torch.no_grad()
    def score(self, requests: Sequence[RerankRequest]) -> list[np.ndarray]:
        """Logits per request's candidates: prefixes once per pass, suffixes packed (full
        prompts sorted by length for a method that cannot share a prefix)."""
        if not self.shares_prefix:
            return self._score_full_prompts(requests)
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
            self.method.decode(prefix, DecodeContext(cache))
            prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
            packed = self._pack(encoded)
            for start in range(0, len(packed), self.rows_per_forward):
                rows = packed[start : start + self.rows_per_forward]
                logits = self._score_packed(rows, encoded, users, group, prefix, prefix_kv)
                for (g, segments), row_logits in zip(rows, logits, strict=True):
                    index, part = group[g]
                    out[index][[part.start + j for j in segments]] = row_logits
        return out

    def _pack(self, encoded: list[SharedPrompts]) -> list[tuple[int, list[int]]]:
        """Rows of (user in group, candidate indices): each user's suffixes split into as few
        rows of at most ``pack_tokens`` as fit, of about equal length, rows sorted by length
        (a forward pads its rows to the longest)."""
        rows: list[tuple[int, list[int]]] = []
        for g, e in enumerate(encoded):
            sizes = [len(s) for s in e.suffixes]
            target = sum(sizes) / max(1, -(-sum(sizes) // self.pack_tokens))
            current: list[int] = []
            tokens = 0
            for j, size in enumerate(sizes):
                if current and (tokens + size > self.pack_tokens or tokens >= target):
                    rows.append((g, current))
                    current, tokens = [], 0
                current.append(j)
                tokens += size
            rows.append((g, current))
        return sorted(rows, key=lambda row: sum(len(encoded[row[0]].suffixes[j]) for j in row[1]))

    def _score_packed(self, rows, encoded, users, group, prefix: Batch, prefix_kv) -> list[np.ndarray]:
        """One forward over packed rows, each against a copy of its user's prefix cache."""
        owners = [g for g, _ in rows]
        owner = torch.tensor(owners, device=self.device)
        ids, slots, items, segment, offset, ends = [], [], [], [], [], []
        for g, candidates in rows:
            row_ids, row_slots, row_items, row_segment, row_offset, row_ends = [], [], [], [], [], []
            for k, j in enumerate(candidates):
                suffix = encoded[g].suffixes[j]
                row_ids += suffix
                row_slots += encoded[g].suffix_slots[j]
                row_items += [users[g].candidates[group[g][1]][j]] * len(suffix)
                row_segment += [k] * len(suffix)
                row_offset += range(len(suffix))
                row_ends.append(len(row_ids) - 1)
            for column, value in (
                (ids, row_ids),
                (slots, row_slots),
                (items, row_items),
                (segment, row_segment),
                (offset, row_offset),
                (ends, row_ends),
            ):
                column.append(value)
        width = max(len(r) for r in ids)

        def right_pad(values: list[list[int]], fill: int) -> torch.Tensor:
            out = np.full((len(values), width), fill, np.int64)
            for r, row in enumerate(values):
                out[r, : len(row)] = row
            return torch.from_numpy(out).to(self.device)

        seg = right_pad(segment, -1)
        real = seg >= 0
        prefix_mask = prefix["attention_mask"][owner].bool()
        # A query sees the real prefix tokens and the earlier tokens of its own suffix; a pad
        # query sees itself only (a row with nothing to attend to would turn into NaN).
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        own = (seg[:, :, None] == seg[:, None, :]) & causal & real[:, None, :]
        own |= torch.eye(width, dtype=torch.bool, device=self.device) & ~real[:, :, None]
        sees_prefix = prefix_mask[:, None, :] & real[:, :, None]
        keep = torch.cat([sees_prefix, own], dim=2)[:, None]
        dtype = next(self.method.lm.parameters()).dtype
        mask = torch.zeros(keep.shape, dtype=dtype, device=self.device).masked_fill(
            ~keep, torch.finfo(dtype).min
        )
        positions = prefix_mask.sum(-1, keepdim=True) + right_pad(offset, 0)

        batch = {
            "input_ids": right_pad(ids, self.prompts.pad_id),
            "attention_mask": real.long(),
            "slots": right_pad(slots, 0),
            "token_items": right_pad(items, 0),
            "uid": torch.tensor([users[g].uid for g in owners], device=self.device),
            "iid": torch.zeros(len(rows), dtype=torch.long, device=self.device),
        }
        if self.cf_history:
            history = np.stack([_padded_history(users[g].history, self.cf_history) for g in owners])
            batch["history"] = torch.from_numpy(history).to(self.device)
        cache = DynamicCache([(keys[owner], values[owner]) for keys, values in prefix_kv])
        hidden = self.method.decode(batch, DecodeContext(cache, mask, positions))
        states = hidden.last_hidden_state
        out = []
        for r, row_ends in enumerate(ends):
            out.append(self.method.answer_logit(states[r, row_ends]).cpu().numpy())
        return out

    def _full_rows(self, requests: Sequence[RerankRequest]) -> list[tuple[int, int, list[int], list[int]]]:
        """(request, candidate, ids, slots) of every candidate's full prompt: the prompts
        ``score_full`` runs (the history fitted per pass as there)."""
        rows = []
        for group in self._passes(requests):
            for index, part in group:
                request = requests[index]
                e = self.prompts.encode_shared(request.history, list(request.candidates[part]))
                for j, (suffix, slots) in enumerate(zip(e.suffixes, e.suffix_slots, strict=True)):
                    rows.append((index, part.start + j, e.prefix + suffix, e.prefix_slots + slots))
        return rows

    def _score_full_prompts(self, requests: Sequence[RerankRequest]) -> list[np.ndarray]:
        """Every candidate's full prompt through ``forward``, the rows sorted by length and
        ``max_rows`` to a forward (the fallback for a method that cannot share a prefix)."""
        out = [np.zeros(len(r.candidates), np.float32) for r in requests]
        rows = sorted(self._full_rows(requests), key=lambda row: len(row[2]))
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start : start + self.max_rows]
            batch = self._batch(
                [ids for _, _, ids, _ in chunk],
                [slots for _, _, _, slots in chunk],
                [requests[i].uid for i, _, _, _ in chunk],
                [requests[i].candidates[j] for i, j, _, _ in chunk],
                [requests[i].history for i, _, _, _ in chunk],
            )
            logits = self.method(batch).cpu().numpy()
            for (i, j, _, _), logit in zip(chunk, logits, strict=True):
                out[i][j] = logit
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
