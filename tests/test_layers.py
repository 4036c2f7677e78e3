"""The import graph of ``cascade_booth/`` and ``stages/``: no cycles, and every import points down.

Layers, lowest first; a module may import modules of its own layer or a lower one, never a higher one:

1. **library**: every module of ``cascade_booth`` not named below (config, models, text, trainer,
   checkpoints, runner, evaluation, world, ...). It knows nothing of stages or commands.
2. **stages**: ``stages/`` (one module per stage of the cascade), built on the library.
3. **drivers**: ``cascade_booth.sweep`` (train, render and evaluate a grid of points); they call stages.
4. **cli**: the commands and their helpers: ``cascade_booth.cli``, ``commands``, ``clikit``, ``demo``,
   and the ``cli`` module of ``evaluation``, ``sweep`` and ``world``.

Every import counts: module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-only
import is still a dependency of the design, and the first step of a circle). ``from pkg import name``
counts as an import of ``pkg.name`` when that is a module, else of ``pkg``. A package's ``__init__``
is a module of its own. Within this graph there must be no cycle at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cascade_booth", "stages")
CLI = {"cascade_booth.cli", "cascade_booth.commands", "cascade_booth.clikit", "cascade_booth.demo",
       "cascade_booth.evaluation.cli", "cascade_booth.sweep.cli", "cascade_booth.world.cli"}
LAYERS = ("library", "stages", "drivers", "cli")


def layer(module: str) -> str:
    if module in CLI:
        return "cli"
    if module == "stages" or module.startswith("stages."):
        return "stages"
    if module == "cascade_booth.sweep" or module.startswith("cascade_booth.sweep."):
        return "drivers"
    return "library"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    targets = []
    for name in names:
        while name and name not in known:  # an attribute import resolves to the module that defines it
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.append(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = {target for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                         for target in _targets(module, path, node, known)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "cascade_booth.runner" in graph and "stages.sr" in graph
    assert "cascade_booth.config" in graph["stages.sr"]
    assert "stages" in graph["cascade_booth.sweep.train"]  # a function-level import is seen


def test_the_cycle_finder_finds_a_planted_cycle():
    # the control: a circle through a type-only or function-level import must be caught
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    lines = [" <-> ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c)
             for c in found]
    assert not found, "import cycles:\n" + "\n".join(lines)


def test_every_import_points_down():
    graph = import_graph()
    upward = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if LAYERS.index(layer(target)) > LAYERS.index(layer(module))]
    assert not upward, "imports against the layers (see this module's docstring):\n" + "\n".join(upward)


def test_tools_import_the_installed_package():
    offenders = [path.name for path in sorted((ROOT / "tools").glob("*.py"))
                 if "sys.path.insert" in path.read_text(encoding="utf-8")]
    assert not offenders, f"tools that put the source tree on sys.path: {offenders}"
