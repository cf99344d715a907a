"""CLLM4Rec (arXiv 2311.01343) on the tiny Llama and a small in-memory catalogue: ID tokens map to
their own rows of tables outside the frozen backbone, the item head is the item table, training
moves only the ID tables, the masked prompt never shows a held-out item, each stage's loss
falls through the training loop, and the chunked full-catalogue top-K equals a full sort with
training items masked. The end-to-end runs (a prepared dataset, ZeRO on Ray Train, the bundle
on S3) are at the bottom, marked ``ray``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raylrec.config import BackboneConfig, EvalConfig, TrainConfig, build_config
from raylrec.data.output import FORBID_WHOLE_SPLITS
from raylrec.eval.ranking import ItemSets
from raylrec.eval.topk import running_top_k
from raylrec.llm.backbone import load_backbone
from raylrec.methods import METHODS
from raylrec.methods.cllm4rec import SELECTION_METRIC
from raylrec.methods.cllm4rec.corpora import IGNORE, ContentDoc, Corpora, Pieces
from raylrec.methods.cllm4rec.model import OBJECTIVES
from raylrec.methods.cllm4rec.serve import recommend
from raylrec.methods.cllm4rec.task import (
    CLLM4RecTask,
    _to_torch,
    evaluate_ranking,
    stage_batches,
    stage_steps,
)
from raylrec.scoring.retrieval import exact_top_n
from raylrec.train.engines import TorchEngine
from raylrec.train.loop import fit
from raylrec.train.reporting import LocalReporter

USERS, ITEMS = 17, 31  # dense ids 1.., row 0 padding
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneConfig(name="tiny-random-llama"))


def _corpora(tokenizer, max_items: int = 12) -> Corpora:
    """Users 1..16 in three taste clusters (user u likes items of cluster u % 3: ten ids each),
    7-9 of them each, the last two held out for validation, and every item's text."""
    rng = np.random.default_rng(0)
    users, items, vu, vi = [], [], [], []
    for u in range(1, USERS):
        cluster = 1 + 10 * (u % 3) + np.arange(10)
        chosen = rng.choice(cluster, rng.integers(7, 10), replace=False)
        users += [u] * (len(chosen) - 2)
        items += chosen[:-2].tolist()
        vu += [u] * 2
        vi += chosen[-2:].tolist()
    train = ItemSets.from_pairs(np.array(users), np.array(items), USERS)
    valid = ItemSets.from_pairs(np.array(vu), np.array(vi), USERS)

    def tokens(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    docs = [ContentDoc("item", j, tokens(f" film {j} of kind {(j - 1) // 10}")) for j in range(1, ITEMS)]
    docs += [ContentDoc("user", u, tokens(f" age {20 + u}")) for u in (1, 2, 3)]
    return Corpora(USERS, ITEMS, train, valid, docs, Pieces.build(tokenizer), max_items=max_items)


def _method(backbone, **kw):
    torch.manual_seed(0)
    config = METHODS.get("cllm4rec")(num_users=USERS, num_items=ITEMS, **kw)
    return config.build(backbone, None)


def _torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


# --- ID tokens --------------------------------------------------------------------------------


def test_id_tokens_map_to_their_own_rows_outside_the_word_embeddings(backbone):
    method = _method(backbone)
    corpora = _corpora(backbone.tokenizer)
    items = np.array([5, 9, 2])
    batch = _torch(pad_one(corpora.prompt_row(4, items)))
    words = method.lm.get_input_embeddings()(batch["input_ids"])
    for side, users_table, items_table in (
        ("collab", method.collab_users, method.collab_items),
        ("content", method.content_users, method.content_items),
    ):
        embeds = method.embed(batch, side)[0]
        ids_u, ids_i = batch["id_users"][0], batch["id_items"][0]
        user_pos, item_pos = torch.nonzero(ids_u).flatten(), torch.nonzero(ids_i).flatten()
        assert len(user_pos) == 2 and ids_i[item_pos].tolist() == items.tolist()  # "user_4 ... user_4"
        torch.testing.assert_close(embeds[user_pos], users_table.weight[[4, 4]], rtol=0, atol=0)
        torch.testing.assert_close(embeds[item_pos], items_table.weight[items], rtol=0, atol=0)
        text = (ids_u == 0) & (ids_i == 0)
        torch.testing.assert_close(embeds[text], words[0][text], rtol=0, atol=0)
    # the vocabulary was not extended, and the tables are N(0, 0.02) of the hidden size
    assert method.lm.get_input_embeddings().weight.shape[0] == len(backbone.tokenizer)
    table = method.collab_items.weight
    assert (
        table.shape == (ITEMS, method.lm.config.hidden_size)
        and abs(float(table.detach().std()) - 0.02) < 0.004
    )


def pad_one(row) -> dict[str, np.ndarray]:
    from raylrec.methods.cllm4rec.corpora import pad_rows

    return pad_rows([row])


def test_the_item_head_is_the_item_table(backbone):
    method = _method(backbone)
    hidden = torch.randn(3, method.lm.config.hidden_size)
    logits = method.item_logits(hidden)
    torch.testing.assert_close(logits[:, 1:], (hidden @ method.collab_items.weight.T)[:, 1:])
    assert bool(torch.isinf(logits[:, 0]).all())  # the padding item never wins
    # one tensor: a change to the table is a change to the head, and no other head exists
    with torch.no_grad():
        method.collab_items.weight[7] += 1.0
    assert not torch.allclose(method.item_logits(hidden)[:, 7], logits[:, 7])
    assert set(method.method_state_dict()) == {
        "collab_users.weight",
        "collab_items.weight",
        "content_users.weight",
        "content_items.weight",
    }


# --- corpora ----------------------------------------------------------------------------------


def test_a_masked_item_never_appears_in_its_own_prompt(backbone):
    corpora = _corpora(backbone.tokenizer)
    batches = list(corpora.recommendation_batches(4, seed=0, epoch=1))
    assert sum(len(b["uid"]) for b in batches) == USERS - 1
    for batch in batches:
        for row, uid in enumerate(batch["uid"]):
            shown = set(batch["id_items"][row][batch["id_items"][row] > 0].tolist())
            held = set(batch["target_items"][row][batch["target_items"][row] > 0].tolist())
            items = set(corpora.items_of(int(uid)).tolist())
            assert held and not shown & held
            assert len(held) == max(1, int(0.2 * len(items))) and shown | held == items
            assert set(batch["id_users"][row][batch["id_users"][row] > 0].tolist()) == {int(uid)}
    # a fresh mask each epoch; the same one for the same (seed, epoch): resume is exact
    again = list(corpora.recommendation_batches(4, seed=0, epoch=1))
    other = list(corpora.recommendation_batches(4, seed=0, epoch=2))
    assert all((a["target_items"] == b["target_items"]).all() for a, b in zip(batches, again, strict=True))
    assert any(
        a["target_items"].shape != b["target_items"].shape or (a["target_items"] != b["target_items"]).any()
        for a, b in zip(batches, other, strict=True)
    )


def test_the_collaborative_lm_predicts_each_next_item_in_a_fresh_order(backbone):
    corpora = _corpora(backbone.tokenizer)
    first = next(corpora.collaborative_batches(16, seed=0, epoch=1))
    second = next(corpora.collaborative_batches(16, seed=0, epoch=2))
    for row, uid in enumerate(first["uid"]):
        ids, labels = first["id_items"][row], first["item_labels"][row]
        sequence = ids[ids > 0]
        assert sorted(sequence.tolist()) == sorted(corpora.items_of(int(uid)).tolist())
        # every item, the first one too, is predicted from the position before it
        assert labels[labels > 0].tolist() == sequence.tolist()
        where = np.flatnonzero(labels > 0)
        assert (ids[where + 1] == labels[where]).all()
    orders = [
        [tuple(b["id_items"][r][b["id_items"][r] > 0]) for r in np.argsort(b["uid"])] for b in (first, second)
    ]
    assert orders[0] != orders[1]


def test_the_content_lm_predicts_the_text_after_its_id_prompt(backbone):
    corpora = _corpora(backbone.tokenizer)
    batch = next(corpora.content_batches(64, seed=0, epoch=1))
    assert len(batch["input_ids"]) == len(corpora.docs)
    for row in range(len(batch["input_ids"])):
        labels, words = batch["token_labels"][row], batch["input_ids"][row]
        where = np.flatnonzero(labels != IGNORE)
        assert len(where) and (words[where + 1] == labels[where]).all()
        assert (batch["id_users"][row] > 0).sum() + (batch["id_items"][row] > 0).sum() == 1


def test_the_content_corpus_is_what_movielens_has(backbone):
    import pyarrow as pa

    from raylrec.methods.cllm4rec.corpora import content_docs

    items = pa.table(
        {
            "item_id": ["1", "2"],
            "iid": [1, 2],
            "title": ["Toy Story", "GoldenEye"],
            "genres": ["Animation Comedy", None],
            "release_year": ["1995", "1995"],
        }
    )
    users = pa.table({"user_id": ["1"], "uid": [1], "age": ["24"], "gender": ["M"], "occupation": ["writer"]})
    docs = content_docs(backbone.tokenizer, items, users, max_tokens=64)
    text = {(d.kind, d.id): backbone.tokenizer.decode(d.tokens) for d in docs}
    assert text == {
        ("item", 1): " Toy Story, Animation Comedy",
        ("item", 2): " GoldenEye",
        ("user", 1): " age 24, gender M, occupation writer",
    }
    # a dataset without user fields gives item documents only
    assert {d.kind for d in content_docs(backbone.tokenizer, items, users.select(["user_id", "uid"]), 8)} == {
        "item"
    }


# --- training ---------------------------------------------------------------------------------


def _fit_stage(method, corpora, stage_name: str, epochs: int, lr: float = 0.1, batch_size: int = 16):
    """``epochs`` of one stage through the training loop (TorchEngine, a plain process), with
    one evaluation, at the end."""
    stage = next(s for s in method.stages() if s.name == stage_name)
    method.set_stage(stage)
    finetune = stage_name == "finetune"
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=0, log_every_s=1e9, patience=100, eval_every=100,
        metric=SELECTION_METRIC if finetune else "train/loss", mode="max" if finetune else "min",
    )  # fmt: skip
    params = [p for p in method.parameters() if p.requires_grad]
    content = method.config.finetune_content
    steps = stage_steps(corpora, stage_name, content, batch_size)
    engine = TorchEngine(method, config, epochs * steps, params, full_state=False)
    task = CLLM4RecTask(method, corpora, EvalConfig(ks=[10, 20]), batch_size, 0)
    return fit(
        task,
        lambda e: stage_batches(corpora, stage_name, content, batch_size, 0, e, CPU),
        config,
        LocalReporter(),
        engine,
        steps_per_epoch=steps,
    )


