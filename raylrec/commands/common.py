"""What every command module shares: ``--config`` with its overrides (``--set key=value``, and a
bare ``key=value`` as its alias), progress lines, starting Ray, and argument types."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from raylrec.config import RayConfig

__all__ = [
    "NO_VERIFY_HELP",
    "add_config",
    "bare_overrides_as_set",
    "date",
    "init_ray",
    "overrides",
    "progress",
    "run_id",
    "today",
]

NO_VERIFY_HELP = (
    "skip the sha256 check of every file against the manifest (faster; a changed or replaced "
    "file is then served as it is). Paths outside the published run are refused either way"
)
# A dotted config key and its value: train.epochs=5, data.source.paths=["a", "b"]
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def progress() -> Callable[[str], None]:
    """A ``say`` that prints ``[raylrec   12.3s] message`` lines, seconds since it was made."""
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[raylrec {time.perf_counter() - start:7.1f}s] {message}", flush=True)

    return say


def init_ray(args: argparse.Namespace, ray_config: RayConfig) -> None:
    """Start (or join) Ray for a command, after its config and inputs were checked."""
    from raylrec.runtime import init_ray as start

    # Without -v, Ray Data's own log lines are dropped: a failing Ray Data task logs its whole
    # stack, and the error that reaches us names the file or field already.
    start(ray_config, quiet_ray_data=not args.verbose)


def add_config(
    parser: argparse.ArgumentParser, help: str = "YAML config (see configs/)", required: bool = True
) -> None:
    """``--config`` and the repeatable ``--set key=value`` override (a bare ``key=value`` on the
    command line is the same: ``bare_overrides_as_set``)."""
    parser.add_argument("--config", "-c", required=required, help=help)
    add_set(parser)


def add_set(parser: argparse.ArgumentParser, example: str = "train.epochs=5") -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a dotted override (repeatable; a bare KEY=VALUE is the same), e.g. {example}",
    )


def overrides(args: argparse.Namespace) -> list[str]:
    return list(getattr(args, "overrides", []) or [])


def bare_overrides_as_set(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``key=value`` tokens that are not an option's value become ``--set key=value``, so every
    command takes overrides the same way and a command's sub-verbs (``tune report``) never
    meet a free-form positional."""
    takes_value = _options_taking_values(parser)
    out: list[str] = []
    for i, token in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if _OVERRIDE.match(token) and previous not in takes_value and previous != "--":
            out += ["--set", token]
        else:
            out.append(token)
    return out


def _options_taking_values(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:  # argparse keeps its actions here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options_taking_values(sub)
        elif action.option_strings and action.nargs != 0:
            found |= set(action.option_strings)
    return found


def today() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).date().isoformat()


def date(value: str) -> str:
    """An argparse type: a strict YYYY-MM-DD date (not 20261120, not a week date)."""
    from raylrec.scoring.publish import check_date

    try:
        return check_date(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_id(value: str) -> str:
    """An argparse type: a run id that is one name, never a path."""
    from raylrec.scoring.publish import check_run_id

    try:
        return check_run_id(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
