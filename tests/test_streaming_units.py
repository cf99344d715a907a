"""The pieces of the streamed Ray path that need no Ray: item sets built from a dataset's files
in two streaming passes, their vectorised membership test, the exact streaming AUC, and the
per-user ranking update (all checked against the whole-array implementations)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylrec.cf.distributed_eval import StreamingAUC
from raylrec.data import item_sets
from raylrec.data.item_sets import build_item_sets
from raylrec.data.output import FORBID_WHOLE_SPLITS, WholeSplitReadError, read_table
from raylrec.eval.ctr import auc
from raylrec.eval.ranking import ItemSets, RankingAccumulator


def _dataset(tmp_path, splits: dict[str, pa.Table], num_users: int, num_items: int) -> str:
    """A minimal committed dataset: split files and the meta.json that lists them."""
    import json

    out = tmp_path / "data"
    files = {}
    for name, table in splits.items():
        (out / name).mkdir(parents=True)
        parts = [table.slice(0, len(table) // 2), table.slice(len(table) // 2)]  # two files, in order
        files[name] = []
        for i, part in enumerate(parts):
            pq.write_table(part, out / name / f"w_{i}.parquet")
            files[name].append(f"w_{i}.parquet")
    counts = {
        "num_users": num_users,
        "num_items": num_items,
        "splits": {n: len(t) for n, t in splits.items()},
    }
    (out / "meta.json").write_text(
        json.dumps({"format": "raylrec.processed/1", "counts": counts, "files": files})
    )
    return str(out)


def _rows(rng, n: int, users: int, items: int) -> pa.Table:
    return pa.table(
        {
            "uid": rng.integers(1, users, n).astype(np.int32),
            "iid": rng.integers(1, items, n).astype(np.int32),
            "label": rng.integers(0, 2, n).astype(np.int8),
        }
    )


@pytest.mark.parametrize("distinct", [False, True])
@pytest.mark.parametrize("positives_only", [False, True])
def test_item_sets_from_files_equal_the_whole_array_build(tmp_path, monkeypatch, positives_only, distinct):
    rng = np.random.default_rng(0)
    train, valid = _rows(rng, 5_000, 300, 50), _rows(rng, 700, 300, 50)
    path = _dataset(tmp_path, {"train": train, "valid": valid}, 300, 50)
    monkeypatch.setattr(item_sets, "_BATCH_ROWS", 333)  # many batches, rows of a user across them
    monkeypatch.setattr(item_sets, "_SORT_CHUNK", 97)  # and many sort chunks
    built = build_item_sets(path, ["train", "valid"], 300, positives_only, distinct=distinct)
    both = pa.concat_tables([train, valid])
    keep = both["label"].to_numpy() == 1 if positives_only else np.ones(len(both), bool)
    users, items = both["uid"].to_numpy()[keep], both["iid"].to_numpy()[keep]
    expected = ItemSets.from_pairs(users, items, 300, sort_items=True, distinct=distinct)
    # 5,700 rows over 300 x 50 pairs: many repeats, dropped only when asked
    assert (built.indptr[-1] < len(users)) == distinct and built.distinct == distinct
    if distinct:
        pairs_once = {(int(u), int(i)) for u, i in zip(users, items, strict=True)}
        assert built.indptr[-1] == len(pairs_once)
    np.testing.assert_array_equal(built.indptr, expected.indptr)
    np.testing.assert_array_equal(built.indices, expected.indices)
    # membership: every pair is found; a random probe agrees with a Python set
    assert built.contains(users, items).all()
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    probe_u, probe_i = rng.integers(0, 300, 4_000), rng.integers(0, 50, 4_000)
    truth = np.array([(u, i) in pairs for u, i in zip(probe_u.tolist(), probe_i.tolist(), strict=True)])
    np.testing.assert_array_equal(built.contains(probe_u, probe_i), truth)
    # the rows of some users only (a scoring sample): theirs as before, everyone else's empty
    only = rng.random(300) < 0.1
    some = build_item_sets(path, ["train", "valid"], 300, positives_only, distinct=distinct, only=only)
    mine = np.flatnonzero(only)
    np.testing.assert_array_equal(
        some.sizes_of(np.arange(300)), np.where(only, built.sizes_of(np.arange(300)), 0)
    )
    np.testing.assert_array_equal(some.take(mine).indices, built.take(mine).indices)


def test_the_nth_absent_item_is_the_complement_at_that_rank():
    """Every rank of every user's complement, against ``np.setdiff1d``: users with no items,
    a few, most of the catalogue, and all of it but one."""
    num_items = 40
    rng = np.random.default_rng(3)
    rows = [
        [],
        [1],
        [39],
        [2, 3, 5, 8],
        list(range(1, 39)),
        list(range(2, 40)),
        rng.choice(np.arange(1, 40), 25, replace=False).tolist(),
    ]
    users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    sets = ItemSets.from_pairs(
        users, np.concatenate([np.array(r, np.int64) for r in rows]), len(rows), distinct=True
    )
    for user, row in enumerate(rows):
        absent = np.setdiff1d(np.arange(1, num_items), row)
        got = sets.nth_absent(np.full(len(absent), user), np.arange(len(absent)))
        np.testing.assert_array_equal(got, absent)
    with pytest.raises(ValueError, match="distinct"):
        ItemSets.from_pairs(users, np.ones(len(users), np.int64), len(rows)).nth_absent(users[:1], [0])


def test_bpr_negatives_are_uniform_over_the_items_a_user_has_not_seen():
    """The exact sampler never returns a seen item, draws each unseen one equally often (a
    user who has seen 47 of 49 items, where redrawing would need about 25 rounds per row), and
    gives a user who has seen everything a uniform item instead of looping."""
    from raylrec.cf.data import sample_negatives

    num_items = 50
    heavy, light, everything = list(range(1, 50)), [4, 9], list(range(1, 50))
    heavy = [i for i in heavy if i not in (7, 30)]
    rows = {1: heavy, 2: light, 3: everything}
    users = np.concatenate([np.full(len(r), u) for u, r in rows.items()])
    items = np.concatenate([np.array(r) for r in rows.values()])
    seen = ItemSets.from_pairs(users, items, 4, distinct=True)
    rng = np.random.default_rng(0)
    batch = np.repeat([1, 2, 3], 20_000)
    negatives = sample_negatives(rng, num_items, len(batch), batch, seen)
    assert not seen.contains(batch[:40_000], negatives[:40_000]).any()
    counts = np.bincount(negatives[:20_000], minlength=num_items)
    assert set(np.flatnonzero(counts)) == {7, 30} and abs(counts[7] / 20_000 - 0.5) < 0.02
    light_counts = np.bincount(negatives[20_000:40_000], minlength=num_items)
    assert light_counts[[0, 4, 9]].sum() == 0
    unseen = np.delete(light_counts, [0, 4, 9])  # 47 items, about 426 draws each
    assert unseen.min() > 0 and unseen.max() / unseen.min() < 1.6
    assert len(np.unique(negatives[40_000:])) == 49  # seen everything: uniform over the catalogue


def test_a_whole_split_read_is_refused_when_forbidden(tmp_path, monkeypatch):
    path = _dataset(tmp_path, {"train": _rows(np.random.default_rng(1), 10, 5, 5)}, 5, 5)
    assert read_table(path, "train").num_rows == 10
    monkeypatch.setenv(FORBID_WHOLE_SPLITS, "1")
    with pytest.raises(WholeSplitReadError, match="split 'train' of .* read whole"):
        read_table(path, "train")
    # streaming readers still work
    assert build_item_sets(path, ["train"], 5, False).indptr[-1] == 10


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.1, 0.2, 0.2, 0.5, 0.7, 0.9]), min_size=2, max_size=80),
    seed=st.integers(0, 1000),
    batch=st.integers(1, 9),
)
def test_streaming_auc_is_exact_with_ties_across_batches(scores, seed, batch):
    rng = np.random.default_rng(seed)
    scores = np.sort(np.array(scores))
    labels = rng.integers(0, 2, len(scores)).astype(np.float32)
    warm = rng.integers(0, 2, len(scores)).astype(bool)
    streaming = StreamingAUC()
    for start in range(0, len(scores), batch):
        part = slice(start, start + batch)
        streaming.update({"prob": scores[part], "label": labels[part], "warm": warm[part]})
    for name, mask in (("all", np.ones(len(scores), bool)), ("warm", warm), ("cold", ~warm)):
        expected, got = auc(labels[mask], scores[mask]), streaming.compute(name)
        assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected, abs=1e-12)


def test_ranking_of_listed_users_equals_contiguous_chunks():
    rng = np.random.default_rng(3)
    users, items = 40, 30
    known = ItemSets.from_pairs(rng.integers(1, users, 300), rng.integers(1, items, 300), users)
    target = ItemSets.from_pairs(rng.integers(1, users, 120), rng.integers(1, items, 120), users)
    scores = torch.from_numpy(rng.normal(size=(users, items)))
    whole = RankingAccumulator((5, 10))
    whole.update(scores, 0, known, target)
    listed = RankingAccumulator((5, 10))
    chosen = np.flatnonzero(np.diff(target.indptr) > 0)
    for part in np.array_split(rng.permutation(chosen), 3):
        listed.update_users(scores[part], part, known, target)
    expected, got = whole.compute(), listed.compute()
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-6), name  # float32 sums


def _csr_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got.crow_indices(), expected.crow_indices(), rtol=0, atol=0)
    torch.testing.assert_close(got.col_indices(), expected.col_indices(), rtol=0, atol=0)
    torch.testing.assert_close(got.values(), expected.values(), rtol=0, atol=0)
    assert got.shape == expected.shape


@pytest.mark.parametrize("rows", ["all", "positives"])
def test_the_graph_from_streamed_item_sets_is_the_plain_processes_graph_entry_for_entry(
    tmp_path, monkeypatch, rows
):
    """LightGCN's graph on the Ray path (built from item sets streamed from the files) equals
    the one a plain process builds from the whole split: same rows, columns and values, with
    repeated pairs, users and items of no interaction, and BPR's positives-only graph."""
    from raylrec.cf.data import load_split
    from raylrec.cf.graph import graph_from_item_sets
    from raylrec.cf.streaming import InteractionSplit

    rng = np.random.default_rng(3)
    users, items = 300, 50
    train = _rows(rng, 4_000, users - 40, items - 5)  # the last users and items never appear
    path = _dataset(tmp_path, {"train": train}, users, items)
    monkeypatch.setattr(item_sets, "_BATCH_ROWS", 333)
    expected = load_split(path, "train").graph(rows)
    sets = build_item_sets(path, ["train"], users, positives_only=rows == "positives", distinct=True)
    _csr_equal(graph_from_item_sets(sets, items).tensor(), expected)
    # the Ray path's split without a shared graph streams the same one, never the whole split
    monkeypatch.setenv(FORBID_WHOLE_SPLITS, "1")
    _csr_equal(InteractionSplit(path, users, items).graph(rows), expected)
    with pytest.raises(RuntimeError, match="streamed on the Ray path"):
        InteractionSplit(path, users, items).arrays  # noqa: B018


def test_the_graph_refuses_item_sets_with_repeats():
    from raylrec.cf.graph import graph_from_item_sets

    sets = ItemSets.from_pairs(np.array([1, 1]), np.array([2, 2]), 3)
    with pytest.raises(ValueError, match="distinct"):
        graph_from_item_sets(sets, 4)