def _stage_loss(method, corpora, stage: str) -> float:
    """The mean loss over a fixed epoch's batches of ``stage`` (epoch 1's masks and orders)."""
    with torch.no_grad():
        losses = [float(method.loss(b)) for b in stage_batches(corpora, stage, False, 16, 0, 1, CPU)]
    return float(np.mean(losses))


def test_every_stage_trains_only_the_id_tables_and_its_loss_falls(backbone):
    # fine-tuning without its content pass: its loss is then the recommendation objective alone
    method = _method(backbone, mr_weight=0.1, finetune_content=False)
    corpora = _corpora(backbone.tokenizer)
    frozen = {k: v.clone() for k, v in method.lm.state_dict().items()}
    tables = {k: v.clone() for k, v in method.method_state_dict().items()}
    for stage, epochs, lr in (("content", 3, 0.05), ("pretrain", 2, 0.05), ("finetune", 4, 0.01)):
        method.set_stage(next(s for s in method.stages() if s.name == stage))
        before = _stage_loss(method, corpora, stage)
        state = _fit_stage(method, corpora, stage, epochs, lr=lr, batch_size=4)
        after = _stage_loss(method, corpora, stage)
        assert after < before, (stage, before, after, [h["train/loss"] for h in state.history])
    weights = method.lm.state_dict()
    assert all(torch.equal(frozen[k], weights[k]) for k in frozen), "a backbone weight changed"
    changed = {k for k, v in method.method_state_dict().items() if not torch.equal(v, tables[k])}
    assert changed == set(tables)
    assert SELECTION_METRIC in state.history[-1] and state.best_epoch == 4


