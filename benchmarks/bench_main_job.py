"""Benchmark: the main job, `tl-moe analyze` on the embedded default, in one process, with the default worker
processes, and in one thread; total over its collection passes, how much finalize work there is, and
whether the variants wrote the same results.

Each run is a fresh `tl-moe analyze --fresh --out OUT/VARIANT_REPEAT` in its own process (the README's main
job plus the variant's flags). The three variants run ``--repeats`` times, their order rotated by one
each repeat; every run's timings are kept, and each row gives every column's own median over the repeats
with the range of total / passes. The first two variants get the same ``--threads`` (default: every
usable CPU, as `tl-moe analyze` takes on an idle machine); the third runs with ``--threads 1 --workers 1``.
Each run first waits, up to 2 minutes, for the 1-minute load average to fall below 1. Timings and CPU
times are the runs' own (`results.json` metadata ``timings`` and ``cpu_seconds``).

*Contention.* A variant's passes are the same work in every repeat (no worker runs them), so a run whose
passes took more than ``CONTENDED`` more CPU time than the least of its variant's runs shared the
machine with something else; such runs are marked ``contended`` and kept.

From those it derives what the target (total ≤ 2.5× the passes, same run) would need on this machine.
The finalize *work* is the CPU time of a one-thread run's finalize (no thread of the run spins while it
waits, no process of the run contends), the least of those runs (outside contention inflates CPU time
on a shared machine; the runs' spread is reported). It is set against the *least contended* worker run
(the least passes CPU time), so that neither side of the comparison comes from a slowed run: with its
passes P and the rest of its total outside passes and finalize O (its own wall times: the target is
relative to the run's own passes), two bounds on C CPUs, assuming the work does not shrink when it is
split (no superlinear cache effects):

- finalize after the passes, as the pipeline runs it: finalize may take at most ``2.5 P − P − O``, in
  which C CPUs give at most ``C × (2.5 P − P − O)`` CPU seconds;
- the passes and finalize overlapped perfectly, O kept serial (a schedule the pipeline does not have:
  finalize's inputs exist only after their passes): ``C × (2.5 P − O)`` CPU seconds minus the passes' own
  work (the least one-thread run's passes CPU time).

The work cut each needs is ``1 − capacity / work`` (negative: the work fits); it is also given against
every worker run.

The results files are compared value by value (metadata left out) and the tables cell by cell: the
default workers' run against the one-process run of the same repeat must be identical; the one-thread
runs are compared too, and each differing table is described (columns, cells, largest differences).

Run: ``python benchmarks/bench_main_job.py [--out docs/results/bench_main_job.json] [--work /tmp/bench_main_job]
[--repeats 3] [--reuse]`` (each repeat runs the main job three times; ``--reuse`` summarises the runs
already in ``--work`` instead of running them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_results
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from readme_results import TOTAL_OVER_PASSES_TARGET  # noqa: E402  (the target is written once, there)

ONE_PROCESS, WORKERS, ONE_THREAD = (
    "one process (--workers 1)",
    "default workers",
    "one thread, one process (--threads 1 --workers 1)",
)
#: Each variant's extra flags and its folder prefix; ``--threads`` is added by :func:`run_job`.
VARIANTS = {
    ONE_PROCESS: (["--workers", "1"], "one"),
    WORKERS: ([], "default"),
    ONE_THREAD: (["--workers", "1"], "single"),
}


#: The options that make a run the README's main job; every run must have the same.
JOB_OPTIONS = (
    "model",
    "dense_baseline",
    "corpus",
    "split",
    "max_tokens",
    "analyses",
    "sparsity_family",
    "seed",
)
#: A run whose passes took this much more CPU time than the least of its variant's runs is marked contended.
CONTENDED = 0.15


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


def different_tables(first: Path, second: Path) -> tuple[int, list[dict[str, Any]]]:
    """How many report tables were compared, and for each table whose cells differ: its name, its rows,
    and per differing column the cells that differ and, for numbers, the largest absolute and relative
    difference (so a report can say what kind of difference it is)."""
    names = sorted(path.name for path in (first / "tables").glob("*.parquet"))
    changed = []
    for name in names:
        a, b = (pd.read_parquet(folder / "tables" / name) for folder in (first, second))
        if a.equals(b):
            continue
        detail: dict[str, Any] = {"table": name, "rows": len(a), "columns": {}}
        if a.shape != b.shape or list(a.columns) != list(b.columns):
            detail["shape"] = [list(a.shape), list(b.shape)]
        else:
            for column in a.columns:
                x, y = a[column], b[column]
                differ = ~((x == y) | (x.isna() & y.isna()))
                if not differ.any():
                    continue
                entry: dict[str, Any] = {"cells": int(differ.sum())}
                if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
                    gap = (x - y).abs()[differ]
                    entry["largest absolute"] = float(gap.max())
                    entry["largest relative"] = float((gap / y.abs()[differ].clip(lower=1e-300)).max())
                detail["columns"][str(column)] = entry
        changed.append(detail)
    return len(names), changed


def run_row(name: str, repeat: int, results: dict[str, Any]) -> dict[str, Any]:
    """One run's record: its wall times (passes, finalize and each analysis's part of it, the rest of its
    total, total / passes), its CPU times, its options and its machine's CPUs and load."""
    metadata = results["metadata"]
    timings, cpu, machine = metadata["timings"], metadata.get("cpu_seconds", {}), metadata.get("machine", {})
    passes = sum(value for key, value in timings.items() if key.startswith("pass "))
    total, finalize = timings["total (s)"], timings["finalize (s)"]
    return {
        "run": name,
        "repeat": repeat,
        "workers": metadata.get("workers"),  # the count the run used
        "threads": machine.get("threads"),
        "cpus": machine.get("cpus"),
        "passes s": passes,
        "finalize s": finalize,
        "other s": total - passes - finalize,
        "total s": total,
        "total / passes": total / passes,
        "passes cpu s": cpu.get("passes"),
        "finalize cpu s": cpu.get("finalize"),
        "job": {key: metadata.get("options", {}).get(key) for key in JOB_OPTIONS},
        "load at start": machine.get("load average (1 min) at the start"),
        "load at end": machine.get("load average (1 min) at the end"),
        "finalize by analysis s": {
            key[len("finalize ") : -len(" (s)")]: value
            for key, value in timings.items()
            if key.startswith("finalize ") and key != "finalize (s)"
        },
    }


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's row: the median of each timing over its runs, each column on its own (a row is not
    one run), and the range of total / passes."""
    ratios = [run["total / passes"] for run in runs]
    return {
        "run": runs[0]["run"],
        "workers": runs[0]["workers"],
        "threads": runs[0]["threads"],
        **{
            key: statistics.median(run[key] for run in runs)
            for key in ("passes s", "finalize s", "other s", "total s")
        },
        "total / passes": statistics.median(ratios),
        "total / passes, range": f"{min(ratios):.2f}–{max(ratios):.2f}×",
    }


def mark_contention(runs: dict[str, list[dict[str, Any]]]) -> None:
    """Give each run its passes' CPU time over the least of its variant's (``passes cpu over least``) and
    whether that is more than :data:`CONTENDED` above (``contended``)."""
    for variant_runs in runs.values():
        least = min(run["passes cpu s"] for run in variant_runs)
        for run in variant_runs:
            run["passes cpu over least"] = run["passes cpu s"] / least - 1
            run["contended"] = run["passes cpu over least"] > CONTENDED


def _capacities(run: dict[str, Any], cpus: int, pass_work: float, work: float) -> dict[str, Any]:
    """The CPU seconds the target leaves a worker run's finalize, both ways, and the cuts they need."""
    after = cpus * ((TOTAL_OVER_PASSES_TARGET - 1) * run["passes s"] - run["other s"])
    overlapped = cpus * (TOTAL_OVER_PASSES_TARGET * run["passes s"] - run["other s"]) - pass_work
    return {
        "repeat": run["repeat"],
        "passes cpu over least": run["passes cpu over least"],
        "cpu s after the passes": after,
        "cpu s overlapped": overlapped,
        "cut after the passes": 1 - max(after, 0.0) / work,
        "cut overlapped": 1 - max(overlapped, 0.0) / work,
    }


