"""docs/configuration.md is generated from the config models (``raylrec config docs``): it
cannot drift from the code, and it lists every registered model's own keys."""

from __future__ import annotations

from pathlib import Path

from raylrec.cf.config import ENCODERS
from raylrec.config_docs import render_reference
from raylrec.methods.config import METHODS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_models_generate():
    assert PAGE.read_text() == render_reference(), (
        "docs/configuration.md is stale: regenerate it with `raylrec config docs > docs/configuration.md`"
    )


def test_every_registered_model_and_key_is_in_the_reference():
    page = render_reference()
    for registry, section in ((ENCODERS, "cf"), (METHODS, "method")):
        for name, cls in zip(registry.names(), registry.classes(), strict=True):
            assert f"`{section}.{registry.key}: {name}`" in page
            for key in cls.model_fields:
                if key != registry.key and key != "lora":
                    assert f"`{section}.{key}`" in page, (name, key)
