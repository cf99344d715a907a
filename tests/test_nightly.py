"""The nightly pipeline for a date: prepare -> refresh CF -> score -> publish, each step
skipped when its committed output exists, so a second run of the date changes nothing, and a
run that failed after preparing continues from the CF step."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylrec.config import build_config
from raylrec.data.output import read_meta
from raylrec.nightly import NightlySummary, nightly_config, prepare_for_date, run_nightly
from raylrec.scoring import publish as recs

pytestmark = pytest.mark.usefixtures("ray_session")

DATE = "2026-11-24"


def _config(
    tmp_path, source: dict | None = None, train: dict | None = None, split: dict | None = None, **nightly
):
    return build_config(
        {
            "data": {
                "source": source or {"type": "movielens_100k"},
                "split": split or {"protocol": "random_ratio", "ratios": [0.8, 0.1, 0.1], "seed": 2020},
                "output": "replaced-by-nightly",
            },
            "cf": {"model": "mf", "dim": 16, "loss": "bpr", "implicit": True},
            "train": {
                "epochs": 2,
                "batch_size": 4096,
                "lr": 5e-3,
                "metric": "valid/ndcg@10",
                "num_workers": 1,
                "storage_path": str(tmp_path / "runs"),
                **(train or {}),
            },
            "score": {"output": str(tmp_path / "recs"), "candidates": 20, "k": 5},
            "nightly": {"root": str(tmp_path / "nightly"), "refresh_cf": True, **nightly},
        }
    )


def _statuses(summary) -> dict[str, str]:
    return {s["step"]: s["status"] for s in summary.steps}


def test_nightly_runs_each_step_once_and_resumes(tmp_path, capsys, s3_server):
    """Over 60 s alone: the nightly job end to end (prepare, CF refresh on Ray Train, scoring), run
    twice so that the second run's skips are checked against real outputs."""
    config = _config(tmp_path)
    # A failure after preparing: the scoring step's bucket does not exist (on a live endpoint).
    broken = config.model_copy(
        update={"score": config.score.model_copy(update={"output": "s3://no-such-bucket/recs"})}
    )
    with pytest.raises(OSError, match="no-such-bucket"):
        run_nightly(broken, DATE)
    assert (tmp_path / "nightly" / "datasets" / f"date={DATE}" / "meta.json").exists()
    assert (tmp_path / "nightly" / "cf" / f"date={DATE}" / "config.json").exists()

    first = run_nightly(config, DATE)
    assert _statuses(first) == {"prepare": "skipped", "cf": "skipped", "score": "ran", "publish": "done"}
    manifest = recs.read_manifest(str(tmp_path / "recs"), DATE)
    assert manifest["users"] == 943 and manifest["rows"] == 943 * 5
    assert manifest["cf_bundle"].endswith(f"cf/date={DATE}")

    second = run_nightly(config, DATE)
    assert _statuses(second) == {"prepare": "skipped", "cf": "skipped", "score": "skipped", "publish": "done"}
    assert recs.read_manifest(str(tmp_path / "recs"), DATE)["run_id"] == manifest["run_id"]
    out = capsys.readouterr().out
    assert f"nightly {DATE}:" in out and "skipped" in out


def test_a_rolling_days_nightly_appends_each_date_to_one_dataset(tmp_path):
    """With a rolling_days split the nightly's prepare step prepares one dataset on the first
    date, appends each later date's partition to it, and skips a date it already holds."""
    rng = np.random.default_rng(3)
    dates = ["2026-11-22", "2026-11-23", "2026-11-24"]
    rows = 0
    for date in dates:
        start = int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp())
        n = 80
        path = tmp_path / "logs" / f"date={date}" / "events.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(
            pa.table(
                {
                    "user_id": rng.integers(0, 15, n).astype(str),
                    "item_id": rng.integers(0, 25, n).astype(str),
                    "timestamp": start + np.sort(rng.integers(0, 86_400, n)),
                    "rating": rng.integers(1, 6, n).astype(float),
                }
            ),
            path,
        )
        rows += n
    source = {"type": "logs", "paths": [str(tmp_path / "logs" / "date={date}")]}
    config = _config(tmp_path, source=source, split={"protocol": "rolling_days"}, refresh_cf=False)
    statuses = []
    for date in [*dates, dates[1]]:
        summary = NightlySummary(date)
        prepare_for_date(nightly_config(config, date), date, summary, say=lambda message: None)
        statuses.append(summary.steps[0]["status"])
    assert statuses == ["ran", "appended", "appended", "skipped"]
    meta = read_meta(str(tmp_path / "nightly" / "dataset"))
    assert meta["version"] == 3 and meta["counts"]["rows_in"] == rows
    assert [a["days"] for a in meta["appended"]] == [[dates[1]], [dates[2]]]
    assert not (tmp_path / "nightly" / "datasets").exists()


@pytest.mark.slow
def test_nightly_refreshes_profiles_named_in_its_config_then_skips_them(tmp_path):
    """Over 60 s alone: two nightly runs, the first generating every profile with the tiny Llama.
    ``nightly.profiles`` names a profiles YAML: the first run of a date generates and embeds
    the profiles of every item and user of the date's dataset (all new), the second generates
    none; scoring still publishes. A small synthetic log and the tiny Llama keep it short, and the
    CF refresh trains in the driver (the test above covers it on Ray Train)."""
    import yaml

    profiles_yaml = tmp_path / "profiles.yaml"
    profiles_yaml.write_text(
        yaml.safe_dump(
            {
                "dataset": "replaced-by-nightly",
                "output": str(tmp_path / "profiles"),
                "backbone": {"name": "tiny-random-llama"},
                "generation": {"max_new_tokens": 4, "batch_size": 8},
                "chunk_size": 16,
            }
        )
    )
    source = {"type": "synthetic", "num_events": 400, "num_users": 12, "num_items": 20, "seed": 3}
    config = _config(tmp_path, source, train={"num_workers": 0}, profiles=str(profiles_yaml))
    first = run_nightly(config, DATE)
    step = next(s for s in first.steps if s["step"] == "profiles")
    assert step["status"] == "ran" and step["new_items"] == 20 and step["new_users"] == 12
    assert _statuses(first)["publish"] == "done"
    second = run_nightly(config, DATE)
    step = next(s for s in second.steps if s["step"] == "profiles")
    assert step["status"] == "skipped" and step["new_items"] == 0 and step["new_users"] == 0
