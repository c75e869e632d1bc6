"""The main-job benchmark's summary: planted runs whose medians, work, budgets and needed cuts are known."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_main_job as bench  # noqa: E402

from readme_results import main_job_benchmark_markdown  # noqa: E402


def _results(passes, finalize, total, workers, threads, cpu):
    """A planted run's results file: two passes, finalize (3/4 probing), total, CPU times, 2 CPUs."""
    timings = {"pass a (s)": passes[0], "pass b (s)": passes[1], "finalize (s)": finalize, "total (s)": total}
    timings |= {"finalize probing (s)": 0.75 * finalize, "finalize logit_lens (s)": 0.25 * finalize}
    machine = {
        "threads": threads,
        "cpus": 2,
        "load average (1 min) at the start": 0.5,
        "load average (1 min) at the end": 1.5,
    }
    return {
        "metadata": {
            "timings": timings,
            "workers": workers,
            "machine": machine,
            "cpu_seconds": {"passes": cpu[0], "finalize": cpu[1]},
        }
    }


def _planted(
    work: float,
    worker_totals=(95.0, 97.0, 93.0),
    others=(5.0, 5.0, 5.0),
    worker_passes=((10, 20), (10, 20), (10, 20)),
    worker_pass_cpu=(50.0, 50.0, 50.0),
) -> dict:
    """Three repeats of each variant. Worker runs: passes ``worker_passes`` (30 s by default) with CPU
    times ``worker_pass_cpu``, ``others`` s outside passes and finalize. One-thread runs: finalize CPU
    times ``work`` + 10, ``work``, ``work`` + 20 (the least, the work, is the second); passes' CPU 40, 36, 44
    (the least is the second too)."""
    runs = {
        bench.ONE_PROCESS: [
            bench.run_row(
                bench.ONE_PROCESS, r, _results((10, 20), 80.0, 115.0 + r, 1, 2, (50 + 30 * (r == 0), 150))
            )
            for r in range(3)
        ],
        bench.WORKERS: [
            bench.run_row(
                bench.WORKERS,
                r,
                _results(passes, total - sum(passes) - other, total, 2, 2, (pass_cpu, 150)),
            )
            for r, (total, other, passes, pass_cpu) in enumerate(
                zip(worker_totals, others, worker_passes, worker_pass_cpu, strict=True)
            )
        ],
        bench.ONE_THREAD: [
            bench.run_row(
                bench.ONE_THREAD, r, _results((12, 24), 100.0 + r, 141.0 + r, 1, 1, (cpu, work + extra))
            )
            for r, (cpu, extra) in enumerate(((40, 10), (36, 0), (44, 20)))
        ],
    }
    bench.mark_contention(runs)
    rows = {name: bench.median_row(variant_runs) for name, variant_runs in runs.items()}
    same = {
        "differing values": [0, 0, 0],
        "differing tables": [0, 0, 0],
        "tables": 14,
        "details": [[], [], []],
    }
    return {
        "title": "planted",
        "command": "python benchmarks/bench_main_job.py",
        "machine": {"cpus": 2, "threads": 2},
        "table": {"columns": {"run": "", "total / passes": ".2f×"}, "rows": list(rows.values())},
        "identical": True,
        "workers vs one process": same,
        "one thread vs one process": same,
        "bound": bench.bounds(runs, 2),
        "contended above": bench.CONTENDED,
        "runs": [run for variant_runs in runs.values() for run in variant_runs],
    }


def test_each_column_is_its_own_median_and_the_range_of_total_over_passes():
    planted = _planted(120.0)
    workers = next(row for row in planted["table"]["rows"] if row["run"] == bench.WORKERS)
    assert workers["total s"] == 95.0 and workers["passes s"] == 30.0 and workers["other s"] == 5.0
    assert workers["total / passes"] == 95.0 / 30.0
    assert workers["total / passes, range"] == f"{93 / 30:.2f}–{97 / 30:.2f}×"


