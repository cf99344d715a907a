"""Connecting to Ray: the cluster named by ``ray.address`` or ``RAY_ADDRESS``, else a new
private local instance, so that the same entry points run on a laptop and under
``ray job submit``.

A local instance is private by default: it is always a new one (``address="local"``: a leftover
``ray start`` record in Ray's temp dir is never joined), every Ray process listens on loopback
only, and token authentication is left as Ray sets it (on for a new local instance in Ray 2.60,
with the token in ``~/.ray/auth_token``). ``RAY_AUTH_MODE=disabled`` in the environment still opts out."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from raylrec.config import RayConfig
from raylrec.timeline import mark

__all__ = ["PARQUET_READER_V2", "configure_worker_process", "init_ray", "parquet_reader_v2"]

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While a new local instance starts, make its node address 127.0.0.1: then its GCS, raylet,
    agents and workers all listen on loopback. Ray otherwise turns 127.0.0.1 into the machine's
    public IP, unless it runs without multi-node support, a flag it reads here at start-up (the
    processes it starts take the address from their arguments). Restored afterwards, so that
    nothing else this process starts (``ray start``, a job) inherits it."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


# Deprecation warnings raised inside Ray's and DeepSpeed's own code, about calls raylrec does
# not make (a user cannot act on them); matched by message, so any other warning still shows.
_THIRD_PARTY_WARNINGS = (
    r"`ExecutionOptions\.exclude_resources` is deprecated",  # Ray Train's DatasetManager
    r"`torch\.distributed\.all_gather_into_tensor` is deprecated",  # DeepSpeed ZeRO's gathers
)


# Log lines that say nothing a user can act on, by logger and message prefix.
_KNOWN_NOISE = {
    # Ray Data warns once per process that its bars are off: raylrec turns them off on purpose.
    "ray.data._internal.progress": ("Progress bars disabled.",),
    # DeepSpeed prints this on every rank at each CPU engine start. Ray Train's patched print
    # both tees it to the worker's stdout and logs it through the root logger; this drops the
    # logged copy, so each rank prints it once, not twice.
    "": ("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _drop_known_noise() -> None:
    for name, prefixes in _KNOWN_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))


def configure_worker_process() -> None:
    """Ray's ``worker_process_setup_hook`` for the local instances raylrec starts: runs first in
    every Ray worker process (tasks, actors, Ray Train workers) and drops the known-harmless
    deprecation warnings and log lines above. Everything else a worker logs still reaches the
    console and its log file under the Ray session's ``logs/``."""
    import warnings

    for message in _THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    _drop_known_noise()


# Ray Data's Parquet reader. The DataSourceV2 one (Ray's default since 2.5x) lists every
# read's files on a pool of footer-reading actors it starts for that read: new worker
# processes each time, 1.5-5 s on a 2-core machine for a one-file split (V1: 0.13 s for 1,000
# rows, 0.42 s for 1M; bench/parquet_reads.py). raylrec reads file lists it already knows (a
# dataset's manifest) and uses none of V2's push-downs, so it reads with V1 unless the user
# sets this variable.
PARQUET_READER_V2 = "RAY_DATA_USE_DATASOURCE_V2"


def parquet_reader_v2() -> bool:
    """Whether ``ray.data.read_parquet`` goes through Ray Data's DataSourceV2: only when
    ``RAY_DATA_USE_DATASOURCE_V2`` is set to 1/true (Ray's own switch, read the same way)."""
    return os.environ.get(PARQUET_READER_V2, "0").strip().lower() in ("1", "true")