def bounds(runs: dict[str, list[dict[str, Any]]], cpus: int) -> dict[str, Any]:
    """What the target would need of the finalize work on ``cpus`` CPUs (see the module docstring): the
    least one-thread finalize CPU time as the work, against the least contended worker run, and against
    every worker run. Runs must have been through :func:`mark_contention`."""
    work = min(run["finalize cpu s"] for run in runs[ONE_THREAD])
    pass_work = min(run["passes cpu s"] for run in runs[ONE_THREAD])
    per_run = [_capacities(run, cpus, pass_work, work) for run in runs[WORKERS]]
    quiet = min(runs[WORKERS], key=lambda run: run["passes cpu s"])
    return {
        "target total / passes": TOTAL_OVER_PASSES_TARGET,
        "cpus": cpus,
        "finalize work cpu s": work,
        "finalize work cpu s, every run": [run["finalize cpu s"] for run in runs[ONE_THREAD]],
        "passes work cpu s": pass_work,
        "least contended worker run": _capacities(quiet, cpus, pass_work, work),
        "per worker run": per_run,
        **{
            f"{end} {kind}": pick(row[kind] for row in per_run)
            for kind in ("cut after the passes", "cut overlapped")
            for end, pick in (("least", min), ("most", max))
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="results file to write")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_main_job"), help="the runs' folders")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="summarise the runs already in --work (as this script names them) instead of running them again",
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument(
        "--threads",
        type=int,
        default=usable,
        help="threads of the first two variants (default: every usable CPU; tl-moe analyze's default leaves out busy ones)",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}.")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1; got {args.threads}.")
    if args.reuse:
        missing = [
            str(args.work / f"{prefix}_{repeat}" / "results.json")
            for _, prefix in VARIANTS.values()
            for repeat in range(args.repeats)
            if not (args.work / f"{prefix}_{repeat}" / "results.json").exists()
        ]
        if missing:
            parser.error(
                f"--reuse: {len(missing)} run(s) of --repeats {args.repeats} are not in --work {args.work} "
                f"(first: {missing[0]}); run without --reuse first."
            )
    load_at_start = bench_results.load_average()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    folders: dict[tuple[str, int], Path] = {}
    names = list(VARIANTS)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            extra, prefix = VARIANTS[name]
            folder = folders[name, repeat] = args.work / f"{prefix}_{repeat}"
            threads = 1 if name == ONE_THREAD else args.threads
            results = (
                json.loads((folder / "results.json").read_text())
                if args.reuse
                else run_job(folder, extra, threads)
            )
            row = run_row(name, repeat, results)
            expected = {"threads": threads, **({"workers": 1} if extra else {})}
            if any(row[key] != value for key, value in expected.items()) or (
                not extra and threads > 1 and (row["workers"] or 1) < 2
            ):
                sys.exit(
                    f"bench_main_job.py: {folder} ran with --threads {row['threads']} and --workers "
                    f"{row['workers']}, not as the variant {name!r} with --threads {threads}."
                )
            runs[name].append(row)
            print(
                f"{name} #{repeat}: total {row['total s']:.1f} s, passes {row['passes s']:.1f} s, {row['total / passes']:.2f}x"
            )

    def compared(first: str, second: str) -> dict[str, Any]:
        """Value and table differences between two variants' runs, repeat by repeat."""
        values, tables, details = [], [], []
        for repeat in range(args.repeats):
            one, other = folders[first, repeat], folders[second, repeat]
            values.append(
                len(differences(*(json.loads((f / "results.json").read_text()) for f in (one, other))))
            )
            n_tables, changed = different_tables(one, other)
            tables.append(len(changed))
            details.append(changed)
        return {
            "differing values": values,
            "differing tables": tables,
            "tables": n_tables,
            "details": details,
        }

    workers_vs_one = compared(ONE_PROCESS, WORKERS)
    threads_vs_one = compared(ONE_PROCESS, ONE_THREAD)
    identical = not any(workers_vs_one["differing values"]) and not any(workers_vs_one["differing tables"])
    jobs = {json.dumps(run["job"], sort_keys=True) for variant_runs in runs.values() for run in variant_runs}
    if len(jobs) != 1:
        sys.exit(f"bench_main_job.py: the runs are not all the same job ({len(jobs)} different option sets).")
    mark_contention(runs)
    rows = {name: median_row(variant_runs) for name, variant_runs in runs.items()}
    cpus = {run["cpus"] for variant_runs in runs.values() for run in variant_runs}
    if (
        len(cpus) != 1
        or None in cpus
        or any(run["finalize cpu s"] is None for variant_runs in runs.values() for run in variant_runs)
    ):
        sys.exit(f"bench_main_job.py: the runs do not all record one CPU count and their CPU times ({cpus}).")
    bound = bounds(runs, cpus.pop())
    notes = [
        f"Medians of {args.repeats} runs each. With the default workers the main job's total is "
        f"{rows[WORKERS]['total / passes']:.2f}× its collection passes (range {rows[WORKERS]['total / passes, range']}).",
        f"On {bound['cpus']} CPUs, against the least contended worker run, the target needs the finalize work "
        f"({bound['finalize work cpu s']:.1f} CPU s, the least of the one-thread runs) cut by "
        f"{100 * bound['least contended worker run']['cut after the passes']:.0f}% with finalize after the passes "
        f"and by {100 * bound['least contended worker run']['cut overlapped']:.0f}% with the passes and finalize "
        "overlapped perfectly (negative: the work fits).",
    ]
    print(" ".join(notes))
    if args.out is not None:
        bench_results.write(
            args.out,
            title=(
                "the main job `tl-moe analyze` on the embedded default (toy/moe-16x2 against toy/dense) in one "
                f"process and with the default worker processes (both with `--threads {args.threads}`), and in one "
                f"thread (`--threads 1 --workers 1`); medians of {args.repeats} runs each, the variants' order "
                "rotated each repeat; timings from each run's results.json"
                + (" (summarised again from the runs' folders with --reuse)" if args.reuse else "")
            ),
            threads=args.threads,
            load_at_start=load_at_start,
            rows_table=bench_results.table(
                {
                    "run": "",
                    "workers": "d",
                    "threads": "d",
                    "passes s": ".1f",
                    "finalize s": ".1f",
                    "total s": ".1f",
                    "total / passes": ".2f×",
                    "total / passes, range": "",
                },
                list(rows.values()),
            ),
            notes=notes,
            extra={
                "identical": identical,
                "workers vs one process": workers_vs_one,
                "one thread vs one process": threads_vs_one,
                "bound": bound,
                "contended above": CONTENDED,
                "runs": [run for variant_runs in runs.values() for run in variant_runs],
            },
        )
        # The machine record's load averages are the runs' own: the first run's start, the last run's end
        # (with --reuse the summariser's would say nothing about them).
        executed = sorted(
            (run for variant_runs in runs.values() for run in variant_runs),
            key=lambda run: (run["repeat"], (names.index(run["run"]) - run["repeat"]) % len(names)),
        )
        report = json.loads(args.out.read_text())
        report["machine"] |= {
            "threads": f"1 and {args.threads}",
            "load average (1 min) at the start": executed[0]["load at start"],
            "load average (1 min) at the end": executed[-1]["load at end"],
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
