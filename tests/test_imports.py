"""``import parsl_rcylon`` is light: bare MPI jobs import the engine without Parsl or Radical Pilot."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

import parsl_rcylon


def _loaded_after(statement: str) -> set:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", [
    "import parsl_rcylon",
    "import parsl_rcylon.engine",
    "import parsl_rcylon.context",
    "import parsl_rcylon.table",
    "from parsl_rcylon.bench import stages",
])
def test_light_imports_pull_in_neither_parsl_nor_radical_pilot(statement):
    loaded = _loaded_after(statement)
    heavy = sorted(m for m in loaded if m.split(".")[0] in {"parsl", "radical", "zmq"})
    assert not heavy, f"{statement!r} imported {heavy[:8]}"


def test_every_public_name_resolves_and_is_listed():
    for name in parsl_rcylon.__all__:
        assert getattr(parsl_rcylon, name) is not None
        assert name in dir(parsl_rcylon)
    from parsl_rcylon.executor import RadicalCylonExecutor

    assert parsl_rcylon.RadicalCylonExecutor is RadicalCylonExecutor


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        parsl_rcylon.Nope  # noqa: B018


def test_all_lists_exactly_the_lazy_exports():
    assert sorted(parsl_rcylon.__all__) == sorted(parsl_rcylon._EXPORTS)


def test_tables_memoize_by_content_whichever_module_loads_first():
    code = """
from parsl_rcylon.table import TableRef          # before Parsl
from parsl.dataflow.memoization import id_for_memo
import parsl_rcylon.app                           # registers the rule now that Parsl is here
print(TableRef in id_for_memo.registry)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]


def test_the_package_imports_no_plotting_library():
    """Figures belong to benchmarks/ and workflows/: the installed package never imports matplotlib."""
    package = Path(parsl_rcylon.__file__).parent
    pattern = re.compile(r"^\s*(import|from)\s+matplotlib\b", re.MULTILINE)
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, offenders


# -- the module graph: no circle, no import from a lower layer to a higher one ----------------------

PACKAGE = Path(parsl_rcylon.__file__).parent


def _module_imports() -> Dict[str, Set[str]]:
    """Every module of the package and the package modules it imports anywhere (functions too)."""
    graph: Dict[str, Set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        here = name if is_package else name.rsplit(".", 1)[0]
        deps: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here.split(".")[:len(here.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                deps.add(module)
                deps.update(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = deps
    # Only modules of the package, and not a module's own parent packages (``from . import x``).
    return {m: {d for d in deps if d in graph and d != m and not m.startswith(d + ".")} for m, deps in graph.items()}


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    circles: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_module_graph_has_no_circle():
    assert _circles(_module_imports()) == []


#: (modules under this prefix, may not import modules under these prefixes)
LAYER_RULES = [
    ("parsl_rcylon.runtime", ("parsl_rcylon.executor", "parsl_rcylon.executor_options", "parsl_rcylon.serving",
                              "parsl_rcylon.cli", "parsl_rcylon.app", "parsl_rcylon.progress")),
    ("parsl_rcylon.runtime.wire", ("parsl_rcylon.runtime.client", "parsl_rcylon.runtime.agent",
                                   "parsl_rcylon.runtime.attach")),
    ("parsl_rcylon.runtime.agent", ("parsl_rcylon.runtime.client", "parsl_rcylon.runtime.attach")),
    ("parsl_rcylon.runtime.client", ("parsl_rcylon.runtime.agent.rank", "parsl_rcylon.runtime.attach")),
    ("parsl_rcylon.options", ("parsl_rcylon.tableio", "parsl_rcylon.table", "parsl_rcylon.engine")),
    ("parsl_rcylon.resources", ("parsl_rcylon.runtime", "parsl_rcylon.executor")),
    ("parsl_rcylon.engine", ("parsl_rcylon.runtime", "parsl_rcylon.executor", "parsl_rcylon.table")),
    ("parsl_rcylon.tableio", ("parsl_rcylon.runtime", "parsl_rcylon.executor", "parsl_rcylon.table")),
]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_module_imports_a_higher_layer():
    graph = _module_imports()
    broken = sorted((m, d) for m, deps in graph.items() for d in deps for lower, higher in LAYER_RULES
                    if _under(m, lower) and any(_under(d, h) for h in higher))
    assert broken == []


def test_no_module_of_the_package_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
    assert len((PACKAGE / "executor.py").read_text().splitlines()) <= 350, "executor.py is a thin Parsl adapter"


def test_the_design_module_table_names_every_module():
    """docs/design.md's module table is how a reader finds a behaviour: a new module goes in it."""
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    def named(parts) -> bool:  # its path, or the end of it in backquotes in its folder's row
        return "/".join(parts) in design or any(f"`{'/'.join(parts[i:])}`" in design for i in range(len(parts)))

    unnamed = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if p.name != "__init__.py" and not named(p.relative_to(PACKAGE).parts))
    assert unnamed == []
