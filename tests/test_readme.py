"""The README stays true: its hook table is the registry's, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from tl_moe.models.hook_names import hook_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_hook_table_is_generated_from_the_registry():
    assert hook_table_markdown() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(command for command in commands if "pytest" in command)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_analysis_and_option_tables_are_generated_from_the_pipeline():
    import tl_moe.pipeline  # noqa: F401 (registers the built-in analyses)
    from tl_moe.pipeline.options import options_table_markdown
    from tl_moe.pipeline.registry import analyses_table_markdown

    readme = (ROOT / "README.md").read_text()
    assert options_table_markdown() in readme
    assert analyses_table_markdown() in readme


def test_readme_architecture_table_is_generated_from_the_sweep():
    from tl_moe.models.catalog import architecture_table_markdown

    assert architecture_table_markdown() in (ROOT / "README.md").read_text()


def test_readme_results_are_generated_from_the_committed_results_file():
    import json

    from tl_moe.pipeline.readme_results import END, START, results_markdown

    source = "docs/results/toy_default.json"
    block = results_markdown(json.loads((ROOT / source).read_text()), source)
    readme = (ROOT / "README.md").read_text()
    assert readme[readme.index(START) + len(START) : readme.index(END)].strip() == block.strip()
