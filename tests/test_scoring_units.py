"""Scoring parts in a plain process: exact chunked retrieval against brute force, the faiss
index against exact search, shared-prefix reranking against the full-prompt computation for
every method (the max difference is printed), the full-prompt fallback for a method that cannot
share a prefix, shared prompts against full prompts, raw-id
vocabularies, user profiles against a per-user reference, and the publish protocol (manifest
last, verified counts, replace, readers; races and hostile manifests: test_publish_safety)."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import stage_run
from hypothesis import given, settings
from hypothesis import strategies as st

from raylrec import storage
from raylrec.cf.bundle import CFBundle
from raylrec.cf.encoders.mf.model import MF
from raylrec.config import BackboneConfig
from raylrec.data.item_sets import latest_positives
from raylrec.data.vocab import Vocabulary
from raylrec.eval.ranking import ItemSets
from raylrec.llm.backbone import load_backbone
from raylrec.llm.prompts import PromptBuilder
from raylrec.methods import METHODS, template_text
from raylrec.methods.tallrec import TALLRecConfig
from raylrec.methods.tallrec.model import TALLRec
from raylrec.scoring import publish as recs
from raylrec.scoring.profiles import PROFILE_SCHEMA, profiles_of_users
from raylrec.scoring.rerank import Reranker, RerankRequest
from raylrec.scoring.retrieval import FaissIndex, exact_top_n


def _brute_force(users, items, n, exclude):
    scores = users @ items.T
    scores[:, 0] = -np.inf
    for row, seen in enumerate(exclude):
        scores[row, seen] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(scores, ids, 1), ids


@settings(max_examples=40, deadline=None)
@given(
    users=st.integers(1, 9),
    items=st.integers(2, 60),
    n=st.integers(1, 12),
    chunk=st.integers(1, 70),
    seed=st.integers(0, 10_000),
)
def test_exact_top_n_matches_brute_force(users, items, n, chunk, seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(users, 4)).astype(np.float32)
    table = rng.normal(size=(items, 4)).astype(np.float32)
    exclude = [rng.choice(np.arange(1, items), rng.integers(0, items), replace=False) for _ in range(users)]
    scores, ids = exact_top_n(torch.from_numpy(u), torch.from_numpy(table), n, exclude, item_chunk=chunk)
    want_scores, want_ids = _brute_force(u.astype(np.float64), table.astype(np.float64), n, exclude)
    for row in range(users):
        available = items - 1 - len(exclude[row])
        k = min(n, available)
        # the same scores in the same order (ids may differ only on exact ties)
        np.testing.assert_allclose(scores[row, :k], want_scores[row, :k], rtol=1e-5, atol=1e-5)
        assert not set(ids[row, :k]) & set(exclude[row].tolist()) and 0 not in ids[row, :k]
        assert (ids[row, k:] == 0).all() and np.isneginf(scores[row, k:]).all()


def test_faiss_index_finds_the_exact_neighbours_and_skips_seen_items():
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.normal(size=(2_001, 16)).astype(np.float32))
    users = torch.from_numpy(rng.normal(size=(50, 16)).astype(np.float32))
    exclude = [rng.choice(np.arange(1, 2_001), 30, replace=False) for _ in range(50)]
    _, exact = exact_top_n(users, items, 20, exclude)
    _, approx = FaissIndex(items).top_n(users, 20, exclude)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact, strict=True)])
    print(f"faiss HNSW recall@20 vs exact: {recall:.3f}")
    assert recall >= 0.9
    for row, seen in zip(approx, exclude, strict=True):
        assert not set(row.tolist()) & set(seen.tolist()) and 0 not in row


def _cf_bundle() -> CFBundle:
    torch.manual_seed(0)
    encoder = MF(20, 60, 8).eval()
    config = {"dim": 8, "num_users": 20, "num_items": 60, "cf": {"model": "mf"}}
    return CFBundle(config, encoder.users.weight.detach(), encoder.items.weight.detach(), encoder)


TITLES = {i: f"Movie {i}" + " sequel" * (i % 5) for i in range(1, 60)}


def _reranker(name: str, max_rows: int) -> Reranker:
    backbone = load_backbone(BackboneConfig(name="tiny-random-llama"))
    fields = METHODS.get(name).model_fields
    own: dict = {"experts": 4} if "experts" in fields else {}
    own |= {"lora": {"dropout": 0.0}} if "lora" in fields else {"dropout": 0.0} if "dropout" in fields else {}
    method = METHODS.get(name)(cf_bundle="in-memory", **own).build(backbone, _cf_bundle())
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # trained-looking adapters: LoRA's B starts at zero
        for params in method.parameter_groups().values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    prompts = PromptBuilder(backbone.tokenizer, template_text(method.stages()[-1].template), TITLES, 128, 6)
    return Reranker(method, prompts, max_rows=max_rows, pack_tokens=64, rows_per_forward=3)


@pytest.mark.parametrize(
    "name",
    [n for n in METHODS.names() if METHODS.get(n).role == "pointwise" and METHODS.get(n).shares_prefix],
)
def test_shared_prefix_scores_equal_full_prompt_scores(name):
    rng = np.random.default_rng(1)
    requests = [
        RerankRequest(
            uid, rng.integers(1, 60, size).tolist(), rng.choice(np.arange(1, 60), n, replace=False).tolist()
        )
        for uid, size, n in [(1, 8, 23), (2, 0, 5), (3, 3, 1), (4, 12, 40)]
    ]
    reranker = _reranker(
        name, max_rows=16
    )  # splits users over passes, passes over users, suffixes over packed rows
    shared = reranker.score(requests)
    full = reranker.score_full(requests)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(shared, full, strict=True))
    spread = float(np.concatenate(full).std())
    print(f"{name}: shared-prefix vs full-prompt max |diff| = {diff:.2e} (score std {spread:.3f})")
    assert diff < 1e-4 and spread > 1e-3  # the scores differ between candidates, and agree


class _CandidateDependent(TALLRec):
    """Every token's input embedding carries the candidate it belongs to: the prompt prefix's
    keys and values depend on the candidate, as under CoRA's per-candidate generated weights."""

    def input_embeddings(self, batch):
        embeds = self.lm.get_input_embeddings()(batch["input_ids"])
        items = self.token_items(batch)[..., None].float()
        return embeds + 0.5 * torch.sin(items * torch.arange(1, embeds.shape[-1] + 1, device=items.device))


