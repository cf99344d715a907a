"""The configuration reference, generated from the pydantic models (``raylrec config docs``).

Every section of ``RaylrecConfig`` becomes a table of its keys (dotted path, type, default,
description); a tagged union (``data.source``, ``data.split``) gets one table per member, and
``cf:`` / ``method:`` one table per registered CF encoder and method, listing the keys every
model has once and then each model's own. ``tests/test_config_docs.py`` fails when the committed
``docs/configuration.md`` differs from what this renders, so the page cannot drift from the code.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from raylrec.cf.config import ENCODERS, CFConfig
from raylrec.config import RaylrecConfig
from raylrec.methods.config import METHODS, MethodConfig

__all__ = ["render_reference"]

_HEADER = """# Configuration reference

Generated from the config models by `raylrec config docs > docs/configuration.md`; a test fails
when this page and the code disagree. A config is YAML (see `configs/`), every key can be
overridden on the command line as `dotted.key=value`, and unknown keys, wrong types and
non-finite numbers fail at load, naming the key.
"""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        shown = " \\| ".join(_type_name(a) for a in parts)
        return f"{shown} \\| null" if len(parts) < len(get_args(annotation)) else shown
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The config models a field holds (a section, an optional section, a union's members)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _nested_models(a)]


def _rows(model: type[BaseModel], prefix: str, skip: set[str] = frozenset()) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        nested = _nested_models(info.annotation)
        if len(nested) == 1 and not _is_union_section(info):
            rows += _rows(nested[0], f"{prefix}{name}.")
            continue
        description = (info.description or "").replace("|", "\\|").replace("\n", " ")
        if _is_union_section(info):
            description = (description + " " if description else "") + "one of the tables below"
        rows.append(
            f"| `{prefix}{name}` | {_type_name(info.annotation)} | {_default(info)} | {description} |"
        )
    return rows


def _is_union_section(info: FieldInfo) -> bool:
    return len({m for m in _nested_models(info.annotation)}) > 1


def _table(rows: list[str]) -> str:
    return "| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows)


def _union_sections(model: type[BaseModel], prefix: str) -> list[str]:
    """One table per member of every tagged union inside ``model`` (sources, splits)."""
    out = []
    for name, info in model.model_fields.items():
        members = _nested_models(info.annotation)
        if _is_union_section(info):
            for member in members:
                tag = next(iter(member.model_fields.values())).default
                doc = " ".join((member.__doc__ or "").split())
                out.append(f"### `{prefix}{name}`: {tag}\n\n{doc}\n\n")
                out.append(_table(_rows(member, f"{prefix}{name}.")) + "\n")
        elif len(members) == 1:
            out += _union_sections(members[0], f"{prefix}{name}.")
    return out


def _models_section(section: str, base: type[BaseModel], registry) -> list[str]:
    shared = set(base.model_fields)
    out = [
        # The heading stays the same when a model is registered: pages link to its anchor.
        f"## `{section}`\n\n"
        f"One of {', '.join(f'`{n}`' for n in registry.names())}. "
        f"Keys every {registry.kind} has (`{registry.key}` picks the model):\n\n",
        _table(_rows(base, f"{section}.", skip={registry.key})) + "\n",
    ]
    for name, cls in zip(registry.names(), registry.classes(), strict=True):
        own = _rows(cls, f"{section}.", skip=shared)
        doc = " ".join((cls.__doc__ or "").split()) if cls.__doc__ != base.__doc__ else ""
        module_doc = " ".join((__import__(cls.__module__, fromlist=["_"]).__doc__ or "").split())
        out.append(f"### `{section}.{registry.key}: {name}`\n\n{doc or module_doc}\n\n")
        out.append((_table(own) if own else "No keys of its own.") + "\n")
    return out


def render_reference() -> str:
    """The whole reference page as Markdown."""
    parts = [_HEADER]
    sections = {"cf": (CFConfig, ENCODERS), "method": (MethodConfig, METHODS)}
    for name, info in RaylrecConfig.model_fields.items():
        if name in sections:
            parts += _models_section(name, *sections[name])
            continue
        models = _nested_models(info.annotation)
        parts.append(f"## `{name}`\n\n")
        if not models:
            description = info.description or ""
            parts.append(
                _table([f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {description} |"])
            )
            parts.append("\n")
            continue
        doc = " ".join((models[0].__doc__ or "").split())
        if doc and not doc.startswith("!!!"):
            parts.append(f"{doc}\n\n")
        parts.append(_table(_rows(models[0], f"{name}.")) + "\n")
        parts += _union_sections(models[0], f"{name}.")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)
