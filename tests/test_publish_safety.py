"""What a reader of published recommendations trusts, and what publishing may delete (issue 16,
items 5-8 and 18), on partitions written by hand with pyarrow, on local disk and on the
loopback S3 server:

- a file whose bytes differ from its manifest checksum is refused by default (5);
- a manifest path outside its partition is refused, and run ids are names, not paths (6);
- dates are strict ``YYYY-MM-DD``, and the latest date is the latest calendar date (7);
- of two runs of one date racing to publish, exactly one does, the other says it lost, and
  cleanup removes only runs that are neither published nor live (8);
- a storage endpoint that dies mid-run gives one line naming the endpoint and the path (18).

Races are states, not timings: both runs have started (and staged) before either commits,
and a barrier holds both at the commit point.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import recs_table, stage_run

from raylrec import artifacts, cli, storage
from raylrec.commands import common
from raylrec.scoring import job
from raylrec.scoring import publish as recs

DATE = "2026-11-24"
ROWS = [(u, r) for u in ("a", "b") for r in (1, 2)]


def _publish(root: str, date: str, run: str, rows=ROWS) -> dict:
    stage_run(root, date, run, rows)
    return recs.publish(root, date, run, len({u for u, _ in rows}), {"model": "m"})


def _rewrite_manifest(root: str, date: str, **changes) -> None:
    uri = storage.join(root, f"date={date}", recs.MANIFEST)
    storage.write_json(uri, {**storage.read_json(uri), **changes})


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("raylrec: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "recs")
    return f"{request.getfixturevalue('s3_bucket')}/recs"


# 5 ----------------------------------------------------------------------------------------


def test_a_file_that_no_longer_matches_its_checksum_is_refused_by_default(tmp_path, capsys):
    root = str(tmp_path / "recs")
    _publish(root, DATE, "run1")
    # The attacker's file: valid Parquet, the same rows, users and size, other items.
    part = tmp_path / "recs" / f"date={DATE}" / "_runs" / "run1" / "part-0.parquet"
    pq.write_table(recs_table("run1", ROWS, item="e"), part)  # items e1, e2: as long as i1, i2
    assert part.stat().st_size == recs.read_manifest(root, DATE)["files"][0]["bytes"]

    with pytest.raises(storage.StorageError, match="part-0.parquet does not match its recorded checksum"):
        recs.read_recommendations(root, DATE)
    assert cli.main(["recs", "read", root, "--json"]) == 1
    assert "corrupted" in _one_line_error(capsys)

    # The documented opt-out skips the hash and serves what is there ...
    assert cli.main(["recs", "read", root, "--json", "--no-verify"]) == 0
    assert '"item_id": "e1"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["recs", "read", "--help"])
    assert "--no-verify" in capsys.readouterr().out
    # ... but not the size: a file of another size is refused with or without it.
    pq.write_table(recs_table("run1", ROWS, item="evil"), part)
    for verify in (True, False):
        with pytest.raises(
            storage.StorageError, match=r"part-0.parquet holds [\d,]+ bytes, its manifest says"
        ):
            recs.read_recommendations(root, DATE, verify=verify)


# 6 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        "../../../outside.parquet",
        "absolute",
        "_runs/run1/../../../../../outside.parquet",
        "_runs/other/part-0.parquet",
    ],
)
def test_a_manifest_path_outside_its_run_is_refused_even_with_matching_checksums(tmp_path, capsys, where):
    root = str(tmp_path / "a" / "b" / "recs")
    _publish(root, DATE, "run1")
    outside = tmp_path / "a" / "outside.parquet"  # <root>/date=D/../../../
    pq.write_table(recs_table("run1", ROWS, item="evil"), outside)
    stage_run(root, DATE, "other", ROWS, item="evil")  # inside the partition, but not the published run
    path = str(outside) if where == "absolute" else where
    digest = storage.file_digests(str(outside.parent), [outside.name])[outside.name]
    _rewrite_manifest(root, DATE, files=[{"path": path, "rows": len(ROWS), **digest}])

    with pytest.raises(storage.StorageError, match="outside run run1"):
        recs.read_recommendations(root, DATE)
    assert cli.main(["recs", "read", root, "--json"]) == 1
    assert "outside run run1" in _one_line_error(capsys)


@pytest.mark.parametrize("linked", ["file", "date directory"])
def test_a_symbolic_link_out_of_the_root_is_refused_with_or_without_verify(tmp_path, linked):
    """Paths are checked as text first; a link planted under the root (a data file, or a whole
    date partition) would still lead out of it: every file read must resolve inside the root."""
    import shutil

    root = tmp_path / "recs"
    _publish(str(root), DATE, "run1")
    partition = root / f"date={DATE}"
    part = partition / "_runs" / "run1" / "part-0.parquet"
    outside = tmp_path / "outside"
    if linked == "file":
        outside.mkdir()
        shutil.move(part, outside / part.name)
        part.symlink_to(outside / part.name)
    else:
        shutil.move(partition, outside)
        partition.symlink_to(outside, target_is_directory=True)
    for verify in (True, False):
        with pytest.raises(storage.StorageError, match="outside .*recs .*refusing it"):
            recs.read_recommendations(str(root), DATE, verify=verify)


def test_a_manifest_that_lists_a_file_twice_is_refused(tmp_path):
    """Served twice, its rows would give each of its users every rank twice."""
    root = str(tmp_path / "recs")
    _publish(root, DATE, "run1")
    files = recs.read_manifest(root, DATE)["files"]
    _rewrite_manifest(root, DATE, files=files * 2, rows=2 * len(ROWS))
    with pytest.raises(storage.StorageError, match="lists _runs/run1/part-0.parquet more than once"):
        recs.read_recommendations(root, DATE, verify=False)


def test_two_files_holding_the_same_user_and_rank_are_refused(tmp_path):
    """Each file is whole and listed once, but a second file repeats the first one's keys."""
    import shutil

    root = str(tmp_path / "recs")
    _publish(root, DATE, "run1")
    run = tmp_path / "recs" / f"date={DATE}" / "_runs" / "run1"
    shutil.copy(run / "part-0.parquet", run / "part-1.parquet")
    files = recs.read_manifest(root, DATE)["files"]
    copy = {**files[0], "path": "_runs/run1/part-1.parquet"}
    _rewrite_manifest(root, DATE, files=[*files, copy], rows=2 * len(ROWS))
    with pytest.raises(storage.StorageError, match=r"4 \(user, rank\) rows repeat"):
        recs.read_recommendations(root, DATE)


