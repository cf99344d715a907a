"""RecBole's own BPR (MF) and LightGCN on raylrec's prepared MovieLens-100K split.

Exports ``train/``, ``valid/`` and ``test/`` of a prepared dataset (``raylrec data prepare
--config configs/ml100k.yaml`` writes ``out/ml100k``) as RecBole atomic files
(``ml100k_raylrec.{train,valid,test}.inter``, with raylrec's dense ids as tokens) and trains
RecBole 1.2.1 on them with ``benchmark_filename: [train, valid, test]``, so RecBole does not
re-split: both sides see exactly the same interactions in every split. Protocol: every
interaction a positive, BPR with one uniform negative, embedding size 64, batch 2048, Adam,
early stopping on valid NDCG@10, full ranking with training (and, for test, valid) items
masked, Recall@K with |test items| as denominator and NDCG@K with the ideal DCG over
min(K, |test items|): the same definitions as raylrec/eval/ranking.py. Prints, per run, test
Recall@10/20 and NDCG@10/20, the best epoch, the epochs run and the mean training seconds per
epoch (the training pass only, not the per-epoch validation).

Why a separate environment: recbole 1.2.1 pins ray<=2.6.3 (and pulls its own old-era stack),
which cannot live beside raylrec's Ray, so it gets its own venv and never touches .venv.
Set it up, one command a line (torch first: the pinned CPU wheel; a looser pin downloads the
CUDA build):

    python3 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install torch==2.13.0
    /work/recbole-venv/bin/pip install recbole==1.2.1 pyarrow

Run from the repository root:

    /work/recbole-venv/bin/python bench/recbole_cf.py --dataset out/ml100k

RecBole 1.2.1 predates numpy 2, scipy's new sparse classes and torch's weights_only default;
``_compat()`` patches those at run time (nothing in site-packages is edited). RecBole writes
its logs and checkpoints under the working directory, so the runs chdir into ``--work-dir``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time

import numpy as np
import pandas as pd

from raylrec.data.output import read_table

DATASET_NAME = "ml100k_raylrec"
SPLITS = ("train", "valid", "test")


def _compat() -> None:
    """Make recbole 1.2.1 run on numpy 2, scipy >= 1.13 and torch >= 2.6."""
    import scipy.sparse as sp
    import torch

    # Config.compatibility_settings() assigns np.float = np.float_ etc.; numpy 2 removed these.
    for name, value in {
        "float_": np.float64,
        "complex_": np.complex128,
        "unicode_": np.str_,
        "float": float,
        "int": int,
        "bool": bool,
        "object": object,
        "str": str,
        "complex": complex,
        "long": np.int64,
    }.items():
        if not hasattr(np, name):
            setattr(np, name, value)
    # LightGCN builds its adjacency with dok_matrix._update, gone from scipy's dok since 1.13.
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)
    # Trainer reloads its own best checkpoint (config object inside): not weights-only.
    original_load = torch.load

    @functools.wraps(original_load)
    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load


def export(dataset: str, work_dir: str) -> dict[str, int]:
    """raylrec splits -> RecBole atomic .inter files; returns rows per split."""
    out_dir = os.path.join(work_dir, DATASET_NAME)
    os.makedirs(out_dir, exist_ok=True)
    rows = {}
    for split in SPLITS:
        table = read_table(dataset, split, columns=["uid", "iid", "timestamp"])
        frame = table.to_pandas().sort_values(["uid", "timestamp", "iid"], kind="stable")
        frame = pd.DataFrame(
            {
                "user_id:token": frame["uid"].astype(str),
                "item_id:token": frame["iid"].astype(str),
                "timestamp:float": frame["timestamp"].astype(float),
            }
        )
        frame.to_csv(os.path.join(out_dir, f"{DATASET_NAME}.{split}.inter"), sep="\t", index=False)
        rows[split] = len(frame)
    return rows


def load_split_pairs(dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split in SPLITS:
        table = read_table(dataset, split, columns=["uid", "iid"])
        out[split] = (table["uid"].to_numpy().astype(np.int64), table["iid"].to_numpy().astype(np.int64))
    return out


def raylrec_metrics(model, dataset, pairs: dict, ks=(10, 20)) -> dict[str, float]:
    """Cross-check: RecBole's best model scored by raylrec's own RankingAccumulator
    (raylrec/eval/ranking.py, loaded by path: it needs only numpy and torch), in raylrec ids,
    train and valid items masked. Should equal RecBole's test numbers (up to tie order)."""
    import torch
    from recbole.data.interaction import Interaction

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "raylrec", "eval", "ranking.py")
    spec = importlib.util.spec_from_file_location("raylrec_ranking", path)
    ranking = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ranking  # dataclasses resolves the module by name
    spec.loader.exec_module(ranking)

    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    n_users, n_items = dataset.user_num, dataset.item_num  # internal ids, 0 = [PAD]
    model.eval()
    with torch.no_grad():
        users = torch.arange(n_users, dtype=torch.long)
        scores = model.full_sort_predict(Interaction({uid_field: users})).view(n_users, n_items)
    user_ids = np.array([0] + [int(t) for t in dataset.field2id_token[uid_field][1:]])
    item_ids = np.array([0] + [int(t) for t in dataset.field2id_token[iid_field][1:]])
    num_users = int(max(user_ids.max(), *(p[0].max() for p in pairs.values()))) + 1
    num_items = int(max(item_ids.max(), *(p[1].max() for p in pairs.values()))) + 1
    ours = torch.full((num_users, num_items), -torch.inf)
    ours[torch.as_tensor(user_ids)[:, None], torch.as_tensor(item_ids)[None, :]] = scores.float()
    known = ranking.ItemSets.from_pairs(
        np.r_[pairs["train"][0], pairs["valid"][0]], np.r_[pairs["train"][1], pairs["valid"][1]], num_users
    )
    target = ranking.ItemSets.from_pairs(*pairs["test"], num_users)
    acc = ranking.RankingAccumulator(tuple(ks), "test_items")
    acc.update(ours, 0, known, target)
    return acc.compute()


