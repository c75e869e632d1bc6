"""Benchmark: the main job, `tl-moe analyze` on the embedded default, with one worker and with the default
workers, back to back on the same machine; total over its collection passes for each, and whether the two
wrote the same results.

Each variant is a fresh `tl-moe analyze --fresh --out OUT/VARIANT` in its own process (the README's main
job, `--workers 1` added for the one-process variant); the variants alternate ``--repeats`` times and
each row is the repeat with the lowest total. Both variants get the same ``--threads`` (default: every
CPU, as `tl-moe analyze` takes on an idle machine), and each waits, up to 2 minutes, for the 1-minute load
average to fall below 1 first. Timings are the runs' own (`results.json` metadata). The
two variants' results files are compared value by value (metadata left out) and their tables cell by
cell: the worker processes must not change a number.

Run: ``python benchmarks/bench_main_job.py [--out docs/results/bench_main_job.json] [--work /tmp/bench_main_job]
[--repeats 1]`` (about 4 minutes per repeat on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_results
import pandas as pd

VARIANTS = {"one process (--workers 1)": ["--workers", "1"], "default workers": []}


def settle(limit: float = 1.0, wait_at_most: float = 120.0) -> None:
    """Wait (at most ``wait_at_most`` s) for the 1-minute load average to fall below ``limit``, so that a
    run does not start on the cores the previous one just left busy."""
    started = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - started < wait_at_most:
        time.sleep(5)


def run_job(out: Path, extra: list[str], threads: int) -> dict[str, Any]:
    """One main-job run into ``out`` with ``threads`` threads; its results file."""
    settle()
    command = [
        sys.executable,
        "-m",
        "tl_moe.cli",
        "analyze",
        "--fresh",
        "--out",
        str(out),
        "--threads",
        str(threads),
        *extra,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two results files differ (``metadata`` left out): paths of changed values."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [
            item
            for key in keys
            if not (path == "" and key == "metadata")
            for item in (
                [f"{path}/{key}"]
                if key not in a or key not in b
                else differences(a[key], b[key], f"{path}/{key}")
            )
        ]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [path]
        return [
            item
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for item in differences(x, y, f"{path}/{i}")
        ]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [path]


def different_tables(first: Path, second: Path) -> tuple[int, list[str]]:
    """How many report tables were compared, and the names of those whose cells differ."""
    names = sorted(path.name for path in (first / "tables").glob("*.parquet"))
    changed = [
        name
        for name in names
        if not pd.read_parquet(first / "tables" / name).equals(pd.read_parquet(second / "tables" / name))
    ]
    return len(names), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="results file to write")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_main_job"), help="the runs' folders")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        help="threads of both variants (default: every usable CPU; tl-moe analyze's default leaves out busy ones)",
    )
    args = parser.parse_args()
    load_at_start = bench_results.load_average()
    best: dict[str, dict[str, Any]] = {}
    every: list[dict[str, Any]] = []  # every repeat's timings, kept beside the best ones
    for repeat in range(args.repeats):
        for name, extra in VARIANTS.items():
            folder = args.work / f"{'one' if extra else 'default'}_{repeat}"
            results = run_job(folder, extra, args.threads)
            timings = results["metadata"]["timings"]
            passes = sum(value for key, value in timings.items() if key.startswith("pass "))
            row = {
                "run": name,
                "workers": results["metadata"].get("workers"),  # the count the run used
                "passes s": passes,
                "finalize s": timings["finalize (s)"],
                "total s": timings["total (s)"],
                "total / passes": timings["total (s)"] / passes,
                "folder": folder,
                "results": results,
            }
            print(
                f"{name}: total {row['total s']:.1f} s, passes {passes:.1f} s, {row['total / passes']:.2f}x"
            )
            every.append(
                {"repeat": repeat, **{k: v for k, v in row.items() if k not in ("folder", "results")}}
            )
            if name not in best or row["total s"] < best[name]["total s"]:
                best[name] = row
    one, default = best[next(iter(VARIANTS))], best["default workers"]
    changed = differences(one["results"], default["results"])
    n_tables, changed_tables = different_tables(one["folder"], default["folder"])
    rows = [
        {key: value for key, value in row.items() if key not in ("folder", "results")}
        | {"vs one process": one["total s"] / row["total s"]}
        for row in best.values()
    ]
    threads = default["results"]["metadata"].get("machine", {}).get("threads")
    notes = [
        f"The default workers' run took {default['total s']:.1f} s against {one['total s']:.1f} s in one process "
        f"({one['total s'] / default['total s']:.2f}× faster); its total is {default['total / passes']:.2f}× its "
        f"collection passes.",
        (
            f"The two runs' results files hold the same values ({len(changed)} differing; metadata left out) and "
            f"their {n_tables} tables are equal cell for cell."
            if not changed and not changed_tables
            else f"The two runs differ in {len(changed)} results values (first: {', '.join(changed[:3])}) and in "
            f"{len(changed_tables)} of {n_tables} tables ({', '.join(changed_tables)})."
        ),
    ]
    print(" ".join(notes))
    if args.out is not None:
        bench_results.write(
            args.out,
            title=(
                "the main job `tl-moe analyze` on the embedded default (toy/moe-16x2 against toy/dense), "
                f"in one process and with the default worker processes (the count each run used: `workers`), "
                f"both runs with `--threads {args.threads}`, best of {args.repeats} alternating run(s) each; "
                "timings from each run's results.json"
            ),
            threads=threads,
            load_at_start=load_at_start,
            rows_table=bench_results.table(
                {
                    "run": "",
                    "workers": "d",
                    "passes s": ".1f",
                    "finalize s": ".1f",
                    "total s": ".1f",
                    "total / passes": ".2f×",
                    "vs one process": ".2f×",
                },
                rows,
            ),
            notes=notes,
            extra={"identical": not changed and not changed_tables, "repeats": every},
        )


if __name__ == "__main__":
    main()