def test_only_the_id_tables_get_gradients(backbone):
    method = _method(backbone)
    corpora = _corpora(backbone.tokenizer)
    for stage in method.stages():
        method.set_stage(stage)
        # the first batch of each of the stage's passes
        firsts = {int(b["objective"][0]): b for b in stage_batches(corpora, stage.name, True, 16, 0, 1, CPU)}
        for batch in firsts.values():
            method.zero_grad(set_to_none=True)
            method.loss(batch).backward()
            with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
            owner = "content" if int(batch["objective"][0]) == OBJECTIVES["content"] else "collab"
            # the other model's tables are held fixed by the mutual regularisation
            assert with_grad and with_grad <= {f"{owner}_users.weight", f"{owner}_items.weight"}, (
                stage.name,
                with_grad,
            )
            assert all(p.grad is None for p in method.lm.parameters())


def test_mutual_regularisation_pulls_toward_the_other_model(backbone):
    method = _method(backbone, mr_weight=1.0)
    corpora = _corpora(backbone.tokenizer)
    batch = next(stage_batches(corpora, "pretrain", True, 8, 0, 1, CPU))
    ids = batch["id_items"][batch["id_items"] > 0].unique()
    with torch.no_grad():
        apart = ((method.collab_items.weight[ids] - method.content_items.weight[ids]) ** 2).sum(-1)
        distance = float(method.mutual_regularisation(batch, "collab"))
    assert distance > 0 and float(apart.min()) > 0
    with torch.no_grad():
        method.collab_items.weight.copy_(method.content_items.weight)
        method.collab_users.weight.copy_(method.content_users.weight)
        assert float(method.mutual_regularisation(batch, "collab")) == 0.0


