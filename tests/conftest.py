"""Shared fixtures: one local Ray instance for the session and a real S3-compatible server
(moto's ThreadedMotoServer) on loopback.

The S3 endpoint is put in the environment before Ray starts, so Ray's worker processes, which
inherit the driver's environment, reach the same server as the tests.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_PORT = _free_port()
os.environ.update(
    {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "WANDB_MODE": "offline",
        "RAY_DEDUP_LOGS": "0",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("RAY_ADDRESS", None)
# Ray's own default for a new local instance (token authentication on), as users get it.
os.environ.pop("RAY_AUTH_MODE", None)

REPO = Path(__file__).resolve().parents[1]
COLLM_DIR = REPO.parent / "shared" / "datasets" / "collm-ml1m"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from raylrec.config import RayConfig
    from raylrec.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory, ray_session):
    """``prepared_dataset(source, **data)``: the path of a dataset that ``raylrec data prepare``
    made from ``source`` with the ``data`` section's other fields, prepared once per session for
    each set of parameters (a Ray Data job each: modules asking for the same one share it). Read
    it, never write into it: copy it first (``shutil.copytree``) to change a file."""
    import json

    from helpers import data_config

    from raylrec.data.prepare import prepare

    made: dict[str, str] = {}

    def make(source: dict, **data) -> str:
        key = json.dumps([source, data], sort_keys=True)
        if key not in made:
            out = str(tmp_path_factory.mktemp("prepared") / "data")
            prepare(data_config(source, out, **data))
            made[key] = out
        return made[key]

    return make


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the loopback S3 server; returns ``s3://name``."""
    import s3fs

    name = f"raylrec-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The ML-100K atomic files read out of the recbole wheel (downloaded once, cached)."""
    from raylrec.data.movielens import recbole_ml100k_dir

    return recbole_ml100k_dir()


def pytest_terminal_summary(terminalreporter) -> None:
    """Lines a test recorded with ``record_property("summary", ...)`` (the cluster test's node
    count, worker placement and job durations), printed after the run, also under ``-q`` and
    with the tests spread over processes (pytest-xdist)."""
    lines = [
        value
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("summaries")
        for line in lines:
            terminalreporter.write_line(line)


# Fixtures that start Ray (a local instance, a multi-node cluster): their tests are the `ray`
# tier, which `make test-fast` leaves out.
_RAY_FIXTURES = {"ray_session", "cluster"}


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that starts Ray as ``ray`` (through its fixtures, directly or via a
    module's ``usefixtures``), so the fast tier (``-m "not ray and not slow"``) needs no list;
    one that starts the multi-node cluster is ``cluster`` too."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _RAY_FIXTURES & fixtures:
            item.add_marker(pytest.mark.ray)
        if "cluster" in fixtures:
            item.add_marker(pytest.mark.cluster)
