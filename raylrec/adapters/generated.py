"""Generated LoRA factors: one per-sample "A" matrix produced by a generator, shared by every
adapted layer, each layer keeping its own learned "B".

This is CoRA's scheme (Liu et al., "Collaborative Information Perception for LLM-based
recommendation" / collaborative LoRA, AAAI 2025, arXiv 2408.10645):

- ``WeightGenerator``: learned queries attend, through a BERT-style stack of transformer
  decoder layers (self-attention over the queries, cross-attention to the condition, FFN; the
  layers are ``torch.nn.TransformerDecoderLayer``), to one condition token per sample (CoRA:
  the frozen CF encoder's ``[e_u ; e_i]``). A linear head maps each query's output to
  ``d_in * r`` values; they are averaged over the queries, L2-normalised as one vector per
  sample and reshaped to ``W_gen`` of shape ``[d_in, r]``.
- ``GeneratedFactor``: the factor module of a ``PerSampleLoRALinear``. It returns the
  sample's ``W_gen`` as ``A`` and its own ``P`` (``[r, d_out]``, zero at init: training starts
  at the backbone's outputs) as the shared ``B``, so a wrapped layer adds
  ``(dropout(x) W_gen) P * alpha / r``, two batched matmuls, no per-sample loop.

The generator runs once per forward pass (the method calls it in ``condition``); its output,
``[B, sum of widths, r]`` (one block per distinct input width of the adapted layers: q, k, v,
o, gate and up read the hidden size, down the FFN's intermediate size), is the condition every
wrapped layer reads through the shared ``AdapterContext``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GeneratedFactor", "WeightGenerator"]


class WeightGenerator(nn.Module):
    """Per-sample ``[d_in, r]`` matrices, one per input width, from one condition vector.

    ``condition_dim``: the condition's size (CoRA: 2 x the CF dimension); ``widths``: the
    adapted layers' input widths; ``hidden``: the transformer's width (default
    ``condition_dim``; it must be divisible by ``heads``); ``ffn``: its feed-forward width
    (default 4 x ``hidden``)."""

    def __init__(
        self,
        condition_dim: int,
        widths: Sequence[int],
        rank: int,
        layers: int = 8,
        heads: int = 8,
        hidden: int | None = None,
        queries: int = 4,
        ffn: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        hidden = hidden or condition_dim
        if hidden % heads:
            raise ValueError(f"the generator's hidden size {hidden} is not divisible by its {heads} heads")
        self.widths = sorted(set(int(w) for w in widths))
        if not self.widths:
            raise ValueError("WeightGenerator needs at least one input width")
        self.rank = rank
        # BERT's layout: post-LayerNorm blocks, GELU, the query embeddings layer-normed first
        self.memory = nn.Identity() if hidden == condition_dim else nn.Linear(condition_dim, hidden)
        self.queries = nn.Parameter(torch.randn(1, queries, hidden) * 0.02)
        self.query_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.query_dropout = nn.Dropout(dropout)
        block = nn.TransformerDecoderLayer(
            hidden,
            heads,
            ffn or 4 * hidden,
            dropout,
            activation="gelu",
            batch_first=True,
            layer_norm_eps=1e-12,
        )
        self.decoder = nn.TransformerDecoder(block, layers)
        self.heads = nn.ModuleList(nn.Linear(hidden, w * rank) for w in self.widths)

    def offsets(self) -> dict[int, int]:
        """Where each width's block starts along dim 1 of ``forward``'s output."""
        out, start = {}, 0
        for w in self.widths:
            out[w], start = start, start + w
        return out

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """``condition`` [B, condition_dim] -> [B, sum(widths), r]: for each width, a block
        ``W_gen`` [B, width, r] of unit Frobenius norm per sample."""
        memory = self.memory(condition)[:, None, :]  # the single key/value token
        queries = self.query_dropout(self.query_norm(self.queries)).expand(len(condition), -1, -1)
        out = self.decoder(queries, memory)  # [B, queries, hidden]
        blocks = []
        for width, head in zip(self.widths, self.heads, strict=True):
            # the head is affine, so the mean of its outputs over the queries is the head of
            # the queries' mean: one [B, width * r] product instead of one per query
            flat = F.normalize(head(out.mean(dim=1)), dim=-1)  # [B, width * r], norm 1
            blocks.append(flat.view(len(condition), width, self.rank))
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]


class GeneratedFactor(nn.Module):
    """The factors of one adapted layer: ``A`` = the sample's generated block for this layer's
    input width (``offset``, ``in_features`` into the generator's output), ``B`` = this layer's
    own ``lora_P`` [r, d_out] (CoRA's P_l = Linear(r -> d_out, no bias), zero-initialised)."""

    def __init__(self, in_features: int, out_features: int, rank: int, offset: int = 0):
        super().__init__()
        self.in_features, self.offset = in_features, offset
        self.lora_P = nn.Parameter(torch.zeros(rank, out_features))

    def forward(self, generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = generated[:, self.offset : self.offset + self.in_features]
        return a, self.lora_P.to(a.dtype)
