"""The main-job benchmark's summary: planted runs whose medians, target budget and needed work cut are known."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_main_job as bench  # noqa: E402

from readme_results import main_job_benchmark_markdown  # noqa: E402


def _results(passes: tuple[float, float], finalize: float, total: float, workers: int, threads: int):
    """A results file of one planted run: two passes, finalize and total as given."""
    timings = {"pass a (s)": passes[0], "pass b (s)": passes[1], "finalize (s)": finalize, "total (s)": total}
    timings |= {"finalize probing (s)": 0.75 * finalize, "finalize logit_lens (s)": 0.25 * finalize}
    return {"metadata": {"timings": timings, "workers": workers, "machine": {"threads": threads}}}


def _planted(single_finalize: float, worker_totals=(95.0, 97.0, 93.0)) -> dict:
    """Three repeats of each variant: worker runs with 30 s of passes and 5 s outside passes and finalize."""
    runs = {
        bench.ONE_PROCESS: [
            bench.run_row(bench.ONE_PROCESS, r, _results((10, 20), 80.0, 115.0 + r, 1, 2)) for r in range(3)
        ],
        bench.WORKERS: [
            bench.run_row(bench.WORKERS, r, _results((10, 20), total - 35.0, total, 2, 2))
            for r, total in enumerate(worker_totals)
        ],
        bench.ONE_THREAD: [  # 36 s of passes, 5 s outside passes and finalize
            bench.run_row(bench.ONE_THREAD, r, _results((12, 24), finalize, 41.0 + finalize, 1, 1))
            for r, finalize in enumerate((single_finalize - 1, single_finalize, single_finalize + 1))
        ],
    }
    rows = {name: bench.median_row(variant_runs) for name, variant_runs in runs.items()}
    same = {"differing values": [0, 0, 0], "differing tables": [0, 0, 0], "tables": 14}
    return {
        "title": "planted",
        "command": "python benchmarks/bench_main_job.py",
        "machine": {"cpus": 2, "threads": 2},
        "table": {"columns": {"run": "", "total / passes": ".2f×"}, "rows": list(rows.values())},
        "identical": True,
        "workers vs one process": same,
        "one thread vs one process": same,
        "bound": bench.bounds(runs, 2),
        "runs": [run for variant_runs in runs.values() for run in variant_runs],
    }


def test_medians_and_the_range_of_a_variants_runs():
    planted = _planted(120.0)
    workers = next(row for row in planted["table"]["rows"] if row["run"] == bench.WORKERS)
    assert workers["total s"] == 95.0 and workers["passes s"] == 30.0 and workers["other s"] == 5.0
    assert workers["total / passes"] == 95.0 / 30.0
    assert workers["total / passes, range"] == f"{93 / 30:.2f}–{97 / 30:.2f}×"


def test_the_bound_when_the_work_cannot_fit_the_target_on_two_cpus():
    planted = _planted(120.0)
    first, second, third = planted["bound"]["per repeat"]
    # repeat 0: the worker run's total 95 s leaves finalize 2.5 x 30 - 30 - 5 = 40 s; its one-thread run's
    # 119 s of work take at least 59.5 s on 2 CPUs: a third of it (1 - 80 / 119) must go
    assert first["finalize budget s"] == 40.0 and first["shortest finalize s"] == 59.5
    assert abs(first["work cut needed"] - (1 - 80 / 119)) < 1e-12
    assert abs(third["work cut needed"] - (1 - 80 / 121)) < 1e-12
    assert planted["bound"]["least work cut needed"] == first["work cut needed"]
    assert planted["bound"]["most work cut needed"] == third["work cut needed"]
    text = main_job_benchmark_markdown(planted, "x.json")
    assert "misses the target" in text and "a median 3.17× (range 3.10–3.23×)" in text
    assert "119.0 s of work, at least 59.5 s on 2 CPUs, against a budget of 40.0 s" in text
    assert (
        "In every repeat the target needs the finalize work cut, by 33% to 34%: not better scheduling" in text
    )
    assert "In each of the 3 repeats the two runs' results files" in text
    assert "Of that work, in the one-thread runs (median shares): probing 75%, logit_lens 25%." in text


def test_the_bound_when_the_work_fits_and_a_run_that_meets_the_target():
    planted = _planted(70.0, worker_totals=(74.0, 76.0, 75.0))
    assert planted["bound"]["most work cut needed"] < 0
    text = main_job_benchmark_markdown(planted, "x.json")
    assert (
        "What is missing is in how the work is scheduled" in text
        and "needs the finalize work cut" not in text
    )
    assert "meets the target" in text and "a median 2.50×" in text


def test_the_bound_when_the_work_fits_in_some_repeats_only():
    planted = _planted(80.0)  # budgets of 40 s: 79 s of work fits on 2 CPUs, 80 s just does, 81 s does not
    cuts = [bound["work cut needed"] for bound in planted["bound"]["per repeat"]]
    assert cuts[0] < 0 and cuts[1] == 0 and cuts[2] > 0
    text = main_job_benchmark_markdown(planted, "x.json")
    assert "The work fits in some repeats and not in others" in text
