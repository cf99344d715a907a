"""Entry point for `ray job submit -- python jobs/score.py --config configs/... --date YYYY-MM-DD [k=v]`."""

import sys

from raylrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
