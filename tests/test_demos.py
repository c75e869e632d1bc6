"""The demos run as shipped (they are the README's runnable examples)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

DEMOS = sorted((Path(__file__).resolve().parents[1] / "demos").glob("*.py"))


@pytest.mark.parametrize("demo", DEMOS, ids=[demo.stem for demo in DEMOS])
def test_demo_runs(demo, capsys):
    runpy.run_path(str(demo), run_name="__main__")
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
