"""Start-up timeline: wall-clock marks of what a training command does before its first step.

Off unless ``RAYLREC_TIMELINE`` names a local file. Each ``mark`` then appends one JSON line
(``event``, ``time``, ``pid``, ``role``) to it, from the driver and from every Ray Train worker
on the same machine (the pipeline forwards ``RAYLREC_*`` variables to the workers), so one file
holds a run's whole start-up: ``bench/startup.py`` reads it and prints the breakdown.

A line is one ``write`` on a file opened for appending, so the lines of concurrent processes do
not interleave (POSIX append; a line is far below the pipe/page size).
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["TIMELINE", "mark", "mark_once"]

TIMELINE = "RAYLREC_TIMELINE"

_marked: set[str] = set()


def mark(event: str, role: str = "driver", at: float | None = None) -> None:
    """Record ``event`` now (or at ``at``, seconds since the epoch) when the timeline is on."""
    path = os.environ.get(TIMELINE)
    if not path:
        return
    line = json.dumps(
        {"event": event, "time": time.time() if at is None else at, "pid": os.getpid(), "role": role}
    )
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def mark_once(event: str, role: str = "driver") -> None:
    """``mark`` the first time this process reaches ``event`` (a first training step, say)."""
    if event in _marked or not os.environ.get(TIMELINE):
        return
    _marked.add(event)
    mark(event, role)
