"""``raylrec recs read | eval | dates``: published recommendations, verified as they are read."""

from __future__ import annotations

import argparse
import json

from raylrec.commands import common
from raylrec.config import ConfigError

__all__ = ["register"]


def _latest(root: str) -> str:
    from raylrec.scoring import published_dates

    dates = published_dates(root)
    if not dates:
        raise FileNotFoundError(f"no published recommendations under {root}")
    return dates[-1]


def cmd_read(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from raylrec.scoring import read_manifest, read_recommendations

    date = args.date or _latest(args.root)
    table = read_recommendations(args.root, date, verify=not args.no_verify)
    if args.user is not None:
        table = table.filter(pc.equal(table["user_id"], args.user))
    if args.json:
        for row in table.slice(0, args.limit).to_pylist():
            print(json.dumps(row))
        return 0
    manifest = read_manifest(args.root, date)
    print(
        f"{args.root} date={date}: {manifest['rows']:,} rows for {manifest['users']:,} users, "
        f"model {manifest['model']}, run {manifest['run_id']}"
    )
    print(table.slice(0, args.limit).to_pandas().to_string(index=False))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from raylrec.data.output import read_meta
    from raylrec.eval.report import format_report
    from raylrec.scoring.quality import evaluate_published

    if any(k < 1 for k in args.k):
        raise ConfigError(f"--k takes list lengths of 1 or more, got {' '.join(map(str, args.k))}")
    splits = read_meta(args.dataset)["counts"]["splits"]
    if args.split not in splits:
        raise ConfigError(f"--split {args.split}: {args.dataset} has the splits {', '.join(sorted(splits))}")
    date = args.date or _latest(args.root)
    metrics = evaluate_published(
        args.root,
        date,
        args.dataset,
        args.split,
        tuple(args.k),
        args.recall_denominator,
        args.implicit,
        verify=not args.no_verify,
    )
    truth = "interactions" if args.implicit else "positives"
    protocol = f"published top-K lists vs {args.split} {truth}, recall denominator {args.recall_denominator}"
    print(format_report(f"{args.root} date={date}", metrics, protocol))
    if args.json:
        print(json.dumps(metrics))
    return 0


def cmd_dates(args: argparse.Namespace) -> int:
    from raylrec.scoring import published_dates

    for date in published_dates(args.root):
        print(date)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    recs = sub.add_parser("recs", help="read published recommendations").add_subparsers(
        dest="recs_command", required=True
    )
    read = recs.add_parser("read", help="print a published date's recommendations")
    read.add_argument("root", help="score.output: local path or s3:// URI")
    read.add_argument("--date", type=common.date, help="YYYY-MM-DD (default: the latest published date)")
    read.add_argument("--user", help="one user's rows")
    read.add_argument("--limit", type=int, default=50, help="rows to print")
    read.add_argument("--no-verify", action="store_true", help=common.NO_VERIFY_HELP)
    read.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)  # the default now
    read.add_argument("--json", action="store_true", help="one JSON object per row")
    read.set_defaults(func=cmd_read)

    evaluate = recs.add_parser("eval", help="Recall/NDCG@K of a published date against a held-out split")
    evaluate.add_argument("root")
    evaluate.add_argument("--dataset", required=True, help="a prepared dataset holding the held-out split")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--date", type=common.date, help="YYYY-MM-DD (default: the latest published date)")
    evaluate.add_argument("--k", type=int, nargs="+", default=[10])
    evaluate.add_argument("--recall-denominator", choices=["test_items", "min_k"], default="test_items")
    evaluate.add_argument("--implicit", action="store_true", help="every held-out interaction is relevant")
    evaluate.add_argument("--no-verify", action="store_true", help=common.NO_VERIFY_HELP)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_eval)

    dates = recs.add_parser("dates", help="list published dates")
    dates.add_argument("root")
    dates.set_defaults(func=cmd_dates)
