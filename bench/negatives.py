"""BPR's negative sampler on Zipf logs of growing size: the exact sampler against redrawing.

The scale benchmark (bench/scale.py) saw train-cf's rate fall with the log's size (users and
items fixed) and late in an epoch. This isolates the suspect: a user's negative must be an item
the user has not seen, and on a Zipf log the heaviest users have seen almost the whole catalogue
(at 50M events over 200k users and 50k items, the top user holds about 13% of the events).

- **redraw** (RecBole's rule, raylrec's before): draw uniformly, redraw the rows whose item the
  user has seen, up to 100 rounds; the item sets keep every logged pair (duplicates included).
- **exact** (``ItemSets.nth_absent``): the item sets hold each pair once; draw a rank below the
  user's number of unseen items and map it to that item, one vectorised binary search.

Rows reach the sampler as a Ray Train rank streams them: prepared files hold each user's rows
together (partitioned by user), and a rank shuffles within a buffer of 200,000 rows
(``SHUFFLE_BUFFER_ROWS``); batches of 16,384 rows as bench/scale.py trains. For each size:
seconds per batch (mean, and the slowest 1% of batches), the share of returned negatives that
are positives of their user, and the item sets' bytes. One process, no Ray:

    python bench/negatives.py                      # 5M, 20M, 50M events
    python bench/negatives.py --sizes 1000000 --batches 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from raylrec.cf.data import sample_negatives
from raylrec.eval.ranking import ItemSets

USERS, ITEMS, EXPONENT = 200_000, 50_000, 1.1


def zipf_ids(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """Ids 1..count-1 with P(k) ~ k^-EXPONENT (raylrec data synth's distribution)."""
    weights = np.arange(1, count, dtype=np.float64) ** -EXPONENT
    cdf = np.cumsum(weights) / weights.sum()
    return (np.searchsorted(cdf, rng.random(n)) + 1).astype(np.int64)


def stream_order(rng: np.random.Generator, users: np.ndarray, buffer: int) -> np.ndarray:
    """Row order of a rank's epoch: users together (hash-partitioned files), shuffled within
    consecutive windows of ``buffer`` rows (Ray Data's local shuffle buffer, approximately)."""
    partition = (users * 0x9E3779B1) % 64
    order = np.lexsort((users, partition))
    for start in range(0, len(order), buffer):
        rng.shuffle(order[start : start + buffer])
    return order


def measure(events: int, batches: int, batch: int, buffer: int, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    users, items = zipf_ids(rng, events, USERS), zipf_ids(rng, events, ITEMS)
    order = stream_order(rng, users, buffer)
    every = ItemSets.from_pairs(users, items, USERS, sort_items=True)
    once = ItemSets.from_pairs(users, items, USERS, distinct=True)
    top = np.bincount(users).argmax()
    print(
        f"{events:,} events: top user {top} has {every.sizes_of(np.array([top]))[0]:,} rows, "
        f"{once.sizes_of(np.array([top]))[0]:,} distinct items of {ITEMS - 1:,}",
        flush=True,
    )
    # batches spread evenly over the epoch's order
    starts = np.linspace(0, len(order) - batch, batches).astype(np.int64)
    results = {}
    for name, sets in (("redraw", every), ("exact", once)):
        sampler_rng = np.random.default_rng(seed + 1)
        seconds, positives = [], 0
        for start in starts:
            rows = order[start : start + batch]
            batch_users = users[rows]
            began = time.perf_counter()
            negatives = sample_negatives(sampler_rng, ITEMS, len(rows), batch_users, sets)
            seconds.append(time.perf_counter() - began)
            positives += int(once.contains(batch_users, negatives).sum())
        seconds = np.array(seconds)
        results[name] = {
            "mean_ms": 1e3 * seconds.mean(),
            "p99_ms": 1e3 * np.quantile(seconds, 0.99),
            "positive_share": positives / (len(starts) * batch),
            "set_mib": (sets.indptr.nbytes + sets.indices.nbytes) / 2**20,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000_000, 20_000_000, 50_000_000])
    parser.add_argument("--batches", type=int, default=400, help="batches timed per size, over the epoch")
    parser.add_argument("--batch", type=int, default=16_384)
    parser.add_argument("--buffer", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = [
        "| events | sampler | ms per batch (mean) | slowest 1% (ms) | negatives that are positives "
        "| item sets MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for events in args.sizes:
        result = measure(events, args.batches, args.batch, args.buffer, args.seed)
        for name, row in result.items():
            lines.append(
                f"| {events:,} | {name} | {row['mean_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row['positive_share']:.4%} | {row['set_mib']:.0f} |"
            )
        redraw, exact = result["redraw"], result["exact"]
        lines.append(
            f"| {events:,} | exact / redraw | {exact['mean_ms'] / redraw['mean_ms']:.2f}x | "
            f"{exact['p99_ms'] / redraw['p99_ms']:.2f}x | | {exact['set_mib'] / redraw['set_mib']:.2f}x |"
        )
        print("\n".join(lines[-3:]), flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
