"""The demos run as shipped (they are the README's runnable examples)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

DEMO_DIR = Path(__file__).resolve().parents[1] / "demos"
DEMOS = sorted(DEMO_DIR.glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("demo", DEMOS, ids=[demo.stem for demo in DEMOS])
def test_demo_notebook_matches_its_script_and_runs_cell_by_cell(demo, capsys):
    """Each demo ships as a notebook generated from its percent-format script (demos/make_notebooks.py);
    the notebook's code cells, run in order in one namespace as a kernel would, print results."""
    make = runpy.run_path(str(DEMO_DIR / "make_notebooks.py"))
    notebook = demo.with_suffix(".ipynb")
    assert notebook.read_text() == make["notebook_of"](demo), (
        f"rerun python demos/make_notebooks.py ({notebook.name})"
    )
    cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    assert len(cells) >= 3
    namespace: dict = {"__name__": "__main__"}
    for number, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{notebook.name}[cell {number}]", "exec"), namespace)
    assert capsys.readouterr().out.strip()


def test_the_add_an_analysis_example_in_the_architecture_doc_runs(tmp_path, monkeypatch):
    import re

    from tl_moe.pipeline import unregister

    doc = (Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.+?)\n```", doc, re.S) if "@register" in block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        exec(compile(example, "ARCHITECTURE.md", "exec"), namespace)
        results = namespace["results"]
        counts = results["first_choice"].counts
        # one first choice per streamed token: the budget (BOS included) is all real tokens
        assert int(counts.sum()) == results.options.max_tokens > sum(results.tokens_by_domain.values())
        assert "First-choice experts" in (tmp_path / "tl_moe_report" / "index.html").read_text()
    finally:
        unregister("first_choice")


def test_the_demo_without_the_pipeline_never_imports_it():
    """Demo 04's imports and models load in a fresh interpreter without tl_moe.pipeline (the analyses it
    calls never import it either: tests/test_layering.py walks their function-local imports too)."""
    import subprocess
    import sys

    demo = DEMO_DIR / "04_analyses_without_the_pipeline.py"
    cells = demo.read_text().split("# %%")
    imports = next(cell for cell in cells if "import tl_moe" in cell)
    code = imports + "\nimport sys\nassert not [m for m in sys.modules if m.startswith('tl_moe.pipeline')]\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
