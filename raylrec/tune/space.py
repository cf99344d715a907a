"""Search spaces as YAML: dotted config keys mapped to distributions, checked against the config
they sweep before any trial starts.

    # tune_spaces/mf.yaml
    model: mf                  # the CF model or LLM method the space is for
    search: optuna             # optuna | random | grid
    num_samples: 16
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    params:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      cf.dim: {choice: [32, 64, 128]}
      cf.reg_weight: {uniform: [0.0, 1.0e-3]}
      cf.layers: {randint: [1, 4]}          # both ends included
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raylrec.cf.config import ENCODERS
from raylrec.config import ConfigError, RaylrecConfig, build_config, merge_raw
from raylrec.methods.config import METHODS

__all__ = ["Distribution", "SearchSpace", "apply_params", "load_space", "model_of", "total_epochs"]

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
# Keys that describe where and how a run executes, or what it is judged by: never a hyperparameter.
UNTUNABLE = {
    "train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.resources_per_worker",
    "train.storage_path",
    "train.run_name", "train.wandb_project", "train.metric", "train.mode", "train.max_failures",
    "train.log_every_s", "train.checkpoint_every", "train.checkpoint_every_steps", "train.eval_every",
    "method.name", "method.cf_bundle", "method.init_from", "cf.model",
}  # fmt: skip
# Sections a sweep may touch, per kind of model (an LLM method trains on a fixed CF bundle).
SECTIONS = {"cf": ("cf", "train"), "llm": ("method", "train", "prompt", "sample")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scheduler(_Strict):
    type: Literal["asha", "fifo"] = Field(
        default="asha", description="asha: stop trials that trail at each rung; fifo: run all to the end"
    )
    grace_period: int = Field(default=1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(
        default=2, gt=1, description="1/reduction_factor of trials go on per rung"
    )
    max_t: int | None = Field(default=None, ge=1, description="epochs at most (default: train.epochs)")


class SpaceFile(_Strict):
    model: str = Field(description="a registered CF encoder or method")
    search: Literal["optuna", "random", "grid"] = "optuna"
    num_samples: int | None = Field(
        default=None, ge=1, description="trials (default 16); grid: runs of the whole grid (default 1)"
    )
    seed: int = 0
    scheduler: Scheduler = Scheduler()
    params: dict[str, Any] = Field(min_length=1)

    @field_validator("model")
    @classmethod
    def _registered(cls, model: str) -> str:
        known = (*ENCODERS.names(), *METHODS.names())
        if model not in known:
            raise ValueError(f"{model!r} is not a registered CF encoder or method ({', '.join(known)})")
        return model


@dataclass(frozen=True)
class Distribution:
    """One hyperparameter: ``kind`` over ``args`` (bounds, both included, or the values)."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # Tune's upper bound is exclusive
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return tune.grid_search(list(self.args))

    def boundary_values(self) -> list[Any]:
        """Values whose validity stands for the whole range (ranges: both ends)."""
        return list(self.args)


@dataclass(frozen=True)
class SearchSpace:
    path: str
    model: str
    search: str
    num_samples: int
    seed: int
    scheduler: Scheduler
    params: tuple[Distribution, ...]

    def to_tune(self) -> dict[str, Any]:
        return {p.key: p.to_tune() for p in self.params}

    def tune_samples(self, baseline: bool) -> int:
        """Tune's ``num_samples``: an extra sample for the baseline point under grid search (Tune
        resolves a whole sample to that one point); elsewhere the point is one of the samples."""
        return self.num_samples + (1 if baseline and self.search == "grid" else 0)

    def trials(self, baseline: bool) -> int:
        if self.search != "grid":
            return self.num_samples
        return self.num_samples * math.prod(len(p.args) for p in self.params) + (1 if baseline else 0)


def model_of(config: RaylrecConfig) -> str:
    """The CF model or LLM method a config trains."""
    return config.method.name if config.method is not None else config.cf.model


