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
    "explain": {"zoo", "report", "pipeline", "cli"},
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


# A RunOptions field is analysis-specific when the code of exactly one analysis reads it and no run-wide
# code does: it then belongs in that analysis's config (tl_moe/analysis/configs/, or a plugin's
# config_class). Run-wide code: every pipeline module outside pipeline/sections/, and the CLI. The code of
# an analysis: its section module pipeline/sections/NAME.py and the helper modules named NAME_*.py.
SECTIONS = PACKAGE / "pipeline" / "sections"
# Each section's Result (its report view) is the analysis's code too, named like its section.
RESULTS = PACKAGE / "pipeline" / "results"
RUN_WIDE = [
    path
    for path in (PACKAGE / "pipeline").rglob("*.py")
    if SECTIONS not in path.parents and RESULTS not in path.parents and path.name != "options.py"
] + [PACKAGE / "cli.py"]
ANALYSIS_CODE = [*SECTIONS.glob("*.py"), *RESULTS.glob("*.py")]
#: A section is the adapter between the pipeline and an analysis of tl_moe.analysis / tl_moe.explain.
MAX_SECTION_LINES = 150


def _attributes_read(path: Path) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}


def _section_owner(path: Path, names: tuple[str, ...]) -> str:
    return next((name for name in names if path.stem == name or path.stem.startswith(name + "_")), path.stem)


def test_run_options_hold_no_analysis_specific_field():
    import dataclasses

    from tl_moe.analysis.configs import Statistics
    from tl_moe.pipeline import analysis_names
    from tl_moe.pipeline.options import run_wide_fields

    names = analysis_names()
    run_wide_reads = set().union(*(_attributes_read(path) for path in RUN_WIDE))
    readers: dict[str, set[str]] = {}
    for path in ANALYSIS_CODE:
        for attribute in _attributes_read(path):
            readers.setdefault(attribute, set()).add(_section_owner(path, names))
    shared = {spec.name for spec in dataclasses.fields(Statistics)}  # every analysis's, as options.statistics
    specific = [
        f"{spec.name} (read only by {readers.get(spec.name)})"
        for spec in run_wide_fields()
        if spec.name not in run_wide_reads | shared and len(readers.get(spec.name, ())) == 1
    ]
    assert not specific, (
        "analysis-specific RunOptions fields (move them to the analysis's config): " + ", ".join(specific)
    )


def test_the_rule_sees_a_planted_analysis_specific_field(tmp_path):
    """Planted: a field only drivers.py reads counts as analysis-specific; one the runner reads does not."""
    drivers = tmp_path / "drivers.py"
    drivers.write_text("def f(run):\n    return run.options.planted_only_here + run.options.max_tokens\n")
    assert {"planted_only_here", "max_tokens"} <= _attributes_read(drivers)
    assert _section_owner(tmp_path / "explain_dashboard.py", ("probing", "explain")) == "explain"
    run_wide_reads = set().union(*(_attributes_read(path) for path in RUN_WIDE))
    assert "max_tokens" in run_wide_reads and "planted_only_here" not in run_wide_reads


def test_sections_read_their_settings_from_the_configs_not_by_legacy_names():
    """``run.options.probe_ks`` still works for users (a compatibility alias); the package's own code
    reads ``run.options.config("probing").ks``, so each setting has one owner."""
    from tl_moe.pipeline.options import legacy_names, run_wide_fields

    legacy = set(legacy_names())
    assert legacy and not legacy & {spec.name for spec in run_wide_fields()}
    wrong = []
    for path in [*ANALYSIS_CODE, *RUN_WIDE]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in legacy
                and isinstance(node.value, ast.Attribute | ast.Name)
                and (node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id) == "options"
            ):
                wrong.append(f"{path.name}:{node.lineno} options.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_the_method_layers_never_import_the_pipeline():
    """An analysis runs in a notebook without tl_moe.pipeline: nothing under analysis/, explain/,
    collect/, models/ or data/ imports it (function-local imports included)."""
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _layer(module) in ("analysis", "explain", "collect", "models", "data")
        for target in targets
        if _layer(target) == "pipeline"
    )
    assert not wrong, "\n".join(wrong)


def test_every_section_is_an_adapter_of_at_most_150_lines():
    long = {
        path.name: n
        for path in SECTIONS.glob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_SECTION_LINES
    }
    assert not long, f"sections over {MAX_SECTION_LINES} lines (move the method to tl_moe.analysis): {long}"
