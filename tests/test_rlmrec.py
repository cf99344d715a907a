"""RLMRec (arXiv 2310.15950), the CF enhancer: its config, the profile-embeddings contract it
reads, LightGCN's edge dropout, and training. With the alignment weight at 0, Con and Gen
train to exactly the plain LightGCN of the same seed; with it on, the alignment term falls and
the tables move away from the plain run's; users and items without a profile are left out
of the term; on Ray Train with 2 workers the exported bundle is an ordinary CF bundle that
scores as the trained encoder does.

The profile embeddings here are random unit vectors written in the contract's layout (test
data: nothing is learned from them that a test checks beyond the loss itself)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import write_embeddings

from raylrec.cf.bundle import load_cf_bundle
from raylrec.cf.config import ENCODERS
from raylrec.cf.data import Split, load_split
from raylrec.cf.encoders.lightgcn.model import LightGCN
from raylrec.cf.encoders.rlmrec.profiles import read_profile_embeddings
from raylrec.cf.graph import normalized_adjacency
from raylrec.cf.models import FixedTables
from raylrec.cf.task import CFTask, build_encoder, epoch_batches
from raylrec.config import EvalConfig, TrainConfig, build_config
from raylrec.config_types import ConfigError
from raylrec.train.engines import TorchEngine
from raylrec.train.loop import fit
from raylrec.train.reporting import LocalReporter

USERS, ITEMS, DIM = 40, 60, 16  # table sizes (index 0 is padding) and the profile width


def _all_ids(n: int) -> np.ndarray:
    return np.arange(1, n)


@pytest.fixture
def profiles(tmp_path) -> str:
    return write_embeddings(str(tmp_path / "emb"), _all_ids(USERS), _all_ids(ITEMS))


def _split(rows: int = 800, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    arrays = {
        "uid": rng.integers(1, USERS, rows),
        "iid": rng.integers(1, ITEMS, rows),
        "label": np.ones(rows, np.float32),
    }
    return Split(arrays, USERS, ITEMS)


def _cf(**kw):
    return ENCODERS.get(kw.pop("model", "rlmrec"))(dim=8, loss="bpr", implicit=True, reg_weight=1e-4, **kw)


def _train(cf, train: Split, epochs: int = 3, seed: int = 0):
    """What the training core does in a plain process: seed torch, build, fit (CFTask, the
    encoder's own loss, TorchEngine, seeded BPR batches). Returns the encoder and its state."""
    config = TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=1e-2,
        seed=seed,
        metric="valid/ndcg@10",
        patience=100,
        log_every_s=1e9,
    )
    torch.manual_seed(seed)
    model = build_encoder(cf, train)
    task = CFTask(model, cf, EvalConfig(), train, train)
    engine = TorchEngine(model, config, epochs * (len(train) // 64))
    state = fit(task, lambda e: epoch_batches(train, 64, seed, e, cf), config, LocalReporter(), engine)
    model.eval()
    return model, state


def _tables(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.user_vectors({"uid": torch.arange(model.num_users)}), model.item_vectors()


# --- config -------------------------------------------------------------------------------------


def test_the_paper_defaults_follow_the_variant():
    con, gen = ENCODERS.get("rlmrec")(), ENCODERS.get("rlmrec")(variant="gen")
    assert (con.weight, con.temperature, con.layers) == (1e-2, 0.2, 3)
    assert (gen.weight, gen.temperature, gen.layers, gen.mask_ratio) == (0.1, 0.5, 2, 0.15)
    base = con.base_config()
    assert (base.model, base.combine, base.edge_dropout, base.layers) == ("lightgcn", "sum", 0.2, 3)
    mf = ENCODERS.get("rlmrec")(base="mf", init="xavier", dim=32).base_config()
    assert (mf.model, mf.init, mf.dim) == ("mf", "xavier", 32)


@pytest.mark.parametrize(
    ("cf", "message"),
    [
        ({"base": "mf", "layers": 2}, "cf.layers is a lightgcn key; cf.base is mf"),
        ({"init": "xavier"}, "cf.init is a mf key; cf.base is lightgcn"),
        ({"base": "mf", "variant": "gen"}, "it needs base lightgcn"),
        ({"mask_ratio": 0.1}, "cf.mask_ratio is a key of variant gen"),
    ],
)
def test_inconsistent_sections_are_refused(cf, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"cf": {"model": "rlmrec", **cf}})


def test_building_without_profiles_says_what_is_missing():
    with pytest.raises(ValueError, match="needs cf.profiles"):
        build_encoder(_cf(), _split())


# --- the embeddings contract -------------------------------------------------------------------


def test_embeddings_load_in_the_node_layout_with_absent_ones_marked(tmp_path):
    root = write_embeddings(str(tmp_path / "e"), np.array([3, 1, 7]), np.array([2, 59]))
    got = read_profile_embeddings(root, USERS, ITEMS)
    assert got.dim == DIM and got.vectors.shape == (USERS + ITEMS, DIM)
    assert np.flatnonzero(got.present).tolist() == [1, 3, 7, USERS + 2, USERS + 59]
    assert np.allclose(np.linalg.norm(got.vectors[got.present], axis=1), 1, atol=1e-5)
    assert not got.vectors[~got.present].any()


def test_without_a_file_list_every_part_is_read_and_a_changed_part_is_refused(tmp_path):
    root = write_embeddings(str(tmp_path / "e"), _all_ids(USERS), _all_ids(ITEMS), listed=False)
    assert read_profile_embeddings(root, USERS, ITEMS).present.sum() == USERS - 1 + ITEMS - 1
    root = write_embeddings(str(tmp_path / "f"), _all_ids(USERS), _all_ids(ITEMS))
    write_embeddings(str(tmp_path / "g"), _all_ids(USERS), _all_ids(ITEMS), seed=1)
    (tmp_path / "f" / "part-00001.parquet").write_bytes((tmp_path / "g" / "part-00001.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"part-00001\.parquet does not match its checksum"):
        read_profile_embeddings(root, USERS, ITEMS)


def test_embeddings_read_from_s3(s3_bucket):
    root = write_embeddings(f"{s3_bucket}/profiles/emb", _all_ids(USERS), _all_ids(ITEMS))
    got = read_profile_embeddings(root, USERS, ITEMS)
    assert got.present.sum() == USERS - 1 + ITEMS - 1


def test_a_directory_without_its_manifest_is_refused(tmp_path):
    root = write_embeddings(str(tmp_path / "e"), _all_ids(USERS), _all_ids(ITEMS), manifest=False)
    with pytest.raises(ValueError, match=r"no _manifest\.json: not committed embeddings"):
        read_profile_embeddings(root, USERS, ITEMS)


def test_ids_beyond_the_dataset_are_refused_naming_the_file(tmp_path):
    root = write_embeddings(str(tmp_path / "e"), _all_ids(USERS + 5), _all_ids(ITEMS), parts=1)
    with pytest.raises(ValueError, match=r"part-00000\.parquet: user id \d+ is outside the dataset's users"):
        read_profile_embeddings(root, USERS, ITEMS)


def test_a_dim_that_disagrees_with_the_manifest_is_refused_naming_the_file(tmp_path):
    root = write_embeddings(str(tmp_path / "e"), _all_ids(USERS), _all_ids(ITEMS), parts=1)
    manifest = json.loads((tmp_path / "e" / "_manifest.json").read_text())
    (tmp_path / "e" / "_manifest.json").write_text(json.dumps({**manifest, "dim": 384}))
    with pytest.raises(
        ValueError, match=r"part-00000\.parquet: embeddings are 16-d, the manifest says dim 384"
    ):
        read_profile_embeddings(root, USERS, ITEMS)


def test_a_repeated_id_and_a_wrong_row_count_are_refused(tmp_path):
    root = write_embeddings(str(tmp_path / "e"), np.array([1, 2, 2]), np.array([1]), parts=1)
    with pytest.raises(ValueError, match="user id 2 appears twice"):
        read_profile_embeddings(root, USERS, ITEMS)
    root = write_embeddings(str(tmp_path / "f"), np.array([1, 2]), np.array([1]), parts=1)
    manifest = json.loads((tmp_path / "f" / "_manifest.json").read_text())
    (tmp_path / "f" / "_manifest.json").write_text(json.dumps({**manifest, "rows": {"user": 3, "item": 1}}))
    with pytest.raises(ValueError, match="records 3 user rows, the part files hold 2"):
        read_profile_embeddings(root, USERS, ITEMS)


# --- LightGCN's edge dropout ---------------------------------------------------------------------


def _lightgcn(edge_dropout: float, seed: int = 0) -> LightGCN:
    train = _split(2000)
    adjacency = normalized_adjacency(train.arrays["uid"], train.arrays["iid"], USERS, ITEMS)
    torch.manual_seed(seed)
    return LightGCN(USERS, ITEMS, adjacency, dim=8, layers=2, combine="sum", edge_dropout=edge_dropout)


def test_edge_dropout_drops_a_fresh_share_each_step_and_evaluation_uses_the_full_graph():
    model = _lightgcn(0.2).train()
    full = model.adjacency.to_dense()
    first, second = model.graph().to_dense(), model.graph().to_dense()
    for drawn in (first, second):
        kept = drawn != 0
        share = 1 - kept.sum().item() / (full != 0).sum().item()
        assert 0.15 < share < 0.25, share
        assert torch.equal(drawn[kept], full[kept])  # not rescaled
        assert not (kept & (full == 0)).any()
    assert not torch.equal(first, second)  # each step draws again

    model.eval()
    assert torch.equal(model.graph().to_dense(), full)
    users, items = model.propagate()
    x, outputs = model.embedding.weight, [model.embedding.weight]
    for _ in range(2):
        x = full @ x
        outputs.append(x)
    want = torch.stack(outputs).sum(0)
    torch.testing.assert_close(torch.cat([users, items]), want, rtol=1e-5, atol=1e-6)


def test_edge_dropout_is_seeded_and_off_by_default():
    a, b, c = _lightgcn(0.2, seed=1).train(), _lightgcn(0.2, seed=1).train(), _lightgcn(0.2, seed=2).train()
    draws = [[m.graph().to_dense() for _ in range(2)] for m in (a, b, c)]
    assert all(torch.equal(x, y) for x, y in zip(draws[0], draws[1], strict=True))
    assert not torch.equal(draws[0][0], draws[2][0])
    plain = _lightgcn(0.0).train()
    assert plain.graph() is plain.adjacency and "dropout_draws" not in plain.state_dict()
    assert ENCODERS.get("lightgcn")().edge_dropout == 0.0


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["con", "gen"])
def test_at_weight_zero_training_equals_plain_lightgcn(profiles, variant):
    train = _split()
    cf = _cf(variant=variant, profiles=profiles, weight=0.0)
    aligned, state = _train(cf, train)
    assert not list(aligned.parameters())[1:]  # the base's one table; no MLP, no mask token
    plain, plain_state = _train(cf.base_config(), train)
    for got, want in zip(_tables(aligned), _tables(plain), strict=True):
        assert torch.equal(got, want)
    assert [h["train/loss"] for h in state.history] == [h["train/loss"] for h in plain_state.history]


@pytest.mark.parametrize("variant", ["con", "gen"])
def test_with_the_weight_on_the_alignment_falls_and_the_tables_move(profiles, variant):
    train = _split()
    # Gen reconstructs random profiles from neighbours only: weight 1 makes the term dominate,
    # so that a few epochs move it visibly.
    cf = _cf(variant=variant, profiles=profiles, weight=1.0 if variant == "gen" else None)
    torch.manual_seed(0)
    untrained = build_encoder(cf, train).eval()
    torch.manual_seed(0)
    plain_untrained = build_encoder(cf.base_config(), train).eval()
    # The alignment's own parameters come off a private stream: the base starts where the
    # plain base does, so runs differ by the alignment term alone.
    for got, want in zip(_tables(untrained), _tables(plain_untrained), strict=True):
        assert torch.equal(got, want)

    batch = next(epoch_batches(train, 256, 7, 1, cf))
    masked = torch.arange(1, USERS + ITEMS, 5)
    masked = masked[untrained.has_profile[masked]]
    with torch.no_grad():
        before = float(untrained.alignment(batch, masked=masked))
    trained, _ = _train(cf, train, epochs=8)
    with torch.no_grad():
        after = float(trained.alignment(batch, masked=masked))
    assert after < 0.93 * before, (before, after)

    plain, _ = _train(cf.base_config(), train, epochs=8)
    assert not torch.allclose(_tables(trained)[1], _tables(plain)[1], atol=1e-4)


def test_users_and_items_without_a_profile_are_left_out_of_the_term(tmp_path):
    # MF base: each row's vector is its own parameter row, so the term's gradient shows
    # exactly which users and items it reads.
    root = write_embeddings(str(tmp_path / "e"), np.arange(1, 20), np.arange(1, 30))
    train = _split()
    cf = _cf(base="mf", profiles=root)
    torch.manual_seed(0)
    model = build_encoder(cf, train)
    batch = next(epoch_batches(train, 256, 0, 1, cf))
    model.alignment(batch).backward()
    user_grad = model.base.users.weight.grad.abs().sum(1)
    item_grad = model.base.items.weight.grad.abs().sum(1)
    seen_users = torch.unique(batch["uid"])
    seen_items = torch.unique(torch.cat([batch["iid"], batch["neg"]]))
    assert (user_grad[seen_users[seen_users < 20]] > 0).all()
    assert (user_grad[20:] == 0).all() and (item_grad[30:] == 0).all()
    assert (item_grad[seen_items[seen_items < 30]] > 0).all()
    assert torch.isfinite(model.alignment(batch))


def test_mf_con_trains(profiles):
    train = _split()
    model, state = _train(_cf(base="mf", profiles=profiles), train)
    losses = [h["train/loss"] for h in state.history]
    assert losses[-1] < losses[0]
    assert sorted(model.state_dict()) == sorted(
        [
            "base.users.weight",
            "base.items.weight",
            *(f"mapper.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")),
        ]
    )


# --- Ray Train, bundle ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(prepared_dataset) -> str:
    source = {"type": "synthetic", "num_events": 3_000, "num_users": 60, "num_items": 80, "seed": 5}
    return prepared_dataset(source)


@pytest.mark.parametrize("variant", ["con", pytest.param("gen", marks=pytest.mark.slow)])
def test_trains_on_ray_train_with_two_workers_and_exports_an_ordinary_bundle(tiny_dataset, tmp_path, variant):
    from raylrec.cf.train import train_cf
    from raylrec.data.output import read_meta

    counts = read_meta(tiny_dataset)["counts"]
    profiles = write_embeddings(
        str(tmp_path / "emb"), _all_ids(counts["num_users"]), _all_ids(counts["num_items"])[::2]
    )
    config = build_config(
        {
            "dataset": tiny_dataset,
            "cf": {
                "model": "rlmrec",
                "variant": variant,
                "profiles": profiles,
                "dim": 8,
                "loss": "bpr",
                "implicit": True,
                "reg_weight": 1e-4,
            },
            "train": {
                "epochs": 2,
                "batch_size": 256,
                "lr": 1e-2,
                "num_workers": 2,
                "metric": "valid/ndcg@10",
                "storage_path": str(tmp_path / "runs"),
            },
            "output": str(tmp_path / "bundle"),
        }
    )
    result = train_cf(config, print, use_ray=True)
    bundle = load_cf_bundle(result.bundle)
    assert bundle.config["cf"]["model"] == "rlmrec" and isinstance(bundle.encoder, FixedTables)

    train = load_split(tiny_dataset, "train")
    trained = build_encoder(config.cf, train)
    trained.load_state_dict(result.state.best_model)
    trained.eval()
    valid = load_split(tiny_dataset, "valid").arrays
    batch = {k: torch.from_numpy(v[:64]) for k, v in valid.items() if k in ("uid", "iid")}
    with torch.no_grad():
        want = trained.score(batch)
        assert float(want.std()) > 0
        torch.testing.assert_close(bundle.encoder.score(batch), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bundle.items, trained.item_vectors(), rtol=1e-5, atol=1e-6)
