"""Imports point down and form no cycles.

The graph is built by parsing every module of ``raylrec`` with ``ast`` (nothing is imported, so
no torch): each ``import raylrec.x`` / ``from raylrec.x import y`` anywhere in a module — at the
top, inside a function, under ``if TYPE_CHECKING:`` — is an edge to the module it names
(``raylrec.x.y`` when that is a module, else ``raylrec.x``). A package's ``__init__`` that a
submodule import runs implicitly is not an edge.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raylrec"

# Layer of each part of ``raylrec``, low to high; the longest dotted prefix of a module decides
# (``cf.train`` before ``cf``). A module may import its own layer and lower ones, never a higher
# one. A top-level part missing here fails the test: give it a layer.
LAYERS: dict[str, int] = {
    # 0 - foundations: the config schemas (each model's own config class is torch-free and
    #     composed by raylrec.config), storage, metric arithmetic, small shared helpers
    "config": 0,
    "config_docs": 0,
    "config_types": 0,
    "metric_names": 0,
    "registry": 0,
    "cf.config": 0,
    "methods.config": 0,
    "data.config": 0,  # the sources' and split protocols' registries and shared options
    "scoring.config": 0,  # the score section, composed by raylrec.config
    "storage": 0,
    "bundle_dir": 0,
    "artifacts": 0,  # the artefact-directory protocol every writer and reader of a directory uses
    "wheels": 0,
    "runtime": 0,
    "errors": 0,  # how a failed command is told to its user
    "timeline": 0,  # RAYLREC_TIMELINE start-up marks: stdlib only, imported by every layer
    "eval": 0,
    # 1 - data preparation and reading
    "data": 1,
    # 2 - models and their inputs: CF encoders, the LLM backbone and prompts, adapters
    "cf": 2,
    "llm": 2,
    "adapters": 2,
    # 3 - the training machinery that runs any task, locally or on Ray Train
    "train": 3,
    # 4 - the tasks it runs: the CF encoders' and the LLM methods'
    "cf.task": 4,
    "cf.train": 4,
    "cf.streaming": 4,  # the Ray path of cf.train: shards, item sets, its validation inputs
    "cf.distributed_eval": 4,
    "methods": 4,
    # 5 - batch jobs and hyperparameter search: scoring, RLMRec's LLM profiles
    "scoring": 5,
    "profiles": 5,
    "tune": 5,
    # 6 - entry points
    "nightly": 6,
    "demo": 6,
    "cli": 6,
    "commands": 6,  # one module per verb family of the CLI
    "__main__": 6,
}

# Imports known to break the rules, each with the reason it is still there. Only shrink this:
# a listed import that is gone fails the test too, so the list cannot go stale.
PENDING: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, names: list[str]) -> set[str]:
    """Modules a ``from target import names`` (or ``import target``) loads explicitly."""
    modules = _modules()
    found = set()
    for name in names:
        if f"{target}.{name}" in modules:
            found.add(f"{target}.{name}")
        elif target in modules:
            found.add(target)
    if not names and target in modules:
        found.add(target)
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "raylrec":
                        edges |= _resolve(alias.name, [])
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base if is_package else base[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] == "raylrec":
                    edges |= _resolve(target, [a.name for a in node.names])
        edges.discard(module)
        graph[module] = edges
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return 0  # raylrec/__init__.py


def _checked_graph() -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in PENDING} for m, targets in import_graph().items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(_one_cycle(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, for the error message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return sorted(component)


def test_graph_sees_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "raylrec.eval.ranking" in graph["raylrec.eval"]  # from raylrec.eval.ranking import ...
    assert "raylrec.train.hooks" in graph["raylrec.tune.trial"]  # inside a function
    assert "raylrec.train.hooks" in graph["raylrec.train.reporting"]  # under TYPE_CHECKING
    assert "raylrec.storage" in graph["raylrec.data.logs"]  # from raylrec import storage
    assert len(graph) > 50


def test_every_part_has_a_layer():
    parts = {m.split(".")[1] for m in _modules() if "." in m}
    missing = sorted(parts - set(LAYERS))
    assert not missing, f"raylrec parts without a layer in tests/test_imports.py LAYERS: {missing}"


def test_no_import_cycles():
    cycles = _cycles(_checked_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_down():
    wrong = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in sorted(_checked_graph().items())
        for target in sorted(targets)
        if _layer(module) < _layer(target)
    ]
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_pending_exceptions_still_exist():
    graph = import_graph()
    gone = [f"{m} -> {t}" for m, t in PENDING if t not in graph.get(m, set())]
    assert not gone, "fixed, now remove from PENDING in tests/test_imports.py: " + ", ".join(gone)


def test_cycle_finder_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