# --- serving ----------------------------------------------------------------------------------


def test_chunked_top_k_equals_a_full_sort_with_training_items_masked():
    generator = torch.Generator().manual_seed(3)
    users, items, dim, k = 9, 23, 5, 7
    hidden, table = torch.randn(users, dim, generator=generator), torch.randn(items, dim, generator=generator)
    rng = np.random.default_rng(1)
    exclude = [rng.choice(np.arange(1, items), rng.integers(0, 12), replace=False) for _ in range(users)]
    exclude[2] = np.arange(1, items - 3)  # only 3 items left for this user: the tail is id 0
    full = (hidden @ table.T).clone()
    full[:, 0] = -torch.inf
    for row, seen in enumerate(exclude):
        full[row, seen] = -torch.inf
    for chunk in (1, 4, 100):
        scores, ids = running_top_k(lambda lo, hi: hidden @ table[lo:hi].T, users, items, k, exclude, chunk)
        for row in range(users):
            left = items - 1 - len(exclude[row])
            order = torch.argsort(full[row], descending=True)[: min(k, left)]
            assert ids[row, : len(order)].tolist() == order.tolist(), (chunk, row)
            assert (ids[row, len(order) :] == 0).all()
            torch.testing.assert_close(scores[row, : len(order)], full[row, order])
    # the same answer as the CF retrieval's exact search
    want_scores, want_ids = exact_top_n(hidden, table, k, exclude, item_chunk=4)
    assert (ids.numpy() == want_ids).all()


def test_served_top_k_never_holds_a_training_item(backbone):
    method = _method(backbone).eval()
    corpora = _corpora(backbone.tokenizer)
    users = list(range(1, USERS))
    scores, ids = recommend(method, corpora, users, k=10, users_per_batch=5, item_chunk=7)
    for row, uid in enumerate(users):
        assert not set(ids[row].tolist()) & set(corpora.items_of(uid).tolist())
        assert 0 not in ids[row] and len(set(ids[row].tolist())) == 10
        assert (np.diff(scores[row]) <= 0).all()
    # one forward pass per user: the batched answer is each user's own
    alone_scores, alone = recommend(method, corpora, [users[3]], k=10, item_chunk=ITEMS)
    assert (alone[0] == ids[3]).all()
    np.testing.assert_allclose(alone_scores[0], scores[3], rtol=1e-5, atol=1e-5)


def test_validation_reports_the_papers_selection_metric(backbone):
    method = _method(backbone).eval()
    corpora = _corpora(backbone.tokenizer)
    metrics = evaluate_ranking(method, corpora, [10, 20, 40, 100], "min_k", 4, 0)
    assert metrics["valid/users"] == USERS - 1
    total = metrics["valid/recall@20"] + metrics["valid/recall@40"] + metrics["valid/ndcg@100"]
    assert metrics[SELECTION_METRIC] == pytest.approx(total)
    assert set(metrics) - {"valid/users"} <= METHODS.get("cllm4rec")().reported_metrics([10, 20])


def test_the_config_accepts_the_selection_metric_and_refuses_ctr_metrics():
    base = {"dataset": "unused", "method": {"name": "cllm4rec"}}
    config = build_config({**base, "train": {"metric": SELECTION_METRIC}})
    assert config.method.role == "full_catalog"
    assert [s.name for s in config.method.stages()] == ["content", "pretrain", "finetune"]
    with pytest.raises(Exception, match="not reported by method cllm4rec"):
        build_config({**base, "train": {"metric": "valid/auc"}})


def test_the_recommendation_loss_is_the_multinomial_likelihood_of_the_held_out_items(backbone):
    method = _method(backbone)
    corpora = _corpora(backbone.tokenizer)
    # users holding out different numbers of items: the padded targets must not count
    corpora.train = ItemSets.from_pairs(
        np.r_[[1] * 20, [2] * 5], np.r_[np.arange(1, 21), np.arange(3, 8)], USERS
    )
    batch = _to_torch(next(corpora.recommendation_batches(8, 0, 1)), "recommendation", CPU)
    assert sorted((batch["target_items"] > 0).sum(1).tolist()) == [1, 4]
    with torch.no_grad():
        loss = float(method.recommendation_loss(batch))
        log_probs = torch.log_softmax(method.item_logits(method.user_states(batch)), -1)
    want = -np.mean([float(log_probs[r, t[t > 0]].sum()) for r, t in enumerate(batch["target_items"])])
    assert np.isfinite(loss) and loss == pytest.approx(want, rel=1e-5)


