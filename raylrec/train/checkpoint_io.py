"""Reading checkpoints without running code from them.

Checkpoints live under ``train.storage_path``, which may be a bucket other people can write to.
``torch.load`` with ``weights_only=False`` unpickles arbitrary objects, so whoever can write
there could run code on the driver and on every worker. Every checkpoint raylrec reads goes
through here: torch's restricted unpickler (tensors, numbers, strings and containers only), and
for DeepSpeed's own files the few plain DeepSpeed classes its optimiser states hold.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import IO, Any

import torch

__all__ = ["UnsafeCheckpointError", "safe_load", "deepspeed_safe_globals", "RestrictedCheckpointEngine"]


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that holds something other than tensors and plain data."""


def safe_load(
    source: str | bytes | IO[bytes], what: str, map_location: Any = "cpu", allowed: list[Any] | None = None
) -> Any:
    """``torch.load(source, weights_only=True)``: tensors, numbers, strings and containers, plus
    the classes in ``allowed``. Anything else is refused with a message naming ``what`` (the
    file's path or role), and nothing in the file runs."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{what}: refusing to load a checkpoint that holds objects other than tensors and "
            f"plain data (it could run code when read): {first}"
        ) from None


def deepspeed_safe_globals() -> list[Any]:
    """The DeepSpeed classes a ZeRO checkpoint pickles besides tensors (plain data holders)."""
    allowed: list[Any] = []
    for module, names in _DEEPSPEED_DATA_CLASSES:
        try:
            imported = importlib.import_module(module)
        except ImportError:  # another DeepSpeed version: nothing to allow from it
            continue
        allowed += [getattr(imported, n) for n in names if hasattr(imported, n)]
    return allowed


_DEEPSPEED_DATA_CLASSES = [
    ("deepspeed.runtime.fp16.loss_scaler", ["LossScaler", "DynamicLossScaler"]),
    ("deepspeed.runtime.zero.config", ["ZeroStageEnum"]),
    ("deepspeed.utils.tensor_fragment", ["fragment_address"]),
]


class RestrictedCheckpointEngine:
    """Wraps a DeepSpeed engine's ``checkpoint_engine`` (whose ``load`` passes
    ``weights_only=False``) so that every file DeepSpeed reads goes through :func:`safe_load`."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, path, map_location, deepspeed_safe_globals())
