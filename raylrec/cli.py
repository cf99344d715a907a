"""The ``raylrec`` command: its verbs live in ``raylrec.commands`` (one module per family);
this is the entry point (``raylrec``, ``python -m raylrec``, the ``jobs/*.py`` scripts)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from raylrec.commands import build_parser
from raylrec.commands.common import bare_overrides_as_set
from raylrec.errors import report_failure

__all__ = ["build_parser", "main", "parse_args"]

# torch's CPU allocator backs allocations of 2 MB and more with transparent huge pages when this is
# 1: a CF encoder's gradients and optimiser temporaries, fresh each step, then fault once per 2 MB
# instead of once per 4 KB page (bench/optimizer_step.py). Set for this process, the local Ray
# instance it starts, and (forwarded by the pipeline) every Ray Train worker; a user's value wins.
TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed, a bare ``key=value`` read as ``--set key=value``."""
    parser = build_parser()
    return parser.parse_args(bare_overrides_as_set(argv, parser))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault(TORCH_HUGE_PAGES, "1")
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except Exception as e:
        code = report_failure(e)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
