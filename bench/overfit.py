"""The overfit check of every pointwise LLM method on a real backbone (issue 39).

Each method fits ~48 training rows of the CoLLM MovieLens-1M split for about 50 optimiser steps in
one process, and the same rows are scored before and after (``raylrec.methods.overfit``): a method
that cannot reach a train AUC near 1 there is broken, whatever its validation numbers. Run for
each score (``yes_logit``: the Yes logit, the papers' objective; ``yes_no``: the Yes-vs-No
log-odds) and learning rate, from each method's preset (``configs/<method>_collm_ml1m.yaml``).

    python bench/overfit.py --dataset out/collm_ml1m --cf out/bundles/mf_collm_ml1m
    python bench/overfit.py ... --methods tallrec --scores yes_logit yes_no --lrs 1e-3 5e-3
    python bench/overfit.py --table out/overfit.json        # the table of a finished run

Every finished row is appended to ``--json`` at once, so a stopped run keeps what it measured
and a rerun skips the rows it holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raylrec.config import build_config, load_raw_config  # noqa: E402
from raylrec.methods import METHODS  # noqa: E402

COLUMNS = (
    "method",
    "score",
    "lr",
    "rows",
    "positives",
    "steps",
    "mean_logit_before",
    "auc_before",
    "auc_after",
    "logloss_before",
    "logloss_after",
    "seconds",
)


def _key(row: dict) -> tuple:
    return row["method"], row["score"], float(row["lr"])


def method_config(args: argparse.Namespace, name: str, score: str, lr: float):
    """The method's preset on ``args``'s dataset, CF bundle, backbone and prompt sizes."""
    raw = load_raw_config(ROOT / "configs" / f"{name}_collm_ml1m.yaml")
    raw["dataset"] = args.dataset
    raw["backbone"] = {"name": args.backbone}
    raw["method"] = {**raw["method"], "score": score}
    raw["method"].pop("init_from", None)  # the check starts from the backbone
    if METHODS.get(name).needs_cf:
        raw["method"]["cf_bundle"] = args.cf
    raw["prompt"] = {
        **raw.get("prompt", {}),
        "max_tokens": args.max_tokens,
        "history_items": args.history_items,
    }
    raw["train"] = {
        **raw.get("train", {}),
        "lr": lr,
        "batch_size": args.batch_size,
        "strategy": "ddp",
        "num_workers": 0,
    }
    raw.pop("output", None)
    return build_config(raw, f"configs/{name}_collm_ml1m.yaml")


def format_table(rows: list[dict]) -> str:
    lines = [
        "| method | score | lr | rows (positives) | steps | mean logit at start | train AUC before -> after "
        "| train logloss before -> after | s |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in sorted(rows, key=_key):
        lines.append(
            f"| {r['method']} | {r['score']} | {r['lr']:g} | {r['rows']} ({r['positives']}) | {r['steps']} "
            f"| {r['mean_logit_before']:+.2f} | {r['auc_before']:.3f} -> **{r['auc_after']:.3f}** "
            f"| {r['logloss_before']:.3f} -> {r['logloss_after']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="out/collm_ml1m")
    parser.add_argument(
        "--cf", default="out/bundles/mf_collm_ml1m", help="a CF bundle (CoLLM, CoRA, RecLoRA)"
    )
    parser.add_argument("--backbone", default="smollm2-135m-instruct")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS.names_where(lambda c: c.role == "pointwise"))
    )
    parser.add_argument("--scores", nargs="+", default=["yes_logit", "yes_no"])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-3])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--history-items", type=int, default=5)
    parser.add_argument("--json", default="out/overfit.json", help="results, one JSON object per line")
    parser.add_argument("--table", metavar="JSON", help="print the table of a finished run and stop")
    args = parser.parse_args()

    from raylrec.methods.overfit import overfit_check

    path = Path(args.table or args.json)
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    if args.table:
        print(format_table(done))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    have = {_key(r) for r in done}
    for name in args.methods:
        for score in args.scores:
            for lr in args.lrs:
                if (name, score, lr) in have:
                    continue
                config = method_config(args, name, score, lr)
                print(f"... {name} {score} lr {lr:g}", flush=True)
                result = overfit_check(config, args.rows, args.steps).to_dict()
                with path.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                done.append(result)
                print(format_table([result]).splitlines()[-1], flush=True)
    print(format_table(done))


if __name__ == "__main__":
    main()
