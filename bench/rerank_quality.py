"""Top-K quality of the two-stage ranker: CF retrieval alone against CF retrieval + LLM rerank,
both through the real scoring job (``run_scoring`` on a local Ray instance), on the same users.

For ``--users`` users drawn (seeded) among those with held-out positives, the job retrieves
``--candidates`` items from the CF bundle (items in ``--known`` splits excluded) and writes the
top ``--k``; the rerank run lets the model bundle reorder the same candidates. Each published
partition is scored against the ``--truth`` split with ``raylrec.scoring.quality``. A third line,
the candidates' own Recall@N, is the ceiling any reranker of them can reach.

    # MovieLens-100K (make demo writes the dataset and both bundles); truth = every test interaction
    .venv/bin/python bench/rerank_quality.py --name ml100k --dataset out/demo/ml100k \\
        --cf-bundle out/demo/bundles/mf_bpr_ml100k --model-bundle out/demo/bundles/reclora_ml100k \\
        --known train valid --truth test --implicit
    # the CoLLM MovieLens-1M split (valid = the held-out set; bench/quality.py trains the bundle)
    .venv/bin/python bench/rerank_quality.py --name collm_ml1m --dataset out/collm_ml1m \\
        --cf-bundle out/bundles/mf_collm_ml1m --model-bundle out/bench_quality/bundles/collm \\
        --known train --truth valid
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from raylrec import storage
from raylrec.config import RayConfig, build_config
from raylrec.runtime import init_ray
from raylrec.scoring.job import run_scoring
from raylrec.scoring.quality import evaluate_published, held_out_positives

DATE = "2026-01-01"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cf-bundle", required=True)
    parser.add_argument("--model-bundle", required=True)
    parser.add_argument("--known", nargs="+", default=["train", "valid"], help="splits excluded as seen")
    parser.add_argument("--truth", default="test")
    parser.add_argument("--implicit", action="store_true", help="every held-out interaction is relevant")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/bench_rerank")
    args = parser.parse_args()

    init_ray(RayConfig(num_cpus=2))
    root = storage.join(args.out, args.name)
    truth = held_out_positives(args.dataset, args.truth, args.implicit)
    users = sorted(truth)
    picked = sorted(
        np.random.default_rng(args.seed).choice(users, min(args.users, len(users)), replace=False)
    )
    users_file = storage.join(root, "users.csv")
    fs, path = storage.filesystem(users_file)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write("user_id\n" + "\n".join(picked) + "\n")

    runs = [
        ("CF retrieval, top N (ceiling)", None, args.candidates),
        ("CF retrieval, top K", None, args.k),
        ("CF retrieval + LLM rerank, top K", args.model_bundle, args.k),
    ]
    rows = []
    for label, model, k in runs:
        output = storage.join(root, "rerank" if model else f"cf_top{k}")
        config = build_config(
            {
                "dataset": args.dataset,
                "score": {
                    "model_bundle": model,
                    "cf_bundle": args.cf_bundle,
                    "users": users_file,
                    "output": output,
                    "candidates": args.candidates,
                    "k": k,
                    "splits": args.known,
                },
            }
        )
        started = time.perf_counter()
        run_scoring(config, DATE, say=lambda m: print(f"  {m}", flush=True))
        seconds = time.perf_counter() - started
        metrics = evaluate_published(
            output, DATE, args.dataset, args.truth, (k,), "test_items", args.implicit
        )
        rows.append((label, k, metrics, seconds))

    truth_kind = "interactions" if args.implicit else "positives"
    print(
        f"\n{args.name}: {len(picked)} users with {args.truth} {truth_kind}, {args.candidates} "
        f"candidates from "
        f"{args.cf_bundle}, reranked by {args.model_bundle}; seen = {'+'.join(args.known)}"
    )
    print(f"{'ranker':<36}{'Recall@K':>10}{'NDCG@K':>10}{'K':>5}{'users':>7}{'time s':>9}")
    for label, k, metrics, seconds in rows:
        print(
            f"{label:<36}{metrics[f'recall@{k}']:>10.4f}{metrics[f'ndcg@{k}']:>10.4f}{k:>5}{metrics['users']:>7}{seconds:>9.1f}"
        )


if __name__ == "__main__":
    main()
