"""``raylrec config docs``: the configuration reference, generated from the config models."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def cmd_docs(args: argparse.Namespace) -> int:
    from raylrec.config_docs import render_reference

    print(render_reference(), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_command", required=True
    )
    docs = config.add_parser(
        "docs", help="print the configuration reference (Markdown) generated from the config models"
    )
    docs.set_defaults(func=cmd_docs)
