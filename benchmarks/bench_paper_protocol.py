"""Benchmark: the probing section's finalize with the paper protocol as the reference code samples
it, against the former paper protocol (each unit subsampled to min(pos, neg), balanced test split).

One ``tl-moe analyze``-style run of the probing analysis (toy/moe-16x2 vs toy/dense, untrained null
skipped); once the collection pass is done, the section's ``finalize`` is timed on the same inputs
with each paper protocol in turn (alternating, ``--repeats`` times each, no checkpoints), so the ratio
comes from one process on one machine state. The held-out protocol is the same code in both and is
part of both times; the former paper sampling is re-created here only for the measurement.

Run: ``python benchmarks/bench_paper_protocol.py [--max-tokens 10000] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from tl_moe.analysis import concept_probing
from tl_moe.analysis.probing import KSparseProbe
from tl_moe.pipeline import RunOptions, run
from tl_moe.pipeline.sections.probing import PAPER, Probing


def former_probe(activations, unit_mask, stored, unit_names, probe_params, activation_index=None):
    """The paper path before the change: every unit subsampled to min(pos, neg) per concept."""
    frames = []
    for columns, population in concept_probing.concept_populations(stored):
        probe = KSparseProbe(**probe_params)
        probe.fit(
            activations,
            stored.labels[:, columns],
            unit_mask & population,
            activation_index=activation_index,
            unit_names=unit_names,
            concept_names=[stored.concept_names[c] for c in columns],
        )
        frames.append(probe.to_frame())
    return pd.concat(frames, ignore_index=True)


def timed(finalize, *args) -> tuple[float, float, object]:
    tic, cpu = time.perf_counter(), time.process_time()
    result = finalize(*args)
    return time.perf_counter() - tic, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"reference sampling (now)": [], "former sampling": []}
    results = {}
    original_finalize, current_probe = Probing.finalize, concept_probing._probe

    def measured(self, run_context, inputs):
        run_context.checkpoint_dir = None  # every call computes
        for _ in range(args.repeats):
            for name, probe in (
                ("reference sampling (now)", current_probe),
                ("former sampling", former_probe),
            ):
                concept_probing._probe = probe
                try:
                    wall, cpu, result = timed(original_finalize, self, run_context, inputs)
                finally:
                    concept_probing._probe = current_probe
                times[name].append((wall, cpu))
                results[name] = result
        return result

    Probing.finalize = measured
    try:
        options = RunOptions(
            max_tokens=args.max_tokens,
            skip_untrained_null=True,
            progress=False,
            threads=1,
            out=Path(tempfile.mkdtemp(prefix="bench_paper_")),
        )
        run(options, analyses=["probing"], write_report=False)
    finally:
        Probing.finalize = original_finalize
    print(f"max_tokens={args.max_tokens}, repeats={args.repeats}")
    for name, runs in times.items():
        walls, cpus = zip(*runs, strict=True)
        print(
            f"{name}: wall {min(walls):.1f} s (min of {list(map(lambda w: round(w, 1), walls))}), CPU {min(cpus):.1f} s"
        )
    now, before = (min(c for _, c in times[n]) for n in times)
    now_wall, before_wall = (min(w for w, _ in times[n]) for n in times)
    print(f"ratio now / former: {now_wall / before_wall:.2f}x wall, {now / before:.2f}x CPU")
    for name, result in results.items():
        paper = {key: value for key, value in result.metrics().items() if key.startswith(PAPER)}
        print(name, paper)


if __name__ == "__main__":
    main()
