"""Every shipped config and search space validates, so a typo in configs/ or tune_spaces/ fails
CI rather than a night's run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raylrec.config import load_config, load_raw_config
from raylrec.nightly import nightly_config
from raylrec.profiles.config import load_profiles_config
from raylrec.tune.space import load_space

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    if path.name.startswith("profiles_"):  # a profile job's own config (raylrec profiles ...)
        assert load_profiles_config(path).output
        return
    config = load_config(path)
    if config.nightly.root:
        dated = nightly_config(config, "2026-11-24")
        assert dated.score.dataset.endswith("datasets/date=2026-11-24")


SPACES = sorted((Path(__file__).resolve().parents[1] / "tune_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.name)
def test_space_fits_the_config_its_header_names(space):
    """Each space against the config its usage line names (``--config configs/...``): every
    bound and choice is a valid value of that config's (strict, finite) fields."""
    match = re.search(r"--config (\S+\.yaml)", space.read_text())
    assert match, f"{space.name}: no '--config configs/....yaml' usage line"
    config = space.parents[1] / match.group(1)
    loaded = load_space(space, load_config(config), load_raw_config(config))
    assert loaded.params