def run(model_name: str, lr: float, work_dir: str, args: argparse.Namespace, pairs: dict) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    config_dict = {
        "data_path": work_dir,
        "benchmark_filename": list(SPLITS),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "embedding_size": 64,
        "train_batch_size": 2048,
        "learning_rate": lr,
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "eval_step": 1,
        "train_neg_sample_args": {
            "distribution": "uniform",
            "sample_num": 1,
            "alpha": 1.0,
            "dynamic": False,
            "candidate_num": 0,
        },
        "eval_args": {
            "mode": {"valid": "full", "test": "full"},
            "order": "RO",
            "group_by": "user",
            "split": {"RS": [0.8, 0.1, 0.1]},
        },  # split is ignored: benchmark files
        "metrics": ["Recall", "NDCG"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "seed": args.seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "show_progress": False,
        "checkpoint_dir": os.path.join(work_dir, "saved"),
        "state": "INFO",
    }
    if model_name == "LightGCN":
        config_dict["n_layers"] = 3  # reg_weight: RecBole's default (1e-5, require_pow False)
    config = Config(model=model_name, dataset=DATASET_NAME, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    loaders = (train_data, valid_data, test_data)
    sizes = {n: len(d._dataset.inter_feat) for n, d in zip(SPLITS, loaders, strict=True)}
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert isinstance(trainer, Trainer)

    epoch_seconds: list[float] = []
    valid_scores: list[float] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train_epoch(*a, **kw):
        started = time.perf_counter()
        loss = train_epoch(*a, **kw)
        epoch_seconds.append(time.perf_counter() - started)
        return loss

    def recorded_valid_epoch(*a, **kw):
        score, result = valid_epoch(*a, **kw)
        valid_scores.append(float(score))
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, recorded_valid_epoch
    started = time.perf_counter()
    best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    wall = time.perf_counter() - started
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    check = raylrec_metrics(trainer.model, dataset, pairs)
    # RecBole's early_stopping keeps the later epoch on ties (value >= best): last argmax.
    best_epoch = len(valid_scores) - int(np.argmax(valid_scores[::-1]))
    return {
        "model": f"RecBole {model_name}",
        "lr": lr,
        "recall@10": float(test["recall@10"]),
        "recall@20": float(test["recall@20"]),
        "ndcg@10": float(test["ndcg@10"]),
        "ndcg@20": float(test["ndcg@20"]),
        "raylrec_metric_check": {k: round(v, 4) for k, v in check.items() if "@" in k and k[0] in "rn"},
        "valid_ndcg@10": float(best_valid),
        "best_epoch": best_epoch,
        "epochs": len(epoch_seconds),
        "s_per_epoch": float(np.mean(epoch_seconds)),
        "s_per_epoch_median": float(np.median(epoch_seconds)),
        "s_per_epoch_min": float(np.min(epoch_seconds)),
        "wall_s": wall,
        "users": dataset.user_num - 1,
        "items": dataset.item_num - 1,
        "rows": sizes,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="out/ml100k", help="raylrec prepared dataset directory")
    parser.add_argument(
        "--work-dir", default="/tmp/recbole_cf", help="atomic files, RecBole logs, checkpoints"
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--stopping-step", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["BPR:1e-3", "LightGCN:5e-3", "LightGCN:1e-3"],
        help="MODEL:LR pairs (raylrec's configs: MF-BPR 1e-3, LightGCN 5e-3; RecBole's default 1e-3)",
    )
    args = parser.parse_args()
    dataset = os.path.abspath(args.dataset)
    work_dir = os.path.abspath(args.work_dir)
    sys.argv = sys.argv[:1]  # RecBole's Config parses the command line too
    _compat()
    rows = export(dataset, work_dir)
    print(f"exported {dataset} -> {work_dir}/{DATASET_NAME}: {rows}", flush=True)
    pairs = load_split_pairs(dataset)
    os.chdir(work_dir)  # RecBole writes ./log and ./log_tensorboard
    results = []
    for spec in args.runs:
        model_name, lr = spec.split(":")
        result = run(model_name, float(lr), work_dir, args, pairs)
        print(f"result: {result}", flush=True)
        results.append(result)

    header = (
        "model",
        "lr",
        "Recall@10",
        "Recall@20",
        "NDCG@10",
        "NDCG@20",
        "best epoch",
        "epochs",
        "s/epoch mean",
        "median",
        "min",
    )
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        print(
            f"| {r['model']} | {r['lr']:g} | {r['recall@10']:.4f} | {r['recall@20']:.4f} "
            f"| {r['ndcg@10']:.4f} | {r['ndcg@20']:.4f} | {r['best_epoch']} | {r['epochs']} "
            f"| {r['s_per_epoch']:.3f} | {r['s_per_epoch_median']:.3f} | {r['s_per_epoch_min']:.3f} |"
        )
    print("\nthe same best models scored by raylrec/eval/ranking.py (raylrec ids, train+valid masked):")
    for r in results:
        print(f"  {r['model']} lr {r['lr']:g}: {r['raylrec_metric_check']}")
    print(
        f"\ntest split, full ranking over {results[0]['items']} items, {results[0]['users']} users, "
        f"rows {results[0]['rows']}, torch threads {results[0]['torch_threads']}, "
        f"stopping_step {args.stopping_step}, seed {args.seed}"
    )


if __name__ == "__main__":
    main()
