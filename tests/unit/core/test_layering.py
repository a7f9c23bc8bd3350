"""The packages stay layered (docs/architecture.md): no import cycle, between modules or packages.

Read from the source with `ast`: every import counts, at module level or inside a function,
except those under `if TYPE_CHECKING:` (annotations only, never executed).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "plugins":
        parts[0] = "alcor_plugins"  # how plugins/ is installed and imported (setup.cfg)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for top in ("alcor", "plugins") for p in (ROOT / top).rglob("*.py")}
assert "alcor_plugins.zeta.client" in MODULES


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package.rsplit(".", child.level - 1)[0] if child.level else ""
                module = ".".join(p for p in (base, child.module or "") if p)
                found.add(module)
                found.update(f"{module}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    # `from alcor.ops import health` inside alcor/ops/__init__.py names its submodule, not itself
    return {m for m in found if m in MODULES and m != _name(path)}


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _package(module: str) -> str:
    """alcor.agent.ir -> alcor.agent; alcor.wire -> alcor.wire; alcor_plugins.zeta.x -> alcor_plugins.zeta."""
    return ".".join(module.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return []


def test_no_module_imports_itself_back() -> None:
    assert _cycle(GRAPH) == []


def test_no_package_imports_itself_back() -> None:
    packages: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        # a package's __init__ may import its own modules: only edges between packages count
        packages.setdefault(_package(m), set()).update(
            _package(d) for d in deps if _package(d) != _package(m)
        )
    assert _cycle(packages) == []


@pytest.mark.parametrize(
    "module, never",
    [
        # the agent and the controller's southbound meet only in alcor/wire.py and alcor/transport.py
        ("alcor.agent", ("alcor.southbound", "alcor.api", "alcor.resources", "alcor.db")),
        # the southbound reads the resource managers (port states, a node's sync), never the API
        ("alcor.southbound", ("alcor.agent", "alcor.api")),
        # errors and the request context sit below everything that raises or passes them
        ("alcor.db", ("alcor.api", "alcor.resources")),
        ("alcor.resources", ("alcor.api", "alcor.southbound", "alcor.agent")),
        ("alcor.errors", ("alcor",)),
        ("alcor.context", ("alcor",)),
        ("alcor.wire", ("alcor",)),
        # Zeta's flows are built from the flow IR alone, not from the pipeline or the compiler
        ("alcor.agent.zeta", ("alcor.agent.pipeline", "alcor.agent.compiler")),
        ("alcor.agent.ir", ("alcor",)),
    ],
)
def test_layers_do_not_reach_up(module: str, never: tuple[str, ...]) -> None:
    inside = [m for m in GRAPH if m == module or m.startswith(module + ".")]
    assert inside, f"{module} does not exist: update this test with the layering"
    reached = {
        d
        for m in inside
        for d in GRAPH[m]
        if any(d == n or d.startswith(n + ".") for n in never) and not d.startswith(module)
    }
    assert reached == set(), f"{module} imports {sorted(reached)}"


def test_relative_imports_are_followed() -> None:
    assert "alcor_plugins.zeta.client" in GRAPH["alcor_plugins.zeta"]


def test_the_core_does_not_import_plugins() -> None:
    """Plugins are loaded by name (alcor/kernel.py) and found for their config (alcor/sections.py)."""
    reached = {d for m, deps in GRAPH.items() if m.startswith("alcor.") for d in deps}
    assert {d for d in reached if d.startswith("alcor_plugins")} == set()


def test_tests_and_benchmarks_share_helpers_only_through_tests_support() -> None:
    """bench/ imports alcor and tests/support, and no test module imports another's fixtures."""
    offenders = []
    for path in [*(ROOT / "bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                name = node.module
            elif isinstance(node, ast.Import):
                name = node.names[0].name
            else:
                continue
            if name.startswith("tests.") and not name.startswith(("tests.support", "tests.conftest")):
                # a package's own harness (tests/integration/<pkg>/harness.py, conftest.py) is
                # shared inside that package only
                here = path.relative_to(ROOT).with_suffix("").parts
                there = name.split(".")
                inside = path.is_relative_to(ROOT / "tests") and here[:3] == tuple(there[:3])
                if not inside or there[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
