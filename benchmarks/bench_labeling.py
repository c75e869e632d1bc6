"""Labeling cost: what the offline labels of every expert add to the collection pass, in one run.

One ``--analyses explain`` run on ``toy/moe-16x2`` (after a warm-up run on a small budget that loads
the corpus, the tokenizer and the concept labeler): the collection pass (every accumulator the run
needs, the explain examples included, and their finalize) and the explain finalize (records, offline
labels of every expert, concept scoring with the shuffled-label control and the token-set baseline,
the cards and the dashboard) are timed, and the causal checks of the labels inside it separately.
The ratio reported is labeling / pass in process CPU seconds (robust on a shared machine; the wall-clock
ratio is reported beside it), causal checks excluded (target: at most 0.30).

    PYTHONPATH=src python benchmarks/bench_labeling.py                     # writes docs/results/bench_labeling.json
    PYTHONPATH=src python benchmarks/bench_labeling.py --smoke --out /tmp/b.json   # seconds; checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "toy/moe-16x2"
TARGET_RATIO = 0.30
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "bench_labeling.json"


def _timed(function: Callable, seconds: dict[str, float], name: str) -> Callable:
    """``function`` adding its wall time to ``seconds[name]`` and its process CPU time (every thread:
    the labels are scored on a thread pool) to ``seconds[name + " cpu"]`` on each call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tic, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - tic
            seconds[f"{name} cpu"] = seconds.get(f"{name} cpu", 0.0) + time.process_time() - cpu

    return wrapper


def measure(max_tokens: int, causal_windows: int, warmup_tokens: int) -> dict[str, Any]:
    """Seconds of the pass, of the labeling (explain finalize less its causal checks) and of the
    causal checks, from one run; the parts of the labeling too."""
    import tl_moe
    import tl_moe.explain.labeler as labeler
    import tl_moe.pipeline.results.explain as explain_result
    import tl_moe.pipeline.runner as runner
    import tl_moe.pipeline.sections.explain as explain_section
    from tl_moe.explain.examples import ExpertExamples
    from tl_moe.pipeline import RunOptions, run

    model = tl_moe.load(MODEL, device="cpu")
    options = RunOptions(model=MODEL, dense_baseline=None, progress=False, threads=1)
    run(
        options.replace(max_tokens=warmup_tokens, explain_causal_windows=0),
        analyses=("explain",),
        models={MODEL: model},
        write_report=False,
    )  # fmt: skip  (warm-up: corpus, tokenizer, concept labeler)
    seconds: dict[str, float] = {}
    patched = {
        (runner, "_collect_model"): "pass",
        (explain_section.Explain, "finalize"): "explain finalize",
        (labeler, "causal_checks"): "causal checks",
        (labeler, "label_experts"): "labels and scores",
        (explain_result, "expert_cards"): "cards table",
        (explain_result, "dashboard_cards"): "dashboard cards",
        (ExpertExamples, "records"): "records",
    }
    originals = {key: getattr(*key) for key in patched}
    try:
        for (owner, attribute), name in patched.items():
            setattr(owner, attribute, _timed(originals[(owner, attribute)], seconds, name))
        results = run(
            options.replace(max_tokens=max_tokens, explain_causal_windows=causal_windows),
            analyses=("explain",), models={MODEL: model}, write_report=False,
        )  # fmt: skip
    finally:
        for (owner, attribute), function in originals.items():
            setattr(owner, attribute, function)
    frame = results["explain"].labeling.frame
    pass_s, pass_cpu = seconds["pass"], seconds["pass cpu"]
    causal_s = seconds.get("causal checks", 0.0)
    labeling_s = seconds["explain finalize"] - causal_s
    labeling_cpu = seconds["explain finalize cpu"] - seconds.get("causal checks cpu", 0.0)
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "tokens": int(sum(results.tokens_by_domain.values())),
        "experts": len(frame),
        "experts labeled": int((frame["label"] != "").sum()),
        "pass (s)": round(pass_s, 2),
        "labeling (s)": round(labeling_s, 2),
        "labeling / pass": round(labeling_cpu / pass_cpu, 3),
        "labeling / pass, wall": round(labeling_s / pass_s, 3),
        "pass, CPU (s)": round(pass_cpu, 2),
        "labeling, CPU (s)": round(labeling_cpu, 2),
        "target labeling / pass": TARGET_RATIO,
        "causal windows": causal_windows,
        **(
            {"causal checks (s)": round(causal_s, 2), "causal checks / pass": round(causal_s / pass_s, 3)}
            if causal_windows
            else {}
        ),
        "labeling parts (s)": {
            name: round(value, 2)
            for name, value in seconds.items()
            if not name.endswith(" cpu") and name not in ("pass", "explain finalize", "causal checks")
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=60_000, help="default: the default run's budget")
    parser.add_argument(
        "--causal-windows", type=int, default=0, help="causal checks to time too (30 windows: ~15x the pass)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny budget, to check the benchmark runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results file written")
    args = parser.parse_args(argv)
    if args.smoke:
        args.max_tokens, args.causal_windows = 1_500, 0
    report = measure(args.max_tokens, args.causal_windows, warmup_tokens=1_000)
    report["command"] = "PYTHONPATH=src python benchmarks/bench_labeling.py" + (
        f" --max-tokens {args.max_tokens} --causal-windows {args.causal_windows}"
        if not args.smoke
        else " --smoke"
    )
    report["machine"] = {
        "cpus": os.cpu_count(),
        "load average (1 min) at the end": round(os.getloadavg()[0], 1),
        "platform": platform.platform(),
    }
    print(json.dumps(report, indent=2))
    print(
        f"labeling / pass = {report['labeling / pass']} CPU, {report['labeling / pass, wall']} wall "
        f"(target <= {TARGET_RATIO})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