# --- sampled softmax (training on catalogues too large for a full one) --------------------------


def test_the_sampled_normaliser_is_an_unbiased_estimate_of_the_full_one():
    from raylrec.methods.cllm4rec.model import IDTable, sampled_item_log_probs

    torch.manual_seed(0)
    table = IDTable(200, 8)
    with torch.no_grad():
        table.weight.mul_(10.0)  # spread logits: a uniform proposal must still be unbiased
    hidden = torch.randn(3, 8)
    targets = torch.tensor([[5, 0], [7, 9], [150, 0]])
    logits = hidden @ table.weight.T
    logits[:, 0] = -torch.inf
    full = torch.log_softmax(logits, -1).gather(1, targets)
    with torch.no_grad():
        draws = torch.stack([sampled_item_log_probs(hidden, targets, table, 200, 64) for _ in range(600)])
    # log p = o_t - log Z_hat: E[Z_hat] = Z, so E[exp(o_t - log p_hat)] = exp(o_t - log p)
    partition_ratio = torch.exp(full - draws).mean(0)  # E[Z_hat] / Z
    real = targets > 0
    assert torch.allclose(partition_ratio[real], torch.ones_like(partition_ratio[real]), atol=0.03)
    assert torch.isneginf(draws[:, ~real]).all()


def test_sampled_training_reads_only_the_sampled_rows_and_evaluation_uses_the_full_softmax(backbone):
    from raylrec.methods.cllm4rec.model import sampled_item_log_probs

    method = _method(backbone, sampled_negatives=4)
    corpora = _corpora(backbone.tokenizer)
    method.set_stage(next(s for s in method.stages() if s.name == "finetune"))
    batch = _to_torch(next(corpora.recommendation_batches(8, 0, 1)), "recommendation", CPU)
    targets = batch["target_items"]
    method.eval()
    with torch.no_grad():
        full = float(method.recommendation_loss(batch))
        hidden = method.user_states(batch)
        log_probs = torch.log_softmax(method.item_logits(hidden), -1)
    want = -np.mean([float(log_probs[r, t[t > 0]].sum()) for r, t in enumerate(targets)])
    assert full == pytest.approx(want, rel=1e-5)  # eval: the sampled option changes nothing
    method.train()
    assert float(method.recommendation_loss(batch)) != pytest.approx(full)  # training samples
    # the head's gradient reaches the targets' rows and at most 4 sampled rows, not the catalogue
    # (the prompt's own item tokens are looked up in the same table, so the head is taken alone)
    method.zero_grad(set_to_none=True)
    sampled_item_log_probs(hidden, targets, method.collab_items, ITEMS, 4).clamp(min=-1e4).sum().backward()
    touched = set(torch.nonzero(method.collab_items.weight.grad.abs().sum(1)).flatten().tolist())
    wanted = set(targets[targets > 0].tolist())
    assert wanted <= touched and len(touched) <= len(wanted) + 4 < ITEMS - 1


def test_a_sampled_softmax_finetune_lowers_the_full_objective(backbone):
    method = _method(backbone, sampled_negatives=8, finetune_content=False, mr_weight=0.0)
    corpora = _corpora(backbone.tokenizer)
    method.set_stage(next(s for s in method.stages() if s.name == "finetune"))
    method.eval()
    before = _stage_loss(method, corpora, "finetune")  # the full softmax, in eval mode
    _fit_stage(method, corpora, "finetune", 4, lr=0.01, batch_size=4)
    method.eval()
    assert _stage_loss(method, corpora, "finetune") < before


# --- resume --------------------------------------------------------------------------------------