class _NoSharedPrefixConfig(TALLRecConfig):
    name: Literal["test_no_shared_prefix"] = "test_no_shared_prefix"
    shares_prefix = False

    def method_class(self):
        return _CandidateDependent


@pytest.fixture
def no_shared_prefix_method():
    """A method that cannot share a prefix, registered for this test only."""
    METHODS.register(_NoSharedPrefixConfig)
    yield _NoSharedPrefixConfig
    METHODS._classes.pop("test_no_shared_prefix", None)


def test_a_method_that_cannot_share_a_prefix_is_scored_with_full_prompts(
    no_shared_prefix_method, monkeypatch
):
    rng = np.random.default_rng(2)
    requests = [
        RerankRequest(
            uid, rng.integers(1, 60, size).tolist(), rng.choice(np.arange(1, 60), n, replace=False).tolist()
        )
        for uid, size, n in [(1, 8, 23), (2, 0, 5), (3, 3, 1), (4, 12, 9)]
    ]
    reranker = _reranker("test_no_shared_prefix", max_rows=16)
    assert type(reranker.method) is _CandidateDependent
    full = reranker.score_full(requests)

    contexts, widths = [], []
    decode = reranker.method.decode

    def recording_decode(batch, context=None):
        contexts.append(context)
        widths.append(batch["input_ids"].shape[1])
        return decode(batch, context)

    def no_cache(*args, **kwargs):
        raise AssertionError("the reranker built a prefix cache for a method that cannot share one")

    with monkeypatch.context() as patch:
        patch.setattr(reranker.method, "decode", recording_decode)
        patch.setattr("raylrec.scoring.rerank.DynamicCache", no_cache)
        scores = reranker.score(requests)
    assert contexts and all(c is None for c in contexts)
    assert len(contexts) == -(-sum(len(r.candidates) for r in requests) // 16)  # batched, max_rows each
    assert widths == sorted(widths)  # rows sorted by length: the last forward holds the longest
    diff = max(float(np.abs(a - b).max()) for a, b in zip(scores, full, strict=True))
    print(f"full-prompt fallback vs score_full max |diff| = {diff:.2e}")
    assert diff < 1e-5
    # sharing the prefix would be wrong for it: the prefix never sees the candidate
    monkeypatch.setattr(_NoSharedPrefixConfig, "shares_prefix", True)
    shared = reranker.score(requests)
    assert max(float(np.abs(a - b).max()) for a, b in zip(shared, full, strict=True)) > 1e-3


def test_shared_prompts_are_the_full_prompts_and_share_one_history():
    tokenizer = load_backbone(BackboneConfig(name="tiny-random-llama")).tokenizer
    history, targets = [3, 7, 11, 19, 23, 29], [1, 14, 5]  # 14 has the longest title
    roomy = PromptBuilder(tokenizer, template_text("collm"), TITLES, 512, 6)
    bare = len(roomy.encode([], 14)[0])
    # room for about two history titles beside the longest candidate
    builder = PromptBuilder(
        tokenizer, template_text("collm"), TITLES, bare + 2 * len(roomy._title(29)) + 2, 6
    )
    shared = builder.encode_shared(history, targets)
    assert 0 < shared.history_items < len(history)  # the budget bites
    for target, suffix in zip(targets, shared.suffixes, strict=True):
        ids = shared.prefix + suffix
        assert len(ids) <= builder.max_tokens
        if target == 14:  # the longest title: exactly the full prompt
            assert ids == builder.encode(history, target)[0]
    assert (
        roomy.encode_shared(history, targets).prefix + roomy.encode_shared(history, targets).suffixes[0]
        == (roomy.encode(history, 1)[0])
    )


def _reference_profile(rows: list[tuple[str, int, int, int]], history_len: int) -> dict:
    """One user's profile, spelled out: the newest positives by (time, item), oldest first."""
    positives = sorted((t, i) for _, i, t, label in rows if label > 0)
    return {
        "history": [i for _, i in positives][max(0, len(positives) - history_len) :] if history_len else [],
        "seen": sorted({i for _, i, _, _ in rows}),
    }


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3", "u4"]),
            st.integers(1, 6),  # few items and times: repeats and ties in time are common
            st.integers(0, 3),
            st.integers(0, 1),
        ),
        max_size=60,
    ),
    requested=st.lists(st.sampled_from(["u1", "u2", "u3", "cold"]), max_size=6, unique=True),
    history_len=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 60), max_size=4),
)
def test_profiles_match_a_per_user_reference_however_the_events_arrive(
    events, requested, history_len, seed, cuts
):
    """Histories are merged batch by batch (at most ``history_len`` kept per user), so any order
    of the events and any cut into batches gives each user's newest positives by (time, item)."""
    dense_of = {"u1": 1, "u2": 2, "u3": 3, "u4": 4, "cold": 0}
    order = np.random.default_rng(seed).permutation(len(events))
    rows = [events[k] for k in order]
    uid = np.array([dense_of[u] for u, *_ in rows], np.int64)
    iid, time, label = (np.array([r[k] for r in rows], np.int64) for k in (1, 2, 3))
    positive = label > 0
    bounds = [0, *sorted(min(c, int(positive.sum())) for c in cuts), int(positive.sum())]
    batches = [
        {"uid": uid[positive][a:b], "iid": iid[positive][a:b], "timestamp": time[positive][a:b]}
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    history = latest_positives(iter(batches), 5, history_len)
    seen = ItemSets.from_pairs(uid, iid, 5, distinct=True)
    dense = np.array([dense_of[u] for u in requested], np.int64)
    got = profiles_of_users(pa.array(requested, pa.string()), dense, seen, history)
    assert got.schema == PROFILE_SCHEMA
    assert got["user_id"].to_pylist() == requested
    for row in got.to_pylist():
        mine = [e for e in events if e[0] == row["user_id"]]
        assert {"history": row["history"], "seen": row["seen"]} == _reference_profile(mine, history_len)
    # a user file's sample keeps the histories of its users alone, the same ones
    only = np.zeros(5, bool)
    only[dense[dense > 0]] = True
    sample = latest_positives(iter(batches), 5, history_len, only)
    np.testing.assert_array_equal(sample.sizes_of(np.flatnonzero(~only)), 0)
    np.testing.assert_array_equal(sample.take(dense).indices, history.take(dense).indices)
    np.testing.assert_array_equal(sample.take(dense).indptr, history.take(dense).indptr)


def test_vocabulary_maps_raw_ids_and_unknown_ones_to_zero():
    vocab = Vocabulary(np.array(["u9", "u3", "u7"]), np.array([1, 2, 3]))
    assert vocab.to_dense(["u3", "nobody", "u9"]).tolist() == [2, 0, 1]
    assert vocab.to_raw(np.array([3, 1])).tolist() == ["u7", "u9"]


def test_a_dense_map_moves_ids_between_numberings_as_the_raw_ids_do():
    data = Vocabulary(np.array(["a", "b", "c", "d"]), np.array([1, 2, 4, 5]))  # 3 unused
    bundle = Vocabulary(np.array(["d", "a", "z"]), np.array([1, 2, 3]))  # lacks b and c
    mapping = data.dense_map(bundle)
    assert mapping.tolist() == [0, 2, 0, 0, 0, 1]
    dense = np.array([5, 1, 2, 4])
    assert mapping[dense].tolist() == bundle.to_dense(data.to_raw(dense)).tolist()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(0, 9), max_size=5), max_size=8),
    cut=st.integers(0, 8),
    chunks=st.booleans(),
)
def test_list_rows_are_the_rows_of_a_sliced_or_chunked_column(rows, cut, chunks):
    """The scoring actor reads each user's seen items as views of the batch's one buffer (no
    Python int per item): the same rows as ``to_pylist``, mapped or not, for a batch that is a
    slice of a larger block or spread over chunks."""
    from raylrec.data.arrays import list_rows

    array = pa.array(rows, pa.list_(pa.int64()))
    column = array.slice(min(cut, len(rows)))
    if chunks:
        column = pa.chunked_array([column.slice(0, len(column) // 2), column.slice(len(column) // 2)])
    mapping = np.arange(10) * 10 + 1
    want = column.to_pylist()
    assert [r.tolist() for r in list_rows(column)] == want
    assert [r.tolist() for r in list_rows(column, mapping)] == [[10 * v + 1 for v in r] for r in want]


def test_publish_protocol(tmp_path):
    root, date = str(tmp_path / "recs"), "2026-11-24"
    rows = [(u, r) for u in ("a", "b") for r in (1, 2)]
    run1 = recs.start_run(root, date, "run1")
    stage_run(root, date, "run1", rows)
    # written but not published: invisible
    assert recs.published_dates(root) == [] and recs.read_manifest(root, date) is None
    with pytest.raises(FileNotFoundError, match="not published"):
        recs.read_recommendations(root, date)
    # a user missing or a duplicated row set refuses to publish
    with pytest.raises(RuntimeError, match="expected one row set for each of 3 users"):
        run1.publish(expected_users=3, details={"model": "m"})
    with recs.start_run(root, date, "dup") as dup:  # ends unpublished
        stage_run(root, date, "dup", rows + [("a", 1)])
        with pytest.raises(RuntimeError, match="1 duplicated"):
            dup.publish(expected_users=2, details={"model": "m"})
    with run1:
        manifest = run1.publish(expected_users=2, details={"model": "m"})
    assert manifest["rows"] == 4 and manifest["users"] == 2
    assert not (tmp_path / "recs" / f"date={date}" / "_runs" / "dup").exists()  # ended, never named
    assert recs.read_recommendations(root).num_rows == 4
    # a rerun replaces the partition; the old run's files go after the manifest switched
    with recs.start_run(root, date, "run2") as run2:
        stage_run(root, date, "run2", [("a", 1), ("b", 1), ("c", 1)])
        run2.publish(expected_users=3, details={"model": "m"})
    table = recs.read_recommendations(root, date)
    assert table.num_rows == 3 and set(table["run_id"].to_pylist()) == {"run2"}
    assert not (tmp_path / "recs" / f"date={date}" / "_runs" / "run1").exists()
    # a file changed after publishing fails verification
    part = tmp_path / "recs" / f"date={date}" / "_runs" / "run2" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    with pytest.raises(storage.StorageError, match="corrupted"):
        recs.read_recommendations(root, date)  # verified by default
    assert json.loads((tmp_path / "recs" / f"date={date}" / recs.MANIFEST).read_text())["run_id"] == "run2"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        recs.partition(root, "24/11/2026")
