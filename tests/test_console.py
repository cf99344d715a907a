"""What reaches the console: the known-harmless third-party lines are dropped at their source (a
logger filter, a warnings filter, Ray Data's console handler level) and nothing else is; the
demo's stage timings. In-process, no Ray started."""

from __future__ import annotations

import logging
import warnings

import yaml

from raylrec import runtime
from raylrec.demo import StageClock


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_known_noise_is_dropped_and_everything_else_kept():
    runtime.configure_worker_process()
    runtime.configure_worker_process()  # idempotent: one filter per logger
    progress = logging.getLogger("ray.data._internal.progress")
    assert sum(isinstance(f, runtime._DropMessages) for f in progress.filters) == 1
    collect = _Collect()
    progress.addHandler(collect)
    try:
        progress.warning("Progress bars disabled. To enable, set `...enable_progress_bars = True`.")
        progress.warning("Progress bars for operators disabled.")
        progress.error("a real Ray Data error")
    finally:
        progress.removeHandler(collect)
    assert collect.messages == ["Progress bars for operators disabled.", "a real Ray Data error"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a test run sets; the dropped ones must still go
        runtime.configure_worker_process()
        warnings.warn(
            "`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning, stacklevel=1
        )
        warnings.warn("`ExecutionOptions.exclude_resources` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("raylrec's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["raylrec's own warning"]


def test_ray_data_workers_get_a_console_at_warnings_and_unchanged_files(monkeypatch):
    monkeypatch.delenv("RAYLREC_RAY_DATA_LOGS", raising=False)
    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    from ray.data._internal.logging import DEFAULT_CONFIG

    env = runtime._worker_env()
    with open(env["RAY_DATA_LOGGING_CONFIG"]) as f:
        config = yaml.safe_load(f)
    for name, handler in config["handlers"].items():
        expected = (
            "WARNING"
            if handler["class"].endswith("PlainRayHandler")
            else DEFAULT_CONFIG["handlers"][name].get("level")
        )
        assert handler.get("level") == expected, name
    assert config["loggers"] == DEFAULT_CONFIG["loggers"]

    monkeypatch.setenv("RAYLREC_RAY_DATA_LOGS", "1")
    # the debugging switch leaves Ray Data's logging alone
    assert "RAY_DATA_LOGGING_CONFIG" not in runtime._worker_env()
    monkeypatch.delenv("RAYLREC_RAY_DATA_LOGS")
    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", "/the/users/own.yaml")
    assert "RAY_DATA_LOGGING_CONFIG" not in runtime._worker_env()


def test_workers_read_parquet_as_the_driver_does_v1_unless_the_user_asks_for_v2(monkeypatch):
    """Ray Data's V2 Parquet reader starts footer-reading actors for every read (bench/parquet_reads.py):
    a local instance's workers get V1 as the driver does, and Ray's own switch still wins."""
    monkeypatch.delenv(runtime.PARQUET_READER_V2, raising=False)
    assert not runtime.parquet_reader_v2()
    assert runtime._worker_env()[runtime.PARQUET_READER_V2] == "0"
    monkeypatch.setenv(runtime.PARQUET_READER_V2, "1")
    assert runtime.parquet_reader_v2()
    assert runtime._worker_env()[runtime.PARQUET_READER_V2] == "1"


def test_stage_timings_table():
    clock = StageClock()
    clock.start("1 prepare")
    clock.start("2 train")  # starting the next stage ends the previous one
    clock.stop()
    clock.stop()  # a second stop records nothing
    table = clock.table().splitlines()
    assert table[0] == "stage timings:"
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "total"]
