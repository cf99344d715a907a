"""The method interface in a plain process, on the tiny Llama and a small MF CF bundle built in
code: ID slots get the projected CF embeddings and nothing else does, stages train only their
groups, RecLoRA personalises per user, and init_from-style partial loading."""

from __future__ import annotations

import pytest
import torch

from raylrec.cf.bundle import CFBundle
from raylrec.cf.encoders.mf.model import MF
from raylrec.config import BackboneConfig
from raylrec.llm.backbone import load_backbone
from raylrec.llm.prompts import SLOT_ITEM, SLOT_USER
from raylrec.methods import METHODS


def _cf(dim: int = 8) -> CFBundle:
    torch.manual_seed(0)
    encoder = MF(20, 30, dim).eval()
    config = {"dim": dim, "num_users": 20, "num_items": 30, "cf": {"model": "mf"}}
    return CFBundle(config, encoder.users.weight.detach(), encoder.items.weight.detach(), encoder)


def _method(name: str, **kw):
    backbone = load_backbone(BackboneConfig(name="tiny-random-llama"))
    return METHODS.get(name)(cf_bundle="in-memory", **kw).build(backbone, _cf())


def _batch(rows: int = 3, tokens: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    slots = torch.zeros(rows, tokens, dtype=torch.int8)
    slots[:, 4], slots[:, 9] = SLOT_USER, SLOT_ITEM
    return {
        "input_ids": torch.randint(5, 800, (rows, tokens), generator=generator),
        "attention_mask": torch.ones(rows, tokens, dtype=torch.long),
        "slots": slots,
        "uid": torch.tensor([1, 2, 3])[:rows],
        "iid": torch.tensor([4, 5, 6])[:rows],
        "label": torch.tensor([1.0, 0.0, 1.0])[:rows],
    }


def test_collm_replaces_exactly_the_id_slots():
    method = _method("collm")
    batch = _batch()
    embeds = method.input_embeddings(batch)
    tokens = method.lm.get_input_embeddings()(batch["input_ids"])
    users = method.projector(method.cf.user_vectors({"uid": batch["uid"]}))
    items = method.projector(method.cf.item_vectors(batch["iid"]))
    torch.testing.assert_close(embeds[:, 4], users)
    torch.testing.assert_close(embeds[:, 9], items)
    others = [i for i in range(12) if i not in (4, 9)]
    torch.testing.assert_close(embeds[:, others], tokens[:, others])
    # a text-only prompt (no slots) is left to the token ids
    assert method.input_embeddings({**batch, "slots": torch.zeros_like(batch["slots"])}) is None


# pointwise methods on a pointwise batch; tests/test_cllm4rec.py checks the full-catalog one's groups
@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).role == "pointwise"])
def test_each_stage_trains_only_its_groups(name):
    method = _method(name)
    for stage in method.stages():
        method.set_stage(stage)
        trainable = {id(p) for p in method.parameters() if p.requires_grad}
        wanted = {id(p) for group in stage.trainable for p in method.parameter_groups()[group]}
        assert trainable == wanted and trainable
        loss = method.loss(_batch())
        loss.backward()
        assert all(p.grad is not None for p in method.parameters() if p.requires_grad)
        method.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).needs_cf])
def test_a_frozen_cf_encoder_stays_in_eval_mode_while_the_method_trains(name):
    method = _method(name)
    for stage in method.stages():
        method.set_stage(stage)
        method.train()
        tuned = any(p.requires_grad for p in method.cf.parameters())
        assert method.training and method.cf.training == tuned, (stage.name, tuned)
    method.eval()
    assert not method.cf.training


def test_reclora_personalises_by_user():
    method = _method("reclora", experts=4, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    method.eval()
    for p in method.parameter_groups()["mixture"]:
        torch.nn.init.normal_(p, std=0.5)  # B starts at zero; make the adapters do something
    batch = _batch(rows=3)
    same_prompt = {**batch, "input_ids": batch["input_ids"][:1].repeat(3, 1)}
    scores = method(same_prompt)
    assert not torch.allclose(scores[0], scores[1])  # different users, same prompt
    twins = {**same_prompt, "uid": torch.tensor([7, 7, 7])}
    torch.testing.assert_close(method(twins)[0], method(twins)[2])


def test_partial_loading_takes_the_shared_weights_only():
    tallrec, collm = _method("tallrec"), _method("collm")
    for p in tallrec.parameter_groups()["lora"]:
        torch.nn.init.normal_(p)
    collm.load_method_state_dict(tallrec.method_state_dict(), strict=False)
    mine = collm.method_state_dict()
    for name, value in tallrec.method_state_dict().items():
        torch.testing.assert_close(mine[name], value)
    with pytest.raises(ValueError, match="do not match"):
        collm.load_method_state_dict(tallrec.method_state_dict())  # strict: the projector is missing
