"""Profile-generation throughput: the Ray Data job with 1 and 2 actors beside a plain loop.

    .venv/bin/python bench/profiles.py --dataset /tmp/h1/ml100k --items 32 --max-new-tokens 64

The same item prompts (RLMRec's, arXiv 2310.15950) in the same batches (``--batch-size``), the
same ``max_new_tokens``, greedy, no retry (so every setup generates exactly once per prompt):

- plain: one process, ``load_backbone`` then a loop of batched ``generate`` (what the actors
  run), torch on every core;
- ray, N actors: ``generate_profiles`` into a fresh directory, each actor on cores/N threads,
  timed end to end (actor start and model load included, as a user waits for them; the plain
  row's load is timed too and shown beside it).

Prints one table: profiles/s and generated tokens/s, and each setup's ratio to plain (the mean
rate of two plain runs, one before and one after the Ray runs: on a shared machine the load
drifts between them).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from raylrec.config import RayConfig
from raylrec.data.output import read_table
from raylrec.llm.backbone import load_backbone
from raylrec.profiles import store
from raylrec.profiles.config import build_profiles_config
from raylrec.profiles.generate import generate_profiles, generate_texts, plan_batches
from raylrec.profiles.prompts import item_attributes, item_prompts, render_chat
from raylrec.runtime import init_ray


def _config(args: argparse.Namespace, output: str, actors: int):
    cores = os.cpu_count() or 1
    return build_profiles_config(
        {
            "dataset": args.dataset,
            "output": output,
            "backbone": {"name": args.backbone},
            "generation": {
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "retry": False,
            },
            "max_items": args.items,
            "max_users": 0,
            "chunk_size": args.batch_size,
            "actors": actors,
            "cpus_per_actor": max(1, cores // actors),
            "ray": {"num_cpus": cores},
        }
    )


def plain(args: argparse.Namespace) -> dict[str, float]:
    """One process: load, then the batches the job would send, generated in order."""
    config = _config(args, "unused", 1)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    backbone = load_backbone(config.backbone)
    loaded = time.perf_counter() - started
    prompts = item_prompts(config, item_attributes(read_table(args.dataset, "items.parquet")))
    batches = [
        b for chunk in plan_batches(prompts, config.chunk_size, args.batch_size).values() for b in chunk
    ]
    tokens = 0
    started = time.perf_counter()
    for batch in batches:
        texts = [render_chat(backbone.tokenizer, p.system, p.user) for p in batch]
        _, counts = generate_texts(backbone, texts, config.generation, config.generation.seed, False)
        tokens += sum(counts)
    seconds = time.perf_counter() - started
    return {"profiles": len(prompts), "tokens": tokens, "seconds": seconds, "load": loaded}


def ray_job(args: argparse.Namespace, actors: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="raylrec-bench-profiles-") as out:
        config = _config(args, out, actors)
        started = time.perf_counter()
        manifest = generate_profiles(config, say=lambda m: None)
        seconds = time.perf_counter() - started
        rows = store.read_profiles(out)
    return {"profiles": rows.num_rows, "tokens": manifest["generated_tokens"]["item"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a prepared dataset (raylrec data prepare)")
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    load_backbone(_config(args, "unused", 1).backbone)  # convert/cache once, outside every timing
    rows = [("plain generate loop", plain(args))]
    init_ray(RayConfig(num_cpus=os.cpu_count()))
    for actors in (1, 2):
        rows.append((f"ray data, {actors} actor(s)", ray_job(args, actors)))
    # Again at the end: on a shared machine the load drifts, and the two plain runs bracket it.
    rows.append(("plain generate loop, again", plain(args)))
    plain_rate = sum(r["profiles"] / r["seconds"] for n, r in rows if n.startswith("plain")) / 2
    print(
        f"\n{args.backbone}, {args.items} items, batch {args.batch_size}, "
        f"max_new_tokens {args.max_new_tokens}, greedy, {os.cpu_count()} CPU cores\n"
    )
    print(
        "| setup | profiles | generated tokens | seconds | profiles/s | tokens/s | vs plain (mean of both) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        rate, token_rate = r["profiles"] / r["seconds"], r["tokens"] / r["seconds"]
        extra = f" (+{r['load']:.1f} s load)" if "load" in r else " (incl. actor start, load)"
        ratio = rate / plain_rate
        print(
            f"| {name} | {r['profiles']} | {r['tokens']:,} | {r['seconds']:.1f}{extra} | {rate:.3f} "
            f"| {token_rate:.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
