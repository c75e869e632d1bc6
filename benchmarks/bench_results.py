"""The results file a benchmark writes with ``--out PATH``: its table, its command and its machine.

Every benchmark the README's Performance section quotes writes one JSON object:

- ``title``: what was measured (sizes and settings, no measured number);
- ``command``: the command line that produced it;
- ``machine``: CPUs (``os.cpu_count()``), the threads the benchmark used, the 1-minute load average
  at its start and end, torch's version and the platform;
- ``table``: ``columns`` (name -> Python format spec, a trailing ``×`` appended after formatting)
  and ``rows`` (one dict per measured line, keyed by column);
- ``notes``: sentences about the measurement, each built from the measured values.

``tools/readme_results.py`` renders these files into the README; nothing there is typed by hand.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tl_moe.pipeline.machine import load_average, machine  # noqa: F401  (the benchmarks' one machine record)

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"


def command() -> str:
    """The command line of this process, as ``python benchmarks/NAME.py ARGS``."""
    script = Path(sys.argv[0])
    return shlex.join(["python", f"benchmarks/{script.name}", *sys.argv[1:]])


def table(columns: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A table of ``rows`` shown with ``columns`` (name -> format spec)."""
    return {"columns": columns, "rows": rows}


def write(
    out: Path,
    *,
    title: str,
    threads: int | None,
    load_at_start: float | None,
    rows_table: dict[str, Any],
    notes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the results file ``out`` and return what was written."""
    report = {
        "title": title,
        "command": command(),
        "machine": machine(threads, load_at_start),
        "table": rows_table,
        "notes": notes or [],
        **(extra or {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report