def apply_params(raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A raw config dict with the dotted ``params`` set in it."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return merge_raw(raw, nested)


def stage_epochs(config: RaylrecConfig) -> list[int]:
    """Epochs of each of a model's training stages, in order (CoLLM: its LoRA stage, then the
    projector; a CF model: one stage)."""
    if config.method is None:
        return [config.train.epochs]
    stages = config.method.stages()
    return [s.epochs if s.epochs is not None else config.train.epochs for s in stages]


def total_epochs(config: RaylrecConfig) -> int:
    """Epochs over all of a model's training stages: the scheduler's time axis."""
    return sum(stage_epochs(config))


def _field(key: str, config: RaylrecConfig) -> Any:
    """The annotation of the field a dotted key names in ``config`` (the concrete config classes
    of its CF encoder and method); KeyError naming the first part that is no field."""
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise KeyError(".".join(parts[: i + 1]))
        if i == len(parts) - 1:
            return type(node).model_fields[part].annotation
        node = getattr(node, part)
    raise KeyError(key)


def _is_integer(annotation: Any) -> bool:
    options = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    return int in options and float not in options


def _parse_distribution(key: str, spec: Any, where: str) -> Distribution:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} (use one of {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {args!r}")
    if kind in ("choice", "grid"):
        return Distribution(key, kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}: {kind} takes [low, high] numbers, got {args!r}")
    low, high = args
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint bounds must be integers, got {args!r}")
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low, got [{low}, {high}]")
    return Distribution(key, kind, (float(low), float(high)) if kind != "randint" else (low, high))


def _check_key(key: str, kind: str, model: str, config: RaylrecConfig, where: str) -> None:
    section, _, leaf = key.partition(".")
    family = "llm" if config.method is not None else "cf"
    if key in UNTUNABLE:
        raise ConfigError(f"{where}: {key} is not a hyperparameter (it sets where or how runs execute)")
    if section not in SECTIONS[family] or not leaf:
        allowed = ", ".join(f"{s}.*" for s in SECTIONS[family])
        raise ConfigError(f"{where}: {key} cannot be swept for {model} (sweepable: {allowed})")
    try:
        annotation = _field(key, config)
    except KeyError as missing:
        registry = {"cf": ENCODERS, "method": METHODS}.get(section)
        owners = (
            registry.owners(leaf.split(".")[0]) if registry is not None and missing.args[0] == key else ()
        )
        if owners:
            raise ConfigError(f"{where}: {key} is not a {model} setting (only {', '.join(owners)})") from None
        raise ConfigError(f"{where}: {missing.args[0]} is not a config field") from None
    if kind in ("uniform", "loguniform") and _is_integer(annotation):
        raise ConfigError(f"{where}: {key} is an integer; use randint, choice or grid")


def load_space(path: str | Path, config: RaylrecConfig, raw_config: dict[str, Any]) -> SearchSpace:
    """Parse and check a search space against the config it sweeps: every key must be a field of
    that model's config and every bound or choice a valid value for it. Errors name the file and
    the key."""
    path = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read search space {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        spec = SpaceFile.model_validate(raw or {})
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid search space ({path}):\n" + "\n".join(lines)) from None
    swept = model_of(config)
    if spec.model != swept:
        raise ConfigError(f"{path} is a search space for {spec.model}, but the config trains {swept}")
    params = []
    for key, value in spec.params.items():
        where = f"{path}: params.{key}"
        dist = _parse_distribution(key, value, where)
        _check_key(key, dist.kind, swept, config, where)
        for candidate in dist.boundary_values():
            try:
                build_config(apply_params(raw_config, {key: candidate}), path)
            except ConfigError as e:
                detail = str(e).split("\n", 1)[-1].strip()
                raise ConfigError(f"{where}: {candidate!r} is not a valid value ({detail})") from None
        params.append(dist)
    grid = [p.key for p in params if p.kind == "grid"]
    if spec.search == "optuna" and grid:
        raise ConfigError(f"{path}: optuna search cannot take grid values ({', '.join(grid)}); use choice")
    if spec.search == "grid" and len(grid) != len(params):
        ranged = [p.key for p in params if p.kind != "grid"]
        raise ConfigError(f"{path}: search grid needs every parameter as grid: [...] ({', '.join(ranged)})")
    max_t = spec.scheduler.max_t or total_epochs(config)
    if spec.scheduler.type == "asha" and spec.scheduler.grace_period > max_t:
        raise ConfigError(
            f"{path}: scheduler.grace_period {spec.scheduler.grace_period} exceeds {max_t} epochs"
        )
    samples = spec.num_samples or (1 if spec.search == "grid" else 16)
    return SearchSpace(path, spec.model, spec.search, samples, spec.seed, spec.scheduler, tuple(params))
