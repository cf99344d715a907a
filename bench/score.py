"""Benchmark: batch-scoring throughput, in one run, on the same model and candidates:

- CF retrieval alone: exact chunked top-N over the whole catalogue, seen items excluded
  (``raylrec.scoring.exact_top_n``), every user of the dataset;
- LLM rerank with the shared prefix (``Reranker.score``): each user's prompt prefix runs once,
  and the user's N candidates run only their suffixes, packed into one row against that cache;
- naive full-prompt rerank (``Reranker.score_full``): every candidate's whole prompt on its own
  row, the plain computation a user would otherwise write.

Users are MovieLens-100K's (a prepared dataset and its CF bundle: ``make demo`` writes both);
the prompt holds each user's ``--history`` latest positive titles, the candidates are the CF
bundle's top ``--candidates``. The reranker is ``--method`` on SmolLM2-135M-Instruct with its
adapters drawn at random (a trained bundle costs the same). Both rerank paths score the same
candidates; their max abs difference is printed beside the table.

    .venv/bin/python bench/score.py                                 # CPU: 8 users x 50 candidates
    .venv/bin/python bench/score.py --device cuda --users 256 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import torch

from raylrec.cf.bundle import load_cf_bundle
from raylrec.config import BackboneConfig
from raylrec.data.output import read_table
from raylrec.llm.backbone import load_backbone
from raylrec.llm.prompts import PromptBuilder
from raylrec.methods import METHODS, template_text
from raylrec.scoring.rerank import Reranker, RerankRequest
from raylrec.scoring.retrieval import exact_top_n


def _profiles(dataset: str, history: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per uid 1..n: (latest positives, every item seen), from train + valid."""
    columns = ["uid", "iid", "timestamp", "label"]
    table = pa.concat_tables([read_table(dataset, s, columns=columns) for s in ("train", "valid")])
    uid, iid = table["uid"].to_numpy(), table["iid"].to_numpy()
    order = np.lexsort((iid, table["timestamp"].to_numpy(), uid))
    uid, iid, label = uid[order], iid[order], table["label"].to_numpy()[order]
    users = int(uid.max())
    bounds = np.searchsorted(uid, np.arange(1, users + 2))
    positives, seen = [], []
    for u in range(users):
        lo, hi = bounds[u], bounds[u + 1]
        positives.append(iid[lo:hi][label[lo:hi] > 0][-history:])
        seen.append(np.unique(iid[lo:hi]))
    return positives, seen


def _timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="out/demo/ml100k")
    parser.add_argument("--cf-bundle", default="out/demo/bundles/mf_bpr_ml100k")
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="collm", choices=METHODS.names())
    parser.add_argument("--users", type=int, default=8, help="users reranked")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--rows", type=int, default=256, help="candidates whose users share a prefix pass")
    parser.add_argument("--naive-rows", type=int, default=64, help="rows per naive full-prompt forward")
    parser.add_argument("--pack-tokens", type=int, default=256, help="suffix tokens per packed row")
    parser.add_argument(
        "--template", help="prompt text instead of the method's (e.g. the question before {target})"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=2, help="best of")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cf = load_cf_bundle(args.cf_bundle)
    positives, seen = _profiles(args.dataset, args.history)
    users = len(positives)
    vectors = cf.users[1 : users + 1].to(device)
    items = cf.items.to(device)
    retrieval_s, (_, candidates) = _timed(
        lambda: exact_top_n(vectors, items, args.candidates, seen), args.repeats
    )

    backbone = load_backbone(BackboneConfig(name=args.backbone, dtype=args.dtype), device)
    method_config = METHODS.get(args.method)(cf_bundle=args.cf_bundle, lora={"dropout": 0.0})
    method = method_config.build(backbone, cf).to(device)
    generator = torch.Generator().manual_seed(0)
    with (
        torch.no_grad()
    ):  # random adapters: LoRA's B starts at zero, which would skip nothing but reads oddly
        for params in method.parameter_groups().values():
            for p in params:
                p.copy_((torch.randn(p.shape, generator=generator) * 0.02).to(p.dtype))
    titles = dict(
        zip(
            *[read_table(args.dataset, "items.parquet")[c].to_pylist() for c in ("iid", "title")], strict=True
        )
    )
    template = args.template or template_text(method.stages()[-1].template)
    prompts = PromptBuilder(backbone.tokenizer, template, titles, 512, args.history)
    reranker = Reranker(method, prompts, max_rows=args.rows, pack_tokens=args.pack_tokens)
    naive = Reranker(method, prompts, max_rows=args.naive_rows)
    picked = np.random.default_rng(0).choice(users, size=min(args.users, users), replace=False)
    requests = [RerankRequest(int(u) + 1, positives[u].tolist(), candidates[u].tolist()) for u in picked]
    prompt_tokens = np.mean(
        [
            len(e.prefix) + np.mean([len(s) for s in e.suffixes])
            for e in (prompts.encode_shared(r.history, r.candidates) for r in requests)
        ]
    )
    prefix_tokens = np.mean([len(prompts.encode_shared(r.history, r.candidates).prefix) for r in requests])

    reranker.score(requests[:1])  # warm up
    shared_s, shared = _timed(lambda: reranker.score(requests), args.repeats)
    full_s, full = _timed(lambda: naive.score_full(requests), args.repeats)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(shared, full, strict=True))

    n = len(requests)
    cands = n * args.candidates
    print(
        f"\n{args.method} on {args.backbone} ({args.dtype}, {device}), {n} users x {args.candidates} "
        f"candidates, {args.history}-item history: prompt {prompt_tokens:.0f} tokens, shared prefix "
        f"{prefix_tokens:.0f}"
    )
    rows = [
        ("CF retrieval (exact, all users)", users, users * args.candidates, retrieval_s, None),
        ("LLM rerank, shared prefix (ours)", n, cands, shared_s, full_s / shared_s),
        ("LLM rerank, full prompts (naive)", n, cands, full_s, 1.0),
    ]
    print(f"{'stage':<34}{'users/s':>10}{'candidates/s':>14}{'vs naive':>10}")
    for name, u, c, seconds, ratio in rows:
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{name:<34}{u / seconds:>10.2f}{c / seconds:>14.1f}{shown:>10}")
    print(f"max |shared - full| logit difference: {diff:.2e}")


if __name__ == "__main__":
    main()
