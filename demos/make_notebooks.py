"""Write each percent-format demo (``demos/NN_*.py``) as a Jupyter notebook beside it (``.ipynb``).

``# %%`` starts a code cell (text after it on the same line becomes a comment heading the cell) and
``# %% [markdown]`` a Markdown cell whose lines drop their leading ``# ``. The notebooks are
committed; ``tests/test_demos.py`` checks they match the ``.py`` files and runs their cells in order.
Run ``python demos/make_notebooks.py`` after editing a demo.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DEMOS = Path(__file__).resolve().parent
_CELL = re.compile(r"^# %%(?P<markdown> \[markdown\])?(?P<title>.*)$")


def cells_of(source: str) -> list[dict]:
    """The notebook cells of a percent-format script."""
    cells: list[dict] = []
    for line in source.splitlines():
        match = _CELL.match(line)
        if match:
            kind = "markdown" if match["markdown"] else "code"
            title = match["title"].strip()
            cells.append({"cell_type": kind, "lines": [f"# {title}"] if title and kind == "code" else []})
        elif cells:
            text = line
            if cells[-1]["cell_type"] == "markdown":
                text = line[2:] if line.startswith("# ") else line.lstrip("#")
            cells[-1]["lines"].append(text)
    notebook_cells = []
    for cell in cells:
        lines = cell["lines"]
        while lines and not lines[-1].strip():
            lines.pop()
        source_lines = [line + "\n" for line in lines[:-1]] + lines[-1:]
        entry = {"cell_type": cell["cell_type"], "metadata": {}, "source": source_lines}
        if cell["cell_type"] == "code":
            entry.update(execution_count=None, outputs=[])
        notebook_cells.append(entry)
    return notebook_cells


def notebook_of(script: Path) -> str:
    """The ``.ipynb`` JSON text of a demo script."""
    notebook = {
        "cells": cells_of(script.read_text()),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    for script in sorted(DEMOS.glob("[0-9][0-9]_*.py")):
        target = script.with_suffix(".ipynb")
        target.write_text(notebook_of(script))
        print(f"wrote {target.name}")


if __name__ == "__main__":
    main()