def test_a_stage_resumed_mid_epoch_ends_with_the_tables_of_an_uninterrupted_run(backbone, tmp_path):
    """Fine-tuning with its content pass and the sampled softmax: every random choice of the
    stage (orders, held-out masks, sampled negatives) is seeded by (seed, epoch) or by the batch,
    so a run restored from a mid-epoch checkpoint replays the same batches and ends bit-identical
    to one never interrupted."""
    from helpers import CheckpointingReporter, Interrupt

    corpora = _corpora(backbone.tokenizer)
    steps = stage_steps(corpora, "finetune", True, 4)
    config = TrainConfig(
        epochs=2, batch_size=4, lr=0.01, seed=0, log_every_s=1e9, patience=100, eval_every=100,
        metric=SELECTION_METRIC, mode="max", checkpoint_every_steps=1,
    )  # fmt: skip
    recommendation_steps = corpora.steps("users", 4, 1)  # each epoch's first pass, then content's

    def run(method, reporter, restore_from=None, state=None):
        method.set_stage(next(s for s in method.stages() if s.name == "finetune"))
        params = [p for p in method.parameters() if p.requires_grad]
        engine = TorchEngine(method, config, config.epochs * steps, params, full_state=False)
        if restore_from is not None:
            engine.load(str(restore_from))
        task = CLLM4RecTask(method, corpora, EvalConfig(ks=[10, 20]), 4, 0)
        batches = lambda e: stage_batches(corpora, "finetune", True, 4, 0, e, CPU)  # noqa: E731
        return fit(task, batches, config, reporter, engine, state, steps_per_epoch=steps)

    reference = _method(backbone, sampled_negatives=6)
    run(reference, CheckpointingReporter(tmp_path / "a"))
    interrupted = _method(backbone, sampled_negatives=6)
    # lost inside epoch 2's recommendation pass: the resumed steps draw sampled negatives
    reporter = CheckpointingReporter(tmp_path / "b", fail_at_step=steps + 2)
    with pytest.raises(Interrupt):
        run(interrupted, reporter)
    assert reporter.saved.epoch == 1 and 0 < reporter.saved.epoch_step < recommendation_steps
    resumed = _method(backbone, sampled_negatives=6)
    with torch.no_grad():  # other starting tables: everything must come from the checkpoint
        for table in resumed.method_state_dict().values():
            table.normal_()
    state = run(resumed, CheckpointingReporter(tmp_path / "c"), tmp_path / "b", reporter.saved)
    assert state.step == config.epochs * steps
    want = reference.method_state_dict()
    for name, value in resumed.method_state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=0)


# --- end to end: a prepared dataset, the training pipeline, Ray Train with ZeRO, the bundle -----


@pytest.fixture(scope="module")
def prepared(prepared_dataset) -> str:
    source = {"type": "synthetic", "num_events": 1_200, "num_users": 40, "num_items": 60, "seed": 7}
    return prepared_dataset(source, history={"max_len": 10})


def test_the_content_corpus_tokenised_by_ray_data_is_the_one_a_plain_process_builds(
    prepared, backbone, tmp_path
):
    """What the Ray Train workers receive (a Ray Data job over items.parquet and users.parquet,
    rows in whatever order its blocks finish) is, document for document and in order, what
    load_corpora tokenises in a plain process: the epochs' seeded orders index the same list."""
    import shutil

    import pyarrow.parquet as pq

    from raylrec.config import BackboneConfig
    from raylrec.methods.cllm4rec.content import content_dataset, docs_from_arrays
    from raylrec.methods.cllm4rec.corpora import load_corpora

    dataset = str(tmp_path / "data")  # the synthetic data has no user fields: give it some
    shutil.copytree(prepared, dataset)
    uids = list(range(1, 41))
    pq.write_table(
        pa.table({"uid": uids, "age": [str(18 + u) for u in uids], "occupation": ["writer"] * 40}),
        f"{dataset}/users.parquet",
    )
    local = load_corpora(dataset, backbone.tokenizer, content_max_tokens=12).docs
    ds = content_dataset(dataset, BackboneConfig(name="tiny-random-llama"), max_tokens=12)
    columns = ds.to_pandas()
    assert len(columns) == len(local) > 40
    got = docs_from_arrays({k: columns[k].to_numpy() for k in ("kind", "id", "tokens")})
    assert got == local
    assert [d.kind for d in got].count("user") == 40 and max(len(d.tokens) for d in got) <= 12
    shuffled = columns.sample(frac=1.0, random_state=0)
    assert docs_from_arrays({k: shuffled[k].to_numpy() for k in ("kind", "id", "tokens")}) == local


