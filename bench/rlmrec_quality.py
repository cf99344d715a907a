"""RLMRec's quality on MovieLens-100K: LightGCN, +RLMRec-Con and +RLMRec-Gen with LLM-profile
embeddings, and the same two fed embeddings of plain metadata text (no LLM in the loop), mean ±
std over seeds, with each row's seconds per training epoch.

Two protocols, each a prepared dataset (prepared here under ``--root`` when missing):

- ``811``: the random per-user 8:1:1 split (configs/ml100k.yaml, RecBole's protocol);
- ``311``: RLMRec's 3:1:1 proportions, per user (configs/rlmrec_data_ml100k_311.yaml; the
  paper splits per interaction).

Full ranking with training (and, for test, valid) items masked, Recall@K (denominator |test
items|, RLMRec's) and NDCG@K at K = 5, 10, 20 on **test**, from the epoch with the best valid
Recall@20 (evaluated every 3 epochs, early stop after 5 without a better one). The models are the
presets configs/lightgcn_rlmrec_ml100k.yaml (3 layers; also at 2 layers, Gen's own baseline),
configs/rlmrec_con_ml100k.yaml and configs/rlmrec_gen_ml100k.yaml, trained in a plain process
(``train_cf(use_ray=False)``: the same loop and loss as on Ray Train). s/epoch is the median of a
run's training-pass seconds (``train/epoch_s``; evaluation excluded), then the mean over seeds.

Embeddings are per protocol: user profiles come from that split's training interactions, so a
directory made for one split would leak the other's test items into training. Give them as
``PROTOCOL=DIR`` (or one DIR for every protocol chosen). A directory whose manifest names
another dataset is refused (``--allow-other-dataset`` to override).

    python bench/rlmrec_quality.py --root /tmp/h2 \\
        --profiles-embeddings 811=DIR_A --profiles-embeddings 311=DIR_B \\
        --metadata-embeddings 811=DIR_C --metadata-embeddings 311=DIR_D
    python bench/rlmrec_quality.py --root /tmp/h2 --protocols 811 --seeds 1 --epochs 6 \\
        --profiles-embeddings DIR --rows lightgcn con          # a short rehearsal

Seeds run in parallel as one process each (``--first-seed S --seeds 1 --threads 1 --json
FILE``); ``--merge FILE ...`` then prints the one table of them all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raylrec import storage  # noqa: E402
from raylrec.config import RaylrecConfig, load_config, load_raw_config  # noqa: E402

PROTOCOLS = {
    "811": (REPO / "configs" / "ml100k.yaml", "ml100k", "random per-user 8:1:1"),
    "311": (REPO / "configs" / "rlmrec_data_ml100k_311.yaml", "ml100k_311", "random per-user 3:1:1"),
}
LIGHTGCN = REPO / "configs" / "lightgcn_rlmrec_ml100k.yaml"
CON = REPO / "configs" / "rlmrec_con_ml100k.yaml"
GEN = REPO / "configs" / "rlmrec_gen_ml100k.yaml"
# name -> (label, preset, embeddings kind or None, overrides)
ROWS: dict[str, tuple[str, Path, str | None, list[str]]] = {
    "lightgcn": ("LightGCN (3 layers)", LIGHTGCN, None, []),
    "con": ("+RLMRec-Con, LLM profiles", CON, "profiles", []),
    "con-metadata": ("+RLMRec-Con, metadata text", CON, "metadata", []),
    "lightgcn2": ("LightGCN (2 layers)", LIGHTGCN, None, ["cf.layers=2"]),
    "gen": ("+RLMRec-Gen, LLM profiles", GEN, "profiles", []),
    "gen-metadata": ("+RLMRec-Gen, metadata text", GEN, "metadata", []),
}
METRICS = [f"test/{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)]


def embeddings_by_protocol(values: list[str], protocols: list[str], what: str) -> dict[str, str]:
    """``PROTOCOL=DIR`` arguments (or one bare DIR for all) -> {protocol: dir}."""
    found: dict[str, str] = {}
    for value in values:
        protocol, sep, path = value.partition("=")
        if sep and protocol in PROTOCOLS:
            found[protocol] = path
        elif len(values) == 1:
            found = dict.fromkeys(protocols, value)
        else:
            raise SystemExit(f"--{what}-embeddings {value!r}: give PROTOCOL=DIR ({', '.join(PROTOCOLS)})")
    return found


def prepare_dataset(protocol: str, root: str) -> str:
    """The protocol's prepared dataset under ``root`` (prepared now if it is not there)."""
    from raylrec.data.output import read_meta

    config_path, name, _ = PROTOCOLS[protocol]
    out = storage.join(root, name)
    try:
        read_meta(out)
        return out
    except FileNotFoundError:
        pass
    from raylrec.data.prepare import prepare
    from raylrec.runtime import init_ray

    config = load_config(config_path, [f"data.output={out}"])
    init_ray(config.ray)
    print(f"... preparing {out} ({PROTOCOLS[protocol][2]})", flush=True)
    prepare(config.data)
    return out


