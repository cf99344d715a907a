"""Connecting to Ray: the cluster named by the config or ``RAY_ADDRESS``, else a new local
instance, so that the same entry points run on a laptop and under ``ray job submit``."""

from __future__ import annotations

import logging
import os
import socket

import ray

from raylrec.config import RayConfig

__all__ = ["init_ray"]

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_ray(config: RayConfig | None = None, dashboard: bool = False) -> None:
    """Idempotent: reuses a Ray instance this process already joined.

    ``dashboard`` starts a local instance with its dashboard, which serves the State API: Ray
    Train's placement-group cleaner needs it to free the workers of runs that Ray Tune stops
    (ASHA), else their CPUs stay reserved and later trials wait forever. Clusters started
    with ``ray start`` run it already."""
    if ray.is_initialized():
        return
    config = config or RayConfig()
    address = config.address or os.environ.get("RAY_ADDRESS")
    # Quiet, single-line progress: Ray Data's bars are per operator and flood logs on CI.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("RAYLREC_PROGRESS_BARS", "0") == "1"
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        # A private instance on this machine: token authentication (Ray 2.59+) guards
        # shared clusters; here it would only demand a token from our own processes.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs = {}
        if dashboard:
            # Ray's processes inherit this environment: the State API then finds our dashboard
            # even when other Ray instances run on the machine (it would refuse to guess).
            kwargs["dashboard_port"] = _free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
        ray.init(num_cpus=config.num_cpus, include_dashboard=dashboard, log_to_driver=True, **kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = ctx.enable_progress_bars
    # Ray Data logs every execution plan at INFO; raylrec prints its own one-line progress.
    if os.environ.get("RAYLREC_RAY_DATA_LOGS") != "1":
        quiet = os.environ.get("RAYLREC_QUIET_RAY_DATA") == "1"
        logging.getLogger("ray.data").setLevel(logging.CRITICAL if quiet else logging.WARNING)
