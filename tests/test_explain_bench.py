"""The labeling-cost benchmark runs (smoke budget) and its results file renders as the docs block."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_labeling_benchmark_smoke_run_writes_a_results_file_the_docs_block_renders(tmp_path):
    from readme_results import labeling_cost_markdown

    spec = importlib.util.spec_from_file_location("bench_labeling", ROOT / "benchmarks" / "bench_labeling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    report = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["experts"] == 64 and report["max_tokens"] == 1_500  # every expert of toy/moe-16x2
    parts = report["labeling parts (s)"]
    assert {"records", "labels and scores", "dashboard cards"} <= set(parts)
    # the labeling is what explain's finalize adds; its timed parts lie inside it (no time asserted)
    assert sum(parts.values()) <= report["labeling (s)"] + 0.05
    assert report["labeling / pass"] > 0 and "causal checks (s)" not in report
    block = labeling_cost_markdown(report, "bench.json")
    assert f"**labeling / pass = {report['labeling / pass']:.3f}**" in block
