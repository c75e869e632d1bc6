"""The package's imports, function-local and TYPE_CHECKING ones included: no cycle, and lower layers
never import higher ones (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tl_moe"

# Each layer may import only the layers listed before it (and the bottom modules).
BOTTOM = {"tl_moe.errors"}
LAYERS = ["models", "data", "collect", "analysis", "explain", "zoo", "report", "pipeline", "cli"]
FORBIDDEN = {
    "models": set(LAYERS) - {"models"},
    "data": set(LAYERS) - {"data"},
    "collect": {"analysis", "explain", "zoo", "report", "pipeline", "cli"},
    "analysis": {"explain", "zoo", "report", "pipeline", "cli"},
    "zoo": {"explain", "report", "pipeline", "cli"},
    "report": {"models", "data", "collect", "analysis", "explain", "zoo", "pipeline", "cli"},
    "pipeline": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The tl_moe module an imported dotted name refers to (a submodule, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):  # every import statement, wherever it is
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            if name.startswith("tl_moe"):
                target = _resolve(name)
                if target is not None and target != module:
                    found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if target == "tl_moe" or (
                module.startswith(target + ".") and MODULES[target].name == "__init__.py"
            ):
                continue  # a module importing its own package's __init__ runs after it; not a cycle here
            if state.get(target) == 1:
                cycles.append(
                    stack[stack.index(target) :] + [target] if target in stack else [module, target]
                )
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, targets in GRAPH.items():
        forbidden = FORBIDDEN.get(_layer(module), set())
        for target in targets:
            if target == "tl_moe" and _layer(module) in ("models", "data", "collect", "analysis", "report"):
                wrong.append(f"{module} imports the top-level package tl_moe")
            elif _layer(target) in forbidden:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_report_imports_no_analysis_and_the_cli_goes_through_the_pipeline():
    report = {t for m, ts in GRAPH.items() if _layer(m) == "report" for t in ts}
    assert not {t for t in report if _layer(t) in ("analysis", "pipeline")}
    cli = GRAPH["tl_moe.cli"]
    assert "tl_moe.pipeline" in cli or any(_layer(t) == "pipeline" for t in cli)
    assert not {t for t in cli if _layer(t) == "analysis"}, "the CLI must reach analyses through the pipeline"


def test_the_walk_sees_function_local_imports():
    assert "tl_moe.pipeline.runner" in GRAPH["tl_moe.cli"] or "tl_moe.pipeline" in GRAPH["tl_moe.cli"]
    assert any("tl_moe.models" in t for t in GRAPH["tl_moe.pipeline.context"])  # imported inside a method
