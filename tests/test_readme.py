"""The README stays true: its hook table is the registry's, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tl_moe.models.hook_names import hook_table_markdown
from tl_moe.pipeline.readme_results import BLOCKS

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


@pytest.mark.parametrize("name", [block.name for block in BLOCKS])
def test_readme_results_are_generated_from_the_committed_results_file(name):
    block = next(block for block in BLOCKS if block.name == name)
    readme = (ROOT / "README.md").read_text()
    start, end = block.markers
    assert start in readme and end in readme, f"README.md has no {name} results block"
    assert (
        readme[readme.index(start) + len(start) : readme.index(end)].strip() == block.markdown(ROOT).strip()
    )


def test_the_command_line_of_a_run_reproduces_its_options():
    from tl_moe.pipeline.options import RunOptions
    from tl_moe.pipeline.readme_results import command_line

    options = RunOptions(
        model="toy/moe-8x2", analyses=("drivers",), max_tokens=6000, skip_untrained_null=True, out=Path("x")
    )
    assert command_line(options.to_dict()) == (
        "tl-moe analyze toy/moe-8x2 --max-tokens 6000 --analyses drivers --skip-untrained-null"
    )
    assert command_line(RunOptions().to_dict()) == "tl-moe analyze"
