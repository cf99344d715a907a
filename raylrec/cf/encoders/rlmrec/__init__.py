"""RLMRec (Ren et al., WWW 2024, arXiv 2310.15950; code HKUDS/RLMRec): a base CF encoder
(``cf.base``: LightGCN, or MF for Con) trained on its own loss plus ``cf.weight`` times an
alignment with embeddings of LLM-written user and item profiles (``cf.profiles``): contrastive
(``variant: con``: an MLP maps each profile into the CF space, cosine InfoNCE) or masked
reconstruction (``variant: gen``: nodes masked at LightGCN's input, an MLP maps them back to
their profiles). It exports the base's ordinary tables. The base's own keys (``layers``,
``combine``, ``edge_dropout``; ``init``) sit in the same section; a key of the other base is an
error. See docs/encoders/rlmrec.md."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from raylrec.cf.config import CFConfig, register_encoder
from raylrec.cf.encoders.lightgcn import LightGCNConfig
from raylrec.cf.encoders.mf import MFConfig
from raylrec.config_types import FieldError, OptionalFloat, OptionalInt

__all__ = ["RLMRecConfig", "VARIANT_DEFAULTS"]

BASES: dict[str, type[CFConfig]] = {"lightgcn": LightGCNConfig, "mf": MFConfig}
# Each base's own keys (beyond the ones every encoder has).
BASE_KEYS = {name: set(cls.model_fields) - set(CFConfig.model_fields) for name, cls in BASES.items()}
BASE_ONLY_KEYS = set().union(*BASE_KEYS.values())

# The paper's hyperparameters (its configs for Amazon-book; Yelp's and Steam's differ, see
# docs/encoders/rlmrec.md): Con on a 3-layer LightGCN, weight 1e-2, temperature 0.2; Gen on a
# 2-layer one, 15% of the nodes masked, weight 0.1, temperature 0.5.
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "con": {"weight": 1e-2, "temperature": 0.2, "layers": 3},
    "gen": {"weight": 0.1, "temperature": 0.5, "layers": 2},
}
# The base's keys: RLMRec's LightGCN (layer sum, 20% edge dropout), MF's own default.
BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lightgcn": {"layers": 3, "combine": "sum", "edge_dropout": 0.2},
    "mf": {"init": "normal"},
}


@register_encoder
class RLMRecConfig(CFConfig):
    model: Literal["rlmrec"] = "rlmrec"
    base: Literal["lightgcn", "mf"] = Field(default="lightgcn", description="the CF encoder being aligned")
    variant: Literal["con", "gen"] = Field(
        default="con", description="con: contrastive (profile -> CF space); gen: masked reconstruction"
    )
    profiles: str | None = Field(
        default=None,
        description="profile embeddings directory (what `raylrec profiles embed` commits; local or s3://)",
    )
    weight: OptionalFloat = Field(
        default=None,
        ge=0,
        description="alignment weight (default: con 1e-2, gen 0.1); 0 trains the base alone",
    )
    temperature: OptionalFloat = Field(
        default=None,
        gt=0,
        description="InfoNCE temperature on cosine similarities (default: con 0.2, gen 0.5)",
    )
    mask_ratio: OptionalFloat = Field(
        default=None,
        gt=0,
        lt=1,
        description="gen only: share of the profiled user and item nodes masked per step (0.15)",
    )
    # The base's own keys. A key of the base not in use stays None (an error if set); the one in
    # use gets RLMRec's LightGCN, or MF's, default.
    layers: OptionalInt = Field(
        default=None, ge=1, description="lightgcn only: propagation layers (default: con 3, gen 2)"
    )
    combine: Literal["mean", "sum"] | None = Field(
        default=None, description="lightgcn only: how the layers combine (default: sum, RLMRec's)"
    )
    edge_dropout: OptionalFloat = Field(
        default=None,
        ge=0,
        lt=1,
        description="lightgcn only: share of graph entries dropped per training step (0.2)",
    )
    init: Literal["normal", "xavier"] | None = Field(
        default=None, description="mf only: N(0, 0.1) or xavier normal (default: normal)"
    )

    implementation = "raylrec.cf.encoders.rlmrec.model:RLMRec"
    paper = "RLMRec, arXiv 2310.15950"
    needs_profiles: ClassVar[bool] = True  # building it reads ``profiles``

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        # Defaults that depend on the variant or the base are filled in here, so the recorded
        # config (the bundle's, the run's fingerprint, what Ray workers rebuild) holds the
        # values that trained, and a key that does not apply stays None.
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        variant, base = filled.get("variant", "con"), filled.get("base", "lightgcn")
        for key, value in {**BASE_DEFAULTS.get(base, {}), **VARIANT_DEFAULTS.get(variant, {})}.items():
            # a variant's default for a base key (Gen's 2 layers) applies only to a base that has it
            applies = key not in BASE_ONLY_KEYS or key in BASE_KEYS.get(base, set())
            if filled.get(key) is None and applies:
                filled[key] = value
        if variant == "gen" and filled.get("mask_ratio") is None:
            filled["mask_ratio"] = 0.15
        return filled

    @model_validator(mode="after")
    def _consistent(self) -> RLMRecConfig:
        for other, keys in BASE_KEYS.items():
            for key in sorted(keys - BASE_KEYS[self.base]):
                if other != self.base and getattr(self, key) is not None:
                    raise FieldError(key, f"cf.{key} is a {other} key; cf.base is {self.base}")
        if self.variant == "gen" and not BASES[self.base].propagates:
            # Without propagation a masked node's vector would be the mask token itself, the
            # same for every masked node, and there would be nothing to reconstruct it from.
            propagating = " or ".join(n for n, cls in BASES.items() if cls.propagates)
            raise FieldError(
                "variant", f"RLMRec-Gen masks graph nodes before propagation: it needs base {propagating}"
            )
        if self.variant == "con" and self.mask_ratio is not None:
            raise FieldError("mask_ratio", "cf.mask_ratio is a key of variant gen (the masked variant)")
        return self

    def base_config(self) -> CFConfig:
        """The base encoder's own config: the keys every encoder has and the base's keys."""
        cls = BASES[self.base]
        keys = (set(CFConfig.model_fields) | BASE_KEYS[self.base]) - {"model"}
        return cls(**{k: getattr(self, k) for k in keys})
