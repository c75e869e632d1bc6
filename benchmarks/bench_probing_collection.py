"""Collection throughput with every probing hook of the toy MoE, relative to a plain forward.

Streams the embedded corpus's validation split through ``toy/moe-16x2``: (1) a plain forward loop
over the same batches, (2) ``collect`` keeping every layer's ``expert_post`` and ``topk_indices``
(everything k-sparse probing needs) in a TokenActivationStore, (3) the same plus token-level
concept labels. ``collect`` stops each forward after the last hook it needs (here: before the
unembedding); the "full forward" row runs it to the logits like the plain loop. Prints tokens/s and ratios measured in this run (best of ``--repeats``).
Usage: ``python benchmarks/bench_probing_collection.py [--tokens 20000] [--repeats 3] [--threads 1]
[--out docs/results/bench_probing_collection.json]``; ``--out`` writes a results file (``bench_results``)
that the README's Performance section is generated from.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import bench_results
import torch

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    load_at_start = bench_results.load_average()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import tl_moe
    from tl_moe.analysis.activations import TokenActivationStore
    from tl_moe.analysis.concept_probing import expert_probing_hooks
    from tl_moe.collect import BatchBuilder, collect, domain_names, plan_batches
    from tl_moe.data import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus

    model = tl_moe.load("toy/moe-16x2", device="cpu")
    corpus = load_corpus()["validation"].shuffle(seed=0)
    cfg, batch_size, seq_len = model.moe_cfg, 16, 128
    hooks = expert_probing_hooks(cfg)
    builder = BatchBuilder(model.tokenizer, seq_len=seq_len, domain_names=domain_names(corpus))
    batches = [
        builder.build(planned)
        for planned in plan_batches(
            corpus, model.tokenizer, batch_size=batch_size, seq_len=seq_len, max_tokens=args.tokens
        )
    ]
    n_tokens = sum(meta.n_tokens for meta in batches)

    def plain() -> None:
        with torch.inference_mode():
            for meta in batches:
                model(meta.input_ids, attention_mask=meta.attention_mask.long(), return_type=None)

    def collection(labels: bool, stop_early: bool = True):
        def run() -> None:
            collect(
                model,
                corpus,
                {"store": TokenActivationStore(hooks)},
                batch_size=batch_size,
                seq_len=seq_len,
                max_tokens=args.tokens,
                concept_labeler=TokenConceptLabeler() if labels else None,
                progress=False,
                stop_early=stop_early,
            )

        return run

    runs = {
        "plain forward loop": plain,
        "collect, all probing hooks, full forward": collection(False, stop_early=False),
        "collect, all probing hooks (stop early)": collection(False),
        "collect, probing hooks + concept labels": collection(True),
    }
    plain()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = max(best[name], n_tokens / (time.perf_counter() - start))
    print(
        f"\ntoy/moe-16x2, {n_tokens} tokens, batch {batch_size} x {seq_len}, {torch.get_num_threads()} threads (best of {args.repeats})"
    )
    print(f"{'run':42s} {'tok/s':>9s} {'vs plain':>9s}")
    for name, speed in best.items():
        print(f"{name:42s} {speed:9.0f} {speed / best['plain forward loop']:8.2f}x")
    if args.out is not None:
        rows = [
            {"run": name, "tokens/s": speed, "vs plain": speed / best["plain forward loop"]}
            for name, speed in best.items()
        ]
        bench_results.write(
            args.out,
            title=(
                f"collecting every layer's `expert_post` and `topk_indices` of `toy/moe-16x2` (all that k-sparse "
                f"probing needs), {n_tokens:,} tokens, batch {batch_size} × {seq_len}, best of {args.repeats}, "
                "against a plain forward loop over the same batches (target for the full forward: at least 0.8 of it)"
            ),
            threads=torch.get_num_threads(),
            load_at_start=load_at_start,
            rows_table=bench_results.table({"run": "", "tokens/s": ",.0f", "vs plain": ".2f×"}, rows),
        )


if __name__ == "__main__":
    main()
