"""``raylrec tune``: a Ray Tune sweep; ``tune report``: its plots; ``tune confirm``: a tuned config
against its default on held-out data."""

from __future__ import annotations

import argparse

from raylrec import storage
from raylrec.commands import common
from raylrec.config import ConfigError, load_config, load_raw_config

__all__ = ["register"]


def cmd_tune(args: argparse.Namespace) -> int:
    from raylrec.tune.space import load_space

    if not (args.space and args.config):
        raise ConfigError(
            "tune needs --space (a search space YAML) and --config (the config trials start from)"
        )
    overrides = common.overrides(args)
    config = load_config(args.config, overrides)
    load_space(args.space, config, load_raw_config(args.config, overrides))  # before Ray starts
    # The confirmation's config, checked before any trial.
    if args.confirm and load_config(args.config, args.confirm_override).method is not None:
        raise ConfigError("tune --confirm retrains CF encoders only (an LLM method reports no test metrics)")
    storage.check_reachable(args.storage or config.train.storage_path)
    common.init_ray(args, config.ray)
    from raylrec.tune.confirm import confirm_sweep
    from raylrec.tune.sweep import run_sweep

    best = None if args.best_config == "none" else args.best_config
    say = common.progress()
    result = run_sweep(
        args.space,
        args.config,
        overrides,
        name=args.name,
        storage_path=args.storage,
        # With --confirm the best config goes outside the experiment only once confirmed.
        best_config=None if args.confirm else best,
        include_default=not args.no_default,
        say=say,
    )
    if args.confirm:
        confirm_sweep(
            result, args.space, args.config, overrides, args.confirm_override, args.seeds, best, say
        )
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from raylrec.tune.confirm import compare_configs, format_confirmation

    overrides = common.overrides(args)
    default = load_raw_config(args.config, overrides)
    tuned = load_raw_config(args.tuned, overrides)
    for path in (args.config, args.tuned):
        load_config(path, overrides)  # a bad config fails here, before any training
    confirmation = compare_configs(
        default,
        tuned,
        seeds=tuple(args.seeds),
        held_out_dir=args.held_out,
        overrides=overrides,
        say=common.progress(),
        verbose=args.verbose,
    )
    print(format_confirmation(confirmation))
    if args.out:
        storage.write_json(args.out, confirmation.to_dict())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raylrec.tune.report import draw_report

    for path in draw_report(args.experiment):
        print(path)
    return 0


def _confirm_arguments(confirm: argparse.ArgumentParser) -> None:
    confirm.add_argument("--config", "-c", required=True, help="the default config")
    confirm.add_argument("--tuned", "-t", required=True, help="the tuned config (e.g. configs/*_tuned.yaml)")
    confirm.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each run")
    confirm.add_argument(
        "--held-out",
        help="where the derived dataset goes when the dataset has no test split (default: a temporary one)",
    )
    confirm.add_argument("--out", help="write the result as JSON here")
    common.add_set(confirm, "train.epochs=50 (both configs)")
    confirm.set_defaults(func=cmd_confirm)


def _report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("experiment", help="the sweep's directory, <storage>/<name>, local or s3://")
    report.set_defaults(func=cmd_report)


def _sweep_arguments(tune: argparse.ArgumentParser) -> None:
    tune.add_argument("--space", "-s", help="search space YAML (see tune_spaces/)")
    tune.add_argument("--config", "-c", help="the config every trial starts from")
    common.add_set(tune, "train.epochs=4 (every trial)")
    tune.add_argument(
        "--name", help="experiment name (default: <space>-<config>); re-running a name resumes it"
    )
    tune.add_argument("--storage", help="where experiments go (default: train.storage_path), local or s3://")
    tune.add_argument(
        "--best-config",
        default="auto",
        help="best config YAML (default: configs/<config>_tuned.yaml; 'none': only in the experiment)",
    )
    tune.add_argument(
        "--no-default", action="store_true", help="do not evaluate the config's own values first"
    )
    tune.add_argument(
        "--confirm",
        action="store_true",
        help="after the sweep, retrain the best trial and the default with each --seeds and compare "
        "them on held-out data; the best config leaves the experiment only if confirmed",
    )
    tune.add_argument(
        "--confirm-override",
        action="append",
        default=[],
        metavar="key=value",
        help="an override for both confirmation arms (repeatable; the sweep's overrides are not applied)",
    )
    tune.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="confirmation seeds")
    tune.set_defaults(func=cmd_tune)


def register(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser(
        "tune", help="sweep hyperparameters with Ray Tune (ASHA, Optuna); tune report, tune confirm"
    )
    _sweep_arguments(tune)
    verbs = tune.add_subparsers(dest="tune_command", metavar="{report,confirm}")
    _report_arguments(verbs.add_parser("report", help="draw a finished sweep to PNG files"))
    _confirm_arguments(
        verbs.add_parser("confirm", help="compare a tuned config with its default on held-out data")
    )
    # the names these had before `tune report` / `tune confirm` were sub-verbs
    _report_arguments(sub.add_parser("tune-report", help="the same as tune report"))
    _confirm_arguments(sub.add_parser("tune-confirm", help="the same as tune confirm"))
