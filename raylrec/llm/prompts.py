"""Prompt builders: (history titles, target title) -> token ids, within a token budget.

Templates are text with slots (each method declares its own templates, see
``raylrec.methods.config.template_text``): ``{history}`` (the user's recent positive titles, oldest first),
``{target}`` (the candidate's title) and, for CoLLM, ``{user_id}`` / ``{item_id}`` (one
placeholder token each whose input embedding the method replaces by a projected CF
embedding). The template is tokenised once in pieces and every title once, then prompts are
assembled from ids: fast in a Ray Data ``map_batches``, and the target comes last, so every
candidate of a user shares the same prefix (what batch scoring caches).

Over budget, history titles are dropped from the oldest side; rows are left-padded to
``max_tokens`` (the training loop trims columns that are padding in the whole batch).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SLOT_NONE",
    "SLOT_USER",
    "SLOT_ITEM",
    "PromptBuilder",
    "EncodedPrompts",
    "SharedPrompts",
]

SLOT_NONE, SLOT_USER, SLOT_ITEM = 0, 1, 2
_SLOTS = ("history", "target", "user_id", "item_id")
_PIECE = re.compile(r"\{(" + "|".join(_SLOTS) + r")\}")


@dataclass
class SharedPrompts:
    """One user's prompts for many candidates: a prefix (instructions, history) and suffixes."""

    prefix: list[int]
    prefix_slots: list[int]
    suffixes: list[list[int]]
    suffix_slots: list[list[int]]
    history_items: int


@dataclass
class EncodedPrompts:
    input_ids: np.ndarray  # [rows, max_tokens] int64, left-padded
    attention_mask: np.ndarray  # [rows, max_tokens] int8
    slots: np.ndarray  # [rows, max_tokens] int8: SLOT_USER / SLOT_ITEM at the ID placeholders
    history_items: np.ndarray  # [rows] int32: titles that fit in the budget


class PromptBuilder:
    """Turns item ids into prompt token ids with ``tokenizer`` (any HF tokenizer)."""

    def __init__(
        self,
        tokenizer,
        template: str,
        titles: dict[int, str],
        max_tokens: int = 256,
        max_history: int = 10,
    ):
        names = _PIECE.findall(template)
        if "history" not in names or "target" not in names:
            raise ValueError("a prompt template needs {history} and {target}")
        if names[-1] != "target" and names[-1] not in ("user_id", "item_id"):
            raise ValueError("{target} must be the last title in a template (candidates share the prefix)")
        if names.index("history") > names.index("target"):
            raise ValueError("{history} must come before {target} (candidates share the prefix)")
        self.tokenizer = tokenizer
        self.titles = titles
        self.max_tokens = max_tokens
        self.max_history = max_history
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # ID slots hold any real token; its embedding is replaced before the model sees it.
        self.placeholder_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.pad_id
        self.parts: list[str | list[int]] = []
        for i, text in enumerate(_PIECE.split(template)):
            if i % 2:
                self.parts.append(text)
            elif text:
                self.parts.append(self._encode(text))
        self.separator = self._encode(", ")
        self._cache: dict[int, list[int]] = {}

    @property
    def uses_id_slots(self) -> bool:
        return "user_id" in self.parts

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _title(self, iid: int) -> list[int]:
        ids = self._cache.get(iid)
        if ids is None:
            ids = self._cache[iid] = self._encode(f'"{self.titles.get(int(iid), f"item {iid}")}"')
        return ids

    def _fit_history(self, history: Sequence[int], title_tokens: int, target: int) -> tuple[list[int], int]:
        """The newest history titles that fit beside a target title of ``title_tokens`` tokens,
        joined oldest first: (ids, titles kept)."""
        recent = [int(i) for i in history if i][-self.max_history :]
        fixed = sum(len(p) if isinstance(p, list) else 0 for p in self.parts)
        fixed += title_tokens + sum(p in ("user_id", "item_id") for p in self.parts)
        budget = self.max_tokens - fixed
        kept: list[list[int]] = []
        for iid in reversed(recent):  # newest first; drop from the oldest side
            cost = len(self._title(iid)) + (len(self.separator) if kept else 0)
            if cost > budget:
                break
            kept.append(self._title(iid))
            budget -= cost
        if budget < 0:
            raise ValueError(
                f"prompt for item {target} needs {self.max_tokens - budget} tokens without any history; "
                f"raise prompt.max_tokens (now {self.max_tokens})"
            )
        history_ids: list[int] = []
        for i, title in enumerate(reversed(kept)):
            history_ids += (self.separator if i else []) + title
        return history_ids, len(kept)

    def _assemble(
        self, parts: list[str | list[int]], history_ids: list[int], target: int
    ) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        slots: list[int] = []
        for part in parts:
            if part == "history":
                piece, slot = history_ids, [SLOT_NONE] * len(history_ids)
            elif part == "target":
                piece = self._title(target)
                slot = [SLOT_NONE] * len(piece)
            elif part in ("user_id", "item_id"):
                piece, slot = [self.placeholder_id], [SLOT_USER if part == "user_id" else SLOT_ITEM]
            else:
                piece, slot = part, [SLOT_NONE] * len(part)
            ids += piece
            slots += slot
        return ids, slots

    def encode(self, history: Sequence[int], target: int) -> tuple[list[int], list[int], int]:
        """One prompt: (ids, slots, history titles used)."""
        history_ids, kept = self._fit_history(history, len(self._title(target)), target)
        ids, slots = self._assemble(self.parts, history_ids, target)
        return ids, slots, kept

    def encode_shared(self, history: Sequence[int], targets: Sequence[int]) -> SharedPrompts:
        """One user's prompts for many candidates as a shared prefix plus one suffix per
        candidate; prefix + suffix is exactly the full prompt. The history is fitted beside
        the longest candidate title, so every candidate sees the same history."""
        if not len(targets):
            raise ValueError("encode_shared needs at least one candidate")
        longest = max(targets, key=lambda t: len(self._title(t)))
        history_ids, kept = self._fit_history(history, len(self._title(longest)), longest)
        cut = self.parts.index("target")
        prefix, prefix_slots = self._assemble(self.parts[:cut], history_ids, 0)
        suffixes = [self._assemble(self.parts[cut:], history_ids, int(t)) for t in targets]
        return SharedPrompts(prefix, prefix_slots, [s[0] for s in suffixes], [s[1] for s in suffixes], kept)

    def encode_batch(self, histories: Sequence[Sequence[int]], targets: Sequence[int]) -> EncodedPrompts:
        n = len(targets)
        input_ids = np.full((n, self.max_tokens), self.pad_id, np.int64)
        mask = np.zeros((n, self.max_tokens), np.int8)
        slots = np.zeros((n, self.max_tokens), np.int8)
        used = np.zeros(n, np.int32)
        for row, (history, target) in enumerate(zip(histories, targets, strict=True)):
            ids, slot, used[row] = self.encode(history, target)
            input_ids[row, -len(ids) :] = ids  # left padding: the answer position is the last column
            mask[row, -len(ids) :] = 1
            slots[row, -len(ids) :] = slot
        return EncodedPrompts(input_ids, mask, slots, used)
