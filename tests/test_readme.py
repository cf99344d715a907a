"""The README is a landing page that cannot drift: at most 12 KB, every link resolving (to a file,
and to a heading where it names one), every registered method and encoder with a docs page that
the navigation and the README's table link, and no page for a model that is not registered.
(The docs themselves are checked by ``mkdocs build --strict``: tests/test_docs_build.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from raylrec.cf.config import ENCODERS
from raylrec.methods.config import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_BYTES = 12 * 1024

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _links(text: str) -> list[str]:
    return _LINK.findall(_FENCE.sub("", text))


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs anchors are): markup and punctuation dropped,
    lower case, runs of spaces and hyphens made one hyphen."""
    text = re.sub(r"[`*_]", "", heading)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _nav_pages() -> set[str]:
    def walk(node) -> set[str]:
        if isinstance(node, str):
            return {node}
        if isinstance(node, list):
            return set().union(*(walk(n) for n in node))
        if isinstance(node, dict):
            return set().union(*(walk(v) for v in node.values()))
        return set()

    return walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_the_readme_is_a_landing_page():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size:,} bytes; move detail into docs/ (limit {MAX_README_BYTES:,})"
    )


def test_every_readme_link_resolves():
    broken = []
    for link in _links(README.read_text()):
        if re.match(r"[a-z]+://", link):
            continue  # external: not checked offline
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        if not target.exists():
            broken.append(f"{link}: no file {path}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {path}")
    assert not broken, "README.md links that do not resolve:\n  " + "\n  ".join(broken)


def test_the_link_checker_catches_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## The `cf.model: mf` section\n")
    assert _anchors(page) == {"title", "the-cfmodel-mf-section"}
    assert _links("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n") == ["x.md", "y.md"]


@pytest.mark.parametrize(
    ("registry", "folder"), [(METHODS, "methods"), (ENCODERS, "encoders")], ids=["methods", "encoders"]
)
def test_every_registered_model_has_a_page_in_the_nav_and_the_readme(registry, folder):
    readme_links = set(_links(README.read_text()))
    nav = _nav_pages()
    for name in registry.names():
        page = f"{folder}/{name}.md"
        assert (DOCS / page).exists(), f"{name} is registered but docs/{page} does not exist"
        assert page in nav, f"docs/{page} is not in mkdocs.yml's nav"
        assert f"docs/{page}" in readme_links, f"README.md's model table does not link docs/{page}"
    pages = {p.stem for p in (DOCS / folder).glob("*.md")}
    unregistered = pages - set(registry.names())
    assert not unregistered, (
        f"docs/{folder}/ has pages for models that are not registered: {sorted(unregistered)}"
    )