def _worker_env() -> dict[str, str]:
    """Environment of a new local instance's workers: the Parquet reader the driver uses (a
    Tune trial or an actor that reads a split plans its own reads), and Ray Data's logging
    config with its console at warnings (each operator's execution plan is INFO there) and its
    ``logs/ray-data/`` files at Ray's default levels. Derived from Ray Data's own default, so
    it follows Ray's versions. A ``RAY_DATA_LOGGING_CONFIG`` of the user's, or
    ``RAYLREC_RAY_DATA_LOGS=1``, leaves Ray Data's logging alone."""
    reader = {PARQUET_READER_V2: "1" if parquet_reader_v2() else "0"}
    if os.environ.get("RAYLREC_RAY_DATA_LOGS") == "1" or "RAY_DATA_LOGGING_CONFIG" in os.environ:
        return reader
    import copy
    import tempfile

    import yaml
    from ray.data._internal.logging import DEFAULT_CONFIG

    config = copy.deepcopy(DEFAULT_CONFIG)
    for handler in config["handlers"].values():
        if handler["class"].endswith("PlainRayHandler"):  # the console
            handler["level"] = "WARNING"
    fd, path = tempfile.mkstemp(prefix="raylrec-ray-data-logging-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    # Workers start (and read it) for as long as the local instance lives, which is as long as
    # this driver: removed when the driver exits.
    atexit.register(_remove_if_present, path)
    return {**reader, "RAY_DATA_LOGGING_CONFIG": path}


def _remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# Ray gives a new local node a fixed 30 s to register its raylet with the GCS; on a loaded
# machine (a 2-core CI box running other jobs) that can pass with nothing wrong. Retried on a
# fresh instance, that one failure is not a reason to fail the job.
_STARTUP_TIMEOUT = "timed out during startup"
_START_ATTEMPTS = 3
# Idle worker processes a local instance keeps beyond one per CPU (Ray's num_workers_soft_limit).
# With Ray's default, the task workers that had imported the tokenizer path (torch, transformers:
# ~5 s of CPU each) were killed while a Ray Train run held the CPUs, so every LLM stage after the
# first tokenised from cold processes: 10 s instead of 1 s (bench/idle_workers.py). An explicit
# limit of one per CPU already kept them there; the 4 more are headroom, not measured apart. An
# idle worker costs its memory (~0.3 GiB once it has imported torch).
IDLE_WORKERS_ABOVE_CPUS = 4


def _start_local_instance(config: RayConfig, dashboard: bool) -> None:
    """A new local Ray instance (its dashboard on a free loopback port), retried when Ray's
    own start-up deadline passes."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        try:
            kwargs: dict[str, Any] = {"address": "local"}
            if dashboard:
                # The one process-wide environment variable raylrec sets outside an entry point.
                # Ray's State API has no parameter for its server's address: the clients inside Ray's
                # own processes (Ray Train's placement-group cleaner, an actor) read it from
                # RAY_API_SERVER_ADDRESS, and without it refuse to guess when other Ray instances
                # run on the machine. The processes of the local instance started just below
                # inherit this process's environment, so it is set here, before they start.
                kwargs["dashboard_port"] = _free_port()
                os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
            with _loopback_only():
                ray.init(
                    num_cpus=config.num_cpus,
                    include_dashboard=dashboard,
                    log_to_driver=True,
                    _system_config={
                        "num_workers_soft_limit": (config.num_cpus or os.cpu_count() or 1)
                        + IDLE_WORKERS_ABOVE_CPUS
                    },
                    runtime_env={
                        "worker_process_setup_hook": f"{__name__}.configure_worker_process",
                        "env_vars": _worker_env(),
                    },
                    **kwargs,
                )
            return
        except Exception as error:  # Ray raises a bare Exception for this one
            if _STARTUP_TIMEOUT not in str(error) or attempt == _START_ATTEMPTS:
                raise
            log.warning(
                "Ray's local node %s (attempt %d of %d); starting a fresh one",
                _STARTUP_TIMEOUT,
                attempt,
                _START_ATTEMPTS,
            )
            ray.shutdown()


def init_ray(config: RayConfig | None = None, dashboard: bool = True, quiet_ray_data: bool = False) -> None:
    """Idempotent: reuses a Ray instance this process already joined.

    A new local instance starts with its dashboard, which serves the State API (``dashboard``
    False leaves it out): Ray Train's placement-group cleaner polls it every second to free
    the workers of a run whose controller died or that Ray Tune stopped (ASHA); without it
    the cleaner cannot work, logs a warning each second, and a stopped trial's CPUs stay
    reserved so later trials wait forever. Clusters started with ``ray start`` run it already.
    Its workers run ``configure_worker_process`` first.

    Ray Data's loggers are set to warnings and above (it logs every execution plan at INFO;
    raylrec prints its own one-line progress), or with ``quiet_ray_data`` to nothing below
    CRITICAL (the CLI without ``-v``). ``RAYLREC_RAY_DATA_LOGS=1`` leaves them as Ray sets them
    and ``RAYLREC_PROGRESS_BARS=1`` turns Ray Data's progress bars on: debugging switches,
    listed in ``docs/environment.md``."""
    if ray.is_initialized():
        return
    mark("ray start")
    config = config or RayConfig()
    address = config.address or os.environ.get("RAY_ADDRESS")
    # Quiet, single-line progress: Ray Data's bars are per operator and flood logs on CI.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("RAYLREC_PROGRESS_BARS", "0") == "1"
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        _start_local_instance(config, dashboard)
    ray.data.DataContext.get_current().enable_progress_bars = ctx.enable_progress_bars
    # The driver plans the reads of its datasets; a cluster's own processes (a Tune trial's actor)
    # read the variable from their environment, which cluster/*.yaml set.
    ray.data.DataContext.get_current().use_datasource_v2 = parquet_reader_v2()
    _drop_known_noise()
    mark("ray ready")
    if os.environ.get("RAYLREC_RAY_DATA_LOGS") != "1":
        logging.getLogger("ray.data").setLevel(logging.CRITICAL if quiet_ray_data else logging.WARNING)
