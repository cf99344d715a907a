"""Time to first training step of the two Ray Train commands, broken into its parts.

Runs, as a user would, ``raylrec train-cf`` (MF-BPR, 2 Ray Train workers, ML-100K) and
``raylrec train`` (TALLRec, the tiny random Llama, 2 workers, DeepSpeed ZeRO-2, ML-100K), each
in a fresh process with ``RAYLREC_TIMELINE`` set: the driver and both workers append a mark at
each phase (``raylrec/timeline.py``), and this script turns the marks into one row per phase:

    python bench/startup.py                              # both commands, once each
    python bench/startup.py --repeats 2 --json out.json  # keep the numbers
    python bench/startup.py --compare before.json after.json   # one table, both runs, ratios

Phases, in seconds from the command's start (the ``Popen`` of the process):
- ``imports``: the CLI's imports and config checks, until Ray starts;
- ``ray start``: a new local Ray instance (``init_ray``);
- ``datasets``: the driver's Ray Data work before the workers start (CF: materialise the equal
  shards and build the item sets; LLM: tokenise the training prompts);
- ``worker group``: from ``trainer.fit()`` to the last worker process's creation (Ray Train's
  controller, placement group, worker processes spawned);
- ``worker setup``: from the worker's creation to raylrec's loop function (the worker's imports,
  Ray Train's set-up, ``torch.distributed`` process group);
- ``fitting``: raylrec's loop until its fitting is built (definition, data shard, model, engine;
  DeepSpeed's ``initialize`` included, also reported apart);
- ``first step``: until the slowest rank's first optimiser step is done.

Worker phases are the slowest rank's. Run it on an otherwise idle machine; ``ray start`` and the
workers' imports are CPU-bound and share the cores with anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAYLREC = str(Path(sys.executable).with_name("raylrec"))

PHASES = [
    ("imports", None, "ray start"),
    ("ray start", "ray start", "ray ready"),
    ("datasets", "ray datasets start", "ray datasets ready"),
    ("worker group", "trainer fit", "worker process start"),
    ("worker setup", "worker process start", "worker loop start"),
    ("fitting", "worker loop start", "worker fitting built"),
    ("  of which DeepSpeed initialize", "deepspeed initialize", "deepspeed engine ready"),
    ("first step", "worker fitting built", "first step"),
]


def _prepare(work: Path) -> str:
    out = work / "ml100k"
    from raylrec.data.output import META_FILE

    if not (out / META_FILE).exists():
        subprocess.run(
            [
                RAYLREC,
                "data",
                "prepare",
                "--config",
                str(REPO / "configs" / "ml100k.yaml"),
                f"data.output={out}",
            ],
            check=True,
        )
    return str(out)


def _commands(dataset: str, run: Path) -> dict[str, list[str]]:
    common = [
        f"dataset={dataset}",
        f"train.storage_path={run / 'runs'}",
        "train.epochs=1",
        "train.num_workers=2",
    ]
    return {
        "train-cf (MF-BPR, 2 workers)": [
            RAYLREC, "train-cf", "--config", str(REPO / "configs" / "mf_bpr_ml100k.yaml"),
            *common, f"output={run / 'mf'}",
        ],
        "train (TALLRec tiny, ZeRO-2, 2 workers)": [
            RAYLREC, "train", "--config", str(REPO / "configs" / "tallrec_collm_ml1m.yaml"),
            *common, "backbone.name=tiny-random-llama", "prompt.max_tokens=96", "prompt.history_items=3",
            "sample.max_train=128", "sample.max_valid=48", "train.batch_size=8", f"output={run / 'tallrec'}",
        ],
    }  # fmt: skip


def _marks(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def _phase_seconds(marks: list[dict], started: float) -> dict[str, float]:
    """Each phase's seconds; a worker mark counts at its slowest rank (``max`` over pids)."""
    at: dict[str, float] = {}
    for m in marks:
        at[m["event"]] = max(at.get(m["event"], m["time"]), m["time"])
    rows = {}
    for name, begin, end in PHASES:
        if end in at and (begin is None or begin in at):
            rows[name] = at[end] - (started if begin is None else at[begin])
    if "first step" in at:
        rows["to first step"] = at["first step"] - started
    return rows


def measure(name: str, command: list[str], work: Path) -> dict[str, float]:
    timeline = work / f"timeline-{time.time_ns()}.jsonl"
    env = {**os.environ, "RAYLREC_TIMELINE": str(timeline)}
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode:
        sys.exit(f"{name} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    row = _phase_seconds(_marks(timeline), started)
    row["whole command"] = wall
    return row


def _table(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """``columns``: label -> command -> phase -> seconds; with two labels, a ratio column."""
    labels = list(columns)
    commands = list(next(iter(columns.values())))
    lines = []
    for command in commands:
        header = f"| {command} | " + " | ".join(f"{label} s" for label in labels)
        header += " | after / before |" if len(labels) == 2 else " |"
        lines += ["", header, "|---" + "|---:" * (len(labels) + (len(labels) == 2)) + "|"]
        names = [n for n, _, _ in PHASES] + ["to first step", "whole command"]
        for phase in names:
            values = [columns[label].get(command, {}).get(phase) for label in labels]
            if all(v is None for v in values):
                continue
            cells = " | ".join("-" if v is None else f"{v:.1f}" for v in values)
            ratio = ""
            if len(labels) == 2 and None not in values and values[0] > 0:
                ratio = f" | {values[1] / values[0]:.2f}x"
            elif len(labels) == 2:
                ratio = " | -"
            lines.append(f"| {phase} | {cells}{ratio} |")
    return "\n".join(lines)


def _median_rows(runs: list[dict[str, float]]) -> dict[str, float]:
    import statistics

    keys = {k for run in runs for k in run}
    return {k: statistics.median(run[k] for run in runs if k in run) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command (the median is shown)")
    parser.add_argument("--only", choices=["cf", "llm"], help="one of the two commands")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "raylrec-startup"))
    parser.add_argument("--json", help="write the measured phases here")
    parser.add_argument("--label", default="this run", help="the column's name in --json and the table")
    parser.add_argument(
        "--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print two --json files side by side"
    )
    args = parser.parse_args()
    if args.compare:
        columns = {}
        for path in args.compare:
            saved = json.loads(Path(path).read_text())
            columns[saved["label"]] = saved["commands"]
        print(_table(columns))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = _prepare(work)
    results: dict[str, dict[str, float]] = {}
    for name, command in _commands(dataset, work / f"run-{time.time_ns()}").items():
        if args.only and ("train-cf" in name) != (args.only == "cf"):
            continue
        runs = []
        for repeat in range(args.repeats):
            command = [c.replace("run-", f"run{repeat}-") for c in command]
            print(f"... {name}, run {repeat + 1} of {args.repeats}", flush=True)
            runs.append(measure(name, command, work))
            print(f"    to first step {runs[-1].get('to first step', float('nan')):.1f} s", flush=True)
        results[name] = _median_rows(runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"label": args.label, "commands": results}, indent=1))
    print(_table({args.label: results}))


if __name__ == "__main__":
    main()
