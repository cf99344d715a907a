"""Sources and split protocols are plugins (issue 37, item 3): each is one module and a
registration, and the config unions, the pipeline's dispatch and the error messages read the
registries (no list of names, no ``isinstance`` chain)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from raylrec.config import ConfigError, build_config
from raylrec.data.config import SOURCES, SPLITS
from raylrec.data.splits import TEST, TRAIN, VALID, assign_splits

PACKAGE = Path(__file__).resolve().parents[1] / "raylrec"


def test_every_module_under_sources_and_splits_registers_what_it_defines():
    """The registries hold exactly the config classes of the modules in their folders."""
    for registry, folder in ((SOURCES, "sources"), (SPLITS, "splits")):
        modules = {p.stem for p in (PACKAGE / "data" / folder).glob("*.py") if not p.stem.startswith("_")}
        homes = {cls.__module__.rsplit(".", 1)[-1] for cls in registry.classes()}
        assert homes == modules, (folder, homes, modules)
    assert set(SOURCES.names()) == {"collm_ml1m", "logs", "movielens_100k", "movielens_1m", "synthetic"}
    assert set(SPLITS.names()) == {
        "given",
        "leave_last_out",
        "random_ratio",
        "rolling_days",
        "temporal_fraction",
        "temporal_window",
    }


def test_the_errors_name_the_registered_choices():
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"source": {"type": "kafka"}, "output": "/tmp/x"}})
    assert "data.source" in str(err.value) and "logs" in str(err.value) and "synthetic" in str(err.value)
    with pytest.raises(ConfigError, match="split.protocol 'given' goes with source.type 'collm_ml1m'"):
        build_config(
            {"data": {"source": {"type": "synthetic"}, "split": {"protocol": "given"}, "output": "/x"}}
        )
    with pytest.raises(ConfigError, match="append needs split.protocol rolling_days"):
        build_config({"data": {"source": {"type": "synthetic"}, "append": True, "output": "/x"}})
    # a key of one protocol under another names the section it is in, without the union's tag
    with pytest.raises(ConfigError, match=r"data\.split\.seed"):
        build_config(
            {
                "data": {
                    "source": {"type": "synthetic"},
                    "split": {"protocol": "leave_last_out", "seed": 1},
                    "output": "/x",
                }
            }
        )


def test_each_protocol_assigns_by_its_own_rule():
    # two users, sorted by (user, time): user 1 has 5 events, user 2 has 2
    user = np.array([1, 1, 1, 1, 1, 2, 2])
    item = np.arange(7)
    ts = np.array([10, 20, 30, 40, 50, 15, 60])
    leave = SPLITS.get("leave_last_out")(min_events=3)
    assert assign_splits(leave, user, item, ts, None).tolist() == [TRAIN] * 3 + [VALID, TEST] + [TRAIN] * 2
    window = SPLITS.get("temporal_window")(valid_start=30, test_start=50)
    assert assign_splits(window, user, item, ts, None).tolist() == [0, 0, 1, 1, 2, 0, 2]
    fraction = SPLITS.get("temporal_fraction")()
    assert assign_splits(fraction, user, item, ts, (25, 45)).tolist() == [0, 0, 1, 1, 2, 0, 2]
    given = SPLITS.get("given")()
    with pytest.raises(NotImplementedError, match="given"):
        assign_splits(given, user, item, ts, None)


def test_a_new_source_and_protocol_are_a_module_each_and_a_registration(tmp_path):
    """A toy source and a toy protocol in a package of their own, registered before raylrec's
    config is first imported (what an entry point does): the config builds them, ``load`` calls
    the source's own loader, and the pipeline's split step runs the protocol's own rule. No
    raylrec file names either of them."""
    (tmp_path / "toyplugins.py").write_text(
        textwrap.dedent(
            """
            from typing import Literal

            import numpy as np

            from raylrec.data.config import SourceConfig, SplitProtocol, register_source, register_split

            @register_source
            class ToySource(SourceConfig):
                type: Literal["toy"] = "toy"
                rows: int = 3
                loader = "toyplugins:load_toy"

            def load_toy(source, validation):
                return ("loaded", source.rows, validation.max_id_length)

            @register_split
            class EverythingTest(SplitProtocol):
                protocol: Literal["all_test"] = "all_test"

                def assign(self, rows, cutoffs):
                    return np.full(len(rows.user), 2, np.int8)
            """
        )
    )
    code = textwrap.dedent(
        """
        import numpy as np
        import toyplugins  # registers before raylrec.config builds its unions
        from raylrec.config import build_config
        from raylrec.data.splits import assign_splits

        source, split = {"type": "toy", "rows": 7}, {"protocol": "all_test"}
        config = build_config({"data": {"source": source, "split": split, "output": "/x"}}).data
        assert type(config.source).__name__ == "ToySource", type(config.source)
        assert config.source.load(config.validation) == ("loaded", 7, 1024)
        three = np.array([1, 2, 3])
        codes = assign_splits(config.split, np.array([1, 1, 2]), three, three, None)
        assert codes.tolist() == [2, 2, 2]
        print("ok")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{PACKAGE.parent}"},
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
