"""``raylrec data prepare | stats | synth``: datasets."""

from __future__ import annotations

import argparse
import json

from raylrec.commands import common
from raylrec.config import ConfigError, RayConfig, load_config

__all__ = ["register"]


def cmd_prepare(args: argparse.Namespace) -> int:
    overrides = [*common.overrides(args), *(["data.append=true"] if args.append else [])]
    config = load_config(args.config, overrides)  # fails here, before Ray starts
    if config.data is None:
        where = args.config or "the command line (no --config given)"
        raise ConfigError(
            f"{where}: no 'data' section to prepare; pass --config with a data section "
            "(e.g. configs/ml100k.yaml) or data.* overrides"
        )
    from raylrec.data.output import check_output_dir, input_paths

    # A refused output (a user's files, an input, a dataset that takes no append) fails here,
    # before Ray starts.
    if config.data.append:
        from raylrec.data.append import check_appendable

        check_appendable(config.data)
    else:
        check_output_dir(config.data.output, config.data.overwrite, input_paths(config.data.source))
    common.init_ray(args, config.ray)
    from raylrec.data.prepare import prepare
    from raylrec.data.stats import dataset_stats, format_stats

    prepare(config.data, common.progress())
    if not args.quiet:
        print(format_stats(dataset_stats(config.data.output)))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from raylrec.data.output import read_meta
    from raylrec.data.stats import dataset_stats, format_stats

    read_meta(args.path)  # a missing or unfinished dataset fails here, before Ray starts
    common.init_ray(args, RayConfig(address=args.address))
    stats = dataset_stats(args.path)
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from raylrec.data.sources.synthetic import SyntheticSource

    source = SyntheticSource(
        num_events=args.events,
        num_users=args.users,
        num_items=args.items,
        zipf_exponent=args.zipf,
        user_zipf_exponent=args.user_zipf,
        seed=args.seed,
    )
    common.init_ray(args, RayConfig(address=args.address))
    from raylrec.data.synthetic import write_synthetic

    say = common.progress()
    say(f"generating {args.events:,} events for {args.users:,} users and {args.items:,} items")
    write_synthetic(source, args.out)
    say(f"wrote {args.out}/events/ and {args.out}/items.parquet")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare and inspect datasets").add_subparsers(
        dest="data_command", required=True
    )
    prep = data.add_parser("prepare", help="validate, index, split and build histories")
    prep.add_argument("--config", "-c", help="YAML config (see configs/)")
    common.add_set(prep, "data.kcore=5")
    prep.add_argument("--quiet", "-q", action="store_true", help="skip the statistics at the end")
    prep.add_argument(
        "--append",
        action="store_true",
        help="add the source's (new) rows to the committed rolling_days dataset at data.output as "
        "its next version (the same as data.append=true)",
    )
    prep.set_defaults(func=cmd_prepare)

    stats = data.add_parser("stats", help="statistics of a prepared dataset")
    stats.add_argument("path", help="local path or s3:// URI of a prepared dataset")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS or a local instance)")
    stats.set_defaults(func=cmd_stats)

    synth = data.add_parser("synth", help="write a synthetic Zipf interaction log as Parquet")
    synth.add_argument("--out", required=True)
    synth.add_argument("--events", type=int, default=1_000_000)
    synth.add_argument("--users", type=int, default=50_000)
    synth.add_argument("--items", type=int, default=20_000)
    synth.add_argument("--zipf", type=float, default=1.1)
    synth.add_argument("--user-zipf", type=float, help="the users' exponent (default: --zipf)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS or a local instance)")
    synth.set_defaults(func=cmd_synth)
