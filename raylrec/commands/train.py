"""``raylrec train-cf`` and ``raylrec train``: a CF encoder, an LLM method."""

from __future__ import annotations

import argparse
import json

from raylrec.commands import common
from raylrec.config import ConfigError, load_config

__all__ = ["register"]


def cmd_train_cf(args: argparse.Namespace) -> int:
    # quoted: an override's value is YAML, and a path such as 2026-11-24 would read as a date
    init_from = [f"warm_start.bundle={json.dumps(args.init_from)}"] if args.init_from else []
    config = load_config(args.config, [*common.overrides(args), *init_from])
    config.dataset_path()  # fails before any work when neither dataset nor data is set
    if not args.local:
        common.init_ray(args, config.ray)
    from raylrec.cf.train import train_cf

    train_cf(config, common.progress(), use_ray=not args.local)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, common.overrides(args))
    if config.method is None:
        from raylrec.methods.config import METHODS

        raise ConfigError(f"{args.config}: no 'method' section (name: one of {', '.join(METHODS.names())})")
    config.dataset_path()
    if not args.local:
        common.init_ray(args, config.ray)
    from raylrec.methods.train import train_method

    train_method(config, common.progress(), use_ray=not args.local)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from raylrec.cf.config import ENCODERS
    from raylrec.methods.config import METHODS

    train_cf = sub.add_parser(
        "train-cf", help=f"train a CF encoder (cf.model: {', '.join(ENCODERS.names())}) and export its bundle"
    )
    common.add_config(train_cf)
    train_cf.add_argument("--local", action="store_true", help="a plain process, no Ray (same training code)")
    train_cf.add_argument(
        "--init-from",
        metavar="BUNDLE",
        help="warm start from this CF bundle of an earlier version of the dataset (warm_start.bundle)",
    )
    train_cf.set_defaults(func=cmd_train_cf)

    train = sub.add_parser(
        "train",
        help=f"fine-tune an LLM method (method.name: {', '.join(METHODS.names())}), export its model bundle",
    )
    common.add_config(train)
    train.add_argument(
        "--local", action="store_true", help="a plain process, no Ray or DeepSpeed (same model and loop)"
    )
    train.set_defaults(func=cmd_train)
