"""Batched per-sample LoRA against a per-sample loop and against peft's LoRA; prompt building
within a token budget (oldest history dropped first, left padding, ID slots)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from raylrec.adapters import AdapterContext, LoRAMixture, PerSampleLoRALinear, Router
from raylrec.llm.backbone import tiny_tokenizer
from raylrec.llm.prompts import SLOT_ITEM, SLOT_USER, PromptBuilder
from raylrec.methods import template_text


def _mixture(d_in=12, d_out=10, rank=3, experts=4, cond=6, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    factors = LoRAMixture(d_in, d_out, rank, experts, Router(cond, experts, hidden=8, dropout=0.0))
    nn.init.normal_(factors.lora_B)  # non-zero so the update is visible
    context = AdapterContext()
    return PerSampleLoRALinear(base, factors, context, scaling=2.0), context


def test_batched_mixture_equals_a_per_sample_loop():
    layer, context = _mixture()
    x, condition = torch.randn(5, 7, 12), torch.randn(5, 6)
    with context.use(condition):
        batched = layer(x)
    weights = layer.factors.router(condition)
    for b in range(5):
        a = sum(weights[b, k] * layer.factors.lora_A[k] for k in range(4))
        bb = sum(weights[b, k] * layer.factors.lora_B[k] for k in range(4))
        expected = layer.base(x[b]) + (x[b] @ a) @ bb * 2.0
        torch.testing.assert_close(batched[b], expected, rtol=1e-5, atol=1e-5)


def test_one_expert_is_a_plain_lora():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 8))
    reference = nn.Sequential(nn.Linear(8, 8))
    reference.load_state_dict(model.state_dict())
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["0"]), reference)
    lora = reference[0]
    nn.init.normal_(lora.lora_B["default"].weight)
    factors = LoRAMixture(8, 8, 2, 1, Router(3, 1))
    with torch.no_grad():
        factors.lora_A.copy_(lora.lora_A["default"].weight.T[None])
        factors.lora_B.copy_(lora.lora_B["default"].weight.T[None])
    context = AdapterContext()
    mine = PerSampleLoRALinear(model[0], factors, context, scaling=4 / 2)
    x = torch.randn(3, 5, 8)
    with context.use(torch.randn(3, 3)):
        torch.testing.assert_close(mine(x), reference(x), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_bank_and_the_router():
    layer, context = _mixture()
    with context.use(torch.randn(4, 6)):
        layer(torch.randn(4, 3, 12)).square().sum().backward()
    assert layer.factors.lora_A.grad.abs().sum() > 0
    assert layer.factors.lora_B.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.factors.router.parameters())
    assert layer.base.weight.grad is not None  # the wrapper does not freeze; methods do


def test_calling_outside_a_context_is_a_clear_error():
    layer, _ = _mixture()
    with pytest.raises(RuntimeError, match="AdapterContext"):
        layer(torch.randn(2, 3, 12))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


TITLES = {i: f"Movie number {i} ({1990 + i})" for i in range(1, 40)}


def test_prompt_keeps_the_newest_history_within_the_budget(tokenizer):
    unlimited = PromptBuilder(tokenizer, template_text("tallrec"), TITLES, max_tokens=4096, max_history=10)
    ids, _, used = unlimited.encode(list(range(1, 13)), 20)
    assert used == 10  # max_history
    text = tokenizer.decode(ids)
    assert "Movie number 3 " in text and "Movie number 12 " in text and "Movie number 2 " not in text
    assert text.rstrip().endswith("#Answer:")

    budget = len(ids) - 8  # too small for all ten titles
    tight = PromptBuilder(tokenizer, template_text("tallrec"), TITLES, max_tokens=budget, max_history=10)
    ids2, _, used2 = tight.encode(list(range(1, 13)), 20)
    assert len(ids2) <= budget and 0 < used2 < 10
    text2 = tokenizer.decode(ids2)
    assert "Movie number 12 " in text2 and "Movie number 3 " not in text2  # oldest dropped first

    with pytest.raises(ValueError, match="max_tokens"):
        PromptBuilder(tokenizer, template_text("tallrec"), TITLES, max_tokens=16).encode([1], 2)


def test_batch_is_left_padded_with_one_slot_per_id(tokenizer):
    builder = PromptBuilder(tokenizer, template_text("collm"), TITLES, max_tokens=200, max_history=5)
    encoded = builder.encode_batch([[1, 2, 3], []], [4, 5])
    assert encoded.input_ids.shape == (2, 200)
    for row in range(2):
        mask = encoded.attention_mask[row]
        first = int(mask.argmax())
        assert mask[first:].all() and not mask[:first].any()  # left padding, answer last
        assert (encoded.slots[row] == SLOT_USER).sum() == 1 and (encoded.slots[row] == SLOT_ITEM).sum() == 1
    assert encoded.history_items.tolist() == [3, 0]
    assert encoded.attention_mask[0].sum() > encoded.attention_mask[1].sum()
