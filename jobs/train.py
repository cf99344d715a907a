"""Entry point for `ray job submit -- python jobs/train.py --config configs/reclora_collm_ml1m.yaml [k=v]`."""

import sys

from raylrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
