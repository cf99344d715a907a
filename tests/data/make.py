"""Regenerate the prepared datasets checked into tests/data/ (``CHECKED_IN_DATASETS`` in
tests/helpers.py) with the current ``raylrec data prepare`` code, on a local Ray instance:

    .venv/bin/python tests/data/make.py

``tests/test_plugins.py::test_the_checked_in_dataset_is_what_prepare_makes`` fails when a change to
preparation makes them stale; run this then and commit the result.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from helpers import CHECKED_IN_DATASETS, DATA_DIR, data_config  # noqa: E402

from raylrec.config import RayConfig  # noqa: E402
from raylrec.data.prepare import prepare  # noqa: E402
from raylrec.runtime import init_ray  # noqa: E402


def main() -> None:
    init_ray(RayConfig(num_cpus=2))
    for name, spec in CHECKED_IN_DATASETS.items():
        out = DATA_DIR / name
        shutil.rmtree(out, ignore_errors=True)
        spec = dict(spec)
        prepare(data_config(spec.pop("source"), str(out), **spec))
        print(f"{out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()):,} bytes")


if __name__ == "__main__":
    main()
