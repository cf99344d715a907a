"""An LLM method as a training task: seeded batches, the loss, and evaluation spread over ranks.

Evaluation splits the validation rows over the ranks, pads every rank to the same number of
batches (under ZeRO-3 every forward is a collective: a rank with one batch fewer would hang
the others) and gathers the scores, so every rank computes the same metrics. On Ray Train a
rank streams only its own part of the rows (``StreamedRows``) and the gather carries four
numbers per row (user, label, warm flag, score), not the tokenised prompts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from raylrec.config import EvalConfig
from raylrec.eval import CTRAccumulator

__all__ = ["LLMTask", "StreamedRows", "epoch_batches", "to_batch", "score_arrays", "score_streamed"]

Arrays = dict[str, np.ndarray]
_MODEL_INPUTS = ("input_ids", "attention_mask", "slots", "uid", "iid", "history", "label")


def to_batch(arrays: Arrays, index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows ``index`` as tensors, with the columns that are padding in every row trimmed away
    (prompts are left-padded to the budget; most batches need fewer tokens)."""
    mask = arrays["attention_mask"][index]
    first = int(np.argmax(mask.any(axis=0))) if mask.any() else 0
    batch = {}
    for key in _MODEL_INPUTS:
        if key in arrays:
            value = arrays[key][index]
            if key in ("input_ids", "attention_mask", "slots"):
                value = value[:, first:]
            batch[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device)
    batch["attention_mask"] = batch["attention_mask"].long()
    return batch


def epoch_batches(
    arrays: Arrays, batch_size: int, seed: int, epoch: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled full batches (seeded by (seed, epoch): a resumed run sees the same order)."""
    n = len(arrays["uid"])
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for start in range(0, n - n % batch_size, batch_size):
        yield to_batch(arrays, order[start : start + batch_size], device)


def score_arrays(
    model: nn.Module, arrays: Arrays, batch_size: int, device: torch.device, rank: int = 0, world: int = 1
) -> np.ndarray:
    """Logits for every row; with ``world`` > 1 each rank scores rows ``rank::world`` in the
    same number of batches and the results are gathered."""
    n = len(arrays["uid"])
    mine = np.arange(rank, n, world)
    batches = math.ceil(math.ceil(n / world) / batch_size)
    scores = np.zeros(len(mine), np.float32)
    model.eval()
    with torch.no_grad():
        for b in range(batches):
            index = mine[b * batch_size : (b + 1) * batch_size]
            real = len(index)
            if real < batch_size:  # pad with row 0 so every rank runs the same forwards
                index = np.r_[index, np.zeros(batch_size - real if n else 0, np.int64)]
            if len(index) == 0:
                continue
            logits = model(to_batch(arrays, index, device)).float().cpu().numpy()
            scores[b * batch_size : b * batch_size + real] = logits[:real]
    if world == 1:
        return scores
    gathered: list[np.ndarray | None] = [None] * world
    torch.distributed.all_gather_object(gathered, scores)
    out = np.zeros(n, np.float32)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


@dataclass(frozen=True)
class StreamedRows:
    """A rank's part of the validation rows, streamed for each evaluation (the Ray path:
    ``raylrec.train.shards.held_out_shards``). ``most_rows``: the largest part's rows, so every
    rank runs the same number of forwards."""

    iterator: Any  # this rank's Ray DataIterator
    most_rows: int


# What the ranks gather per validation row: enough for every CTR metric.
_GATHERED = ("uid", "label", "warm")


def score_streamed(model: nn.Module, rows: StreamedRows, batch_size: int, device: torch.device) -> Arrays:
    """This rank's rows scored: their ``uid``, ``label``, ``warm`` and ``logit``. A rank with
    fewer batches than the largest part repeats a forward on its first row (ZeRO-3's forwards
    are collectives) and discards it."""
    forwards = math.ceil(rows.most_rows / batch_size)
    parts: list[Arrays] = []
    first: Arrays | None = None
    model.eval()
    with torch.no_grad():
        for batch in rows.iterator.iter_batches(batch_size=batch_size, batch_format="numpy"):
            real = len(batch["uid"])
            index = np.r_[np.arange(real), np.zeros(batch_size - real, np.int64)]
            logits = model(to_batch(batch, index, device)).float().cpu().numpy()[:real]
            parts.append({**{k: batch[k] for k in _GATHERED if k in batch}, "logit": logits})
            if first is None:
                first = batch
        if first is None:
            raise ValueError("this rank's part of the validation rows is empty")
        for _ in range(len(parts), forwards):
            model(to_batch(first, np.zeros(batch_size, np.int64), device))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _gather(part: Arrays, world: int) -> Arrays:
    """Every rank's scored rows, concatenated in rank order (the CTR metrics do not depend on
    the rows' order)."""
    if world == 1:
        return part
    gathered: list[Arrays | None] = [None] * world
    torch.distributed.all_gather_object(gathered, part)
    return {k: np.concatenate([p[k] for p in gathered]) for k in part}  # type: ignore[index]


class LLMTask:
    """``valid``: every validation row as arrays (each rank scores rows ``rank::world``), or
    this rank's ``StreamedRows`` (the Ray path)."""

    def __init__(
        self,
        model: nn.Module,
        valid: Arrays | StreamedRows,
        eval_config: EvalConfig,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ):
        self.model, self.valid, self.eval_config = model, valid, eval_config
        self.batch_size, self.device, self.rank, self.world = batch_size, device, rank, world

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The method's own ``loss`` (``RecMethod.loss``, overridable), called through the
        wrapper's forward: DDP syncs gradients and the DeepSpeed engine runs its hooks."""
        return self.model(batch, compute_loss=True)

    def evaluate(self) -> dict[str, float]:
        if isinstance(self.valid, StreamedRows):
            scored = _gather(score_streamed(self.model, self.valid, self.batch_size, self.device), self.world)
            return ctr_metrics(scored, scored.pop("logit"), self.eval_config, "valid")
        return ctr_metrics(
            self.valid,
            score_arrays(self.model, self.valid, self.batch_size, self.device, self.rank, self.world),
            self.eval_config,
            "valid",
        )


def ctr_metrics(arrays: Arrays, logits: np.ndarray, config: EvalConfig, prefix: str) -> dict[str, float]:
    acc = CTRAccumulator(weighting=config.uauc_weighting)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    acc.update(arrays["uid"], arrays["label"], probs, arrays.get("warm"))
    return {f"{prefix}/{k.removeprefix('all/')}": v for k, v in acc.compute().items()}
