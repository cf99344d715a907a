"""A real multi-node Ray cluster on one machine, for the cluster test.

``ray start --head`` and then ``ray start --address`` for each worker node: every node is its own
raylet with its own CPUs and object store, all on loopback, and the cluster runs with token
authentication (Ray 2.59+) as a shared cluster should. Jobs go in through the real Jobs API with
the ``ray job submit`` CLI, exactly as the README shows. A node is lost the way a machine is:
its raylet and every process under it get SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raylets(temp_dir: str) -> dict[int, str]:
    """pid -> node id of every raylet of the cluster living under ``temp_dir``."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (
            cmdline
            and cmdline[0].endswith("/raylet")
            and any(a.startswith(f"--temp_dir={temp_dir}/") for a in cmdline)
        ):
            node_id = next(a.split("=", 1)[1] for a in cmdline if a.startswith("--node_id="))
            found[proc.info["pid"]] = node_id
    return found


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)


@dataclass
class LocalCluster:
    """Start with ``LocalCluster.start()``; ``env`` is what a client (``ray job submit``,
    ``ray list``) needs: the dashboard's address and the cluster's token."""

    temp_dir: str
    gcs_address: str
    dashboard_url: str
    node_env: dict[str, str]
    log_dir: Path | None = None  # where each job's log is kept (``<submission id>.log``)
    say: Callable[[str], None] = print
    nodes: dict[str, str] = field(default_factory=dict)  # name -> node id
    _raylet_pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, head_cpus: int = 1, object_store_mb: int = 400) -> LocalCluster:
        # Short: Ray's Unix socket paths live under it and must stay under 108 bytes.
        temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER"))}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            # The nodes run jobs with this environment's python (a node's own install).
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            # as cluster/*.yaml start their nodes: Ray Data's V1 Parquet reader in every process
            RAY_DATA_USE_DATASOURCE_V2="0",
        )
        gcs_port, dashboard_port = _free_port(), _free_port()
        cluster = cls(temp_dir, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env)
        cluster._ray_start(
            "head",
            "--head",
            f"--port={gcs_port}",
            f"--num-cpus={head_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={_free_port()}",
            f"--object-store-memory={object_store_mb * 2**20}",
        )
        return cluster

    @property
    def env(self) -> dict[str, str]:
        return {**self.node_env, "RAY_ADDRESS": self.dashboard_url}

    def add_node(
        self, name: str, cpus: int = 1, resources: dict[str, float] | None = None, object_store_mb: int = 400
    ) -> str:
        """Start a worker node (its own raylet) that joins the head; returns its node id."""
        return self._ray_start(
            name,
            f"--address={self.gcs_address}",
            f"--num-cpus={cpus}",
            f"--resources={json.dumps(resources or {})}",
            f"--object-store-memory={object_store_mb * 2**20}",
        )

    def _ray_start(self, name: str, *args: str) -> str:
        before = _raylets(self.temp_dir)
        common = [
            "--node-ip-address=127.0.0.1",
            # One temp dir per node, as on separate machines: nodes sharing one would share its
            # runtime_resources/ and delete each other's unpacked working dirs.
            f"--temp-dir={self.temp_dir}/{name}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--disable-usage-stats",
        ]
        done = subprocess.run(
            [RAY, "start", *args, *common], env=self.node_env, capture_output=True, text=True, timeout=900
        )  # a safety net: `ray start` returns once its node has registered (seconds)
        if done.returncode != 0:
            raise RuntimeError(f"ray start for {name} failed:\n{done.stdout}\n{done.stderr}")
        (pid, node_id), *others = [(p, n) for p, n in _raylets(self.temp_dir).items() if p not in before]
        assert not others, "two raylets appeared for one ray start"
        self.nodes[name], self._raylet_pids[name] = node_id, pid
        return node_id

    def processes_by_node(self, title: str) -> dict[str, list[int]]:
        """node name -> pids of its processes titled ``title`` (e.g. ``ray::RayTrainWorker``),
        read from the process tree under each raylet: instant, unlike the State API."""
        found: dict[str, list[int]] = {}
        for name, pid in self._raylet_pids.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if " ".join(child.cmdline()).startswith(title):
                            found.setdefault(name, []).append(child.pid)
        return found

    def kill_node(self, name: str) -> None:
        """Lose node ``name`` as a machine is lost: SIGKILL to its raylet and all it runs."""
        _kill_tree(self._raylet_pids.pop(name))

    def ray(self, *args: str, timeout: float = 1800, **env: str) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this cluster from the repository root."""
        return subprocess.run(
            [RAY, *args], env={**self.env, **env}, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def job_log(self, submission_id: str) -> Path:
        """Where ``ray job submit`` writes the job's log as it follows it."""
        return (self.log_dir or Path(self.temp_dir)) / f"{submission_id}.log"

    def start_job(self, submission_id: str, *entrypoint: str) -> subprocess.Popen:
        """``ray job submit --working-dir . -- <entrypoint>`` in the background (it follows the
        job's log to its end and exits with the job's status). The log goes to
        ``job_log(submission_id)``, a file: nothing reads a pipe while a test waits for a job's
        state, and the CLI would block on a full one."""
        args = ["job", "submit", "--submission-id", submission_id, "--working-dir", ".", "--", *entrypoint]
        with self.job_log(submission_id).open("w") as log:
            return subprocess.Popen(
                [RAY, *args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True
            )

    def wait_job(self, submission_id: str, job: subprocess.Popen, timeout: float = 1800) -> str:
        """Wait for a job started with ``start_job`` to end (``timeout`` is a safety net, many
        times a job's normal time); returns its log."""
        try:
            job.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
            raise AssertionError(
                f"job {submission_id} still running after {timeout:.0f}s:\n"
                + self.job_log(submission_id).read_text(errors="replace")[-8000:]
            ) from None
        return self.job_log(submission_id).read_text(errors="replace")

    def submit(self, submission_id: str, *entrypoint: str, timeout: float = 1800) -> str:
        """Submit and wait; returns the job's log, or raises with it when the job fails."""
        started = time.perf_counter()
        job = self.start_job(submission_id, *entrypoint)
        log = self.wait_job(submission_id, job, timeout)
        took = time.perf_counter() - started
        self.say(f"[cluster] job {submission_id}: exit {job.returncode} in {took:.0f}s")
        if job.returncode != 0:
            raise AssertionError(f"job {submission_id} failed:\n{log[-8000:]}")
        return log

    def list_state(self, kind: str, *filters: str) -> list[dict]:
        """``ray list <kind> --detail`` as records (the State API, through the dashboard)."""
        args = ["list", kind, "--detail", "--format=json", "--limit=10000"]
        for f in filters:
            args += ["--filter", f]
        done = self.ray(*args, timeout=600)  # a safety net: the State API answers in seconds
        if done.returncode != 0:
            raise RuntimeError(f"ray list {kind} failed:\n{done.stderr}")
        return json.loads(done.stdout)

    def stop(self) -> None:
        """Kill every process of the cluster (never ``ray stop``: it stops every Ray on the
        machine, the test session's own included)."""
        gcs_port = self.gcs_address.rsplit(":", 1)[1]
        roots = [  # every process under the temp dirs, and the head's client server (it names the GCS)
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if any(self.temp_dir in arg or arg.endswith(f":{gcs_port}") for arg in (p.info["cmdline"] or []))
        ]
        for pid in roots:
            _kill_tree(pid)
        if self.log_dir is not None:  # Ray's own logs of every node, for a failure's post-mortem
            for node_logs in Path(self.temp_dir).glob("*/session_latest/logs"):
                target = self.log_dir / "ray" / node_logs.parts[-3]
                shutil.copytree(
                    node_logs, target, ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True
                )
        shutil.rmtree(self.temp_dir, ignore_errors=True)
