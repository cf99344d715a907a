"""Benchmark: batch-scoring throughput of each method, in one run, on the same users and
candidates, one table with a row per method:

- CF retrieval alone: exact chunked top-N over the whole catalogue, seen items excluded
  (``raylrec.scoring.exact_top_n``), every user of the dataset;
- the method's scoring path, what the batch-scoring job runs (``Reranker.score``): for a method
  that shares a prefix (CoLLM, RecLoRA, TALLRec) each user's prompt prefix runs once and the
  user's N candidates run only their suffixes, packed into one row against that cache; for one
  that cannot (CoRA: its generated weights depend on the candidate, so every layer's keys and
  values of the prefix do) every candidate's full prompt, rows sorted by length, ``--rows`` to
  a forward;
- naive full-prompt rerank (``Reranker.score_full``): every candidate's whole prompt on its own
  row, the plain computation a user would otherwise write; the "vs naive" column is the
  method's path against it;
- each full-catalog method of ``--catalog-methods`` (CLLM4Rec): its top ``--k`` over the whole
  catalogue for the same users (``RecMethod.recommend``: one forward pass of each user's prompt
  over their seen items, then the item head in ``--item-chunk`` chunks), in users/s beside CF
  retrieval's and each reranker's users/s (candidates/s over ``--candidates``).

Users are MovieLens-100K's (a prepared dataset and its CF bundle: ``make demo`` writes both);
the prompt holds each user's ``--history`` latest positive titles, the candidates are the CF
bundle's top ``--candidates``. Each method of ``--methods`` is built on a fresh copy of the
backbone (SmolLM2-135M-Instruct) with its own config defaults and the CF bundle, and the
parameters it starts at zero (LoRA's B, CoRA's P) drawn at random: a trained bundle costs the
same. Both paths score the same candidates; their max abs difference is in the table.

    .venv/bin/python bench/score.py                                 # CPU: 8 users x 50 candidates
    .venv/bin/python bench/score.py --methods collm reclora cora tallrec --users 4
    .venv/bin/python bench/score.py --device cuda --users 256 --dtype bfloat16
    .venv/bin/python bench/score.py --methods tallrec --catalog-methods cllm4rec --users 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import torch

from raylrec.cf.bundle import load_cf_bundle
from raylrec.config import BackboneConfig
from raylrec.data.output import read_meta, read_table
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


def _method(name: str, args, cf, device: torch.device):
    """``name`` with its config defaults on a fresh backbone (a method wraps the backbone's
    layers in place), the parameters that start at zero drawn at random."""
    config_class = METHODS.get(name)
    own = {"cf_bundle": args.cf_bundle} if config_class.needs_cf else {}
    backbone = load_backbone(BackboneConfig(name=args.backbone, dtype=args.dtype), device)
    method = config_class(**own).build(backbone, cf if config_class.needs_cf else None).to(device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a zero LoRA B (or CoRA P) skips nothing, but reads oddly
        for params in method.parameter_groups().values():
            for p in params:
                if not bool(p.any()):
                    p.copy_((torch.randn(p.shape, generator=generator) * 0.02).to(p.dtype))
    return method, backbone


def _catalog_method(name: str, args, dataset_meta: dict, device: torch.device):
    """A full-catalog method with its config defaults, its tables sized from the dataset (drawn
    at random, N(0, 0.02), as they start: a trained bundle costs the same)."""
    counts = dataset_meta["counts"]
    config = METHODS.get(name)(num_users=counts["num_users"], num_items=counts["num_items"])
    backbone = load_backbone(BackboneConfig(name=args.backbone, dtype=args.dtype), device)
    return config.build(backbone, None).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="out/demo/ml100k")
    parser.add_argument("--cf-bundle", default="out/demo/bundles/mf_bpr_ml100k")
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    pointwise = list(METHODS.names_where(lambda c: c.role == "pointwise"))
    parser.add_argument("--methods", nargs="+", default=["collm", "reclora", "cora"], choices=pointwise)
    catalog = list(METHODS.names_where(lambda c: c.role == "full_catalog"))
    parser.add_argument("--catalog-methods", nargs="*", default=["cllm4rec"], choices=catalog)
    parser.add_argument("--k", type=int, default=10, help="a full-catalog method's top k")
    parser.add_argument("--item-chunk", type=int, default=65_536, help="items per item-head matmul")
    parser.add_argument("--users", type=int, default=8, help="users reranked")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument(
        "--rows",
        type=int,
        default=256,
        help="candidates per pass (shared prefix) or per forward (full prompts)",
    )
    parser.add_argument("--naive-rows", type=int, default=64, help="rows per naive full-prompt forward")
    parser.add_argument("--pack-tokens", type=int, default=256, help="suffix tokens per packed row")
    parser.add_argument(
        "--template", help="prompt text instead of each method's (e.g. the question before {target})"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=2, help="best of")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print_tables(args, measure(args))


def measure(args: argparse.Namespace) -> dict:
    """Every rate of the tables, as data (bench/gpu_check.py writes it as JSON): CF retrieval,
    one row per reranker of ``args.methods``, one per full-catalog method of
    ``args.catalog_methods``."""
    device = torch.device(args.device)

    cf = load_cf_bundle(args.cf_bundle)
    positives, seen = _profiles(args.dataset, args.history)
    users = len(positives)
    vectors = cf.users[1 : users + 1].to(device)
    items = cf.items.to(device)
    retrieval_s, (_, candidates) = _timed(
        lambda: exact_top_n(vectors, items, args.candidates, seen), args.repeats
    )
    titles = dict(
        zip(
            *[read_table(args.dataset, "items.parquet")[c].to_pylist() for c in ("iid", "title")], strict=True
        )
    )
    picked = np.random.default_rng(0).choice(users, size=min(args.users, users), replace=False)
    requests = [RerankRequest(int(u) + 1, positives[u].tolist(), candidates[u].tolist()) for u in picked]
    n = len(requests)
    cands = n * args.candidates

    rows = []
    for name in args.methods:
        print(f"... {name}", flush=True)
        method, backbone = _method(name, args, cf, device)
        template = "custom" if args.template else method.stages()[-1].template
        text = args.template or template_text(template)
        prompts = PromptBuilder(backbone.tokenizer, text, titles, 512, args.history)
        reranker = Reranker(method, prompts, max_rows=args.rows, pack_tokens=args.pack_tokens)
        naive = Reranker(method, prompts, max_rows=args.naive_rows)
        encoded = [prompts.encode_shared(r.history, r.candidates) for r in requests]
        prompt_tokens = np.mean([len(e.prefix) + np.mean([len(s) for s in e.suffixes]) for e in encoded])
        prefix_tokens = np.mean([len(e.prefix) for e in encoded])
        reranker.score(requests[:1])  # warm up
        path_s, scored = _timed(lambda r=reranker: r.score(requests), args.repeats)
        full_s, full = _timed(lambda r=naive: r.score_full(requests), args.repeats)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(scored, full, strict=True))
        path = "shared prefix" if reranker.shares_prefix else "full prompts, length-sorted"
        shown_prefix = f"{prefix_tokens:.0f}" if reranker.shares_prefix else "-"
        rows.append(
            (
                name,
                template,
                f"{prompt_tokens:.0f} / {shown_prefix}",
                path,
                cands / path_s,
                cands / full_s,
                diff,
            )
        )
        del method, backbone, reranker, naive

    catalog_rows = []
    meta = read_meta(args.dataset)
    uids = np.array([r.uid for r in requests], np.int64)
    known = [seen[u - 1] for u in uids]  # masked, and what the prompt shows
    for name in args.catalog_methods:
        print(f"... {name} (full catalogue)", flush=True)
        method = _catalog_method(name, args, meta, device)
        with torch.no_grad():
            method.recommend(uids[:1], known[:1], args.k, item_chunk=args.item_chunk)  # warm up
            catalog_s, _ = _timed(
                lambda m=method: m.recommend(uids, known, args.k, item_chunk=args.item_chunk), args.repeats
            )
        prompt = np.mean([min(len(x), method.config.max_items) for x in known])
        catalog_rows.append((name, prompt, n / catalog_s))
        del method
    return {
        "users": n,
        "candidates": args.candidates,
        "dataset_users": users,
        "items": len(items) - 1,
        "retrieval_s": retrieval_s,
        "rerank": rows,
        "catalog": catalog_rows,
    }


def print_tables(args: argparse.Namespace, result: dict) -> None:
    device, n, users = args.device, result["users"], result["dataset_users"]
    retrieval_s, rows, catalog_rows = result["retrieval_s"], result["rerank"], result["catalog"]
    print(
        f"\n{args.backbone} ({args.dtype}, {device}), {n} users x {args.candidates} candidates, "
        f"{args.history}-item history; CF retrieval (exact, all {users} users): "
        f"{users / retrieval_s:,.0f} users/s, {users * args.candidates / retrieval_s:,.0f} candidates/s"
    )
    header = (
        f"{'method':<10}{'template':<10}{'prompt / prefix':>16}  {'scoring path':<28}"
        f"{'path cand/s':>12}{'naive cand/s':>13}{'vs naive':>10}{'max diff':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, template, tokens, path, path_rate, naive_rate, diff in rows:
        print(
            f"{name:<10}{template:<10}{tokens:>16}  {path:<28}{path_rate:>12.2f}{naive_rate:>13.2f}"
            f"{path_rate / naive_rate:>9.2f}x{diff:>10.1e}"
        )
    cf_users_s = users / retrieval_s
    print(
        f"\nusers/s, the same {n} users: CF retrieval (top {args.candidates} of "
        f"{result['items']:,} items) {cf_users_s:,.0f}"
    )
    header = f"{'ranker':<58}{'users/s':>10}{'cost vs CF retrieval':>22}"
    print(header)
    print("-" * len(header))
    for name, prompt, rate in catalog_rows:
        label = f"{name}: top {args.k} of the whole catalogue ({prompt:.0f} items in prompt)"
        print(f"{label:<58}{rate:>10.2f}{cf_users_s / rate:>21,.0f}x")
    for name, _, _, _, path_rate, _, _ in rows:
        rate = path_rate / args.candidates
        label = f"CF retrieval + {name} rerank of {args.candidates}"
        print(f"{label:<58}{rate:>10.2f}{cf_users_s / rate:>21,.0f}x")


if __name__ == "__main__":
    main()
