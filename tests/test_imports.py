"""``import parsl_rcylon`` is light: bare MPI jobs import the engine without Parsl or Radical Pilot."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