def check_embeddings_match(path: str, dataset: str, allow_other: bool) -> dict[str, Any]:
    """The manifest of ``path``; refused when it names a dataset other than ``dataset`` (by its
    path or its content hash) unless ``allow_other``."""
    from raylrec.data.output import read_meta

    manifest = storage.read_json(storage.join(path, "_manifest.json"))
    named = manifest.get("dataset")
    recorded = named if isinstance(named, dict) else {"path": named}
    content_hash = read_meta(dataset)["content_hash"]
    hashes = (manifest.get(k) for k in ("dataset_hash", "content_hash"))
    candidates = {str(v) for v in recorded.values() if v} | {str(h) for h in hashes if h}
    matches = storage.absolute(dataset) in {storage.absolute(c) for c in candidates if c} or any(
        c and (c in content_hash or content_hash in c) for c in candidates
    )
    if not matches and not allow_other:
        raise SystemExit(
            f"{path}: its manifest names dataset {named!r}, not {dataset} (content hash "
            f"{content_hash[:16]}…); user profiles must come from this split's training interactions "
            "(--allow-other-dataset to override)"
        )
    return manifest


def run_config(
    row: str, dataset: str, embeddings: str | None, seed: int, args, storage_path: str
) -> RaylrecConfig:
    label, preset, kind, overrides = ROWS[row]
    overrides = [
        *overrides,
        f"dataset={dataset}",
        "output=null",
        f"train.seed={seed}",
        "train.num_workers=0",
        f"train.storage_path={storage_path}",
        f"train.run_name=rlmrec-bench-{row}-{Path(dataset).name}-{seed}-{os.getpid()}-{time.time_ns()}",
        "train.log_every_s=1000000",
        "train.checkpoint_every=1000000",
    ]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if embeddings is not None:
        overrides.append(f"cf.profiles={embeddings}")
    raw = load_raw_config(preset, overrides)
    from raylrec.config import build_config

    return build_config(raw, f"{preset} ({label})")


def one_run(config: RaylrecConfig) -> dict[str, Any]:
    from raylrec.cf.train import train_cf

    started = time.perf_counter()
    result = train_cf(config, say=lambda message: None, use_ray=False)
    history = result.state.history
    return {
        **{m: float(result.metrics[m]) for m in METRICS},
        "s_per_epoch": statistics.median(h["train/epoch_s"] for h in history),
        "epochs": len(history),
        "best_epoch": result.state.best_epoch,
        "wall_s": time.perf_counter() - started,
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(protocol: str, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        f"**{PROTOCOLS[protocol][2]}** ({protocol}), test, mean ± std over seeds:",
        "",
        "| model | "
        + " | ".join(m.removeprefix("test/").replace("recall", "R").replace("ndcg", "N") for m in METRICS)
        + " | s/epoch | epochs (best) |",
        "|---|" + "---:|" * (len(METRICS) + 2),
    ]
    for row, runs in results.items():
        cells = [mean_std([r[m] for r in runs]) for m in METRICS]
        seconds = statistics.mean(r["s_per_epoch"] for r in runs)
        epochs = "/".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs)
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | {seconds:.2f} | {epochs} |")
    return lines