def test_the_bounds_when_the_work_cannot_fit_even_overlapped():
    planted = _planted(120.0)
    bound = planted["bound"]
    # work: the least one-thread finalize CPU time, 120; the passes' work: the least passes CPU time, 36
    assert bound["finalize work cpu s"] == 120.0 and bound["passes work cpu s"] == 36.0
    first = bound["per worker run"][0]  # total 95: P = 30, O = 5
    assert first["cpu s after the passes"] == 2 * (2.5 * 30 - 30 - 5) == 80.0
    assert first["cpu s overlapped"] == 2 * (2.5 * 30 - 5) - 36 == 104.0
    assert abs(first["cut after the passes"] - (1 - 80 / 120)) < 1e-12
    assert abs(first["cut overlapped"] - (1 - 104 / 120)) < 1e-12
    text = main_job_benchmark_markdown(planted, "x.json")
    assert "misses the target" in text and "a median 3.17× (range 3.10–3.23×)" in text
    assert "120.0 CPU s (the runs: 130.0, 120.0, 140.0)" in text
    assert "= 80.0 CPU seconds, a cut of 33%: the target is out of reach on this machine" in text
    assert "= 104.0, a cut of 13%: even a perfect overlap would not reach the target" in text
    assert "probing 75%, logit_lens 25%" in text
    assert "In each of the 3 repeats the two runs' results files" in text
    assert "identical to them too" in text
    # the one-process run 0's passes took 60% more CPU than the others': marked, and named in the text
    assert [run["contended"] for run in planted["runs"]][:3] == [True, False, False]
    assert "one process (--workers 1) #0 (+60%)" in text


def test_the_bound_is_taken_against_the_least_contended_worker_run():
    # run 1 has the least passes CPU time (the quiet one) and 32 s of passes; runs 0 and 2 are contended
    planted = _planted(
        120.0,
        worker_totals=(95.0, 120.0, 100.0),
        worker_passes=((10, 20), (12, 20), (20, 20)),
        worker_pass_cpu=(70.0, 50.0, 80.0),
    )
    quiet = planted["bound"]["least contended worker run"]
    assert quiet["repeat"] == 1 and quiet["cpu s after the passes"] == 2 * (1.5 * 32 - 5) == 86.0
    assert abs(quiet["cut after the passes"] - (1 - 86 / 120)) < 1e-12
    # the slow, contended run 2 (P = 40) leaves more: 2 x (1.5 x 40 - 5) = 110, a cut of 8% only
    assert planted["bound"]["least cut after the passes"] == 1 - 110 / 120
    text = main_job_benchmark_markdown(planted, "x.json")
    assert "least contended worker run (repeat 1" in text and "= 86.0 CPU seconds, a cut of 28%" in text
    assert "after the passes 8% to 33%" in text
    assert "default workers #0 (+40%), default workers #2 (+60%)" in text
    # each column its own median: passes 32 (run 1), total 100 (run 2), finalize 60 (run 0)
    workers = next(row for row in planted["table"]["rows"] if row["run"] == bench.WORKERS)
    assert workers["passes s"] == 32.0 and workers["total s"] == 100.0 and workers["finalize s"] == 60.0


def test_the_bounds_when_the_work_fits_and_a_run_that_meets_the_target():
    planted = _planted(70.0, worker_totals=(74.0, 76.0, 75.0))
    assert planted["bound"]["most cut after the passes"] < 0 and planted["bound"]["most cut overlapped"] < 0
    text = main_job_benchmark_markdown(planted, "x.json")
    assert "the work would fit: what is missing is in how it is scheduled" in text
    assert "a perfect overlap would reach it" in text
    assert "meets the target" in text and "a median 2.50×" in text


def test_differing_tables_are_described_by_column_cells_and_size(tmp_path):
    for name, values in (("a", [1.0, 2.0, 3.0]), ("b", [1.0, 2.0 + 2e-7, 3.0])):
        (tmp_path / name / "tables").mkdir(parents=True)
        frame = pd.DataFrame(
            {"x": values, "token": ["u", "v", "w" if name == "a" else "z"], "same": [1, 2, 3]}
        )
        frame.to_parquet(tmp_path / name / "tables" / "t.parquet")
    n_tables, changed = bench.different_tables(tmp_path / "a", tmp_path / "b")
    assert n_tables == 1 and [table["table"] for table in changed] == ["t.parquet"]
    columns = changed[0]["columns"]
    assert set(columns) == {"x", "token"} and columns["x"]["cells"] == 1 and columns["token"]["cells"] == 1
    assert (
        abs(columns["x"]["largest relative"] - 2e-7 / (2.0 + 2e-7)) < 1e-12
        and "largest relative" not in columns["token"]
    )
    planted = _planted(120.0)
    planted["one thread vs one process"] = {
        "differing values": [0],
        "differing tables": [1],
        "tables": 1,
        "details": [changed],
    }
    text = main_job_benchmark_markdown(planted, "x.json")
    assert (
        "`t` (x in up to 1 of 3 rows, by at most 1.0e-07 relative; token in up to 1 of 3 rows (not numbers))"
        in text
    )


def test_results_files_that_differ_are_found_and_nan_equals_nan():
    a = {"metadata": {"x": 1}, "s": {"v": [1.0, float("nan")], "w": "same"}}
    b = {"metadata": {"x": 2}, "s": {"v": [1.0, float("nan")], "w": "other"}}
    assert bench.differences(a, b) == ["/s/w"]
    assert bench.differences(a, a) == []
