"""CoRA (arXiv 2408.10645) on the tiny Llama and a small MF CF bundle built in code: it starts
exactly at the frozen backbone, its generated factor has unit norm and depends on the (user,
candidate) pair, so the prompt prefix's keys and values depend on the candidate (why it cannot
share a prefix in scoring); it trains, decays matrices only, and its saved weights reload to
identical scores. Training under ZeRO-3 with two Ray Train workers: tests/test_methods.py; the
plugin matrix (train, bundle, reload, rerank): tests/test_plugins.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_method_units import _batch, _cf

from raylrec.adapters import AdapterContext, GeneratedFactor, PerSampleLoRALinear, WeightGenerator
from raylrec.config import BackboneConfig, TrainConfig
from raylrec.llm.backbone import load_backbone
from raylrec.methods.cora import CoRAConfig
from raylrec.scoring.rerank import Reranker
from raylrec.train.engines import TorchEngine

SMALL = {"generator_layers": 2, "generator_heads": 2, "queries": 4, "r": 4, "alpha": 8}


def _cora(**kw):
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(name="tiny-random-llama"))
    return CoRAConfig(cf_bundle="in-memory", **kw).build(backbone, _cf()), backbone


def _randomise_projections(method) -> None:
    """P starts at zero (CoRA's init): give every adapted module a non-zero P."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in method.adapted:
            p = method.lm.get_submodule(name).factors.lora_P
            p.copy_(torch.randn(p.shape, generator=generator))


def test_zero_projections_score_the_frozen_backbones_yes_logit_exactly():
    method, _ = _cora(**SMALL)
    method.eval()
    reference = load_backbone(BackboneConfig(name="tiny-random-llama")).model.eval()
    batch = _batch()
    batch["attention_mask"][0, :3] = 0  # a left-padded row
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = reference.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions
        ).last_hidden_state[:, -1]
        want = reference.get_output_embeddings()(hidden).float()[:, method.yes_id]
        got = method(batch)
    assert method.score_kind == "yes_logit"
    assert len(method.adapted) == 4 * 2  # q, k, v, o of both layers
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_generated_factor_has_unit_norm_and_depends_on_the_pair():
    method, _ = _cora(**SMALL)
    method.eval()
    batch = {**_batch(rows=3), "uid": torch.tensor([1, 1, 2]), "iid": torch.tensor([4, 5, 4])}
    with torch.no_grad():
        w = method.condition(batch)
        again = method.condition(batch)
    hidden = method.lm.config.hidden_size
    assert w.shape == (3, hidden, 4)
    torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(3))
    torch.testing.assert_close(w, again, rtol=0, atol=0)  # deterministic in eval mode
    # (1, 4) vs (1, 5): same user, other candidate; (1, 4) vs (2, 4): other user, same item
    assert float((w[0] - w[1]).abs().max()) > 1e-4
    assert float((w[0] - w[2]).abs().max()) > 1e-4


def test_ffn_targets_get_their_own_block_per_input_width():
    method, _ = _cora(**SMALL, target_modules=["q_proj", "up_proj", "down_proj"])
    widths = {method.lm.config.hidden_size, method.lm.config.intermediate_size}
    assert method.generator.widths == sorted(widths)
    with torch.no_grad():
        w = method.condition(_batch())
    assert w.shape[1] == sum(widths)
    for width, start in method.generator.offsets().items():
        torch.testing.assert_close(w[:, start : start + width].flatten(1).norm(dim=1), torch.ones(3))


