"""Entry point for `ray job submit -- python jobs/tune.py --space tune_spaces/mf.yaml
--config configs/mf_collm_ml1m.yaml [k=v]`."""

import sys

from raylrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
