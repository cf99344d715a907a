"""Registries of plugins: CF encoders and LLM methods (DESIGN.md, "Models are plugins"), and the
data section's sources and split protocols (``raylrec.data.config``).

A registry maps a name to the model's config class. The config class is torch-free and
declares everything the rest of raylrec needs to know about the model (its capabilities,
stages, templates, metrics) plus the dotted path of its implementation, imported only when a
model is built. Registries fill themselves on first use by importing every subpackage of their
home package (``raylrec.cf.encoders``, ``raylrec.methods``; every module of
``raylrec.data.sources`` and ``raylrec.data.splits``) and every entry point of their group, so a
new model, source or split is a new folder or file (or an installed package), never an edit to a
list.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Discriminator, Tag

from raylrec.config_types import ConfigError

__all__ = ["Registry", "import_object"]

C = TypeVar("C", bound=type)


def import_object(path: str) -> Any:
    """``"package.module:Name"`` -> the object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class Registry(Generic[C]):
    """Name -> config class. ``key`` is the field that names the model (``model`` for CF
    encoders, ``name`` for methods); ``package`` is searched for models on first use, and the
    ``raylrec.<group>`` entry points after it."""

    def __init__(self, kind: str, key: str, package: str, group: str, modules: bool = False):
        self.kind, self.key, self.package, self.group = kind, key, package, group
        self.modules = modules  # plugins are modules of the package, not only subpackages
        self._classes: dict[str, C] = {}
        self._discovered = False

    def register(self, cls: C) -> C:
        """Class decorator: register a config class under the default of its ``key`` field."""
        name = cls.model_fields[self.key].default
        if not isinstance(name, str):
            raise TypeError(f"{cls.__name__}.{self.key} needs a string default (the model's name)")
        known = self._classes.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice ({known.__module__}, {cls.__module__})"
            )
        self._classes[name] = cls
        return cls

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg or (self.modules and not info.name.startswith("_")):
                importlib.import_module(f"{self.package}.{info.name}")
        for entry in importlib.metadata.entry_points(group=self.group):
            entry.load()

    def names(self) -> tuple[str, ...]:
        self._discover()
        return tuple(sorted(self._classes))

    def classes(self) -> tuple[C, ...]:
        return tuple(self._classes[n] for n in self.names())

    def get(self, name: str) -> C:
        self._discover()
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._classes[name]

    def names_where(self, predicate: Callable[[C], bool]) -> tuple[str, ...]:
        """The names whose config class satisfies ``predicate`` (e.g. a capability it declares)."""
        return tuple(n for n, c in zip(self.names(), self.classes(), strict=True) if predicate(c))

    def owners(self, field: str) -> tuple[str, ...]:
        """The models whose config has ``field`` (for errors naming where a key belongs)."""
        return self.names_where(lambda c: field in c.model_fields)

    def union(self, default: str | None = None) -> Any:
        """A pydantic discriminated union over every registered config class (``default``: the
        model a section without the key is)."""
        members = tuple(Annotated[c, Tag(n)] for n, c in zip(self.names(), self.classes(), strict=True))
        choices = ", ".join(self.names())

        def tag(value: Any) -> str | None:
            if isinstance(value, dict):
                return value.get(self.key, default)
            return getattr(value, self.key, default)

        if len(members) == 1:  # a union needs two members; one model needs no discriminator
            return self.classes()[0]
        union = members[0]
        for member in members[1:]:
            union = union | member
        return Annotated[
            union,
            Discriminator(
                tag,
                custom_error_type=f"{self.key}_unknown",
                custom_error_message=f"set '{self.key}' to a registered {self.kind}: one of {choices}",
            ),
        ]

    def validate_recorded(self, raw: dict[str, Any]) -> Any:
        """A section recorded in an artefact (a bundle's config.json) -> its model's config.
        Keys the model's config does not have are dropped: bundles written before each model
        owned its config recorded every model's keys."""
        cls = self.get(raw.get(self.key))
        return cls.model_validate({k: v for k, v in raw.items() if k in cls.model_fields})
