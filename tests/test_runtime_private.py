"""A local Ray instance that raylrec starts is private: a new one every time (a leftover
``ray start`` record is never joined), listening on loopback only, with Ray's token
authentication left on. Runs in a fresh process with RAY_ADDRESS and RAY_AUTH_MODE unset, as a
user's shell would have them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

DEAD_RECORD = "127.0.0.1:9"

PROBE = textwrap.dedent(
    """
    import ipaddress, json, psutil, ray
    from ray._raylet import AuthenticationMode, get_authentication_mode
    from raylrec.config import RayConfig
    from raylrec.runtime import init_ray

    init_ray(RayConfig(num_cpus=1))
    node = ray._private.worker._global_node
    # a worker process too, which reports the Parquet reader a task of it would plan with
    worker_v2 = ray.get(ray.remote(lambda: ray.data.DataContext.get_current().use_datasource_v2).remote())
    roots = [psutil.Process(p.process.pid) for infos in node.all_processes.values() for p in infos]
    processes = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
    listening = sorted(
        {
            (processes[c.pid].name(), c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in processes
        }
    )
    def loopback(ip):
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return address.is_loopback or (mapped is not None and mapped.is_loopback)
    print("PROBE " + json.dumps({
        "gcs_address": node.gcs_address,
        "started_new": node.head,
        "token_auth": get_authentication_mode() == AuthenticationMode.TOKEN,
        "listening": listening,
        "exposed": [entry for entry in listening if not loopback(entry[1])],
        "parquet_v2": [ray.data.DataContext.get_current().use_datasource_v2, worker_v2],
    }))
    ray.shutdown()
    """
)


@pytest.fixture(scope="module")
def probe() -> dict:
    """Start raylrec's local instance in a fresh process, over a dead ``ray start`` record, and
    report what it exposes (one start serves both tests)."""
    # A short temp root: Ray's socket paths must fit in 107 characters.
    temp_root = tempfile.mkdtemp(prefix="rl-", dir="/tmp")
    try:
        # The record `ray start` leaves: plain ray.init() joins (or waits for) this dead address.
        os.makedirs(os.path.join(temp_root, "ray"))
        with open(os.path.join(temp_root, "ray", "ray_current_cluster"), "w") as f:
            f.write(DEAD_RECORD)
        unset = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_DATA_USE_DATASOURCE_V2")
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env["RAY_TMPDIR"] = temp_root
        # A guard, not a measurement: a run that joins the dead record waits forever.
        run = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(lines[0].removeprefix("PROBE "))


def test_local_instance_listens_on_loopback_only_with_token_auth(probe):
    assert probe["gcs_address"].startswith("127.0.0.1:"), probe
    assert {name for name, _, _ in probe["listening"]} >= {"gcs_server", "raylet"}, probe["listening"]
    assert probe["exposed"] == [], probe["exposed"]
    assert probe["token_auth"] is True


def test_the_driver_and_its_workers_read_parquet_with_ray_datas_v1_reader(probe):
    """V2 starts a pool of footer-reading actors per read (seconds each: bench/parquet_reads.py);
    a Tune trial or an actor that reads a split plans its reads as the driver does."""
    assert probe["parquet_v2"] == [False, False], probe


def test_a_leftover_ray_start_record_is_not_joined(probe):
    assert probe["started_new"] and probe["gcs_address"] != DEAD_RECORD, probe


def test_a_start_up_timeout_is_retried_on_a_fresh_instance_and_other_errors_are_not(monkeypatch):
    """Ray gives a new node a fixed 30 s to register (ray/_private/node.py); a loaded machine can
    miss it with nothing wrong. A stand-in for ``ray.init`` (the real one cannot be made to time
    out on demand) fails that way once: ``init_ray`` starts a fresh instance. Any other error
    is raised at once."""
    import ray

    from raylrec.config import RayConfig
    from raylrec.runtime import init_ray

    calls: list[str] = []

    def timing_out_once(**kwargs):
        calls.append(f"init dashboard_port={kwargs.get('dashboard_port')}")
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen ...")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "unset-by-the-test")  # restored afterwards
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", timing_out_once)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    init_ray(RayConfig(num_cpus=1))
    assert [c.split()[0] for c in calls] == ["init", "shutdown", "init"]
    assert calls[0] != calls[2]  # the fresh instance gets a fresh dashboard port

    def refusing(**kwargs):
        calls.append("refused")
        raise ValueError("num_cpus must be positive")

    calls.clear()
    monkeypatch.setattr(ray, "init", refusing)
    with pytest.raises(ValueError, match="num_cpus"):
        init_ray(RayConfig(num_cpus=1))
    assert calls == ["refused"]


def test_the_ray_data_logging_file_lives_as_long_as_the_driver():
    """The logging YAML handed to a new local instance's workers exists while the driver runs
    and is removed when it exits (one per Ray start, never left in the temp directory)."""
    code = (
        "import os\n"
        "from raylrec.runtime import _worker_env\n"
        "path = _worker_env()['RAY_DATA_LOGGING_CONFIG']\n"
        "print(path, os.path.exists(path))\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAYLREC_RAY_DATA_LOGS", "RAY_DATA_LOGGING_CONFIG")
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    path, existed = out.stdout.split()
    assert existed == "True" and not os.path.exists(path)
