"""search_space has no import circles, not even lazy ones (docs/architecture.md): the imports of every module of
the package, read with `ast` (function bodies included), form a graph without a cycle, and none points above
the package."""
import ast
from pathlib import Path

import search_space

PACKAGE = Path(search_space.__file__).parent
NAME = "search_space"
# The layers above search_space (docs/architecture.md): nothing in it may import them.
ABOVE = ("training", "latency_models", "evaluators", "studies", "explorer", "pocketdiff", "app")


def _module_name(path: Path) -> str:
    return NAME if path.name == "__init__.py" else f"{NAME}.{path.stem}"


def _imports_of_source(text: str, where: str = "<source>") -> set[str]:
    """Every module (this package's submodules, by full name, and others, by top-level name) that the code
    imports anywhere, function bodies included."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    found: set[str] = set()
    for node in ast.walk(ast.parse(text, where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name if alias.name.startswith(NAME + ".") else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith(NAME):
                found.add(node.module.split(".")[0])
                continue
            assert node.level <= 1, f"{where}: `from {'.' * node.level}{node.module}` leaves the package"
            module = node.module if node.level == 0 else f"{NAME}.{node.module}" if node.module else NAME
            if module == NAME:  # `from . import paths` names a submodule; `from . import PRESETS` the package
                found |= {f"{NAME}.{a.name}" if a.name in modules else NAME for a in node.names}
            else:
                found.add(module)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports_of_source(p.read_text(), p.name) for p in sorted(PACKAGE.glob("*.py"))}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the package's modules, as a list of names, or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, trail + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_search_space_modules_import_each_other_without_a_cycle():
    graph = _graph()
    assert {"search_space.spec", "search_space.compact", "search_space.overrides"} <= set(graph)
    assert "search_space.compact" not in graph["search_space.spec"]
    assert "search_space.paths" not in graph["search_space.spec"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle in search_space: " + " -> ".join(cycle)


def test_search_space_imports_nothing_above_it():
    upward = {m: sorted(i & set(ABOVE)) for m, i in _graph().items() if i & set(ABOVE)}
    assert not upward, f"search_space imports a layer above it: {upward}"


def test_the_cycle_finder_finds_a_lazy_cycle():
    """The check can fail: spec.py importing compact.py inside a function (compact.py imports spec.py) is a
    cycle, and so is one through a module written in the lazy form."""
    graph = _graph()
    graph["search_space.spec"] = graph["search_space.spec"] | {"search_space.compact"}
    assert set(_cycle(graph)) == {"search_space.spec", "search_space.compact"}
    lazy = "def compact_view(spec):\n    from .compact import encode\n    return encode(spec)\n"
    assert _imports_of_source(lazy) == {"search_space.compact"}
