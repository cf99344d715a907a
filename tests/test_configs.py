"""Every shipped config validates, so a typo in configs/ fails CI rather than a night's run."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylrec.config import load_config
from raylrec.nightly import nightly_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    config = load_config(path)
    if config.nightly.root:
        dated = nightly_config(config, "2026-11-24")
        assert dated.score.dataset.endswith("datasets/date=2026-11-24")
