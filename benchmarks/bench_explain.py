"""Benchmarks of automatic labeling (issue 11), ratios measured in one run.

1. Throughput against a loopback OpenAI-compatible server that answers after a fixed delay:
   ``label_experts`` with 8 worker threads vs 1 (target: >= 6x).
2. The offline labeler (examples accumulator in the pass + dissection labels + concept scoring with
   controls) on all 64 experts of toy/moe-16x2, relative to the collection pass it joins (target:
   <= +50%). The baseline pass is the one ``--analyses domains,logit_lens`` runs (routing counts and
   the corpus logit lens, with the concept labeler); a second baseline is the routing-counts-only pass.

    PYTHONPATH=src python benchmarks/bench_explain.py [--max-tokens 60000] [--delay 0.2] [--experts 48]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def throughput(n_experts: int, delay: float) -> dict[str, float]:
    from explain_fixtures import LoopbackServer, word_records
    from tl_moe.explain import LMExplainer, OpenAIChatClient, label_experts

    words = ["cat", "dog", "fish", "bird", "frog", "mole", "newt"]
    records = []
    for block in range(-(-n_experts // len(words))):
        records += word_records(words, layer=block)
    records = records[:n_experts]
    out = {}
    with LoopbackServer(delay_s=delay) as server:
        client = OpenAIChatClient(server.url, "canned", max_retries=0)
        for concurrency in (1, 8):
            tic = time.perf_counter()
            result = label_experts(records, LMExplainer(client), [], concurrency=concurrency, progress=False)
            elapsed = time.perf_counter() - tic
            assert (result.frame["label"] != "").all()
            out[f"requests/s, concurrency {concurrency}"] = round(n_experts / elapsed, 2)
    out["speed-up 8 vs 1"] = round(out["requests/s, concurrency 8"] / out["requests/s, concurrency 1"], 2)
    return out


def offline_cost(max_tokens: int) -> dict[str, float]:
    """Wall and process CPU seconds of whole runs (pass + finalize), after a warm-up run; the two main
    configurations interleaved twice. CPU time is the robust number on a shared machine."""
    import tl_moe
    import tl_moe.pipeline  # noqa: F401
    from tl_moe.pipeline import RunOptions, run

    model = tl_moe.load("toy/moe-16x2", device="cpu")
    options = RunOptions(max_tokens=max_tokens, progress=False, dense_baseline=None)
    run(
        options.replace(max_tokens=2_000),
        analyses=("domains", "explain"),
        models={"toy/moe-16x2": model},
        write_report=False,
    )  # fmt: skip  (warm-up: corpus, tokenizer, concept labeler)
    out: dict[str, float] = {}
    plan = [
        ("routing + lens", ("domains", "logit_lens")),
        ("routing + lens + explain", ("domains", "logit_lens", "explain")),
        ("routing + lens", ("domains", "logit_lens")),
        ("routing + lens + explain", ("domains", "logit_lens", "explain")),
        ("routing only", ("domains",)),
        ("routing + explain", ("domains", "explain")),
    ]
    times: dict[str, list[tuple[float, float]]] = {}
    for name, analyses in plan:
        wall, cpu = time.perf_counter(), time.process_time()
        results = run(options, analyses=analyses, models={"toy/moe-16x2": model}, write_report=False)
        times.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))
        if "explain" in analyses:
            frame = results["explain"].labeling.frame
            out["experts with a row"] = len(frame)
            out["experts labeled"] = int((frame["label"] != "").sum())
        print(name, times[name][-1], flush=True)
    for name, values in times.items():
        out[f"{name}: wall (s)"] = round(min(v[0] for v in values), 1)
        out[f"{name}: cpu (s)"] = round(min(v[1] for v in values), 1)
    for kind in ("wall", "cpu"):
        out[f"explain overhead vs routing+lens ({kind})"] = round(
            out[f"routing + lens + explain: {kind} (s)"] / out[f"routing + lens: {kind} (s)"] - 1, 3
        )
        out[f"explain overhead vs routing only ({kind})"] = round(
            out[f"routing + explain: {kind} (s)"] / out[f"routing only: {kind} (s)"] - 1, 3
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--experts", type=int, default=48)
    parser.add_argument("--skip-offline", action="store_true")
    args = parser.parse_args()
    report = {"throughput": throughput(args.experts, args.delay)}
    print(json.dumps(report, indent=2), flush=True)
    if not args.skip_offline:
        report["offline"] = offline_cost(args.max_tokens)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
