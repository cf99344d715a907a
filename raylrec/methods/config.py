"""What every LLM method's config has, and the registry of methods.

Each method lives in its own folder under ``raylrec/methods/`` (its config class, registered
with ``@register_method``, in the torch-free ``__init__.py``; its ``RecMethod`` in ``model.py``).
The config class is the method's declaration: its hyperparameters, its training ``stages``, its
prompt ``templates``, and the capabilities the rest of raylrec reads instead of its name:

- ``role``: ``pointwise`` (scores one candidate per prompt, reranks a retriever's candidates),
  ``full_catalog`` (scores every item for a user in one pass: a retriever, or the whole ranker)
  or ``cf_enhancer`` (changes how a CF encoder trains; exports an ordinary CF bundle);
- ``needs_cf``: it reads a frozen CF encoder (``cf_bundle`` must be set);
- ``shares_prefix``: a user's candidates can share one cached prompt prefix in batch scoring
  (False when the prefix's keys and values depend on the candidate, as CoRA's generated
  weights do); the scorer then runs full prompts for it;
- ``score_kinds`` / ``default_score``: how the answer position becomes one logit;
- ``definition``: the ``raylrec.train.pipeline.TaskDefinition`` that trains it (the pointwise
  one, unless the method brings its own corpora, batches and evaluation, as a full-catalog
  recommender does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from raylrec.config_types import FieldError, Float, Int, StrictConfig
from raylrec.metric_names import ctr_metric_names
from raylrec.registry import Registry, import_object

__all__ = [
    "LoRAConfig",
    "METHODS",
    "MethodConfig",
    "Role",
    "Stage",
    "prompt_templates",
    "register_method",
    "template_text",
]

METHODS: Registry = Registry("method", "name", "raylrec.methods", "raylrec.methods")
register_method = METHODS.register

Role = Literal["pointwise", "full_catalog", "cf_enhancer"]


@dataclass(frozen=True)
class Stage:
    """One training phase: its prompt template (a registered name) and which parameter groups
    train."""

    name: str
    template: str
    trainable: tuple[str, ...]
    epochs: int | None = None  # None: train.epochs


class LoRAConfig(StrictConfig):
    """A LoRA on the backbone's linear layers (scale alpha / r)."""

    r: Int = Field(default=8, ge=1, description="rank")
    alpha: Float = Field(default=16, gt=0, description="scale numerator: updates are scaled by alpha / r")
    dropout: Float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapter's input")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, description="module names to adapt"
    )


class MethodConfig(StrictConfig):
    """An LLM recommender: which method, its CF bundle, and (in each subclass) its own
    hyperparameters."""

    name: str
    cf_bundle: str | None = Field(
        default=None, description="a CF bundle (the methods with needs_cf need one)"
    )
    score: Literal["yes_logit", "yes_no"] | None = Field(
        default=None,
        description="the Yes logit, or the Yes-vs-No log-odds = softmax over both (default: the method's)",
    )
    init_from: str | None = Field(
        default=None,
        description="a model bundle whose matching weights start this run (e.g. CoLLM from a TALLRec bundle)",
    )

    implementation: ClassVar[str]  # "package.module:Class", a RecMethod subclass
    # "package.module:Class", the TaskDefinition that trains the method
    definition: ClassVar[str] = "raylrec.methods.train:MethodDefinition"
    paper: ClassVar[str] = ""
    role: ClassVar[Role] = "pointwise"
    needs_cf: ClassVar[bool] = False
    shares_prefix: ClassVar[bool] = True
    score_kinds: ClassVar[tuple[str, ...]] = ("yes_logit", "yes_no")
    default_score: ClassVar[str] = "yes_logit"
    templates: ClassVar[dict[str, str]] = {}

    def stages(self) -> list[Stage]:
        """The training stages, from the config alone (the driver plans runs without building
        the model)."""
        raise NotImplementedError(f"{type(self).__name__} declares no stages")

    @property
    def score_kind(self) -> str:
        return self.score or self.default_score

    def reported_metrics(self, ks: list[int]) -> frozenset[str]:
        """What evaluating this method reports (a pointwise scorer: CTR metrics)."""
        return ctr_metric_names()

    # The model types are named in docstrings, not annotations: this module sits below them
    # (configs load without torch) and imports nothing of theirs, not even for type checkers.
    def method_class(self) -> type:
        """The ``raylrec.methods.base.RecMethod`` subclass ``implementation`` names."""
        return import_object(self.implementation)

    def build(self, backbone: Any, cf: Any) -> Any:
        """The ``RecMethod`` over ``backbone`` (a loaded ``Backbone``) and ``cf`` (a ``CFBundle``)."""
        return self.method_class()(self, backbone, cf)

    @model_validator(mode="after")
    def _declared(self) -> MethodConfig:
        if self.needs_cf and not self.cf_bundle:
            raise FieldError(
                "cf_bundle", f"method {self.name} needs cf_bundle (train one with raylrec train-cf)"
            )
        if self.score is not None and self.score not in self.score_kinds:
            raise FieldError(
                "score", f"{self.name} scores by {', '.join(self.score_kinds) or 'no Yes/No answer'}"
            )
        return self


def prompt_templates() -> dict[str, str]:
    """Every registered method's templates by name."""
    out: dict[str, str] = {}
    for cls in METHODS.classes():
        for name, text in cls.templates.items():
            if out.get(name, text) != text:
                raise ValueError(f"template {name!r} is defined twice with different texts ({cls.__name__})")
            out[name] = text
    return out


def template_text(name_or_text: str) -> str:
    """A registered template's text, or ``name_or_text`` itself when it is a template."""
    templates = prompt_templates()
    if name_or_text in templates:
        return templates[name_or_text]
    if "{target}" not in name_or_text:
        raise ValueError(
            f"prompt template {name_or_text!r} is neither a registered name ({', '.join(sorted(templates))}) "
            "nor a template text with {history} and {target}"
        )
    return name_or_text
