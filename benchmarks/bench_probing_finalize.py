"""Benchmark: the probing analysis's fits on the default run's stored tokens, before and after, in one process.

Collects (or resumes from ``--out``'s checkpoints) the default run's three passes with only the probing
analysis, then times, in the same process and on the same stored tokens, the fits of the probing
analysis's finalize: the paper protocol (every expert and dense layer, with the routed-size dense
draws) and every arm of the held-out protocol (their comparisons' bootstraps are left out: they fit
nothing). Each variant runs ``--repeats`` times (best kept): "after" is the code as it is,
"before" with the fitting as it was before its latest speed-ups (:func:`probing_before.before_finalize`).
The two must choose the same units; their largest F1 and balanced-accuracy differences are printed.

Run: ``python benchmarks/bench_probing_finalize.py [--out /tmp/bench_probing_finalize] [--threads 2]
[--repeats 1]``. The first run collects (about a minute); later runs with the same ``--out`` resume.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_results
import numpy as np
import torch
from probing_before import before_finalize

from tl_moe.analysis import held_out_study
from tl_moe.analysis.concept_probing import probe_dense, probe_experts, routed_counts
from tl_moe.pipeline import runner
from tl_moe.pipeline.options import RunOptions
from tl_moe.pipeline.sections import probing as section


class _Captured(Exception):
    """Raised from the probing finalize to stop the run once its inputs are at hand."""


def stored_inputs(out: Path, threads: int):
    """The run context and the probing analysis's inputs of the default run (collected or resumed)."""
    captured = {}

    def capture(self, run, inputs):
        captured.update(run=run, inputs=inputs)
        raise _Captured

    options = RunOptions(
        out=out, analyses=("probing",), keep_checkpoints=True, threads=threads, progress=False
    )
    saved = section.Probing.finalize
    section.Probing.finalize = capture
    try:
        runner.run(options)
    except _Captured:
        pass
    finally:
        section.Probing.finalize = saved
    return captured["run"], captured["inputs"]


def probing_fits(run, inputs) -> tuple[dict, dict]:
    """The probing finalize's fits: seconds per part, and the outputs to compare across variants."""
    cfg = run.config(run.main)
    layers = run.probed_layers()
    settings = section.probe_settings(run)
    stored = inputs[section.Need(run.main, section.ExpertNeurons(layers))]
    dense_stored = inputs[section.Need(run.dense, section.DenseNeurons())]
    untrained = inputs[section.Need(section.untrained_name(run.main), section.ExpertNeurons(layers))]
    seconds, outputs = {}, {}
    start = time.perf_counter()
    outputs["paper moe"] = probe_experts(
        stored, layers, cfg.num_experts, settings, min_positives=run.options.min_examples, progress=False
    )
    dense_cfg = run.config(run.dense)
    outputs["paper dense"] = probe_dense(
        dense_stored,
        dense_cfg.dense_layers,
        settings,
        min_positives=run.options.min_examples,
        routed_counts=routed_counts(stored, layers[len(layers) // 2], cfg.num_experts),
        seed=run.options.seed,
    )
    seconds["paper protocol"] = time.perf_counter() - start
    saved = held_out_study.held_out_comparisons
    held_out_study.held_out_comparisons = lambda *args, **kwargs: []  # bootstraps: no fits, not timed here
    try:
        start = time.perf_counter()
        arms, _, _ = section.held_out_probing(run, stored, dense_stored, untrained, layers)
        seconds["held-out arms"] = time.perf_counter() - start
    finally:
        held_out_study.held_out_comparisons = saved
    outputs.update({f"held-out {name}": arm for name, arm in arms.items()})
    seconds["total"] = sum(seconds.values())
    return seconds, outputs


def differences(before: dict, after: dict) -> dict[str, float]:
    """Largest |difference| of the F1s, and how many chosen units differ, between two variants' outputs."""
    paper_f1, chosen_differ, test_f1, test_accuracy = 0.0, 0, 0.0, 0.0
    for name, a in after.items():
        b = before[name]
        if name.startswith("paper"):
            paper_f1 = max(paper_f1, float(np.nanmax(np.abs(a["f1"].to_numpy() - b["f1"].to_numpy()))))
            if not np.array_equal(np.isnan(a["f1"].to_numpy()), np.isnan(b["f1"].to_numpy())):
                paper_f1 = float("inf")
            continue
        ca, cb = a.chosen, b.chosen
        chosen_differ += int((ca["unit"].to_numpy() != cb["unit"].to_numpy()).sum()) + abs(len(ca) - len(cb))
        if len(ca) == len(cb) and len(ca):
            test_f1 = max(test_f1, float(np.nanmax(np.abs(ca["test_f1"] - cb["test_f1"]))))
            test_accuracy = max(
                test_accuracy,
                float(np.nanmax(np.abs(ca["test_balanced_accuracy"] - cb["test_balanced_accuracy"]))),
            )
    return {
        "paper protocol max |dF1|": paper_f1,
        "held-out chosen units that differ": chosen_differ,
        "held-out max |d test F1|": test_f1,
        "held-out max |d test balanced accuracy|": test_accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_probing_finalize"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    load = bench_results.load_average()
    run, inputs = stored_inputs(args.out, args.threads)
    torch.set_num_threads(args.threads)
    timings: dict[str, list[dict]] = {"before": [], "after": []}
    outputs = {}
    for _ in range(args.repeats):
        with before_finalize():
            seconds, outputs["before"] = probing_fits(run, inputs)
        timings["before"].append(seconds)
        seconds, outputs["after"] = probing_fits(run, inputs)
        timings["after"].append(seconds)
    best = {v: {part: min(t[part] for t in ts) for part in ts[0]} for v, ts in timings.items()}
    print(f"load average at start: {load}; now: {bench_results.load_average()}; {args.threads} thread(s)")
    print(f"{'part':<20}{'before s':>10}{'after s':>10}{'before/after':>14}")
    for part in best["after"]:
        b, a = best["before"][part], best["after"][part]
        print(f"{part:<20}{b:>10.1f}{a:>10.1f}{b / a:>13.2f}x")
    for what, value in differences(outputs["before"], outputs["after"]).items():
        print(f"{what}: {value:.3g}")


if __name__ == "__main__":
    main()
