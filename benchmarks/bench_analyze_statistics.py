"""Benchmark: what the held-out protocol and its controls cost in the default ``tl-moe analyze``.

Runs the default analyses on toy/moe-16x2 vs toy/dense twice, in one process, on the same tokens:

1. **paper protocol only** — the run as it was before the held-out protocol: the held-out arms are
   switched off (``HeldOutProbing`` replaced by a no-op), and so are the untrained null's pass and
   the specialization's document-permutation baseline;
2. **full** — the default: both protocols, every control (dense on routed tokens, matched subsets,
   permuted labels, the untrained null with its extra collection pass), document-level bootstraps.

Prints both wall and CPU times and their ratios (the issue's bound: at most 2x; on a shared, loaded
machine the CPU ratio is the one to read), then the held-out and paper comparisons of the full run
(the numbers the report quotes).

Run: ``python benchmarks/bench_analyze_statistics.py [--max-tokens 20000] [--out /tmp/bench_stats]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from tl_moe.analysis.held_out_study import HeldOutOutcome, HeldOutProbing
from tl_moe.errors import InputError
from tl_moe.pipeline import RunOptions, run
from tl_moe.pipeline.sections import specialization as specialization_section


def timed(options: RunOptions) -> tuple[float, float, object]:
    """Wall and CPU seconds of one run (CPU time: this process only, robust to a loaded machine)."""
    tic, cpu = time.perf_counter(), time.process_time()
    results = run(options)
    return time.perf_counter() - tic, time.process_time() - cpu, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_stats_"))
    base = RunOptions(max_tokens=args.max_tokens, progress=False)

    original = HeldOutProbing.__call__
    original_permutation = specialization_section.document_permutation_baseline

    def switched_off(*args, **kwargs):
        raise InputError("the document-permutation baseline is switched off")

    HeldOutProbing.__call__ = lambda *a, **k: HeldOutOutcome({}, (), ("held-out protocol switched off",))
    specialization_section.document_permutation_baseline = switched_off
    try:
        old_s, old_cpu, _ = timed(base.replace(out=out / "paper_only", skip_untrained_null=True))
    finally:
        HeldOutProbing.__call__ = original
        specialization_section.document_permutation_baseline = original_permutation
    full_s, full_cpu, full = timed(base.replace(out=out / "full"))
    print(f"max_tokens={args.max_tokens}")
    print(f"paper protocol only: {old_s:.1f} s wall, {old_cpu:.1f} s CPU")
    print(f"full (both protocols, all controls, untrained null): {full_s:.1f} s wall, {full_cpu:.1f} s CPU")
    print(f"ratio full / paper-only: {full_s / old_s:.2f}x wall, {full_cpu / old_cpu:.2f}x CPU")
    print("timings of the full run:", full.timings)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    columns = [
        "protocol",
        "comparison",
        "metric",
        "k",
        "estimate",
        "ci_low",
        "ci_high",
        "n_concepts",
        "n_documents",
        "a_mean",
        "b_mean",
    ]
    print(full["probing"].comparisons[columns].to_string())
    print("notes:", full["probing"].notes)
    print("results:", out / "full" / "results.json")


if __name__ == "__main__":
    main()
