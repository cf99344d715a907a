"""CoRA (arXiv 2408.10645) on the tiny Llama and a small MF CF bundle built in code: it starts
exactly at the frozen backbone, its generated factor has unit norm and depends on the (user,
candidate) pair, so the prompt prefix's keys and values depend on the candidate (why it cannot
share a prefix in scoring); it trains, decays matrices only, and its saved weights reload to
identical scores. On a local Ray instance and a loopback S3 server (moto): an s3:// model
bundle reloads to identical scores, and the batch-scoring job, which runs CoRA's candidates as
full prompts, publishes CoRA's own forward scores. Training under ZeRO-3 with two Ray Train
workers: tests/test_methods.py; the plugin matrix (train, bundle, reload, rerank):
tests/test_plugins.py."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
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


# --- the bundle on S3 and the batch-scoring job (a local Ray instance, a loopback S3 server) ---

DATE = "2026-12-02"


@pytest.fixture(scope="module")
def cora_on_s3(tmp_path_factory, s3_server, ray_session) -> dict:
    """A small synthetic dataset (local), an MF CF bundle and a CoRA model bundle trained on it
    (tiny Llama, one epoch), both on S3."""
    import s3fs
    from helpers import data_config

    from raylrec.cf.train import train_cf
    from raylrec.config import build_config
    from raylrec.data.prepare import prepare
    from raylrec.methods.train import train_method

    root = tmp_path_factory.mktemp("cora-s3")
    bucket = f"s3://raylrec-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True).mkdir(bucket.removeprefix("s3://"))
    dataset = str(root / "data")
    source = {"type": "synthetic", "num_events": 1_500, "num_users": 40, "num_items": 60, "seed": 11}
    prepare(data_config(source, dataset, history={"max_len": 10}))
    cf = f"{bucket}/bundles/mf"
    train_cf(
        build_config(
            {
                "dataset": dataset,
                "cf": {"model": "mf", "dim": 8, "loss": "bce"},
                "train": {"epochs": 2, "batch_size": 256, "lr": 1e-2, "storage_path": str(root / "runs")},
                "output": cf,
            }
        ),
        use_ray=False,
    )
    config = build_config(
        {
            "dataset": dataset,
            "backbone": {"name": "tiny-random-llama"},
            "method": {"name": "cora", "cf_bundle": cf, **SMALL},
            "prompt": {"max_tokens": 256, "history_items": 3},  # the budget never bites
            "sample": {"max_train": 32, "max_valid": 16},
            "train": {
                "epochs": 1,
                "batch_size": 8,
                "lr": 1e-2,
                "optimizer": "adamw",
                "num_workers": 0,
                "storage_path": str(root / "runs-cora"),
            },
            "output": f"{bucket}/bundles/cora",
        }
    )
    result = train_method(config, use_ray=False)
    return {"root": root, "dataset": dataset, "config": config, "result": result}


def test_bundle_on_s3_reloads_to_identical_scores(cora_on_s3):
    """Two loads of the s3:// bundle, and the trained weights on a freshly built CoRA, score
    the validation rows identically; the reload reproduces the validation AUC of training."""
    from raylrec.cf.bundle import load_cf_bundle
    from raylrec.llm.samples import local_samples
    from raylrec.methods.bundle import load_model_bundle
    from raylrec.methods.config import template_text
    from raylrec.methods.task import ctr_metrics, score_arrays

    config, result = cora_on_s3["config"], cora_on_s3["result"]
    assert result.bundle.startswith("s3://")
    first, second = load_model_bundle(result.bundle), load_model_bundle(result.bundle)
    assert first.method.name == "cora" and first.config["cf_bundle_source"].startswith("s3://")
    samples = local_samples(config, "valid", template_text("tallrec"), 0, first.prompts.tokenizer)
    cpu = torch.device("cpu")
    a = score_arrays(first.method, samples, 8, cpu)
    b = score_arrays(second.method, samples, 8, cpu)
    np.testing.assert_array_equal(a, b)

    torch.manual_seed(123)  # another init: everything CoRA owns must come from the training run
    trained = config.method.build(load_backbone(config.backbone), load_cf_bundle(config.method.cf_bundle))
    best = {k: v for state in result.states.values() for k, v in state.best_model.items()}
    trained.load_method_state_dict({**trained.method_state_dict(), **best})
    want = score_arrays(trained.eval(), samples, 8, cpu)
    assert float(np.std(want)) > 0
    np.testing.assert_array_equal(a, want)
    # training moved the projections off zero: the bundle is not the frozen backbone
    assert any(bool(p.any()) for k, p in first.method.method_state_dict().items() if k.endswith("lora_P"))
    assert ctr_metrics(samples, a, config.eval, "valid")["valid/auc"] == pytest.approx(
        result.metrics["valid/auc"], abs=1e-6
    )


def _cf_candidates(bundle_path: str, user: str, seen: set[str], n: int) -> list[str]:
    """The job's retrieval, spelled out: the user's n best unseen items by MF dot product."""
    from raylrec.cf.bundle import cf_vocabularies, load_cf_bundle

    cf = load_cf_bundle(f"{bundle_path}/cf")
    users, items = cf_vocabularies(f"{bundle_path}/cf")
    scores = (cf.items @ cf.users[int(users.to_dense([user])[0])]).double().numpy()
    scores[0] = -np.inf
    raw = items.to_raw(np.arange(len(scores)))
    scores[[k for k, item in enumerate(raw) if k and item in seen]] = -np.inf
    return [raw[k] for k in np.argsort(-scores, kind="stable")[:n]]


def test_batch_scoring_publishes_the_methods_own_full_prompt_scores(cora_on_s3):
    """The scoring job on Ray (actors load the s3:// bundle) publishes every user once; for
    three users, the published items are the top k of the CF candidates by CoRA's score and
    the scores are CoRA's own forward on each candidate's full prompt, built here the way
    training builds prompts (``encode_batch``, ``to_batch``), not through the reranker."""
    import pyarrow.compute as pc

    from raylrec.cf.bundle import cf_vocabularies
    from raylrec.config import build_config
    from raylrec.data.output import read_table
    from raylrec.data.vocab import Vocabulary
    from raylrec.methods.bundle import load_model_bundle
    from raylrec.methods.task import to_batch
    from raylrec.scoring import publish as recs
    from raylrec.scoring.job import run_scoring

    dataset, bundle_path = cora_on_s3["dataset"], cora_on_s3["result"].bundle
    output = str(cora_on_s3["root"] / "recs")
    k, candidates = 4, 7
    config = build_config(
        {
            "dataset": dataset,
            "score": {
                "model_bundle": bundle_path,
                "output": output,
                "candidates": candidates,
                "k": k,
                "splits": ["train", "valid"],
                "users_per_batch": 16,
            },
        }
    )
    manifest = run_scoring(config, DATE)
    table = recs.read_recommendations(output, DATE, verify=True)
    user_ids = read_table(dataset, "users.parquet")["user_id"].to_pylist()
    assert manifest["users"] == len(user_ids) and table.num_rows == len(user_ids) * k
    assert set(table["source"].to_pylist()) == {"rerank"}

    bundle = load_model_bundle(bundle_path)
    assert bundle.method.config.shares_prefix is False  # the job ran full prompts
    items = Vocabulary.from_table(bundle.items, "item_id", "iid")
    uid = Vocabulary.from_table(read_table(dataset, "users.parquet"), "user_id", "uid")
    events = pa.concat_tables(
        [read_table(dataset, s, columns=["uid", "iid", "timestamp", "label"]) for s in ("train", "valid")]
    )
    data_items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    cf_users = cf_vocabularies(f"{bundle_path}/cf")[0]
    for user in (user_ids[0], user_ids[len(user_ids) // 2], user_ids[-1]):
        mine = events.filter(pc.equal(events["uid"], int(uid.to_dense([user])[0])))
        seen = set(data_items.to_raw(mine["iid"].to_numpy()).tolist())
        positives = mine.filter(pc.greater(mine["label"], 0))
        order = np.lexsort((positives["iid"].to_numpy(), positives["timestamp"].to_numpy()))
        history = items.to_dense(data_items.to_raw(positives["iid"].to_numpy()[order])).tolist()
        pool = _cf_candidates(bundle_path, user, seen, candidates)
        targets = items.to_dense(pool)
        encoded = bundle.prompts.encode_batch([history] * len(pool), targets)
        arrays = {
            "input_ids": encoded.input_ids,
            "attention_mask": encoded.attention_mask,
            "slots": encoded.slots,
            "uid": np.full(len(pool), int(cf_users.to_dense([user])[0]), np.int64),
            "iid": targets.astype(np.int64),
        }
        batch = to_batch(arrays, np.arange(len(pool)), torch.device("cpu"))
        with torch.no_grad():
            own = bundle.method(batch).numpy()
            # the scores carry the user's CF vector (through W_gen), far beyond the tolerance
            other = bundle.method({**batch, "uid": batch["uid"] % (len(user_ids) - 1) + 1}).numpy()
        assert float(np.abs(own - other).max()) > 1e-3, user
        best = np.argsort(-own, kind="stable")[:k]
        rows = table.filter(pc.equal(table["user_id"], user)).sort_by("rank")
        assert rows["item_id"].to_pylist() == [pool[j] for j in best], user
        np.testing.assert_allclose(rows["score"].to_numpy(), own[best], rtol=1e-5, atol=1e-5)
        assert float(np.std(own)) > 0
