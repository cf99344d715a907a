"""Confirmed tuning: is a sweep's best config better than the default on data the sweep never saw?

A sweep picks the trial that scored best on the split it selected on, so part of its winning
margin is selection noise. Confirmation retrains the default config and the tuned one with
several seeds each (``train.seed``), selecting the best epoch on valid as training always does,
and compares them on a held-out split:

- the dataset's ``test`` split when it has one;
- otherwise (the CoLLM split, whose test split is not shipped) the later half of ``valid`` by
  time, with the earlier half as the new valid split (``split_valid_by_time``).

The tuned config counts as better only when its mean gain over the default exceeds the seeds'
spread (``Confirmation.confirmed``). Runs train in a plain process (``use_ray=False``: the same
training code without a Ray Train start-up per run, which dominates small runs; ``num_workers``
is then ignored, so both arms train on one ``batch_size`` rather than a multi-worker global
batch). Only CF encoders are supported, since an LLM method's training reports its valid
metrics only.

    raylrec tune confirm --config configs/mf_collm_ml1m.yaml --tuned configs/mf_collm_ml1m_tuned.yaml
    raylrec tune --space S --config C --confirm     # after the sweep, with its best trial
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from raylrec import storage
from raylrec.config import ConfigError, build_config, load_config, load_raw_config
from raylrec.data.hashing import arrow_digest
from raylrec.data.output import (
    InputPath,
    commit,
    new_write_id,
    prepare_output_dir,
    read_meta,
    read_table,
    write_table,
)
from raylrec.tune.space import apply_params

__all__ = [
    "CONFIRMED",
    "DEFAULT_STANDS",
    "Arm",
    "Confirmation",
    "changed_params",
    "compare_configs",
    "confirm_sweep",
    "confirm_tuning",
    "confirmation_header",
    "format_confirmation",
    "held_out_dataset",
    "split_valid_by_time",
    "verdict_confirmed",
]

CONFIRMED, DEFAULT_STANDS = "tuned config confirmed", "the default stands"


@dataclass
class Arm:
    """One config retrained with each seed: its held-out metric, the valid metric it was
    selected on and the best epoch, per seed."""

    name: str
    held_out: list[float] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.held_out)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1 in the denominator)."""
        return statistics.stdev(self.held_out)


@dataclass
class Confirmation:
    """Default and tuned arms on the same held-out split and seeds.

    The rule: ``gain`` is the tuned arm's mean minus the default's (sign flipped when the metric
    is minimised, so a positive gain is always an improvement); ``spread`` is the larger of the
    two arms' sample standard deviations over seeds. The tuned config is ``confirmed`` only when
    ``gain > spread``; otherwise the default stands."""

    metric: str  # the held-out metric compared, e.g. test/auc
    mode: str
    seeds: tuple[int, ...]
    default: Arm
    tuned: Arm
    params: dict[str, Any]  # what the tuned config changes
    dataset: str  # the dataset the runs trained and were scored on
    held_out: str  # what the held-out split is, in words
    overrides: list[str]
    seconds: float = 0.0

    @property
    def gain(self) -> float:
        sign = 1.0 if self.mode == "max" else -1.0
        return sign * (self.tuned.mean - self.default.mean)

    @property
    def spread(self) -> float:
        return max(self.default.std, self.tuned.std)

    @property
    def confirmed(self) -> bool:
        return verdict_confirmed(self.gain, self.spread)

    @property
    def verdict(self) -> str:
        return CONFIRMED if self.confirmed else DEFAULT_STANDS

    def to_dict(self) -> dict[str, Any]:
        arms = {
            a.name: {
                "held_out": a.held_out,
                "valid": a.valid,
                "best_epochs": a.best_epochs,
                "mean": a.mean,
                "std": a.std,
            }
            for a in (self.default, self.tuned)
        }
        return {
            "metric": self.metric,
            "mode": self.mode,
            "seeds": list(self.seeds),
            "arms": arms,
            "params": self.params,
            "gain": self.gain,
            "spread": self.spread,
            "confirmed": self.confirmed,
            "verdict": self.verdict,
            "dataset": self.dataset,
            "held_out": self.held_out,
            "overrides": self.overrides,
            "seconds": self.seconds,
        }


