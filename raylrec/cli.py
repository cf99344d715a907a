"""The ``raylrec`` command.

raylrec demo                                   the main job on the embedded default
raylrec data prepare --config FILE [k=v ...]   prepare a dataset (dotted overrides)
raylrec data stats PATH                        statistics of a prepared dataset
raylrec data synth --out PATH [--events N]     write a synthetic interaction log
raylrec train-cf --config FILE [--local] [--init-from BUNDLE]  train a CF encoder, export its CF bundle
raylrec train --config FILE [--local]          train an LLM method, export its model bundle
raylrec tune --space FILE --config FILE        a Ray Tune sweep (ASHA; re-run the name to resume)
raylrec tune report EXPERIMENT                 draw a finished sweep to PNG files
raylrec tune confirm --config C --tuned T      retrain both with 3 seeds, compare on held-out data
raylrec score --config FILE [--date D]         top-K recommendations for every user, published
raylrec nightly --config FILE --date D         prepare -> refresh CF -> score -> publish, idempotent
raylrec recs read ROOT [--date D] [--user U]   read published recommendations (checksums verified)
raylrec recs eval ROOT --dataset D [--split S]  Recall/NDCG@K of published lists vs held-out items
raylrec recs dates ROOT                        the published dates under ROOT
raylrec profiles generate --config FILE [--local]  RLMRec's LLM profiles of items and users, resumable
raylrec profiles embed --config FILE           sentence embeddings of the profiles (--text metadata: no LLM)
raylrec config docs                            the configuration reference, generated from the models
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from raylrec import __version__, storage
from raylrec.config import ConfigError, RayConfig, load_config
from raylrec.data.sources.synthetic import SyntheticSource

__all__ = ["main"]

log = logging.getLogger("raylrec")


def _progress() -> Callable[[str], None]:
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[raylrec {time.perf_counter() - start:7.1f}s] {message}", flush=True)

    return say


def _init_ray(args: argparse.Namespace, ray_config: RayConfig) -> None:
    from raylrec.runtime import init_ray

    # Without -v, Ray Data's own log lines are dropped: a failing Ray Data task logs its whole
    # stack, and the error that reaches us names the file or field already.
    init_ray(ray_config, quiet_ray_data=not args.verbose)


def cmd_prepare(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *(["data.append=true"] if args.append else [])]
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
    _init_ray(args, config.ray)
    from raylrec.data.prepare import prepare
    from raylrec.data.stats import dataset_stats, format_stats

    prepare(config.data, _progress())
    if not args.quiet:
        print(format_stats(dataset_stats(config.data.output)))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from raylrec.data.output import read_meta
    from raylrec.data.stats import dataset_stats, format_stats

    read_meta(args.path)  # a missing or unfinished dataset fails here, before Ray starts
    _init_ray(args, RayConfig(address=args.address))

    stats = dataset_stats(args.path)
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    source = SyntheticSource(
        num_events=args.events,
        num_users=args.users,
        num_items=args.items,
        zipf_exponent=args.zipf,
        user_zipf_exponent=args.user_zipf,
        seed=args.seed,
    )
    _init_ray(args, RayConfig(address=args.address))
    from raylrec.data.synthetic import write_synthetic

    say = _progress()
    say(f"generating {args.events:,} events for {args.users:,} users and {args.items:,} items")
    write_synthetic(source, args.out)
    say(f"wrote {args.out}/events/ and {args.out}/items.parquet")
    return 0


def cmd_train_cf(args: argparse.Namespace) -> int:
    # quoted: an override's value is YAML, and a path such as 2026-11-24 would read as a date
    init_from = [f"warm_start.bundle={json.dumps(args.init_from)}"] if args.init_from else []
    overrides = [*args.overrides, *init_from]
    config = load_config(args.config, overrides)
    config.dataset_path()  # fails before any work when neither dataset nor data is set
    if not args.local:
        _init_ray(args, config.ray)
    from raylrec.cf.train import train_cf

    train_cf(config, _progress(), use_ray=not args.local)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if config.method is None:
        from raylrec.methods.config import METHODS

        raise ConfigError(f"{args.config}: no 'method' section (name: one of {', '.join(METHODS.names())})")
    config.dataset_path()
    if not args.local:
        _init_ray(args, config.ray)
    from raylrec.methods.train import train_method

    train_method(config, _progress(), use_ray=not args.local)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from raylrec.config import load_raw_config
    from raylrec.tune.space import load_space

    config = load_config(args.config, args.overrides)
    load_space(args.space, config, load_raw_config(args.config, args.overrides))  # before Ray starts
    # The confirmation's config, checked before any trial.
    if args.confirm and load_config(args.config, args.confirm_override).method is not None:
        raise ConfigError("tune --confirm retrains CF encoders only (an LLM method reports no test metrics)")
    storage.check_reachable(args.storage or config.train.storage_path)
    _init_ray(args, config.ray)
    from raylrec.tune.sweep import run_sweep

    best = None if args.best_config == "none" else args.best_config
    say = _progress()
    result = run_sweep(
        args.space,
        args.config,
        args.overrides,
        name=args.name,
        storage_path=args.storage,
        # With --confirm the best config goes outside the experiment only once confirmed.
        best_config=None if args.confirm else best,
        include_default=not args.no_default,
        say=say,
    )
    if args.confirm:
        _confirm_sweep(args, result, best, say)
    return 0


def _confirm_sweep(args: argparse.Namespace, result, best: str | None, say) -> None:
    """Retrain the sweep's best trial and the default with each seed on held-out data; the
    best config goes to ``best`` (configs/<config>_tuned.yaml by default) only if confirmed."""
    from raylrec.config import load_raw_config
    from raylrec.tune.confirm import confirm_tuning, confirmation_header, format_confirmation
    from raylrec.tune.results import best_params, default_tuned_path, write_text
    from raylrec.tune.space import load_space

    space = load_space(
        args.space, load_config(args.config, args.overrides), load_raw_config(args.config, args.overrides)
    )
    confirmation = confirm_tuning(
        args.config,
        best_params(result.best, space),
        args.confirm_override,
        seeds=tuple(args.seeds),
        held_out_dir=storage.join(result.path, "confirm_data"),
        say=say,
    )
    table = format_confirmation(confirmation)
    storage.write_json(storage.join(result.path, "confirmation.json"), confirmation.to_dict())
    write_text(storage.join(result.path, "confirmation.md"), table + "\n")
    say("confirmation:\n" + table)
    best_yaml = storage.join(result.path, "best_config.yaml")
    if not confirmation.confirmed:
        say(f"the default stands: {args.config} is kept; the sweep's best config stays in {best_yaml}")
        return
    if best == "auto":
        best = default_tuned_path(args.config)
    if best is None:
        say(f"tuned config confirmed; it stays in {best_yaml} (--best-config none)")
        return
    fs, path = storage.filesystem(best_yaml)
    text = "\n".join(confirmation_header(confirmation)) + "\n" + fs.cat_file(path).decode()
    write_text(best, text)
    say(f"tuned config confirmed: written to {best}")


def cmd_tune_confirm(args: argparse.Namespace) -> int:
    from raylrec.config import load_raw_config
    from raylrec.tune.confirm import compare_configs, format_confirmation

    default = load_raw_config(args.config, args.overrides)
    tuned = load_raw_config(args.tuned, args.overrides)
    for path in (args.config, args.tuned):
        load_config(path, args.overrides)  # a bad config fails here, before any training
    confirmation = compare_configs(
        default,
        tuned,
        seeds=tuple(args.seeds),
        held_out_dir=args.held_out,
        overrides=args.overrides,
        say=_progress(),
        verbose=args.verbose,
    )
    table = format_confirmation(confirmation)
    print(table)
    if args.out:
        storage.write_json(args.out, confirmation.to_dict())
    return 0


def cmd_tune_report(args: argparse.Namespace) -> int:
    from raylrec.tune.report import draw_report

    for path in draw_report(args.experiment):
        print(path)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from raylrec.scoring.job import check_scoring, run_scoring

    config = load_config(args.config, args.overrides)
    checked = check_scoring(config, args.date, args.run_id)  # output, bundles, dataset: before Ray
    _init_ray(args, config.ray)
    run_scoring(config, args.date, args.run_id, _progress(), checked=checked)
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from raylrec.nightly import nightly_config, run_nightly

    nightly_config(config, args.date)  # config errors before Ray starts
    _init_ray(args, config.ray)
    run_nightly(config, args.date, _progress(), force=args.force)
    return 0


def cmd_recs_read(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from raylrec.scoring import published_dates, read_manifest, read_recommendations

    date = args.date or (published_dates(args.root) or [None])[-1]
    if date is None:
        raise FileNotFoundError(f"no published recommendations under {args.root}")
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


def cmd_recs_eval(args: argparse.Namespace) -> int:
    from raylrec.data.output import read_meta
    from raylrec.eval.report import format_report
    from raylrec.scoring import published_dates
    from raylrec.scoring.quality import evaluate_published

    if any(k < 1 for k in args.k):
        raise ConfigError(f"--k takes list lengths of 1 or more, got {' '.join(map(str, args.k))}")
    splits = read_meta(args.dataset)["counts"]["splits"]
    if args.split not in splits:
        raise ConfigError(f"--split {args.split}: {args.dataset} has the splits {', '.join(sorted(splits))}")
    date = args.date or (published_dates(args.root) or [None])[-1]
    if date is None:
        raise FileNotFoundError(f"no published recommendations under {args.root}")
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


def cmd_recs_dates(args: argparse.Namespace) -> int:
    from raylrec.scoring import published_dates

    for date in published_dates(args.root):
        print(date)
    return 0


def cmd_profiles_generate(args: argparse.Namespace) -> int:
    from raylrec.profiles.config import load_profiles_config

    config = load_profiles_config(args.config, args.overrides)  # fails here, before Ray starts
    from raylrec.profiles.generate import generate_profiles

    if not args.local:
        _init_ray(args, config.ray)
    generate_profiles(config, _progress(), use_ray=not args.local)
    return 0


def cmd_profiles_embed(args: argparse.Namespace) -> int:
    from raylrec.profiles.config import load_profiles_config

    config = load_profiles_config(args.config, args.overrides)
    from raylrec.profiles.embed import embed_profiles

    _init_ray(args, config.ray)
    embed_profiles(config, args.text, _progress())
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from raylrec.config_docs import render_reference

    print(render_reference(), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from raylrec.demo import run_demo

    run_demo(args.out, _progress(), quiet_ray_data=not args.verbose)
    return 0


def _today() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).date().isoformat()


def _date(value: str) -> str:
    """An argparse type: a strict YYYY-MM-DD date (not 20261120, not a week date)."""
    from raylrec.scoring.publish import check_date

    try:
        return check_date(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_id(value: str) -> str:
    """An argparse type: a run id that is one name, never a path."""
    from raylrec.scoring.publish import check_run_id

    try:
        return check_run_id(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_NO_VERIFY_HELP = (
    "skip the sha256 check of every file against the manifest (faster; a changed or replaced "
    "file is then served as it is). Paths outside the published run are refused either way"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raylrec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"raylrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job end to end on the embedded default")
    demo.add_argument("--out", default="out/demo", help="where outputs go (local or s3://)")
    demo.set_defaults(func=cmd_demo)

    from raylrec.cf.config import ENCODERS
    from raylrec.methods.config import METHODS

    train_cf = sub.add_parser(
        "train-cf", help=f"train a CF encoder (cf.model: {', '.join(ENCODERS.names())}) and export its bundle"
    )
    train_cf.add_argument("--config", "-c", required=True, help="YAML config (see configs/)")
    train_cf.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=5"
    )
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
    train.add_argument("--config", "-c", required=True, help="YAML config (see configs/)")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=1"
    )
    train.add_argument(
        "--local", action="store_true", help="a plain process, no Ray or DeepSpeed (same model and loop)"
    )
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser("tune", help="sweep hyperparameters with Ray Tune (ASHA, Optuna)")
    tune.add_argument("--space", "-s", required=True, help="search space YAML (see tune_spaces/)")
    tune.add_argument("--config", "-c", required=True, help="the config every trial starts from")
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
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides every trial shares, e.g. train.epochs=4",
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
    # `raylrec tune confirm ...` (main() routes it here, as `tune report`)
    confirm = sub.add_parser(
        "tune-confirm", help="compare a tuned config with its default on held-out data (also: tune confirm)"
    )
    confirm.add_argument("--config", "-c", required=True, help="the default config")
    confirm.add_argument("--tuned", "-t", required=True, help="the tuned config (e.g. configs/*_tuned.yaml)")
    confirm.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each run")
    confirm.add_argument(
        "--held-out",
        help="where the derived dataset goes when the dataset has no test split (default: a temporary one)",
    )
    confirm.add_argument("--out", help="write the result as JSON here")
    confirm.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides for both configs, e.g. train.epochs=50",
    )
    confirm.set_defaults(func=cmd_tune_confirm)
    # `raylrec tune report PATH` (main() routes it here: `tune` itself takes free-form overrides)
    report = sub.add_parser("tune-report", help="draw a finished sweep to PNG files (also: tune report)")
    report.add_argument("experiment", help="the sweep's directory, <storage>/<name>, local or s3://")
    report.set_defaults(func=cmd_tune_report)

    score = sub.add_parser("score", help="batch-score every user: CF retrieval, LLM rerank, publish top K")
    score.add_argument("--config", "-c", required=True, help="YAML config with a 'score' section")
    score.add_argument(
        "--date",
        type=_date,
        default=_today(),
        help="the partition to (re)publish, YYYY-MM-DD (default: today, UTC)",
    )
    score.add_argument(
        "--run-id", type=_run_id, help="a name, unique for the date (default: <date>-<time>-<random>)"
    )
    score.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. score.k=20")
    score.set_defaults(func=cmd_score)

    nightly = sub.add_parser("nightly", help="the nightly pipeline for one date (each step idempotent)")
    nightly.add_argument(
        "--config", "-c", required=True, help="YAML config with 'nightly' and 'score' sections"
    )
    nightly.add_argument("--date", type=_date, default=_today(), help="YYYY-MM-DD (default: today, UTC)")
    nightly.add_argument("--force", action="store_true", help="re-score a date that is already published")
    nightly.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    nightly.set_defaults(func=cmd_nightly)

    recs = sub.add_parser("recs", help="read published recommendations").add_subparsers(
        dest="recs_command", required=True
    )
    read = recs.add_parser("read", help="print a published date's recommendations")
    read.add_argument("root", help="score.output: local path or s3:// URI")
    read.add_argument("--date", type=_date, help="YYYY-MM-DD (default: the latest published date)")
    read.add_argument("--user", help="one user's rows")
    read.add_argument("--limit", type=int, default=50, help="rows to print")
    read.add_argument("--no-verify", action="store_true", help=_NO_VERIFY_HELP)
    read.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)  # the default now
    read.add_argument("--json", action="store_true", help="one JSON object per row")
    read.set_defaults(func=cmd_recs_read)
    evaluate = recs.add_parser("eval", help="Recall/NDCG@K of a published date against a held-out split")
    evaluate.add_argument("root")
    evaluate.add_argument("--dataset", required=True, help="a prepared dataset holding the held-out split")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--date", type=_date, help="YYYY-MM-DD (default: the latest published date)")
    evaluate.add_argument("--k", type=int, nargs="+", default=[10])
    evaluate.add_argument("--recall-denominator", choices=["test_items", "min_k"], default="test_items")
    evaluate.add_argument("--implicit", action="store_true", help="every held-out interaction is relevant")
    evaluate.add_argument("--no-verify", action="store_true", help=_NO_VERIFY_HELP)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_recs_eval)
    dates = recs.add_parser("dates", help="list published dates")
    dates.add_argument("root")
    dates.set_defaults(func=cmd_recs_dates)

    profiles = sub.add_parser("profiles", help="RLMRec's LLM profiles and their embeddings").add_subparsers(
        dest="profiles_command", required=True
    )
    generate = profiles.add_parser("generate", help="write item, then user profiles with the LLM (resumable)")
    generate.add_argument(
        "--config", "-c", required=True, help="YAML config (see configs/profiles_ml100k.yaml)"
    )
    generate.add_argument(
        "--local", action="store_true", help="generate in this process, no Ray (same batches and output)"
    )
    generate.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. max_items=32"
    )
    generate.set_defaults(func=cmd_profiles_generate)
    embed = profiles.add_parser("embed", help="embed the profiles (or metadata text) with a sentence encoder")
    embed.add_argument("--config", "-c", required=True, help="YAML config (see configs/profiles_ml100k.yaml)")
    embed.add_argument(
        "--text",
        choices=["profiles", "metadata"],
        help="what to embed (default: embed.text); metadata: no LLM",
    )
    embed.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    embed.set_defaults(func=cmd_profiles_embed)

    config_cmd = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_command", required=True
    )
    config_docs = config_cmd.add_parser(
        "docs", help="print the configuration reference (Markdown) generated from the config models"
    )
    config_docs.set_defaults(func=cmd_config_docs)

    data = sub.add_parser("data", help="prepare and inspect datasets").add_subparsers(
        dest="data_command", required=True
    )
    prep = data.add_parser("prepare", help="validate, index, split and build histories")
    prep.add_argument("--config", "-c", help="YAML config (see configs/)")
    prep.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.kcore=5")
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
    return parser


# torch's CPU allocator backs allocations of 2 MB and more with transparent huge pages when this is
# 1: a CF encoder's gradients and optimiser temporaries, fresh each step, then fault once per 2 MB
# instead of once per 4 KB page (bench/optimizer_step.py). Set for this process, the local Ray
# instance it starts, and (forwarded by the pipeline) every Ray Train worker; a user's value wins.
TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault(TORCH_HUGE_PAGES, "1")
    if argv[:2] in (["tune", "report"], ["tune", "confirm"]):
        argv = [f"tune-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"raylrec: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as e:
        # Bad input (SourceError, StorageError, OutputExistsError, ...): one clear line, no trace.
        print(f"raylrec: error: {_root_cause(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        # botocore and aiohttp errors are no OSError, nor is Ray's wrapper of them.
        failure = storage.storage_failure(e)
        if failure is None:
            raise
        print(f"raylrec: error: storage failed: {' '.join(str(failure).split())}", file=sys.stderr)
        return 1


def _root_cause(error: BaseException) -> str:
    """Ray wraps task errors; show the original message that names the file or field."""
    cause = getattr(error, "cause", None)
    return str(cause) if cause is not None else str(error)


if __name__ == "__main__":
    sys.exit(main())
