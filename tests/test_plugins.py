"""The plugin matrix, driven by the registries: every registered method and every registered CF
encoder goes through the whole life of a model in a plain process, with its own config
defaults (only generic sizes are set here: a tiny dataset, one epoch, ``cf.dim`` 8). Registering
a model adds it here with no edit.

- A method is built on the tiny random Llama (given a CF bundle when it ``needs_cf``), trains
  one epoch per stage, is saved (``output``), reloads (``load_model_bundle``) to the same scores
  as its trained weights on a fixed batch, and is scored through the ``Reranker``: shared-prefix
  scores equal full-prompt scores where it ``shares_prefix``, the full-prompt fallback's equal
  ``score_full`` where it does not.
- A CF encoder trains, exports, reloads (``load_cf_bundle``) to the same scores as its trained
  weights, and retrieves k items per user over the bundle's tables with seen items excluded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CHECKED_IN_DATASETS, DATA_DIR, checked_in_dataset, data_config, write_embeddings

from raylrec.cf.bundle import load_cf_bundle
from raylrec.cf.config import ENCODERS, encoder_config
from raylrec.cf.data import load_split
from raylrec.cf.train import train_cf
from raylrec.config import build_config
from raylrec.data.output import read_meta
from raylrec.data.prepare import prepare
from raylrec.llm.backbone import load_backbone
from raylrec.llm.samples import local_samples
from raylrec.methods import METHODS, template_text
from raylrec.methods.bundle import load_model_bundle
from raylrec.methods.task import to_batch
from raylrec.methods.train import train_method
from raylrec.scoring.rerank import Reranker, RerankRequest
from raylrec.scoring.retrieval import exact_top_n


def _quiet(_: str) -> None:
    pass


def _train(root, **train) -> dict:
    return {"epochs": 1, "lr": 1e-2, "num_workers": 0, "storage_path": str(root / "runs"), **train}


def _trained_weights(result) -> dict[str, torch.Tensor]:
    """The best weights of every stage, later stages over earlier ones (what was exported)."""
    return {k: v for state in result.states.values() for k, v in state.best_model.items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """The tiny prepared dataset checked into tests/data/ (no Ray: these tests are in
    `make test-fast`); ``test_the_checked_in_dataset_is_what_prepare_makes`` keeps it current."""
    return checked_in_dataset("plugins-synthetic", tmp_path_factory.mktemp("plugins"))


def test_the_checked_in_dataset_is_what_prepare_makes(tmp_path, ray_session):
    """Preparing the checked-in dataset's spec today gives the same rows (content hash) and
    counts: a change to preparation that makes it stale fails here (run tests/data/make.py)."""
    spec = dict(CHECKED_IN_DATASETS["plugins-synthetic"])
    out = str(tmp_path / "fresh")
    prepare(data_config(spec.pop("source"), out, **spec))
    fresh, committed = read_meta(out), read_meta(str(DATA_DIR / "plugins-synthetic"))
    assert fresh["content_hash"] == committed["content_hash"], "stale: run tests/data/make.py"
    assert fresh["counts"] == committed["counts"]


@pytest.fixture(scope="module")
def cf_bundle(dataset, tmp_path_factory) -> str:
    """The CF bundle a method that ``needs_cf`` reads: the default encoder."""
    root = tmp_path_factory.mktemp("plugins-cf")
    config = build_config(
        {
            "dataset": dataset,
            "cf": {"dim": 8},
            "train": _train(root, batch_size=256),
            "output": str(root / "cf"),
        }
    )
    return train_cf(config, _quiet, use_ray=False).bundle


# --- CF encoders ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS.names())
def test_cf_encoder_trains_exports_reloads_and_retrieves(name, dataset, tmp_path):
    cf = {"model": name, "dim": 8}
    if getattr(ENCODERS.get(name), "needs_profiles", False):  # a CF enhancer aligned to profiles
        train = load_split(dataset, "train")
        cf["profiles"] = write_embeddings(
            str(tmp_path / "profiles"), np.arange(1, train.num_users), np.arange(1, train.num_items)
        )
    config = build_config(
        {
            "dataset": dataset,
            "cf": cf,
            "train": _train(tmp_path, batch_size=256),
            "output": str(tmp_path / "cf"),
        }
    )
    result = train_cf(config, _quiet, use_ray=False)
    assert result.bundle and result.metrics

    history_len = config.cf.history_len
    train = load_split(dataset, "train", history_len)
    trained = config.cf.build(train)
    trained.load_state_dict(_trained_weights(result))
    trained.eval()
    bundle = load_cf_bundle(result.bundle)
    assert encoder_config(bundle.config["cf"]).model == name

    valid = load_split(dataset, "valid", history_len).arrays
    batch = {k: torch.from_numpy(v[:64]) for k, v in valid.items() if k in ("uid", "iid", "history")}
    with torch.no_grad():
        want, got = trained.score(batch), bundle.encoder.score(batch)
        assert bool(torch.isfinite(want).all()) and float(want.std()) > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bundle.items, trained.item_vectors(), rtol=1e-5, atol=1e-6)

    # retrieval over the bundle's tables, each user's training items excluded
    k = 5
    users = np.arange(1, train.num_users)
    uid, iid = train.arrays["uid"], train.arrays["iid"]
    seen = [np.unique(iid[uid == u]) for u in users]
    _, top = exact_top_n(bundle.users[users], bundle.items, k, seen)
    assert top.shape == (len(users), k)
    for row, items in zip(top, seen, strict=True):
        found = row[row > 0].tolist()
        assert len(set(found)) == len(found) == min(k, train.num_items - 1 - len(items))
        assert not set(found) & set(items.tolist())
        assert (row[len(found) :] == 0).all()


# --- methods ----------------------------------------------------------------------------------


def _method_config(name: str, dataset: str, cf: str, root):
    method = {"name": name}
    if METHODS.get(name).needs_cf:
        method["cf_bundle"] = cf
    # select on what the method reports: AUC for a pointwise scorer, top-K for a full-catalog one
    reported = METHODS.get(name)(**method).reported_metrics([10, 20])
    metric = "valid/auc" if "valid/auc" in reported else "valid/recall@20"
    return build_config(
        {
            "dataset": dataset,
            "backbone": {"name": "tiny-random-llama"},
            "method": method,
            "prompt": {"max_tokens": 96, "history_items": 3},
            "sample": {"max_train": 32, "max_valid": 16},
            "train": _train(root, batch_size=8, optimizer="adamw", patience=5, metric=metric),
            "output": str(root / "bundle"),
        }
    )


def _requests(num_items: int) -> list[RerankRequest]:
    rng = np.random.default_rng(4)
    items = np.arange(1, num_items)
    return [
        RerankRequest(
            uid, rng.choice(items, size, replace=False).tolist(), rng.choice(items, n, replace=False).tolist()
        )
        for uid, size, n in [(1, 5, 7), (2, 0, 3), (3, 8, 12)]
    ]


def _train_items(dataset: str, uid: int) -> np.ndarray:
    from raylrec.data.output import read_table

    train = read_table(dataset, "train", columns=["uid", "iid"])
    return np.unique(train["iid"].to_numpy()[train["uid"].to_numpy() == uid])


@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_saves_reloads_and_reranks(name, dataset, cf_bundle, tmp_path):
    config = _method_config(name, dataset, cf_bundle, tmp_path)
    result = train_method(config, _quiet, use_ray=False)
    assert result.bundle and result.metrics
    bundle = load_model_bundle(result.bundle)
    assert bundle.method.name == name

    # the trained weights, on a freshly built model, against the reloaded bundle
    torch.manual_seed(config.train.seed)
    backbone = load_backbone(config.backbone)
    cf = load_cf_bundle(config.method.cf_bundle) if config.method.cf_bundle else None
    # the method's config as trained (training may fill in what the dataset sizes, as CLLM4Rec's tables)
    trained = bundle.method.config.build(backbone, cf)
    trained.load_method_state_dict({**trained.method_state_dict(), **_trained_weights(result)})
    trained.eval()
    if config.method.role == "full_catalog":  # it ranks the catalogue: compare its top 10s
        users = np.array([1, 2, 3])
        known = [_train_items(dataset, int(u)) for u in users]
        want_s, want_i = trained.recommend(users, known, 10)
        got_s, got_i = bundle.method.recommend(users, known, 10)
        assert np.isfinite(want_s).all() and (want_i > 0).all()
        assert not any(set(row) & set(k) for row, k in zip(want_i.tolist(), known, strict=True))
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
        return
    cf_history = encoder_config(cf.config["cf"]).history_len if cf is not None else 0
    template = template_text(config.method.stages()[-1].template)
    samples = local_samples(config, "valid", template, cf_history, bundle.prompts.tokenizer)
    batch = to_batch(samples, np.arange(min(8, len(samples["uid"]))), torch.device("cpu"))
    with torch.no_grad():
        want, got = trained(batch), bundle.method(batch)
    assert bool(torch.isfinite(want).all())
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    if config.method.role != "pointwise":
        return  # a full-catalog recommender or a CF enhancer reranks nothing
    reranker = Reranker(
        bundle.method, bundle.prompts, cf_history, max_rows=8, pack_tokens=64, rows_per_forward=2
    )
    requests = _requests(len(bundle.items))
    scores, full = reranker.score(requests), reranker.score_full(requests)
    for s, r in zip(scores, requests, strict=True):
        assert s.shape == (len(r.candidates),) and np.isfinite(s).all()
    diff = max(float(np.abs(s - f).max()) for s, f in zip(scores, full, strict=True))
    kind = "shared-prefix" if config.method.shares_prefix else "full-prompt fallback"
    print(f"{name}: {kind} vs full-prompt max |diff| = {diff:.2e}")
    assert diff < (1e-4 if config.method.shares_prefix else 1e-5)


def test_a_full_catalog_method_retrieves_the_candidates_a_pointwise_method_reranks(dataset, tmp_path):
    """The scoring actor with CLLM4Rec as the retriever and TALLRec as the reranker (no CF
    bundle at all): every user's rows come from the rerank, its items are among CLLM4Rec's top
    ``candidates`` for the user (known items excluded), and the scores are TALLRec's own logits
    for them, best first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from raylrec.data.output import read_table
    from raylrec.data.vocab import Vocabulary
    from raylrec.scoring.recommender import Recommender, ScoringPlan

    bundles = {
        name: train_method(_method_config(name, dataset, "", tmp_path / name), _quiet, use_ray=False).bundle
        for name in ("cllm4rec", "tallrec")
    }
    k, candidates = 3, 6
    plan = ScoringPlan(
        dataset=dataset, cf_bundle=None, retriever_bundle=bundles["cllm4rec"],
        model_bundle=bundles["tallrec"],
        model_name="m", run_id="r", k=k, candidates=candidates, exclude_seen=True, index="exact",
        item_chunk=16, rerank_rows=8, rerank_pack_tokens=64, popular_items=("x",), popular_scores=(0.0,),
    )  # fmt: skip
    users = read_table(dataset, "users.parquet").sort_by("uid").slice(0, 4)
    data_items = Vocabulary.from_table(read_table(dataset, "items.parquet"), "item_id", "iid")
    known = [_train_items(dataset, int(u)) for u in users["uid"].to_pylist()]
    profiles = pa.table(
        {
            "user_id": users["user_id"],
            "history": pa.array([k_[-3:].tolist() for k_ in known], pa.list_(pa.int64())),
            "seen": pa.array([k_.tolist() for k_ in known], pa.list_(pa.int64())),
        }
    )
    recommender = Recommender(plan, device="cpu")
    table = recommender(profiles)
    assert set(table["source"].to_pylist()) == {"rerank"} and table.num_rows == len(known) * k

    retriever, reranker = recommender.catalog.method, recommender.reranker
    uids = users["uid"].to_numpy()
    _, top = retriever.recommend(uids, known, candidates)
    for row, (user, history, pool) in enumerate(zip(users["user_id"].to_pylist(), known, top, strict=True)):
        logits = reranker.score([RerankRequest(0, history[-3:].tolist(), pool.tolist())])[0]
        best = np.argsort(-logits, kind="stable")[:k]
        mine = table.filter(pc.equal(table["user_id"], user)).sort_by("rank")
        assert mine["item_id"].to_pylist() == data_items.to_raw(pool[best]).tolist(), row
        np.testing.assert_allclose(mine["score"].to_numpy(), logits[best], rtol=1e-5, atol=1e-5)
        assert not set(pool.tolist()) & set(history.tolist())
