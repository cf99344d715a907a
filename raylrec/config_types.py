"""The building blocks of every config model: strict pydantic bases and number types.

Torch-free and importing nothing else from raylrec, so that the config classes next to each
model (``raylrec/cf/encoders/*``, ``raylrec/methods/*``) and the top-level ``raylrec.config``
can all use them without cycles, and a config loads (and fails) without importing torch.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StrictBool

__all__ = [
    "Bool",
    "ConfigError",
    "FieldError",
    "Float",
    "Int",
    "OptionalFloat",
    "OptionalInt",
    "OptionalOutputPath",
    "OutputPath",
    "StrictConfig",
    "custom_resources",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field and the file."""


class FieldError(ValueError):
    """A cross-field check that blames one field: ``field`` (dotted, relative to the model whose
    validator raises it) is appended to the error's location, so the message names
    ``train.metric`` rather than the top level."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # raised in a Ray worker, it must unpickle in the driver
        return type(self), (self.field, str(self))


class StrictConfig(BaseModel):
    """Unknown keys are errors, values are frozen; ``allow_inf_nan=False``: a NaN or infinite
    learning rate, threshold or amount is never meant."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _not_a_bool(value: Any) -> Any:
    # pydantic takes True for 1 in a number field: `train.epochs=true` trained one epoch.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


NO_BOOL = BeforeValidator(_not_a_bool)
# Optional ones wrap the whole union, so a field's annotation stays ``int | None`` for the code
# that reads it (tune/space.py refuses a float distribution over an integer field).
Int = Annotated[int, NO_BOOL]
Float = Annotated[float, NO_BOOL]
OptionalInt = Annotated[int | None, NO_BOOL]
OptionalFloat = Annotated[float | None, NO_BOOL]
# Only true/false (YAML's yes/no included): 1, 0 or "off" in a flag is more likely a mistake.
Bool = StrictBool


def _a_usable_path(value: str) -> str:
    # '' (or blanks) would mean the current directory to one writer and fail in another after
    # a whole training run: an output is named, or the field is left out.
    if not value.strip():
        raise ValueError("is empty: name a local directory or an s3:// URI (or leave the field out)")
    return value


OutputPath = Annotated[str, AfterValidator(_a_usable_path)]
OptionalOutputPath = Annotated[str, AfterValidator(_a_usable_path)] | None


def custom_resources(resources: dict[str, float]) -> dict[str, float]:
    """Custom Ray resources: positive amounts, and never CPU/GPU (they have their own fields)."""
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"{name!r} has its own field; list only custom resources here")
        if amount <= 0:
            raise ValueError(f"resource {name!r} must be a positive amount, got {amount}")
    return resources
