"""``raylrec demo``: the main job end to end on the embedded default (local Ray, MovieLens-100K,
SmolLM2-135M)."""

from __future__ import annotations

import argparse

from raylrec.commands import common

__all__ = ["register"]


def cmd_demo(args: argparse.Namespace) -> int:
    from raylrec.demo import run_demo

    run_demo(args.out, common.progress(), quiet_ray_data=not args.verbose)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the main job end to end on the embedded default")
    demo.add_argument("--out", default="out/demo", help="where outputs go (local or s3://)")
    demo.set_defaults(func=cmd_demo)