def test_a_manifest_too_large_to_be_ours_is_refused_before_it_is_read(tmp_path, monkeypatch):
    root = str(tmp_path / "recs")
    _publish(root, DATE, "run1")
    _rewrite_manifest(root, DATE, padding="x" * 5_000)
    monkeypatch.setattr(artifacts, "MAX_MANIFEST_BYTES", 4_096)
    monkeypatch.setattr(storage, "read_json", lambda uri: pytest.fail(f"read {uri}"))
    with pytest.raises(
        storage.StorageError, match=r"_MANIFEST.json is [\d,]+ bytes, more than a manifest holds"
    ):
        recs.read_recommendations(root, DATE)


@pytest.mark.parametrize("run_id", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "", "a\\b"])
def test_run_ids_are_names_not_paths(tmp_path, run_id):
    with pytest.raises(ValueError, match="run id"):
        recs.run_prefix(str(tmp_path), DATE, run_id)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["score", "--config", "c.yaml", "--run-id", run_id])
    assert not any(tmp_path.iterdir())


# 7 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["20261120", "2026-W48-2", "2026-11-2", "2026-1120", " 2026-11-20", "2026-02-30"]
)
def test_dates_are_strict_iso_in_the_library_and_at_the_cli(bad):
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        recs.check_date(bad)
    parser = cli.build_parser()
    for argv in (
        ["score", "--config", "c.yaml", "--date", bad],
        ["nightly", "--config", "c.yaml", "--date", bad],
        ["recs", "read", "root", "--date", bad],
        ["recs", "eval", "root", "--dataset", "d", "--date", bad],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert recs.check_date("2026-11-20") == "2026-11-20"


def _hand_published(root: str, name: str, run: str) -> None:
    """A partition named ``name`` with a valid manifest, written without the library's checks."""
    base = Path(root) / name
    (base / "_runs" / run).mkdir(parents=True)
    pq.write_table(recs_table(run, ROWS), base / "_runs" / run / "part-0.parquet")
    digest = storage.file_digests(str(base / "_runs" / run), ["part-0.parquet"])["part-0.parquet"]
    manifest = {"run_id": run, "date": name.removeprefix("date="), "rows": 4, "users": 2, "model": "m"}
    manifest["files"] = [{"path": f"_runs/{run}/part-0.parquet", "rows": 4, **digest}]
    (base / recs.MANIFEST).write_text(json.dumps(manifest))


def test_the_latest_date_is_the_latest_calendar_date(tmp_path, capsys):
    root = str(tmp_path / "recs")
    _publish(root, "2026-11-30", "nov")
    _publish(root, "2026-12-01", "dec")
    _hand_published(root, "date=20261120", "compact")
    _hand_published(root, "date=2026-W48-2", "week")

    assert recs.published_dates(root) == ["2026-11-30", "2026-12-01"]
    assert set(recs.read_recommendations(root)["run_id"].to_pylist()) == {"dec"}
    assert cli.main(["recs", "read", root]) == 0
    assert "date=2026-12-01" in capsys.readouterr().out
    assert cli.main(["recs", "dates", root]) == 0
    assert capsys.readouterr().out.split() == ["2026-11-30", "2026-12-01"]


# 8 ----------------------------------------------------------------------------------------


def _gate_commits(monkeypatch, parties: int) -> None:
    """Hold every publisher at the manifest commit until ``parties`` of them are there."""
    barrier = threading.Barrier(parties)
    commit = recs._commit_manifest

    def gated(*args, **kwargs):
        barrier.wait(timeout=120)  # a safety net for a broken test, never reached when it works
        return commit(*args, **kwargs)

    monkeypatch.setattr(recs, "_commit_manifest", gated)


def _run_dirs(root: str, date: str) -> list[str]:
    fs, path = storage.filesystem(storage.join(root, f"date={date}", "_runs"))
    fs.invalidate_cache()
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path)) if fs.exists(path) else []