def verdict_confirmed(gain: float, spread: float) -> bool:
    """The rule on its own: an improvement counts only when it exceeds the seeds' spread."""
    return not math.isnan(gain) and not math.isnan(spread) and gain > spread


# --- the held-out split ---------------------------------------------------------------------


def split_valid_by_time(dataset: str, out: str) -> dict[str, Any]:
    """Write a copy of the prepared ``dataset`` (which has no test split) to ``out`` whose valid
    split is the earlier half of the original valid by ``timestamp`` and whose test split is the
    later half. Rows sharing the cut's timestamp all go to the later half, so every test row is at
    or after every valid row; train, users and items are copied unchanged. Returns the new meta."""
    started = time.perf_counter()
    meta = read_meta(dataset)
    splits = meta["counts"]["splits"]
    if "test" in splits:
        raise ValueError(f"{dataset} already has a test split: use it as the held-out data")
    if "valid" not in splits:
        raise ValueError(f"{dataset} has no valid split to hold out the later half of")
    valid = read_table(dataset, "valid")
    valid = valid.take(pc.sort_indices(valid, [("timestamp", "ascending"), ("uid", "ascending")]))
    cut = valid["timestamp"][valid.num_rows // 2].as_py()
    earlier = valid.filter(pc.less(valid["timestamp"], cut))
    later = valid.filter(pc.greater_equal(valid["timestamp"], cut))
    if earlier.num_rows == 0 or later.num_rows == 0:
        raise ValueError(f"{dataset}: valid's timestamps cannot be cut in two halves (one instant?)")
    tables = {"train": read_table(dataset, "train"), "valid": earlier, "test": later}
    if sum(t.num_rows for t in tables.values()) != sum(splits.values()):
        raise RuntimeError(f"{dataset}: rows lost while splitting valid ({tables}, {splits})")

    prepare_output_dir(out, overwrite=True, inputs=[InputPath(dataset, walked=False)])
    fs, root = storage.filesystem(out)
    write_id = new_write_id()
    files: dict[str, list[str]] = {}
    for name, table in tables.items():
        fs.makedirs(storage.join(root, name), exist_ok=True)
        files[name] = [f"{write_id}_{name}-0.parquet"]
        write_table(table, out, f"{name}/{files[name][0]}")
    counts = {**meta["counts"], "splits": {n: t.num_rows for n, t in tables.items()}}
    if "positives" in counts:
        counts["positives"] = {n: int(pc.sum(t["label"]).as_py() or 0) for n, t in tables.items()}
    if "warm" in counts and "not_cold" in valid.column_names:
        counts["warm"] = {n: int(pc.sum(t["not_cold"]).as_py() or 0) for n, t in tables.items()}
    protocol = {
        **meta["protocol"],
        "held_out": {
            "rule": "valid split by timestamp: the earlier half is valid, the later half test",
            "cut_timestamp": cut,
            "from": storage.absolute(dataset),
            "from_content_hash": meta["content_hash"],
        },
    }
    return commit(
        out,
        protocol=protocol,
        counts=counts,
        split_hashes={n: arrow_digest(t) for n, t in tables.items()},
        users=read_table(dataset, "users.parquet"),
        items=read_table(dataset, "items.parquet"),
        source={"type": "held_out", "dataset": storage.absolute(dataset), "source": meta["source"]},
        columns=meta["columns"],
        files=files,
        started=started,
    )


def held_out_dataset(dataset: str, out: str) -> tuple[str, str]:
    """(the dataset to train and score on, what its held-out split is): ``dataset`` itself when
    it has a test split, else its valid split cut in time into ``out``."""
    meta = read_meta(dataset)
    if "test" in meta["counts"]["splits"]:
        return dataset, f"the test split of {dataset}"
    new = split_valid_by_time(dataset, out)
    cut = new["protocol"]["held_out"]["cut_timestamp"]
    rows = new["counts"]["splits"]
    return out, (
        f"the later half of {dataset}'s valid split by time (timestamp >= {cut}, {rows['test']:,} rows); "
        f"epochs selected on the earlier half ({rows['valid']:,} rows)"
    )


# --- retraining -------------------------------------------------------------------------------


def _leaves(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_params(default: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys whose values ``tuned`` sets differently from ``default`` (where the bundle
    goes is no hyperparameter)."""
    a, b = _leaves(default), _leaves(tuned)
    return {k: b[k] for k in sorted(b) if k != "output" and a.get(k, object()) != b[k]}


def compare_configs(
    default_raw: dict[str, Any],
    tuned_raw: dict[str, Any],
    seeds: Sequence[int] = (0, 1, 2),
    held_out_dir: str | None = None,
    overrides: list[str] | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> Confirmation:
    """Retrain two raw configs (already merged with any overrides) with each seed and compare them
    on a held-out split (see the module docstring). ``held_out_dir``: where the derived dataset
    goes when one is needed (default: a temporary directory, removed afterwards)."""
    from raylrec.cf.train import train_cf

    if len(seeds) < 2:
        raise ValueError("confirmation needs at least 2 seeds (the rule compares the gain to their spread)")
    configs = {"default": build_config(default_raw, "default"), "tuned": build_config(tuned_raw, "tuned")}
    for name, config in configs.items():
        if config.method is not None:
            raise ConfigError(
                f"confirmation retrains CF encoders only; the {name} config trains the LLM method "
                f"{config.method.name}, whose training reports valid metrics only (no test split)"
            )
    paths = {n: storage.absolute(c.dataset_path()) for n, c in configs.items()}
    if paths["default"] != paths["tuned"]:
        raise ConfigError(
            f"the two configs train on different datasets: {paths['default']}, {paths['tuned']}"
        )
    metrics = {(c.train.metric, c.train.mode) for c in configs.values()}
    if len(metrics) != 1:
        raise ConfigError(f"the two configs select on different metrics: {sorted(metrics)}")
    ((metric, mode),) = metrics
    if not metric.startswith("valid/"):
        raise ConfigError(f"train.metric {metric} is no valid/ metric: nothing to hold out")
    test_metric = "test/" + metric.removeprefix("valid/")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raylrec-confirm-") as tmp:
        dataset, held_out = held_out_dataset(paths["default"], held_out_dir or f"{tmp}/held_out")
        say(f"confirming on {held_out}: {len(seeds)} seeds per config, {test_metric}")
        arms = {name: Arm(name) for name in configs}
        for name, raw in (("default", default_raw), ("tuned", tuned_raw)):
            for seed in seeds:
                run = apply_params(raw, {"train.seed": seed})
                config = build_config({**run, "dataset": dataset, "output": None}, f"{name} seed {seed}")
                result = train_cf(config, say if verbose else (lambda _: None), use_ray=False)
                arm = arms[name]
                arm.held_out.append(float(result.metrics[test_metric]))
                arm.valid.append(float(result.state.best_metric))
                arm.best_epochs.append(int(result.state.best_epoch))
                say(
                    f"{name} seed {seed}: {test_metric} {arm.held_out[-1]:.4f} "
                    f"({metric} {arm.valid[-1]:.4f} at epoch {arm.best_epochs[-1]}, {result.seconds:.0f}s)"
                )
    return Confirmation(
        metric=test_metric,
        mode=mode,
        seeds=tuple(seeds),
        default=arms["default"],
        tuned=arms["tuned"],
        params=changed_params(default_raw, tuned_raw),
        dataset=paths["default"],
        held_out=held_out,
        overrides=list(overrides or []),
        seconds=time.perf_counter() - started,
    )


def confirm_tuning(
    config_path: str,
    params: dict[str, Any],
    overrides: list[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    held_out_dir: str | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> Confirmation:
    """The config at ``config_path`` (with ``overrides``, shared by both arms) against the same
    config with the swept ``params`` (dotted keys, e.g. a sweep's best trial) set; see
    ``compare_configs`` and ``Confirmation`` for the rule."""
    raw = load_raw_config(config_path, overrides)
    return compare_configs(raw, apply_params(raw, params), seeds, held_out_dir, overrides, say, verbose)


def confirm_sweep(
    result: Any,
    space_path: str,
    config_path: str,
    overrides: list[str],
    confirm_overrides: list[str],
    seeds: Sequence[int],
    best: str | None,
    say: Callable[[str], None] = print,
) -> Confirmation:
    """``raylrec tune --confirm``: retrain a finished sweep's best trial (``result``, a
    ``SweepResult``) and the default with each of ``seeds`` on held-out data; the best config
    goes to ``best`` (``"auto"``: configs/<config>_tuned.yaml; None: nowhere outside the
    experiment) only if confirmed. The record and its table stay in the experiment."""
    from raylrec.tune.results import best_params, default_tuned_path, write_text
    from raylrec.tune.space import load_space

    space = load_space(
        space_path, load_config(config_path, overrides), load_raw_config(config_path, overrides)
    )
    confirmation = confirm_tuning(
        config_path,
        best_params(result.best, space),
        confirm_overrides,
        seeds=tuple(seeds),
        held_out_dir=storage.join(result.path, "confirm_data"),
        say=say,
    )
    table = format_confirmation(confirmation)
    storage.write_json(storage.join(result.path, "confirmation.json"), confirmation.to_dict())
    write_text(storage.join(result.path, "confirmation.md"), table + "\n")
    say("confirmation:\n" + table)
    best_yaml = storage.join(result.path, "best_config.yaml")
    if not confirmation.confirmed:
        say(f"the default stands: {config_path} is kept; the sweep's best config stays in {best_yaml}")
        return confirmation
    if best == "auto":
        best = default_tuned_path(config_path)
    if best is None:
        say(f"tuned config confirmed; it stays in {best_yaml} (--best-config none)")
        return confirmation
    fs, path = storage.filesystem(best_yaml)
    text = "\n".join(confirmation_header(confirmation)) + "\n" + fs.cat_file(path).decode()
    write_text(best, text)
    say(f"tuned config confirmed: written to {best}")
    return confirmation


# --- reporting ------------------------------------------------------------------------------------


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_confirmation(result: Confirmation) -> str:
    """A Markdown table (arm, per-seed values, mean ± std, gain) and the verdict."""
    seeds = ", ".join(str(s) for s in result.seeds)
    lines = [
        f"| config | {result.metric} per seed ({seeds}) | mean ± std | gain | best epochs |",
        "|---|---|---:|---:|---|",
    ]
    for arm, gain in ((result.default, "-"), (result.tuned, f"{result.gain:+.4f}")):
        values = ", ".join(f"{v:.4f}" for v in arm.held_out)
        epochs = ", ".join(str(e) for e in arm.best_epochs)
        lines.append(f"| {arm.name} | {values} | {arm.mean:.4f} ± {arm.std:.4f} | {gain} | {epochs} |")
    changed = ", ".join(f"{k}={_value(v)}" for k, v in result.params.items()) or "nothing"
    relation = ">" if result.confirmed else "<="
    lines += [
        "",
        f"Tuned changes: {changed}. Held out: {result.held_out}.",
        f"Gain {result.gain:+.4f} {relation} spread {result.spread:.4f} (the larger sample std over "
        f"seeds): **{result.verdict}**.",
    ]
    return "\n".join(lines)


def confirmation_header(result: Confirmation) -> list[str]:
    """Comment lines for a tuned YAML that a confirmation let through."""
    return [
        f"# Confirmed on {result.held_out} with seeds {list(result.seeds)}: {result.metric} "
        f"{result.tuned.mean:.4f} ± {result.tuned.std:.4f} against the default's "
        f"{result.default.mean:.4f} ± {result.default.std:.4f} (gain {result.gain:+.4f} > spread "
        f"{result.spread:.4f}).",
    ]
