"""Every ``RAYLREC_*`` environment variable the package reads is in docs/environment.md's table,
and no module writes to the process environment except the entry points (and the one documented
exception). Parse-only: imports nothing of raylrec."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raylrec"
DOC = ROOT / "docs" / "environment.md"

# A name that merely contains RAYLREC_ (the dataset owner file ``_RAYLREC_DATASET``) is not one.
_NAME = re.compile(r"(?<![A-Za-z0-9_])RAYLREC_[A-Z0-9_]+")
# The entry points may set the environment of the processes they start; nothing else may.
ENTRY_POINTS = {"raylrec/cli.py"}
# (module, variable): the exceptions docs/environment.md explains.
ALLOWED_WRITES = {
    ("raylrec/runtime.py", "RAY_API_SERVER_ADDRESS"),
    ("raylrec/train/engines.py", "DS_ACCELERATOR"),
    # a Ray Train worker's entry (_worker_loop): the driver's RAYLREC_* switches and torch's
    # THP_MEM_ALLOC_ENABLE, and only those
    ("raylrec/train/pipeline.py", "?"),
}
_WRITING_METHODS = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _documented() -> set[str]:
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            names |= set(_NAME.findall(first_cell))
    return names


def _used() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return used


def test_every_raylrec_variable_is_in_the_docs_table():
    used = _used()
    assert used, "found no RAYLREC_ variable at all: is the pattern broken?"
    missing = {name: sorted(where) for name, where in used.items() if name not in _documented()}
    assert not missing, f"RAYLREC_* variables missing from {DOC.relative_to(ROOT)}'s table: {missing}"


def test_the_docs_table_lists_no_variable_the_code_dropped():
    stale = sorted(_documented() - set(_used()))
    assert not stale, f"{DOC.relative_to(ROOT)} lists variables no module reads any more: {stale}"


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _environment_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, variable or '?') of each ``os.environ[...] = / del``, mutating ``os.environ``
    method call, and ``os.putenv`` / ``os.unsetenv``."""
    found = []

    def key(node: ast.AST | None) -> str:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "?"

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and _is_environ(target.value):
                found.append((node.lineno, key(target.slice)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _WRITING_METHODS and _is_environ(node.func.value):
                found.append((node.lineno, key(node.args[0] if node.args else None)))
            if node.func.attr in ("putenv", "unsetenv"):
                found.append((node.lineno, key(node.args[0] if node.args else None)))
    return sorted(found)


def test_only_entry_points_write_the_environment():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = str(path.relative_to(ROOT))
        if module in ENTRY_POINTS:
            continue
        for line, variable in _environment_writes(ast.parse(path.read_text())):
            if (module, variable) not in ALLOWED_WRITES:
                wrong.append(f"{module}:{line} writes {variable}")
    assert not wrong, "process environment written outside an entry point:\n" + "\n".join(wrong)


def test_the_write_finder_sees_the_usual_forms():
    tree = ast.parse(
        "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '1')\ndel os.environ['C']\n"
        "os.putenv('D', '1')\nos.environ.get('E')\n"
    )
    assert [v for _, v in _environment_writes(tree)] == ["A", "B", "C", "D"]