def test_two_runs_racing_to_publish_a_date_exactly_one_wins(root, monkeypatch):
    runs = {name: recs.start_run(root, DATE, name) for name in ("run-a", "run-b")}
    for name in runs:
        stage_run(root, DATE, name, ROWS)
    _gate_commits(monkeypatch, 2)
    outcomes: dict[str, object] = {}

    def publish(name: str) -> None:
        with runs[name] as run:
            try:
                outcomes[name] = run.publish(2, {"model": "m"})
            except recs.PublishConflict as e:
                outcomes[name] = e

    threads = [threading.Thread(target=publish, args=(name,)) for name in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    winners = [name for name, outcome in outcomes.items() if isinstance(outcome, dict)]
    assert len(winners) == 1, outcomes
    winner, loser = winners[0], ({"run-a", "run-b"} - set(winners)).pop()
    assert f"run {loser} lost" in str(outcomes[loser]) and winner in str(outcomes[loser])
    assert recs.read_manifest(root, DATE)["run_id"] == winner
    assert set(recs.read_recommendations(root, DATE)["run_id"].to_pylist()) == {winner}
    assert _run_dirs(root, DATE) == [winner]  # the loser removed its own files, only those


def test_a_run_started_before_another_published_cannot_replace_it(root):
    early = recs.start_run(root, DATE, "early")
    late = recs.start_run(root, DATE, "late")
    stage_run(root, DATE, "late", ROWS)
    with late:
        late.publish(2, {"model": "m"})
    stage_run(root, DATE, "early", ROWS)
    with early, pytest.raises(recs.PublishConflict, match="run early lost .* run late"):
        early.publish(2, {"model": "m"})
    # A run that starts after the publication replaces it, as a rerun should.
    with recs.start_run(root, DATE, "rerun") as rerun:
        stage_run(root, DATE, "rerun", ROWS)
        rerun.publish(2, {"model": "m"})
    assert recs.read_manifest(root, DATE)["run_id"] == "rerun"
    assert _run_dirs(root, DATE) == ["rerun"]


def test_a_run_id_in_use_is_refused(root):
    with recs.start_run(root, DATE, "taken"), pytest.raises(FileExistsError, match="taken"):
        recs.start_run(root, DATE, "taken")


def _start_and_die(root: str, date: str, run: str) -> None:
    """A run on this host whose process is gone without ending it (as after SIGKILL)."""
    code = (
        "import os; from raylrec.scoring import publish as p; "
        f"p.start_run({root!r}, {date!r}, {run!r}); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ)
    stage_run(root, date, run, ROWS)


def test_cleanup_removes_only_runs_that_are_neither_published_nor_live(root):
    with recs.start_run(root, DATE, "published") as run:
        stage_run(root, DATE, "published", ROWS)
        run.publish(2, {"model": "m"})
    live = recs.start_run(root, DATE, "live")
    stage_run(root, DATE, "live", ROWS)
    with recs.start_run(root, DATE, "ended"):  # failed before publishing, ended cleanly
        stage_run(root, DATE, "ended", ROWS)
    short = recs.start_run(root, DATE, "short-lease", lease_s=30)
    stage_run(root, DATE, "short-lease", ROWS)
    _start_and_die(root, DATE, "killed")
    stage_run(root, DATE, "unmarked", ROWS)  # no marker (older raylrec): judged by its files' age

    assert sorted(recs.remove_unpublished(root, DATE)) == ["ended", "killed"]
    assert _run_dirs(root, DATE) == ["live", "published", "short-lease", "unmarked"]
    # Five minutes on (an injected clock): the 30 s lease has lapsed, the 600 s one has not.
    later = time.time() + 300
    assert recs.remove_unpublished(root, DATE, now=later) == ["short-lease"]
    assert recs.remove_unpublished(root, DATE, lease_s=100, now=later) == ["unmarked"]
    assert _run_dirs(root, DATE) == ["live", "published"]
    assert recs.read_recommendations(root, DATE).num_rows == 4
    live.close()
    short.close()


def test_a_run_whose_lease_lapsed_and_was_removed_cannot_publish(tmp_path):
    """A paused run (no heartbeat for longer than its lease) comes back after another run's
    cleanup removed it: it must not publish a manifest naming files that are gone."""
    root = str(tmp_path / "recs")
    paused = recs.start_run(root, DATE, "paused", lease_s=30)
    stage_run(root, DATE, "paused", ROWS)
    assert recs.remove_unpublished(root, DATE, now=time.time() + 300) == ["paused"]
    with paused, pytest.raises(storage.StorageError, match="were removed: its lease of 30s lapsed"):
        paused.publish(2, {"model": "m"})
    assert recs.read_manifest(root, DATE) is None and _run_dirs(root, DATE) == []


def test_unmarked_staging_younger_than_the_lease_is_kept(tmp_path):
    root = str(tmp_path / "recs")
    stage_run(root, DATE, "someone-elses", ROWS)
    assert recs.remove_unpublished(root, DATE) == []
    assert _run_dirs(root, DATE) == ["someone-elses"]


def _score_config(tmp_path: Path, output: str) -> str:
    config = tmp_path / "score.yaml"
    config.write_text(f"score: {{output: {output}}}\n")
    return str(config)


def _fake_scoring(monkeypatch, gate: threading.Barrier | None = None, before_publish=None) -> None:
    """``raylrec score`` with Ray's part replaced: each run stages the same two users by hand,
    through the job's own lease, cleanup and publish steps."""

    def run_scoring(config, date, run_id=None, say=print, checked=None):
        run_id = recs.check_run_id(run_id or job.new_run_id(date))

        def write(prefix: str) -> tuple[int, dict]:
            stage_run(config.score.output, date, run_id, ROWS)
            if gate is not None:
                gate.wait(timeout=120)  # both runs have started and staged
            if before_publish is not None:
                before_publish()
            return 2, {"model": "m"}

        return job.publish_run(config.score.output, date, run_id, write, say)

    monkeypatch.setattr(job, "run_scoring", run_scoring)
    monkeypatch.setattr(job, "check_scoring", lambda *a, **k: None)  # no bundles to check here
    monkeypatch.setattr(common, "init_ray", lambda *a, **k: None)


def test_two_score_commands_at_once_one_publishes_the_other_exits_non_zero(
    root, tmp_path, monkeypatch, capsys
):
    _fake_scoring(monkeypatch, gate=threading.Barrier(2))
    config = _score_config(tmp_path, root)
    codes: dict[str, int] = {}

    def score(run_id: str) -> None:
        codes[run_id] = cli.main(["score", "--config", config, "--date", DATE, "--run-id", run_id])

    threads = [threading.Thread(target=score, args=(r,)) for r in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(codes.values()) == [0, 1], codes
    winner = next(r for r, code in codes.items() if code == 0)
    captured = capsys.readouterr()
    assert captured.out.count("published 4 rows") == 1
    assert "lost" in captured.err and captured.err.count("\n") == 1
    assert recs.read_manifest(root, DATE)["run_id"] == winner
    assert set(recs.read_recommendations(root, DATE)["run_id"].to_pylist()) == {winner}
    assert _run_dirs(root, DATE) == [winner]


# 18 ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mortal_s3(monkeypatch):
    """An S3 server of this test's own (the session's serves the other tests), which the test
    stops; yields (server, endpoint, output root)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("RAYLREC_S3_CONNECT_TIMEOUT", "1")
    bucket = f"mortal-{uuid.uuid4().hex[:8]}"  # moto's state is per process, shared by servers
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    state = {"running": True}

    def stop() -> None:
        if state["running"]:
            server.stop()
            state["running"] = False

    yield stop, endpoint, f"s3://{bucket}/recs"
    stop()


def test_an_endpoint_that_dies_mid_score_is_one_line_naming_it(mortal_s3, tmp_path, monkeypatch, capsys):
    stop, endpoint, root = mortal_s3
    _fake_scoring(monkeypatch, before_publish=stop)  # staged, then the server goes
    assert cli.main(["score", "--config", _score_config(tmp_path, root), "--date", DATE]) == 1
    err = _one_line_error(capsys)
    assert endpoint in err and f"{root.removeprefix('s3://')}/date={DATE}" in err
    assert "published" not in capsys.readouterr().out


def test_readers_and_publish_on_a_dead_endpoint_fail_in_one_line_naming_it(mortal_s3, capsys):
    stop, endpoint, root = mortal_s3
    _publish(root, DATE, "run1")
    stage_run(root, "2026-11-25", "run2", ROWS)
    stop()
    with pytest.raises(storage.StorageError, match=f"{root}/date=2026-11-25.*{endpoint}"):
        recs.publish(root, "2026-11-25", "run2", 2, {"model": "m"})
    for argv in (["recs", "read", root], ["recs", "dates", root], ["recs", "read", root, "--date", DATE]):
        assert cli.main(argv) == 1
        err = _one_line_error(capsys)
        assert endpoint in err and root in err


def test_a_storage_failure_ray_wrapped_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """What Ray Data's writers raise when the endpoint goes mid-write: botocore's error inside
    a RayTaskError, which is no OSError."""
    from botocore.exceptions import EndpointConnectionError
    from ray.exceptions import RayTaskError

    url = "http://127.0.0.1:9/bucket/recs/date=2026-11-24/_runs/r/x.parquet"
    cause = EndpointConnectionError(endpoint_url=url)
    wrapped = RayTaskError("Write", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()

    def run_scoring(*args, **kwargs):
        raise wrapped

    monkeypatch.setattr(job, "run_scoring", run_scoring)
    monkeypatch.setattr(job, "check_scoring", lambda *a, **k: None)  # no bundles to check here
    monkeypatch.setattr(common, "init_ray", lambda *a, **k: None)
    assert cli.main(["score", "--config", _score_config(tmp_path, str(tmp_path / "recs"))]) == 1
    assert url in _one_line_error(capsys)
