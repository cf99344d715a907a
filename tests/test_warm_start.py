"""`train-cf --init-from` (issue 38, item 3): a CF encoder warm-started from yesterday's bundle
keeps its trained rows, starts new users and items as a fresh model would, trains on the rows it
has not seen plus a seeded replay share of the older ones, records where it started, and a
bundle that does not fit the dataset (renumbered ids, another encoder, no time split) is
refused before anything trains."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from helpers import CF_SOURCE, data_config
from safetensors.torch import load_file

from raylrec import storage
from raylrec.cf.bundle import check_cf_bundle
from raylrec.cf.config import encoder_config
from raylrec.cf.data import Split
from raylrec.cf.train import CFDefinition, train_cf
from raylrec.cf.warm_start import WarmStartError, extended_state, replay_mask
from raylrec.config import build_config
from raylrec.data.output import read_meta, read_table
from raylrec.data.prepare import prepare
from raylrec.nightly import nightly_config, previous_cf_bundle

DAY = 86_400
START = int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp())


# --- the pieces, no Ray -------------------------------------------------------------------------


def _encoder(cf: dict, num_users: int, num_items: int, seed: int):
    rng = np.random.default_rng(seed)
    n = 40
    arrays = {
        "uid": rng.integers(1, num_users, n),
        "iid": rng.integers(1, num_items, n),
        "label": np.ones(n, np.float32),
        "history": rng.integers(0, num_items, (n, 5)),
    }
    torch.manual_seed(seed)
    return encoder_config(cf).build(Split(arrays, num_users, num_items))


# Where each encoder's rows of old users and items must be after the tables grew from (5 users,
# 4 items) to (7, 6), as (key, rows in the new table, rows in the old one): MF and SASRec keep a
# table per side, LightGCN one table of users then items, so its old items move down by the
# two new users.
GROWN = {
    "mf": [("users.weight", slice(0, 5), slice(0, 5)), ("items.weight", slice(0, 4), slice(0, 4))],
    "lightgcn": [
        ("embedding.weight", slice(0, 5), slice(0, 5)),
        ("embedding.weight", slice(7, 11), slice(5, 9)),
    ],
    "sasrec": [("items.weight", slice(0, 4), slice(0, 4))],
}
ENCODER_CONFIGS = {
    "mf": {"model": "mf", "dim": 4},
    "lightgcn": {"model": "lightgcn", "dim": 4},
    "sasrec": {"model": "sasrec", "dim": 4, "max_len": 5, "blocks": 1, "heads": 1},
}


@pytest.mark.parametrize("model", sorted(GROWN))
def test_each_encoder_keeps_every_trained_row_where_its_ids_are_now(model):
    cf = ENCODER_CONFIGS[model]
    old = _encoder(cf, 5, 4, seed=1).state_dict()
    fresh_model = _encoder(cf, 7, 6, seed=2)
    fresh = {k: v.clone() for k, v in fresh_model.state_dict().items()}
    state = extended_state(fresh_model, old, (5, 4), "yesterday")
    moved = torch.zeros_like(state[GROWN[model][0][0]], dtype=torch.bool)
    for key, new_rows, old_rows in GROWN[model]:
        assert torch.equal(state[key][new_rows], old[key][old_rows]), key  # what yesterday learned
        if key == GROWN[model][0][0]:
            moved[new_rows] = True
    key = GROWN[model][0][0]
    assert torch.equal(state[key][~moved.all(dim=1)], fresh[key][~moved.all(dim=1)])  # new ids: fresh
    for name, tensor in state.items():  # every other weight: yesterday's, whole
        if name not in {k for k, _, _ in GROWN[model]}:
            assert torch.equal(tensor, old[name]), name


def test_a_changed_shape_or_an_unknown_weight_is_refused():
    fresh = _encoder(ENCODER_CONFIGS["sasrec"], 7, 6, seed=2)
    longer = _encoder({**ENCODER_CONFIGS["sasrec"], "max_len": 8}, 5, 4, seed=1).state_dict()
    with pytest.raises(WarmStartError, match=r"positions.weight is \(8, 4\) there and \(5, 4\) here"):
        extended_state(fresh, longer, (5, 4), "b")
    extra = {**_encoder(ENCODER_CONFIGS["sasrec"], 5, 4, seed=1).state_dict(), "mask_token": torch.zeros(4)}
    with pytest.raises(WarmStartError, match=r"mask_token"):
        extended_state(fresh, extra, (5, 4), "b")
    with pytest.raises(WarmStartError, match=r"more rows"):
        mf = ENCODER_CONFIGS["mf"]
        extended_state(_encoder(mf, 5, 4, seed=1), _encoder(mf, 7, 6, seed=2).state_dict(), (7, 6), "b")


def test_replay_keeps_every_new_row_and_a_seeded_share_of_the_old():
    rng = np.random.default_rng(0)
    n = 200_000
    uid, iid = rng.integers(1, 1000, n), rng.integers(1, 500, n)
    ts = rng.integers(0, 1000, n)
    since = 900
    new = ts >= since
    keep = replay_mask(uid, iid, ts, since, 0.25, seed=3)
    assert keep[new].all()
    assert abs(keep[~new].mean() - 0.25) < 0.01
    assert np.array_equal(keep, replay_mask(uid, iid, ts, since, 0.25, seed=3))  # every epoch, rank, rerun
    assert not np.array_equal(keep, replay_mask(uid, iid, ts, since, 0.25, seed=4))
    assert np.array_equal(replay_mask(uid, iid, ts, since, 0.0, seed=3), new)
    assert replay_mask(uid, iid, ts, since, 1.0, seed=3).all()
    # another night (another cutoff) replays another sample of the rows both see as old
    older = ts < since
    tomorrow = replay_mask(uid, iid, ts, since + 50, 0.25, seed=3)
    assert not np.array_equal(keep[older], tomorrow[older])
    assert abs(tomorrow[older].mean() - 0.25) < 0.01


# --- on prepared datasets -----------------------------------------------------------------------


def _day(day: int, rng: np.random.Generator, users: list[str], items: list[str], n: int) -> pa.Table:
    return pa.table(
        {
            "user_id": rng.choice(users, n),
            "item_id": rng.choice(items, n),
            "timestamp": (START + day * DAY + np.sort(rng.integers(0, DAY, n))).astype(np.int64),
            "rating": rng.integers(1, 6, n).astype(np.float64),
        }
    )


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, ray_session):
    """A rolling_days dataset of days 0-3 with a CF bundle trained on it, then day 4 appended
    (new users and items whose raw ids sort first), and the same five days prepared in one run
    (which numbers the new ids first: renumbered)."""
    root = tmp_path_factory.mktemp("warm")
    rng = np.random.default_rng(11)
    users, items = [f"u{i:03d}" for i in range(40)], [f"i{i:03d}" for i in range(30)]
    paths = []
    for day in range(5):
        if day == 4:
            users, items = [*users, "a-new-user", "a-second-user"], [*items, "a-new-item"]
        path = root / "log" / f"day={day}" / "events.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(_day(day, rng, users, items, 400), path)
        paths.append(str(path))

    def data(paths: list[str], out: str, **extra):
        split = {"protocol": "rolling_days", "valid_days": 1, "test_days": 1}
        return data_config({"type": "logs", "paths": paths}, out, split=split, **extra)

    dataset, rebuilt = str(root / "dataset"), str(root / "rebuilt")
    prepare(data(paths[:4], dataset))
    yesterday = train_cf(_config(dataset, root / "yesterday"), lambda _: None, use_ray=False).bundle
    before = read_meta(dataset)
    prepare(data(paths[4:], dataset, append=True))
    prepare(data(paths, rebuilt))
    return {"root": root, "dataset": dataset, "rebuilt": rebuilt, "yesterday": yesterday, "before": before}


def _config(dataset: str, out, **sections):
    raw = {
        "dataset": dataset,
        "cf": {"model": "mf", "dim": 8, "loss": "bpr", "implicit": True},
        "train": {
            "epochs": 2,
            "batch_size": 64,
            "lr": 1e-2,
            "metric": "valid/ndcg@10",
            "num_workers": 0,
            "storage_path": str(out / "runs"),
        },
        "output": str(out / "bundle"),
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return build_config(raw)


def _said() -> tuple[list[str], callable]:
    lines: list[str] = []
    return lines, lines.append


def test_the_encoder_starts_from_the_bundle_with_new_rows_as_a_fresh_model(lineage, tmp_path):
    dataset, yesterday = lineage["dataset"], lineage["yesterday"]
    old = load_file(storage.join(yesterday, "model.safetensors"))
    config = _config(dataset, tmp_path, warm_start={"bundle": yesterday, "replay": 0.5})
    definition = CFDefinition(config)
    lines, say = _said()
    init = definition.initial_weights(say)
    stage = definition.stages()[0]
    torch.manual_seed(config.train.seed)
    warm = definition.local_fitting(stage, init, say).task.model.state_dict()
    torch.manual_seed(config.train.seed)
    fresh = CFDefinition(_config(dataset, tmp_path)).local_fitting(stage, {}, say).task.model.state_dict()
    description = check_cf_bundle(yesterday)
    users_before, items_before = description["num_users"], description["num_items"]
    meta = read_meta(dataset)["counts"]
    assert (meta["num_users"], meta["num_items"]) == (users_before + 2, items_before + 1)
    for name, tensor in warm.items():
        rows = old[name].shape[0]
        assert torch.equal(tensor[:rows], old[name]), name  # what yesterday learned
        assert torch.equal(tensor[rows:], fresh[name][rows:]), name  # today's new ids: fresh
    assert any("2 new user rows and 1 new item rows" in line for line in lines), lines


def test_it_trains_on_the_new_rows_and_the_replayed_share_and_records_its_start(lineage, tmp_path):
    dataset, yesterday, before = lineage["dataset"], lineage["yesterday"], lineage["before"]
    config = _config(dataset, tmp_path, warm_start={"bundle": yesterday, "replay": 0.3})
    definition = CFDefinition(config)
    definition.initial_weights(lambda _: None)
    since = before["protocol"]["temporal_cutoffs"][0]  # where yesterday's training rows ended
    train = read_table(dataset, "train")
    ts = train["timestamp"].to_numpy()
    expected = replay_mask(
        train["uid"].to_numpy(), train["iid"].to_numpy(), ts, since, 0.3, config.train.seed
    )
    rows = definition._warm_rows(definition.train)
    assert len(rows) == int(expected.sum())
    fitting = definition.local_fitting(definition.stages()[0], {}, lambda _: None)
    assert fitting.steps_per_epoch == len(rows) // config.train.batch_size  # what the loop trains on
    assert 0 < int((ts >= since).sum()) < len(rows) < len(ts)  # new rows, plus some old ones

    result = train_cf(config, lambda _: None, use_ray=False)
    recorded = storage.read_json(storage.join(result.bundle, "config.json"))
    assert recorded["warm_start"] == {
        "bundle": yesterday,
        "since": since,
        "replay": 0.3,
        "num_users": check_cf_bundle(yesterday)["num_users"],
        "num_items": check_cf_bundle(yesterday)["num_items"],
    }
    assert recorded["training"]["train_cutoff"] == read_meta(dataset)["protocol"]["temporal_cutoffs"][0]
    assert recorded["training"]["dataset_version"] == 2
    assert np.isfinite(result.metrics["valid/ndcg@10"])


def test_warm_start_on_ray_train(lineage, tmp_path):
    """The Ray path: each worker extends the bundle's weights over its fresh encoder and streams
    only the kept rows. A learning rate too small to move the weights shows the start itself."""
    dataset, yesterday, before = lineage["dataset"], lineage["yesterday"], lineage["before"]
    config = _config(
        dataset,
        tmp_path,
        warm_start={"bundle": yesterday, "replay": 0.3},
        train={"num_workers": 2, "lr": 1e-9},
    )
    lines, say = _said()
    result = train_cf(config, say, use_ray=True)
    assert storage.read_json(storage.join(result.bundle, "config.json"))["warm_start"]["bundle"] == yesterday
    old = load_file(storage.join(yesterday, "model.safetensors"))
    new = load_file(storage.join(result.bundle, "model.safetensors"))
    for name, tensor in old.items():
        assert torch.allclose(new[name][: tensor.shape[0]], tensor, atol=1e-6), name
    train = read_table(dataset, "train")
    since = before["protocol"]["temporal_cutoffs"][0]
    kept = replay_mask(
        train["uid"].to_numpy(),
        train["iid"].to_numpy(),
        train["timestamp"].to_numpy(),
        since,
        0.3,
        config.train.seed,
    )
    assert f"streaming {int(kept.sum()) // 2:,} training rows per rank to 2 workers" in lines, lines


def test_a_bundle_that_does_not_fit_is_refused_before_training(lineage, tmp_path, prepared_dataset):
    yesterday = lineage["yesterday"]
    renumbered = _config(lineage["rebuilt"], tmp_path, warm_start={"bundle": yesterday})
    with pytest.raises(WarmStartError, match=r"user\(s\) of warm_start.bundle .* other dense ids .*append"):
        CFDefinition(renumbered).initial_weights(lambda _: None)
    other = _config(lineage["dataset"], tmp_path, cf={"model": "lightgcn"}, warm_start={"bundle": yesterday})
    with pytest.raises(WarmStartError, match="holds a mf encoder; this run trains lightgcn"):
        CFDefinition(other).initial_weights(lambda _: None)
    random_split = prepared_dataset(CF_SOURCE)
    untimed = _config(random_split, tmp_path, warm_start={"bundle": yesterday})
    with pytest.raises(WarmStartError, match="has no time split"):
        CFDefinition(untimed).initial_weights(lambda _: None)
    wider = _config(lineage["dataset"], tmp_path, cf={"dim": 16}, warm_start={"bundle": yesterday})
    with pytest.raises(WarmStartError, match=r"cf.dim 8 there, 16 here"):
        CFDefinition(wider).initial_weights(lambda _: None)
    today = train_cf(_config(lineage["dataset"], tmp_path / "today"), lambda _: None, use_ray=False).bundle
    again = _config(lineage["dataset"], tmp_path, warm_start={"bundle": today})
    with pytest.raises(WarmStartError, match="has seen every training row of"):
        CFDefinition(again).initial_weights(lambda _: None)
    scratch = train_cf(_config(random_split, tmp_path / "scratch"), lambda _: None, use_ray=False).bundle
    from_untimed = _config(lineage["dataset"], tmp_path, warm_start={"bundle": scratch})
    with pytest.raises(WarmStartError, match="records no training cutoff"):
        CFDefinition(from_untimed).initial_weights(lambda _: None)


def test_a_rolling_days_nightly_refreshes_cf_from_the_newest_committed_earlier_bundle(lineage, tmp_path):
    root = tmp_path / "nightly"
    committed = root / "cf" / "date=2026-11-23"
    shutil.copytree(lineage["yesterday"], committed)
    crashed = root / "cf" / "date=2026-11-24"  # a date that died mid-export: no config.json
    shutil.copytree(lineage["yesterday"], crashed)
    (crashed / "config.json").unlink()
    shutil.copytree(lineage["yesterday"], root / "cf" / "date=2026-11-26")  # later: not a start
    assert previous_cf_bundle(str(root), "2026-11-25") == str(committed)
    assert previous_cf_bundle(str(root), "2026-11-23") is None

    raw = {
        "data": {
            "source": {"type": "logs", "paths": ["{date}"]},
            "split": {"protocol": "rolling_days"},
            "output": "replaced-by-nightly",
        },
        "cf": {"model": "mf", "loss": "bpr", "implicit": True},
        "train": {"metric": "valid/ndcg@10"},
        "score": {"output": str(tmp_path / "recs")},
        "nightly": {"root": str(root), "refresh_cf": True},
    }
    assert nightly_config(build_config(raw), "2026-11-25").warm_start.bundle == str(committed)
    off = {**raw, "nightly": {**raw["nightly"], "warm_start_cf": False}}
    assert nightly_config(build_config(off), "2026-11-25").warm_start.bundle is None
    per_date = {**raw, "data": {**raw["data"], "split": {"protocol": "random_ratio"}}}
    assert nightly_config(build_config(per_date), "2026-11-25").warm_start.bundle is None


def test_users_first_seen_in_the_held_out_days_get_the_popular_fallback(lineage, tmp_path):
    """Issue 38, item 4: a user who appeared today (only in the held-out days, so without a
    training row) has an embedding nothing trained. The bundle records which users training saw
    (``users.parquet``'s ``trained``, from the train split), and the scoring actor serves the
    others the popularity fallback instead of a ranking by an untrained vector."""
    from raylrec.cf.bundle import trained_users
    from raylrec.scoring.recommender import Recommender, ScoringPlan

    dataset = lineage["dataset"]
    bundle = train_cf(_config(dataset, tmp_path), lambda _: None, use_ray=False).bundle
    users = read_table(dataset, "users.parquet")
    train_users = set(read_table(dataset, "train", columns=["uid"])["uid"].to_numpy().tolist())
    flags = trained_users(bundle, read_meta(dataset)["counts"]["num_users"])
    uid = dict(zip(users["user_id"].to_pylist(), users["uid"].to_pylist(), strict=True))
    assert {u for u in range(len(flags)) if flags[u]} == train_users
    assert not flags[uid["a-new-user"]] and not flags[uid["a-second-user"]] and flags[uid["u000"]]

    popular = tuple(read_table(dataset, "items.parquet")["item_id"].to_pylist()[:5])
    plan = ScoringPlan(
        dataset=dataset, cf_bundle=bundle, retriever_bundle=None, model_bundle=None, model_name="mf",
        run_id="r", k=3, candidates=3, exclude_seen=True, index="exact", item_chunk=16, rerank_rows=8,
        rerank_pack_tokens=64, popular_items=popular, popular_scores=(5.0, 4.0, 3.0, 2.0, 1.0),
    )  # fmt: skip
    batch = pa.table(
        {
            "user_id": ["a-new-user", "u000"],
            "history": pa.array([[], [1, 2]], pa.list_(pa.int64())),
            "seen": pa.array([[], [1, 2]], pa.list_(pa.int64())),
        }
    )
    rows = Recommender(plan, device="cpu")._recommend(batch)
    source = dict(zip(rows["user_id"].to_pylist(), rows["source"].to_pylist(), strict=False))
    assert source == {"a-new-user": "popular", "u000": "cf"}
    newcomer = rows.filter(pc.equal(rows["user_id"], "a-new-user"))
    assert newcomer["item_id"].to_pylist() == list(popular[:3])
