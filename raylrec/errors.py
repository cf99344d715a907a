"""How a failed command is told to its user: one line naming the cause, and an exit code
(2: a configuration error, 1: bad input or storage), never a traceback for what the user can
fix. A bug's traceback is left as it is."""

from __future__ import annotations

import sys

from raylrec import storage
from raylrec.config_types import ConfigError

__all__ = ["report_failure", "root_cause"]


def root_cause(error: BaseException) -> str:
    """Ray wraps task errors; the original message names the file or field."""
    cause = getattr(error, "cause", None)
    return str(cause) if cause is not None else str(error)


def report_failure(error: Exception) -> int | None:
    """Print ``error`` as one line on stderr and return the exit code; None for an error that
    is not the user's to fix (the caller re-raises it)."""
    if isinstance(error, ConfigError):
        print(f"raylrec: {error}", file=sys.stderr)
        return 2
    if isinstance(error, (OSError, ValueError, RuntimeError)):
        # Bad input (SourceError, StorageError, OutputExistsError, ...): one clear line, no trace.
        print(f"raylrec: error: {root_cause(error)}", file=sys.stderr)
        return 1
    # botocore and aiohttp errors are no OSError, nor is Ray's wrapper of them.
    failure = storage.storage_failure(error)
    if failure is None:
        return None
    print(f"raylrec: error: storage failed: {' '.join(str(failure).split())}", file=sys.stderr)
    return 1
