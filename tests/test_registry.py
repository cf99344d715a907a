"""The registries and the config shape built from them (issue 17 items 1, 2 and 6): every model
is found without a hand-kept list, each owns its keys, and a wrong name or a key of another
model fails at load, before any work and without importing torch."""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar, Literal

import pytest

from raylrec.cf.config import ENCODERS, CFConfig, encoder_config
from raylrec.config import ConfigError, load_config
from raylrec.methods.config import METHODS, MethodConfig, Stage, prompt_templates, template_text
from raylrec.registry import Registry


def _refused(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    return str(error.value)


def test_the_registries_find_every_model_folder():
    assert set(ENCODERS.names()) >= {"mf", "lightgcn", "sasrec"}
    assert set(METHODS.names()) >= {"tallrec", "collm", "reclora"}
    for cls in (*ENCODERS.classes(), *METHODS.classes()):
        assert cls.implementation.count(":") == 1, cls
        assert cls.__module__.endswith(
            cls.model_fields[("model" if issubclass(cls, CFConfig) else "name")].default
        )


@pytest.mark.parametrize("name", ENCODERS.names())
def test_each_encoder_config_builds_its_own_class(name):
    config = load_config(None, [f"cf.model={name}"]).cf
    assert type(config) is ENCODERS.get(name)
    module = config.encoder_class().__module__
    assert module.startswith(f"raylrec.cf.encoders.{name}."), module


@pytest.mark.parametrize("name", METHODS.names())
def test_each_method_declares_stages_with_registered_templates(name):
    config = METHODS.get(name)(cf_bundle="some/bundle")
    stages = config.stages()
    assert stages and all(isinstance(s, Stage) for s in stages)
    for stage in stages:  # a pointwise scorer's prompts name the candidate
        if config.role == "pointwise":
            assert "{target}" in template_text(stage.template)
    assert config.score_kind in config.score_kinds
    assert config.role in ("pointwise", "full_catalog", "cf_enhancer")


def test_a_key_of_another_model_names_the_model_it_belongs_to():
    message = _refused(["cf.model=mf", "cf.layers=2"])
    assert "cf.layers" in message and "not a setting of mf" in message and "lightgcn" in message
    message = _refused(["method.name=tallrec", "method.experts=4"])
    assert "method.experts" in message and "not a setting of tallrec" in message and "reclora" in message
    message = _refused(["cf.model=lightgcn", "cf.colour=2"])
    assert "cf.colour" in message and "nor of any other registered CF encoder" in message


def test_an_unknown_model_lists_the_registered_ones():
    message = _refused(["cf.model=mff"])
    assert "cf" in message and all(name in message for name in ENCODERS.names())
    message = _refused(["method.name=colm"])
    assert "method" in message and all(name in message for name in METHODS.names())


def test_a_misspelt_metric_and_template_are_refused_naming_the_field():
    message = _refused(["train.metric=valid/acu"])
    assert "train.metric" in message and "valid/auc" in message
    message = _refused(["method.name=tallrec", "prompt.template=talrec"])
    assert "prompt.template" in message and "tallrec" in message
    # a template text is still a template
    load_config(None, ["method.name=tallrec", "prompt.template=Q {history} then {target}?"])


def test_the_section_without_a_model_key_is_mf():
    assert load_config(None, []).cf.model == "mf"
    assert load_config(None, ["cf.dim=8"]).cf.dim == 8


def test_a_recorded_section_from_before_the_split_still_loads():
    # CF bundles written before each encoder owned its keys recorded all of them, flat.
    flat = {
        "model": "sasrec",
        "dim": 16,
        "loss": "bce",
        "init": "normal",
        "layers": 3,
        "max_len": 7,
        "heads": 2,
    }
    config = encoder_config(flat)
    assert type(config).__name__ == "SASRecConfig" and config.history_len == 7
    assert encoder_config({"model": "mf", "max_len": 25}).history_len == 0


def test_a_config_fails_without_importing_torch():
    # The CLI loads and checks a config before anything heavy: a typo costs well under a second.
    code = (
        "import sys\n"
        "from raylrec.cli import main\n"
        "for bad in ('method.experts=3', 'train.metric=valid/acu'):\n"
        "    code = main(['train', '--config', 'configs/collm_collm_ml1m.yaml', bad])\n"
        "    assert code == 2, code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "method.experts" in run.stderr and "not a setting of collm" in run.stderr
    assert "train.metric" in run.stderr and "'valid/acu' is not reported" in run.stderr


def test_a_registered_model_joins_the_config_union_and_templates(monkeypatch):
    registry = Registry("method", "name", "raylrec.methods", "raylrec.methods")

    class Base(MethodConfig):
        pass

    @registry.register
    class One(Base):
        name: Literal["one"] = "one"
        implementation = "x:One"
        templates: ClassVar[dict[str, str]] = {"one": "{history} {target}"}

    @registry.register
    class Two(Base):
        name: Literal["two"] = "two"
        size: int = 3
        implementation = "x:Two"

    monkeypatch.setattr(registry, "_discovered", True)  # only these two
    from pydantic import TypeAdapter

    adapter = TypeAdapter(registry.union())
    assert type(adapter.validate_python({"name": "two", "size": 5})) is Two
    assert registry.owners("size") == ("two",)
    with pytest.raises(ValueError, match="registered twice"):

        @registry.register
        class Other(Base):
            name: Literal["one"] = "one"
            implementation = "x:Other"


def test_templates_come_from_the_methods():
    templates = prompt_templates()
    for cls in METHODS.classes():
        for name in cls.templates:
            assert templates[name] == cls.templates[name]
