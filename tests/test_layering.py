"""The layers of docs/architecture.md, checked on the source (every import, lazy ones included) and in fresh
interpreters (what importing a package really loads)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the packages of ours it may import (docs/architecture.md's table)
ALLOWED = {
    "search_space": set(),
    "training": {"search_space"},
    "latency_models": {"search_space"},
    "evaluators": {"search_space", "training", "latency_models"},
    "studies": {"search_space", "training", "latency_models", "evaluators"},
    "explorer": {"search_space", "training", "latency_models", "evaluators", "studies"},
    "pocketdiff": {"search_space", "training", "latency_models", "evaluators", "studies", "explorer"},
}
PACKAGES = tuple(ALLOWED)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """Every module this file imports anywhere (function bodies included), resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module or _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            # `from . import x` / `from pkg import submodule` import the submodule too
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


def _sources() -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            files[_module_name(path)] = path
    return files


def _graph() -> dict[str, set[str]]:
    files = _sources()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for target, _ in _imports(path):
            # the longest known module the name refers to (a name imported from a module is not a module)
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != mod:
                graph[mod].add(target)
    return graph


def test_packages_import_only_downwards():
    files = _sources()
    wrong = []
    for mod, path in files.items():
        pkg = mod.split(".")[0]
        seen = set()
        for target, line in _imports(path):
            top = target.split(".")[0]
            if top in ALLOWED and top != pkg and top not in ALLOWED[pkg] and line not in seen:
                seen.add(line)
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({pkg} may import "
                             f"{', '.join(sorted(ALLOWED[pkg])) or 'nothing of ours'})")
    assert not wrong, "imports that cross a layer upwards or sideways:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_between_modules():
    # A package's __init__ re-exporting its modules is not a circle of its modules: leave it out.
    graph = {m: {t for t in ts if t.split(".")[0] != m and not (t in PACKAGES)}
             for m, ts in _graph().items() if m not in PACKAGES}
    cycles = _cycles(graph)
    assert not cycles, "modules that import each other (lazy imports count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_spec_imports_none_of_its_views():
    graph = _graph()
    assert {"search_space.compact", "search_space.paths", "search_space.overrides"} <= set(graph)
    assert not graph["search_space.spec"] & {"search_space.compact", "search_space.paths", "search_space.overrides"}


def test_the_checks_can_fail(tmp_path):
    """A planted lazy import is seen (function bodies count), a planted circle is found, an upward import of a
    planted module is named."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = {m: set(ts) for m, ts in _graph().items()}
    graph["search_space.spec"].add("search_space.compact")  # what `Spec.compact` importing compact.py did
    assert ["search_space.compact", "search_space.spec"] in _cycles(graph)
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def view(spec):\n    from training.loop import fit\n    return fit\n")
    assert ("training.loop", 2) in _imports(lazy, module="search_space.lazy")


_PROBE = """
import importlib, json, pkgutil, sys
pkg = sys.argv[1]
root = importlib.import_module(pkg)
for info in pkgutil.walk_packages(root.__path__, pkg + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize("pkg", PACKAGES)
def test_importing_a_package_loads_nothing_above_it(pkg):
    out = subprocess.run([sys.executable, "-c", _PROBE, pkg], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1])) & set(PACKAGES)
    above = loaded - ALLOWED[pkg] - {pkg}
    assert not above, f"importing every module of {pkg} also loaded {sorted(above)}"


_LIGHT = """
import json, sys
import search_space, studies.config
from pocketdiff import cli
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_spec_and_study_layers_start_without_torch():
    out = subprocess.run([sys.executable, "-c", _LIGHT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    heavy = loaded & {"torch", "pandas", "scipy", "streamlit", "coremltools"}
    assert not heavy, f"importing search_space, studies.config and the CLI loads {sorted(heavy)}"
