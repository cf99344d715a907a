"""``raylrec score`` and ``raylrec nightly``: top-K recommendations for every user, published."""

from __future__ import annotations

import argparse

from raylrec.commands import common
from raylrec.config import load_config

__all__ = ["register"]


def cmd_score(args: argparse.Namespace) -> int:
    from raylrec.scoring.job import check_scoring, run_scoring

    config = load_config(args.config, common.overrides(args))
    checked = check_scoring(config, args.date, args.run_id)  # output, bundles, dataset: before Ray
    common.init_ray(args, config.ray)
    run_scoring(config, args.date, args.run_id, common.progress(), checked=checked)
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    config = load_config(args.config, common.overrides(args))
    from raylrec.nightly import nightly_config, run_nightly

    nightly_config(config, args.date)  # config errors before Ray starts
    common.init_ray(args, config.ray)
    run_nightly(config, args.date, common.progress(), force=args.force)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser("score", help="batch-score every user: CF retrieval, LLM rerank, publish top K")
    common.add_config(score, "YAML config with a 'score' section")
    score.add_argument(
        "--date",
        type=common.date,
        default=common.today(),
        help="the partition to (re)publish, YYYY-MM-DD (default: today, UTC)",
    )
    score.add_argument(
        "--run-id", type=common.run_id, help="a name, unique for the date (default: <date>-<time>-<random>)"
    )
    score.set_defaults(func=cmd_score)

    nightly = sub.add_parser("nightly", help="the nightly pipeline for one date (each step idempotent)")
    common.add_config(nightly, "YAML config with 'nightly' and 'score' sections")
    nightly.add_argument(
        "--date", type=common.date, default=common.today(), help="YYYY-MM-DD (default: today, UTC)"
    )
    nightly.add_argument("--force", action="store_true", help="re-score a date that is already published")
    nightly.set_defaults(func=cmd_nightly)