def claim(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The paper's claim, checked on the means: +Con and +Gen beat their LightGCN on every metric."""
    means = {row: {m: statistics.mean(r[m] for r in runs) for m in METRICS} for row, runs in results.items()}
    lines = []
    for row, base in (
        ("con", "lightgcn"),
        ("gen", "lightgcn2"),
        ("con-metadata", "lightgcn"),
        ("gen-metadata", "lightgcn2"),
    ):
        if row in means and base in means:
            wins = [m for m in METRICS if means[row][m] > means[base][m]]
            lines.append(
                f"- {ROWS[row][0]} vs {ROWS[base][0]}: higher on {len(wins)} of {len(METRICS)} metrics"
                + ("" if len(wins) in (0, len(METRICS)) else f" ({', '.join(wins)})")
            )
    return lines


def run_protocol(
    protocol: str, args: argparse.Namespace, embeddings: dict[str, dict[str, str]], runs_dir: str
) -> dict[str, list[dict[str, Any]]]:
    """Every chosen row over every seed on one protocol's dataset."""
    dataset = prepare_dataset(protocol, args.root)
    results: dict[str, list[dict[str, Any]]] = {}
    for row in args.rows:
        label, _, kind, _ = ROWS[row]
        path = embeddings[kind].get(protocol) if kind else None
        if kind and path is None:
            print(f"... skipping {label} on {protocol}: no --{kind}-embeddings for it", flush=True)
            continue
        if path is not None:
            manifest = check_embeddings_match(path, dataset, args.allow_other_dataset)
            if manifest.get("text") not in (None, kind):  # two directories given the wrong way round
                raise SystemExit(f"--{kind}-embeddings {path}: its manifest says text {manifest['text']!r}")
            print(f"... {label} on {protocol}: {path} ({manifest.get('model')}, text {manifest.get('text')})")
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            got = one_run(run_config(row, dataset, path, seed, args, runs_dir))
            print(
                f"... {label} / {protocol} / seed {seed}: test R@20 {got['test/recall@20']:.4f} "
                f"N@20 {got['test/ndcg@20']:.4f}, {got['epochs']} epochs (best {got['best_epoch']}), "
                f"{got['s_per_epoch']:.2f} s/epoch",
                flush=True,
            )
            results.setdefault(row, []).append({"seed": seed, "embeddings": path, **got})
    return results


def merged_tables(paths: list[str]) -> list[str]:
    """The tables and the claim of the runs several ``--json`` files hold, each row's runs in
    seed order (a seed found twice is refused: the files would overlap)."""
    merged: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in paths:
        for protocol, results in json.loads(Path(path).read_text()).items():
            for row, runs in results.items():
                merged.setdefault(protocol, {}).setdefault(row, []).extend(runs)
    lines: list[str] = []
    for protocol, results in merged.items():
        ordered = {row: results[row] for row in ROWS if row in results}
        for row, runs in ordered.items():
            seeds = [r["seed"] for r in runs]
            if len(set(seeds)) != len(seeds):
                raise SystemExit(f"{row} on {protocol}: seed(s) found in more than one file: {sorted(seeds)}")
            runs.sort(key=lambda r: r["seed"])
        lines += ["", *table(protocol, ordered), "", *claim(ordered)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="out", help="where the prepared datasets are (or are prepared)")
    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=["811", "311"])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--profiles-embeddings", action="append", default=[], metavar="[PROTOCOL=]DIR")
    parser.add_argument("--metadata-embeddings", action="append", default=[], metavar="[PROTOCOL=]DIR")
    parser.add_argument("--seeds", type=int, default=3, help="seeds FIRST, FIRST+1, ...")
    parser.add_argument("--first-seed", type=int, default=2020, help="FIRST (default 2020)")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' 300 (a rehearsal)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--allow-other-dataset", action="store_true")
    parser.add_argument("--json", default=None, help="write every run's numbers here")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="train nothing: print the tables of the runs in these --json files (e.g. one per seed, "
        "run in parallel)",
    )
    args = parser.parse_args()
    if args.merge:
        print("\n".join(merged_tables(args.merge)))
        return
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(args.threads)
    embeddings = {
        "profiles": embeddings_by_protocol(args.profiles_embeddings, args.protocols, "profiles"),
        "metadata": embeddings_by_protocol(args.metadata_embeddings, args.protocols, "metadata"),
    }
    everything: dict[str, Any] = {}
    out_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="raylrec-bench-rlmrec-") as runs_dir:
        for protocol in args.protocols:
            results = run_protocol(protocol, args, embeddings, runs_dir)
            everything[protocol] = results
            out_lines += ["", *table(protocol, results), "", *claim(results)]
    epochs = f"at most {args.epochs}" if args.epochs else "the presets' (300 max, early stop)"
    print()
    print(
        f"MovieLens-100K, full ranking, Recall denominator |test items|, epochs {epochs}, "
        f"{args.seeds} seed(s), plain process, {args.threads} torch threads, {os.cpu_count()} CPUs"
    )
    print("\n".join(out_lines))
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2) + "\n")


if __name__ == "__main__":
    main()
