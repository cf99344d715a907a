"""The nightly pipeline for one date: prepare the logs, optionally refresh the CF encoder,
score and publish. Each step is skipped when its committed output for the date exists
(``meta.json``, a CF bundle's ``config.json``, the partition's ``_MANIFEST.json``), so a rerun
after a failure continues where it stopped and a second run of a finished date does nothing.

With a ``rolling_days`` split the dataset is one, ``<nightly.root>/dataset``, and each date
appends its partition to it (``raylrec data prepare --append``): the first date prepares it,
a later one appends, a date the dataset already holds (its last event is on or after that
day) is skipped, and the CF refresh (``nightly.refresh_cf``) warm-starts from the newest earlier
date's CF bundle (``nightly.warm_start_cf``; ``raylrec.cf.warm_start``). Other splits prepare a
dataset per date, ``<nightly.root>/datasets/date=...``, and retrain the CF encoder from scratch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raylrec import storage
from raylrec.artifacts import ArtifactDir, ArtifactKind
from raylrec.config import ConfigError, DataConfig, RaylrecConfig, build_config
from raylrec.data.config import DAY
from raylrec.data.days import day_name
from raylrec.data.output import DATASET
from raylrec.scoring import publish as recs

if TYPE_CHECKING:
    from raylrec.profiles.config import ProfilesConfig

__all__ = ["run_nightly", "NightlySummary", "nightly_config", "prepare_for_date", "previous_cf_bundle"]


@dataclass
class NightlySummary:
    date: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: str, status: str, seconds: float, output: str, **extra: Any) -> None:
        self.steps.append(
            {"step": step, "status": status, "seconds": round(seconds, 1), "output": output, **extra}
        )

    def format(self) -> str:
        lines = [f"nightly {self.date}:"]
        for s in self.steps:
            extra = ", ".join(
                f"{k} {v}" for k, v in s.items() if k not in ("step", "status", "seconds", "output")
            )
            lines.append(
                f"  {s['step']:<8} {s['status']:<8} {s['seconds']:>7.1f}s  {s['output']}"
                + (f"  ({extra})" if extra else "")
            )
        return "\n".join(lines)


def _substitute(value: Any, date: str) -> Any:
    if isinstance(value, str):
        return value.replace("{date}", date)
    if isinstance(value, list):
        return [_substitute(v, date) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, date) for k, v in value.items()}
    return value


def nightly_config(config: RaylrecConfig, date: str) -> RaylrecConfig:
    """``config`` with the date's paths: data source ``{date}`` placeholders, the dated
    dataset and CF bundle under ``nightly.root``, and scoring pointed at both."""
    recs.check_date(date)
    if not config.nightly.root:
        raise ConfigError("set nightly.root (where the dated datasets and CF bundles go)")
    if not config.score.output:
        raise ConfigError("set score.output (where recommendations are published)")
    root = storage.absolute(config.nightly.root)
    raw = config.model_dump(mode="json", exclude_none=True)
    appended = config.data is not None and config.data.split.appendable
    dataset = storage.join(root, "dataset") if appended else storage.join(root, "datasets", f"date={date}")
    if config.data is not None:
        raw["data"] = {**raw["data"], "source": _substitute(raw["data"]["source"], date), "output": dataset}
        # a dataset per date: only ever replaces an uncommitted attempt (see prepare_for_date);
        # the appended one: never replaced
        raw["data"]["overwrite"] = not appended
        raw["dataset"] = dataset
    if config.nightly.refresh_cf:
        raw["output"] = storage.join(root, "cf", f"date={date}")
        raw["train"] = {**raw.get("train", {}), "run_name": f"nightly-cf-{date}"}
        raw["score"] = {**raw["score"], "cf_bundle": raw["output"]}
        if appended and config.nightly.warm_start_cf and not config.warm_start.bundle:
            previous = previous_cf_bundle(root, date)
            if previous is not None:  # the first date, or none committed before it: from scratch
                raw["warm_start"] = {**raw.get("warm_start", {}), "bundle": previous}
    raw["score"] = {**raw["score"], "dataset": raw.get("dataset") or raw["score"].get("dataset")}
    return build_config(raw, f"nightly config for {date}")


def previous_cf_bundle(root: str, date: str) -> str | None:
    """The newest committed CF bundle of a date before ``date`` under ``<root>/cf/``: what a
    ``rolling_days`` nightly warm-starts its CF refresh from (an uncommitted one, a crashed
    date's, is passed over)."""
    fs, path = storage.filesystem(storage.join(root, "cf"))
    if not fs.isdir(path):
        return None
    dates = sorted(
        (name.rsplit("/", 1)[-1].removeprefix("date=") for name in fs.ls(path, detail=False)), reverse=True
    )
    for earlier in (d for d in dates if d < date):
        bundle = storage.join(root, "cf", f"date={earlier}")
        if _committed(bundle, _cf_bundle_kind()):
            return bundle
    return None


def _committed(uri: str, kind: ArtifactKind) -> bool:
    """Whether ``uri`` holds a committed artefact of ``kind``: what a rerun of the date keeps."""
    return ArtifactDir(uri, kind).manifest() is not None


def _cf_bundle_kind() -> ArtifactKind:
    from raylrec.cf.bundle import CF_BUNDLE  # imported when the CF step runs: the module imports torch

    return CF_BUNDLE


def prepare_for_date(
    config: RaylrecConfig, date: str, summary: NightlySummary, say: Callable[[str], None] = print
) -> None:
    """The prepare step of ``config`` (a ``nightly_config``) for ``date``: prepare the dataset,
    append the date's partition to it (a ``rolling_days`` dataset that does not hold the date
    yet), or skip it; recorded in ``summary``."""
    started = time.perf_counter()
    data = config.data
    if data is None:
        summary.add("prepare", "none", 0.0, config.score.dataset or "(score.dataset)")
        return
    meta = ArtifactDir(data.output, DATASET).manifest()
    status, verb = "ran", "preparing"
    if meta is not None:
        holds = "watermark" not in meta or day_name(int(meta["watermark"]) // DAY) >= date
        if holds or not data.split.appendable:
            summary.add("prepare", "skipped", 0.0, data.output)
            return
        data = DataConfig.model_validate({**data.model_dump(), "append": True, "overwrite": False})
        status, verb = "appended", f"appending {date} to"
    from raylrec.data.prepare import prepare

    say(f"[{date}] {verb} {data.output}")
    meta = prepare(data, say)
    rows = meta["appended"][-1]["rows_out"] if data.append else meta["counts"]["rows_out"]
    summary.add("prepare", status, time.perf_counter() - started, data.output, rows=rows)


def run_nightly(
    config: RaylrecConfig,
    date: str,
    say: Callable[[str], None] = print,
    force: bool = False,
    profiles: ProfilesConfig | None = None,
) -> NightlySummary:
    """Run (or finish) the nightly pipeline for ``date``; ``force`` re-scores a published date.

    ``profiles`` (default: the YAML ``nightly.profiles`` names; off when neither is set) adds a
    step after prepare: RLMRec's profiles of the date's new items and users only, and their
    embeddings (``raylrec.profiles.refresh``)."""
    config = nightly_config(config, date)
    if profiles is None and config.nightly.profiles:
        from raylrec.profiles.config import load_profiles_config

        profiles = load_profiles_config(config.nightly.profiles)  # its errors before any step
    summary = NightlySummary(date)

    prepare_for_date(config, date, summary, say)

    if profiles is not None:
        from raylrec.profiles.refresh import refresh_profiles

        started = time.perf_counter()
        say(f"[{date}] refreshing profiles of new items and users -> {profiles.output}")
        done = refresh_profiles(profiles, config.dataset_path() if config.data else config.score.dataset, say)
        summary.add(
            "profiles",
            "ran" if done["changed"] else "skipped",
            time.perf_counter() - started,
            profiles.output,
            new_items=done["generated"]["item"],
            new_users=done["generated"]["user"],
        )

    started = time.perf_counter()
    if not config.nightly.refresh_cf:
        summary.add("cf", "kept", 0.0, config.score.cf_bundle or "(the model bundle's CF)")
    elif _committed(config.output, _cf_bundle_kind()):
        summary.add("cf", "skipped", 0.0, config.output)
    else:
        from raylrec.cf.train import train_cf
        from raylrec.cf.warm_start import WarmStartError

        warm = config.warm_start.bundle
        say(f"[{date}] refreshing the CF encoder -> {config.output}" + (f" (from {warm})" if warm else ""))
        try:
            train_cf(config, say)
        except WarmStartError as refused:  # raised before anything trains or is written
            say(f"[{date}] the warm start was refused, training from scratch: {refused}")
            config = config.model_copy(
                update={"warm_start": config.warm_start.model_copy(update={"bundle": None})}
            )
            warm = None
            train_cf(config, say)
        summary.add(
            "cf", "ran", time.perf_counter() - started, config.output, **({"from": warm} if warm else {})
        )

    started = time.perf_counter()
    partition = recs.partition(config.score.output, date)
    storage.check_reachable(config.score.output)  # a clear error, not a raw connection failure
    if recs.read_manifest(config.score.output, date) is not None and not force:
        summary.add("score", "skipped", 0.0, partition)
    else:
        from raylrec.scoring.job import run_scoring

        say(f"[{date}] scoring -> {partition}")
        manifest = run_scoring(config, date, say=say)
        summary.add(
            "score",
            "ran",
            time.perf_counter() - started,
            partition,
            users=manifest["users"],
            rows=manifest["rows"],
        )
    manifest = recs.read_manifest(config.score.output, date)
    summary.add("publish", "done", 0.0, partition, run=manifest["run_id"], users=manifest["users"])
    say(summary.format())
    say(json.dumps({"nightly": date, "steps": summary.steps}))
    return summary