@pytest.mark.parametrize("implicit", [True, False])
def test_the_item_sets_the_workers_read_from_the_object_store_are_the_plain_processes(
    prepared, backbone, implicit
):
    """Issue 36: on Ray Train CLLM4Rec's user-item sets (its collaborative and recommendation
    corpora, the masks and targets of its ranking evaluation) are built by Ray tasks that stream
    the splits, not read whole in each worker; they hold what load_corpora builds in a plain
    process, user by user, and give the same documents."""
    import ray

    from raylrec.data.output import FORBID_WHOLE_SPLITS
    from raylrec.methods.cllm4rec.corpora import load_corpora, streamed_item_sets

    local = load_corpora(prepared, backbone.tokenizer, content_max_tokens=12, implicit=implicit)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FORBID_WHOLE_SPLITS, "1")  # the Ray tasks stream; nothing reads a split whole
        refs = streamed_item_sets(prepared, implicit)
    sets = ray.get(refs)
    assert len(sets) == 2 and not sets[0].indices.flags.writeable  # zero-copy from the store
    streamed = load_corpora(
        prepared, backbone.tokenizer, content_max_tokens=12, implicit=implicit, item_sets=(sets[0], sets[1])
    )
    for mine, theirs in ((streamed.train, local.train), (streamed.valid, local.valid)):
        np.testing.assert_array_equal(mine.indptr, theirs.indptr)
        np.testing.assert_array_equal(mine.indices, theirs.indices)
    users = streamed.users_with_train()
    assert len(users) > 10
    for uid in users[:10]:
        want = local.collaborative_row(int(uid), np.random.default_rng(int(uid)))
        got = streamed.collaborative_row(int(uid), np.random.default_rng(int(uid)))
        assert vars(got) == vars(want), uid


def _pipeline_config(dataset: str, root, **train):
    return build_config(
        {
            "dataset": dataset,
            "backbone": {"name": "tiny-random-llama"},
            "method": {"name": "cllm4rec", "content_epochs": 2, "pretrain_epochs": 2, "max_items": 16},
            "train": {
                "epochs": 2,
                "batch_size": 8,
                "lr": 1e-2,
                "optimizer": "adam",
                "metric": SELECTION_METRIC,
                "storage_path": str(root / "runs"),
                "patience": 5,
                **train,
            },
            "eval": {"ks": [10, 20], "recall_denominator": "min_k"},
            "output": str(root / "bundle"),
        }
    )


def _rankings(bundle_path: str, dataset: str):
    from raylrec.methods.bundle import load_model_bundle
    from raylrec.methods.cllm4rec.corpora import load_corpora

    bundle = load_model_bundle(bundle_path)
    corpora = load_corpora(dataset, bundle.tokenizer, max_items=bundle.method.config.max_items)
    users = corpora.users_with_train()
    scores, ids = recommend(bundle.method, corpora, users.tolist(), k=10, item_chunk=16)
    for row, uid in enumerate(users):
        assert not set(ids[row].tolist()) & set(corpora.items_of(int(uid)).tolist())
    return scores, ids


# ZeRO-3 once hung here (2026-12-02): the pretraining stages select on train/loss, which was each
# rank's local mean, so only one rank entered the ZeRO-3 gather of the best weights. The loop now
# reduces the loss over ranks (tests/test_train_loop.py checks the decision on two gloo ranks).
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_cllm4rec_trains_under_zero_with_two_workers(prepared, tmp_path, zero_stage):
    """Over 60 s alone: CLLM4Rec's stages each start a Ray Train worker group of 2 DeepSpeed ranks
    (one run per stage), per ZeRO stage, as its issue asks."""
    from safetensors.torch import load_file

    from raylrec.methods.train import train_method

    config = _pipeline_config(prepared, tmp_path, num_workers=2, strategy="deepspeed", zero_stage=zero_stage)
    with pytest.MonkeyPatch.context() as patch:
        # no whole split read, in the driver or the workers (the env reaches them: RAYLREC_*)
        patch.setenv(FORBID_WHOLE_SPLITS, "1")
        result = train_method(config, lambda _: None)
    for stage, state in result.states.items():
        losses = [h["train/loss"] for h in state.history]
        assert len(losses) == 2 and np.isfinite(losses).all(), (stage, losses)
        # the language models' losses fall epoch on epoch; the recommendation objective's
        # epochs hold out fresh items each, so its fall is checked on fixed batches above
        assert stage == "finetune" or losses[-1] < losses[0], (stage, losses)
    assert 0.0 <= result.metrics["valid/recall@20"] <= 1.0 and SELECTION_METRIC in result.metrics
    # every table at its full shape (ZeRO-3 partitions gathered before saving)
    from raylrec.data.output import read_meta

    counts = read_meta(prepared)["counts"]
    rows = {"users": counts["num_users"], "items": counts["num_items"]}
    saved = load_file(f"{result.bundle}/method.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        f"{side}_{kind}.weight": (rows[kind], 64)
        for side in ("collab", "content")
        for kind in ("users", "items")
    }
    _rankings(result.bundle, prepared)


