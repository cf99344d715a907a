"""The docs build with mkdocs in strict mode: a broken link, a missing page or a page left out of
the navigation fails here (the `docs` extra installs mkdocs; `make install` includes it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_build_strict(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "No module named mkdocs" not in run.stderr, "install the docs extra: pip install -e '.[docs]'"
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_a_broken_link_fails_the_build(tmp_path):
    # The check above proves something only if strict mode really refuses a bad link.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\n[gone](missing.md)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((REPO / "mkdocs.yml").read_text().split("nav:")[0] + "nav:\n  - Home: index.md\n")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0 and "missing.md" in run.stderr