def test_candidates_of_one_user_get_different_prefix_keys_and_values():
    """Why ``shares_prefix`` is False: with the adapters active, the first layer's keys and
    values of the very same prompt differ between two candidates of one user, so a prefix
    cached once per user would be wrong for all but one of them."""
    assert CoRAConfig.shares_prefix is False
    method, backbone = _cora(**SMALL)
    _randomise_projections(method)
    method.eval()
    assert Reranker(method, None, 0).shares_prefix is False  # the scorer runs full prompts
    batch = _batch(rows=2)
    batch = {
        **batch,
        "input_ids": batch["input_ids"][:1].repeat(2, 1),
        "uid": torch.tensor([1, 1]),
        "iid": torch.tensor([4, 5]),
    }
    seen: dict[str, torch.Tensor] = {}
    attention = method.lm.model.layers[0].self_attn
    hooks = [
        getattr(attention, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
        for name in ("k_proj", "v_proj")
    ]
    try:
        with torch.no_grad():
            method(batch)
    finally:
        for hook in hooks:
            hook.remove()
    for name in ("k_proj", "v_proj"):
        per_token = (seen[name][0] - seen[name][1]).abs().amax(dim=-1)
        assert bool((per_token > 1e-5).all()), f"{name}: a prefix token's {name} is shared by both candidates"


def test_config_checks_the_generator_shape():
    with pytest.raises(ValueError, match="divisible"):
        CoRAConfig(cf_bundle="x", generator_hidden=30, generator_heads=8)
    with pytest.raises(ValueError, match="twice"):
        CoRAConfig(cf_bundle="x", target_modules=["q_proj", "q_proj"])
    with pytest.raises(ValueError, match="divisible"):  # 2 x CF dim 8 = 16 over 3 heads
        _cora(generator_heads=3)
    generator = WeightGenerator(6, [10], 2, layers=1, heads=2, hidden=8, queries=3)
    w = generator(torch.randn(5, 6))
    assert w.shape == (5, 10, 2)
    a, b = GeneratedFactor(10, 7, 2)(w)
    assert a.shape == (5, 10, 2) and b.shape == (2, 7) and not bool(b.any())


def test_generated_update_equals_a_per_sample_loop():
    """The batched path (two matmuls over the batch) against one sample at a time:
    ``W x + (x W_gen[b]) P * alpha / r``."""
    torch.manual_seed(3)
    base = torch.nn.Linear(12, 7)
    context = AdapterContext()
    layer = PerSampleLoRALinear(base, GeneratedFactor(12, 7, 3), context, scaling=2.0)
    torch.nn.init.normal_(layer.factors.lora_P)
    x, w_gen = torch.randn(4, 5, 12), torch.randn(4, 12, 3)
    with context.use(w_gen):
        got = layer(x)
    want = torch.stack([base(x[b]) + (x[b] @ w_gen[b]) @ layer.factors.lora_P * 2.0 for b in range(4)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_it_trains_in_process_and_decays_matrices_only():
    method, _ = _cora(**SMALL, dropout=0.0, generator_dropout=0.0)
    method.set_stage(method.stages()[0])
    batch = _batch(rows=3)
    config = TrainConfig(lr=3e-2, weight_decay=1e-3, optimizer="adamw")
    engine = TorchEngine(method, config, 12, [p for p in method.parameters() if p.requires_grad])
    decayed, exempt = engine.optimizer.param_groups
    assert decayed["weight_decay"] == 1e-3 and exempt["weight_decay"] == 0.0
    assert exempt["params"] and all(p.dim() < 2 for p in exempt["params"])
    assert all(p.dim() >= 2 for p in decayed["params"])
    losses = []
    for _ in range(12):
        loss = method(batch, compute_loss=True)
        engine.step(loss)
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_method_state_holds_only_the_generator_and_projections():
    method, _ = _cora(**SMALL)
    state = method.method_state_dict()
    assert all(k.startswith("generator.") or k.endswith(".factors.lora_P") for k in state)
    assert sum(k.endswith("lora_P") for k in state) == len(method.adapted)
    assert not any("cf." in k for k in state)


def test_saved_weights_reload_to_identical_scores(tmp_path):
    """The weights half of a model bundle (``save_model_bundle`` writes ``method_state_dict``
    with safetensors; ``load_model_bundle`` builds the method and loads them): a fresh CoRA
    with the saved weights scores exactly what the trained one does. The whole bundle, CF copy
    included, round-trips in tests/test_plugins.py; ZeRO-3's gathered save in
    tests/test_methods.py."""
    trained, _ = _cora(**SMALL)
    _randomise_projections(trained)
    with torch.no_grad():
        for p in trained.generator.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = str(tmp_path / "method.safetensors")
    save_file({k: v.contiguous() for k, v in trained.method_state_dict().items()}, path)
    torch.manual_seed(123)  # another init: everything CoRA owns must come from the file
    fresh = CoRAConfig(cf_bundle="in-memory", **SMALL).build(
        load_backbone(BackboneConfig(name="tiny-random-llama")), _cf()
    )
    fresh.load_method_state_dict(load_file(path))
    batch = _batch()
    with torch.no_grad():
        want, got = trained.eval()(batch), fresh.eval()(batch)
    assert float(want.std()) > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)
