"""First-order estimate vs exact interventional effects of every expert: time and rank agreement.

On ``toy/moe-16x2`` (4 sparse layers x 16 experts = 64 experts) and the first ``--tokens`` tokens of
the embedded corpus (validation split, shuffled with seed 0, as the pipeline does), it runs, in this
one process and on the same batches, three ``collect`` passes:

- **estimate**: :class:`~tl_moe.analysis.effect_estimate.FirstOrderEffects` — one forward and one
  backward per batch (the clean forward of ``collect`` is skipped: nothing else hooks it);
- **exact zero**: :class:`~tl_moe.collect.ExpertEffects` with ``kinds=("zero",)`` — the
  clean forward plus the interventional pass (64 edits, suffix forwards, readout where changed);
- **exact remove**: the same with ``kinds=("remove",)``;

(each the median of ``--repeats`` timed runs after one warm-up of a single batch) and prints each
time, the speed ratios exact / estimate (zero, remove, and both, as the drivers analysis runs them),
and the Spearman correlation of the estimate with each exact effect over the 64 experts (pooled) and
per layer (16 each), with a 95% percentile bootstrap over experts.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_effect_estimate.py [--tokens 8192] [--threads 1]
[--batch-size 16] [--seq-len 128] [--repeats 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import tl_moe
    from tl_moe.analysis.effect_estimate import FirstOrderEffects, score_agreement
    from tl_moe.collect import ExpertEffects, collect
    from tl_moe.data.corpus import load_corpus

    load_before = os.getloadavg()
    model = tl_moe.load("toy/moe-16x2", device="cpu")
    cfg = model.moe_cfg
    corpus = load_corpus(None)["validation"].shuffle(seed=0)
    layers, n = cfg.sparse_layers, cfg.num_experts
    options = dict(batch_size=args.batch_size, seq_len=args.seq_len, max_tokens=args.tokens, progress=False)
    passes = {
        "estimate": lambda: FirstOrderEffects(layers, n),
        "exact zero": lambda: ExpertEffects(layers, ("zero",), max_tokens=args.tokens),
        "exact remove": lambda: ExpertEffects(layers, ("remove",), max_tokens=args.tokens),
    }
    warm = dict(options, max_tokens=args.seq_len)
    for make in passes.values():
        collect(model, corpus, {"a": make()}, **warm)
    seconds, results = {}, {}
    for name, make in passes.items():
        seconds[name], results[name] = timed(
            lambda make=make: collect(model, corpus, {"a": make()}, **options)["a"], args.repeats
        )
    load_after = os.getloadavg()

    estimate = results["estimate"]
    positions = int(estimate.counts.sum())
    exact = {
        kind: (results[f"exact {kind}"].sums[0].sum(-1) / int(results[f"exact {kind}"].counts.sum())).numpy()
        for kind in ("zero", "remove")
    }
    assert all(int(results[f"exact {kind}"].counts.sum()) == positions for kind in ("zero", "remove"))
    agreement = score_agreement(
        exact,
        {"first-order estimate": estimate.per_corpus_token().numpy()},
        layers,
        n_top=8,
        n_resamples=2000,
    )

    print(
        f"\ntoy/moe-16x2: {cfg.n_layers} layers, {len(layers)} sparse x {n} experts top-{cfg.experts_per_token}, "
        f"d_model {cfg.d_model}, vocab {cfg.d_vocab}; {positions} next-token positions "
        f"(--tokens {args.tokens}, {args.batch_size}x{args.seq_len} windows); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{os.cpu_count()} CPUs"
    )
    est = seconds["estimate"]
    print(f"{'pass':14s} {'seconds':>8s} {'exact / estimate':>17s}")
    print(f"{'estimate':14s} {est:8.2f}")
    for name in ("exact zero", "exact remove"):
        print(f"{name:14s} {seconds[name]:8.2f} {seconds[name] / est:16.1f}x")
    both = seconds["exact zero"] + seconds["exact remove"]
    print(f"{'exact both':14s} {both:8.2f} {both / est:16.1f}x   (target >= 10x)")
    print("\nSpearman rho of the first-order estimate with the exact effect (95% bootstrap over experts):")
    print(
        f"{'exact':8s} {'layer':>5s} {'experts':>7s} {'rho':>6s} {'95% CI':>16s} {'top-8 overlap':>14s} {'chance':>7s}"
    )
    for _, row in agreement.iterrows():
        interval = f"[{row['ci low']:+.2f}, {row['ci high']:+.2f}]" if not row["interval"] else "n/a"
        print(
            f"{row['exact effect']:8s} {row['layer']:>5s} {row['experts']:7d} {row['spearman']:+6.2f} "
            f"{interval:>16s} {row['top-n overlap']:>6d} of {row['top n']:<5d} {row['chance overlap']:7.2f}"
        )
    first_order = estimate.per_corpus_token().numpy().reshape(-1)
    for kind, effect in exact.items():
        effect = effect.reshape(-1)
        moved = (effect != 0) & (first_order != 0)
        same_sign = float(((effect > 0) == (first_order > 0))[moved].mean())
        ratio = float(np.median(np.abs(effect[moved]) / np.abs(first_order[moved])))
        print(
            f"{kind}: same sign as the estimate for {same_sign:.0%} of {int(moved.sum())} experts; "
            f"median |exact| / |estimate| = {ratio:.1f}"
        )
    zero = agreement[(agreement["layer"] == "all") & (agreement["exact effect"] == "zero")].iloc[0]
    print(
        f"\nsummary: estimate {est:.2f} s vs exact zero+remove {both:.2f} s = {both / est:.1f}x faster "
        f"(zero alone {seconds['exact zero'] / est:.1f}x); Spearman(estimate, exact zero) = {zero['spearman']:.3f} "
        f"[{zero['ci low']:.3f}, {zero['ci high']:.3f}] over {int(zero['experts'])} experts"
    )


if __name__ == "__main__":
    main()
