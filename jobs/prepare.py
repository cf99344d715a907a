"""Entry point for `ray job submit -- python jobs/prepare.py --config configs/ml100k.yaml [k=v ...]`.

Joins the cluster named by RAY_ADDRESS (set by `ray job submit`), or starts a local Ray instance.
"""

import sys

from raylrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", *sys.argv[1:]]))
