"""Where the test suite's time goes: seconds per file and the slowest tests, from a JUnit XML
report, so docs/testing.md's table is re-measured with one command:

    python -m pytest -q --durations=0 --junitxml=/tmp/suite.xml   # alone on the machine
    python bench/suite_times.py /tmp/suite.xml                    # per file, slowest tests
    python bench/suite_times.py before.xml after.xml              # two runs side by side

A test's seconds are its call plus its share of set-up (pytest's JUnit ``time``); a module
fixture's set-up counts toward the first test that uses it.
"""

from __future__ import annotations

import argparse
import collections
import xml.etree.ElementTree as ET

BUDGET_S = 20 * 60  # the whole suite, alone on the 2-core CI machine (docs/testing.md)


def times(path: str) -> tuple[dict[str, float], dict[str, float]]:
    """(seconds per file, seconds per test) of one JUnit report."""
    per_file: dict[str, float] = collections.Counter()
    per_test: dict[str, float] = {}
    for case in ET.parse(path).iter("testcase"):
        module = case.get("classname", "?").replace(".", "/") + ".py"
        seconds = float(case.get("time", 0))
        per_file[module] += seconds
        per_test[f"{module}::{case.get('name')}"] = seconds
    return dict(per_file), per_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="one or two JUnit XML files (before, after)")
    parser.add_argument("--files", type=int, default=15, help="files to list")
    parser.add_argument("--tests", type=int, default=15, help="slowest tests to list")
    args = parser.parse_args()
    runs = [times(path) for path in args.reports[:2]]
    last_files, last_tests = runs[-1]
    heads = " | ".join(f"run {i + 1} s" for i in range(len(runs)))
    print(f"| file | {heads} |\n|---" + "|---:" * len(runs) + "|")
    for name in sorted(last_files, key=last_files.get, reverse=True)[: args.files]:
        print(f"| `{name}` | " + " | ".join(f"{files.get(name, 0):.0f}" for files, _ in runs) + " |")
    print("| **all** | " + " | ".join(f"**{sum(files.values()):.0f}**" for files, _ in runs) + " |")
    print(f"\nslowest tests of run {len(runs)}:")
    for name in sorted(last_tests, key=last_tests.get, reverse=True)[: args.tests]:
        print(f"  {last_tests[name]:7.1f} s  {name}")
    total = sum(last_files.values())
    print(f"\ntotal {total / 60:.1f} min against a budget of {BUDGET_S / 60:.0f} min alone")


if __name__ == "__main__":
    main()