def test_cllm4rec_bundle_on_s3_gives_identical_rankings(prepared, tmp_path, s3_bucket):
    from raylrec.methods.bundle import load_model_bundle
    from raylrec.methods.cllm4rec.corpora import load_corpora
    from raylrec.methods.train import train_method

    config = _pipeline_config(prepared, tmp_path, num_workers=0)
    config = config.model_copy(update={"output": f"{s3_bucket}/cllm4rec"})
    result = train_method(config, lambda _: None, use_ray=False)
    assert result.bundle.startswith("s3://")
    bundle = load_model_bundle(result.bundle)
    assert bundle.prompts is None and bundle.method.config.num_items is not None
    # the trained weights (every stage's best, later over earlier) on a freshly built model
    fresh = METHODS.validate_recorded(bundle.config["method"]).build(load_backbone(config.backbone), None)
    trained = {k: v for state in result.states.values() for k, v in state.best_model.items()}
    fresh.load_method_state_dict({**fresh.method_state_dict(), **trained})
    corpora = load_corpora(prepared, bundle.tokenizer, max_items=16)
    users = corpora.users_with_train().tolist()
    want_scores, want_ids = recommend(fresh.eval(), corpora, users, k=10)
    got_scores, got_ids = recommend(bundle.method, corpora, users, k=10, item_chunk=7)
    assert (got_ids == want_ids).all()
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def local_bundle(prepared, tmp_path_factory) -> str:
    """A CLLM4Rec bundle trained in this process (no Ray Train) on the prepared dataset."""
    from raylrec.methods.train import train_method

    config = _pipeline_config(prepared, tmp_path_factory.mktemp("cllm4rec_local"), num_workers=0)
    return train_method(config, lambda _: None, use_ray=False).bundle


def test_batch_scoring_with_cllm4rec_as_the_whole_ranker_publishes_its_own_top_k(
    prepared, local_bundle, tmp_path
):
    """The scoring job on Ray with the CLLM4Rec bundle alone (no CF bundle): every user once, k
    rows each; for three users the published items and scores are the top k of the method's
    full item-head logits over its serving prompt (built here from the user's known items),
    known items masked: a full sort, not the job's chunked running top-K."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from raylrec.data.output import read_table
    from raylrec.data.vocab import Vocabulary
    from raylrec.methods.bundle import load_model_bundle
    from raylrec.methods.cllm4rec.corpora import pad_rows, serving_row
    from raylrec.scoring import publish as recs
    from raylrec.scoring.job import run_scoring

    output, k, date = str(tmp_path / "recs"), 5, "2026-12-03"
    config = build_config(
        {
            "dataset": prepared,
            "score": {
                "model_bundle": local_bundle,
                "output": output,
                "k": k,
                "splits": ["train", "valid"],
                "users_per_batch": 16,
                "item_chunk": 7,  # several chunks of the 60-item catalogue
            },
        }
    )
    manifest = run_scoring(config, date)
    table = recs.read_recommendations(output, date, verify=True)
    user_ids = read_table(prepared, "users.parquet")["user_id"].to_pylist()
    assert manifest["users"] == len(user_ids) and manifest["retriever_bundle"] and not manifest["cf_bundle"]
    assert table.num_rows == len(user_ids) * k and set(table["source"].to_pylist()) == {"cllm4rec"}

    bundle = load_model_bundle(local_bundle)
    method = bundle.method
    items = Vocabulary.from_table(bundle.items, "item_id", "iid")
    users = Vocabulary.from_table(bundle.users, "user_id", "uid")
    events = pa.concat_tables([read_table(prepared, s, columns=["uid", "iid"]) for s in ("train", "valid")])
    data_users = Vocabulary.from_table(read_table(prepared, "users.parquet"), "user_id", "uid")
    data_items = Vocabulary.from_table(read_table(prepared, "items.parquet"), "item_id", "iid")
    for user in (user_ids[0], user_ids[len(user_ids) // 2], user_ids[-1]):
        mine = events.filter(pc.equal(events["uid"], int(data_users.to_dense([user])[0])))
        known = np.unique(items.to_dense(data_items.to_raw(mine["iid"].to_numpy())))
        uid = int(users.to_dense([user])[0])
        row = serving_row(method.pieces, uid, known, method.config.max_items, seed=0)
        batch = {key: torch.from_numpy(v) for key, v in pad_rows([row]).items()}
        with torch.no_grad():
            logits = method.item_logits(method.user_states(batch))[0].numpy()
        logits[known] = -np.inf
        best = np.argsort(-logits, kind="stable")[:k]
        rows = table.filter(pc.equal(table["user_id"], user)).sort_by("rank")
        assert rows["item_id"].to_pylist() == items.to_raw(best).tolist(), user
        np.testing.assert_allclose(rows["score"].to_numpy(), logits[best], rtol=1e-5, atol=1e-5)
