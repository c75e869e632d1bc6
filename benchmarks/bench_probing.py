"""Benchmark: batched k-sparse probing vs a per-expert scikit-learn loop on a toy MoE layer.

Synthetic data shaped like one MoE layer: 16 experts with 256 neurons each, 20k tokens, top-2
routing, ~20 binary concepts. Routing prefers a few experts per concept and some expert neurons
respond to concepts with varied strength, so F1 spans the whole range. Both sides probe the same
(expert, concept) pairs on the same train/test split for ks (1, 2, 4, 8, 16, 32, 64); scikit-learn
does it the usual way: for each expert and concept, rank neurons with numpy and fit one
``LogisticRegression(class_weight='balanced')`` per k, on float64 features, once with the default
lbfgs solver (tol 1e-4, the usual setting) and once with newton-cholesky at tol 1e-8 (converged, the
reference for |dF1|). Their time excludes building the splits; the batched time includes it.

The batched probe is timed five times in the same run: as it fits now ("after"), with the solver and
sampling it had before its speed-ups ("before", :mod:`probing_before`), and with only its train/test
split computed as before, over every token of every problem ("splits over all tokens"), and with only
its chunks of problems cut as before, wherever a problem has under 85% of the largest one's examples
("chunks cut by fill alone"), and with only its split done as before the flat split, on each chunk's
candidates padded to the longest and ordered by a per-row argsort ("split on padded candidates");
they must give the same F1 (the largest difference is printed). Fits per
second count one logistic regression per (unit, concept, k).

Both sides run with the same number of CPU threads (``--threads``, default 1: on a shared machine
multi-threaded small tensor operations mostly wait for each other).

Run: ``python benchmarks/bench_probing.py [--tokens 20000] [--experts 16] [--device cpu] [--repeats 3]
[--threads 1] [--out docs/results/bench_probing.json]``; ``--out`` writes the table as a results file
(``bench_results``) that the README's Performance section is generated from.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_results
import numpy as np
import torch
from probing_before import before, before_finalize, padded_candidate_split, previous_split
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from tl_moe.analysis.probing import STATUS_OK, KSparseProbe

KS = (1, 2, 4, 8, 16, 32, 64)


def toy_moe_layer(n_experts=16, d_expert=256, n_tokens=20_000, n_concepts=20, top_k=2, seed=0):
    """Activations [expert, token, neuron], concept labels [token, concept], routing mask [expert, token]."""
    g = torch.Generator().manual_seed(seed)
    prevalence = torch.linspace(0.03, 0.3, n_concepts)
    labels = torch.rand(n_tokens, n_concepts, generator=g) < prevalence
    preference = torch.randn(n_concepts, n_experts, generator=g) * 1.5
    router_logits = torch.randn(n_tokens, n_experts, generator=g) + labels.float() @ preference
    routed = router_logits.topk(top_k, dim=1).indices
    unit_mask = torch.zeros(n_experts, n_tokens, dtype=torch.bool)
    unit_mask[routed.T, torch.arange(n_tokens)] = True
    tuning = torch.rand(n_experts, n_concepts, d_expert, generator=g) < 0.02
    strength = torch.rand(n_experts, n_concepts, d_expert, generator=g) * 2.0 * tuning
    activations = torch.randn(n_experts, n_tokens, d_expert, generator=g)
    activations += torch.einsum("tc,ecn->etn", labels.float(), strength)
    return activations, labels, unit_mask


SKLEARN_VARIANTS = {
    "scikit-learn loop, lbfgs (default)": {},
    "scikit-learn loop, newton-cholesky": {"solver": "newton-cholesky", "tol": 1e-8},
}


def sklearn_loop(activations, labels, train, test, status, **solver_options):
    """F1 [expert, concept, k] computed one expert, one concept, one k at a time."""
    n_experts, n_concepts = status.shape
    f1 = np.full((n_experts, n_concepts, len(KS)), np.nan)
    for e in range(n_experts):
        X = activations[e].numpy().astype(np.float64)
        for c in range(n_concepts):
            if status[e, c] != STATUS_OK:
                continue
            y = labels[:, c].numpy()
            tr, te = train[e, c].numpy(), test[e, c].numpy()
            X_tr, y_tr, X_te, y_te = X[tr], y[tr], X[te], y[te]
            order = np.argsort(-np.abs(X_tr[y_tr].mean(0) - X_tr[~y_tr].mean(0)), kind="stable")
            for j, k in enumerate(KS):
                model = LogisticRegression(class_weight="balanced", **solver_options)
                model.fit(X_tr[:, order[:k]], y_tr)
                f1[e, c, j] = f1_score(y_te, model.predict(X_te[:, order[:k]]))
    return f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the batched probe (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and for numpy's BLAS")
    parser.add_argument("--out", type=Path, default=None, help="write the results file here (JSON)")
    args = parser.parse_args()
    args.load_at_start = bench_results.load_average()
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        run(args)


def time_fit(probe: KSparseProbe, activations, labels, unit_mask, device: str, repeats: int) -> float:
    """Best wall time of ``repeats`` fits, after one warm-up fit."""
    probe.fit(activations, labels, unit_mask)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        probe.fit(activations, labels, unit_mask)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def run(args: argparse.Namespace) -> None:
    activations, labels, unit_mask = toy_moe_layer(n_experts=args.experts, n_tokens=args.tokens)
    device_acts = activations.to(args.device)
    old = KSparseProbe(ks=KS, device=args.device)
    with before():
        batched_before = time_fit(old, device_acts, labels, unit_mask, args.device, args.repeats)
    previous = KSparseProbe(ks=KS, device=args.device)
    with previous_split():
        batched_previous = time_fit(previous, device_acts, labels, unit_mask, args.device, args.repeats)
    by_fill = KSparseProbe(ks=KS, device=args.device)
    with before_finalize():
        batched_by_fill = time_fit(by_fill, device_acts, labels, unit_mask, args.device, args.repeats)
    padded = KSparseProbe(ks=KS, device=args.device)
    with padded_candidate_split():
        batched_padded = time_fit(padded, device_acts, labels, unit_mask, args.device, args.repeats)
    probe = KSparseProbe(ks=KS, device=args.device)
    batched = time_fit(probe, device_acts, labels, unit_mask, args.device, args.repeats)

    train, test = probe.train_test_masks(labels, unit_mask)
    ok = probe.status_ == STATUS_OK
    n_probes = int(ok.sum()) * len(KS)
    rows = [
        (
            f"KSparseProbe before ({args.device})",
            batched_before,
            (probe.f1_ - old.f1_).abs().numpy()[ok.numpy()],
        ),
        (
            f"KSparseProbe, splits over all tokens ({args.device})",
            batched_previous,
            (probe.f1_ - previous.f1_).abs().numpy()[ok.numpy()],
        ),
        (
            f"KSparseProbe, chunks cut by fill alone ({args.device})",
            batched_by_fill,
            (probe.f1_ - by_fill.f1_).abs().numpy()[ok.numpy()],
        ),
        (
            f"KSparseProbe, split on padded candidates ({args.device})",
            batched_padded,
            (probe.f1_ - padded.f1_).abs().numpy()[ok.numpy()],
        ),
        (f"KSparseProbe after ({args.device})", batched, None),
    ]
    for name, options in SKLEARN_VARIANTS.items():
        start = time.perf_counter()
        reference = sklearn_loop(activations, labels, train, test, probe.status_, **options)
        rows.append((name, time.perf_counter() - start, np.abs(probe.f1_.numpy() - reference)[ok.numpy()]))

    n_experts, _, d_expert = activations.shape
    print(
        f"toy MoE layer: {n_experts} experts x {d_expert} neurons, {args.tokens} tokens, top-2, "
        f"{labels.shape[1]} concepts, ks {KS}; {args.threads} CPU thread(s)"
    )
    print(
        f"(expert, concept) pairs: {int(ok.sum())} ok, {int((~ok).sum())} not_enough_samples; {n_probes} fits; "
        f"tokens per class: median {int(probe.n_examples_[ok].median()) // 2}, max {int(probe.n_examples_.max()) // 2}"
    )
    print(f"{'method':<50}{'seconds':>9}{'fits/s':>10}{'after is':>10}{'max|dF1|':>10}{'mean|dF1|':>11}")
    for name, seconds, delta in rows:
        deltas = f"{delta.max():>10.2g}{delta.mean():>11.2g}" if delta is not None else f"{'-':>10}{'-':>11}"
        print(f"{name:<50}{seconds:>9.2f}{n_probes / seconds:>10.0f}{seconds / batched:>9.1f}x{deltas}")
    print("(|dF1| against the batched probe after; 'after is' = this row's time / the time after)")
    print(f"mean best F1 over experts per k: {probe.mean_best_f1().round(3).to_dict()}")
    if args.out is not None:
        write_results(args, rows, batched, n_probes, n_experts, d_expert, labels.shape[1])


def write_results(args, rows, batched, n_probes, n_experts, d_expert, n_concepts) -> None:
    """The results file: one row per method, its time relative to the batched probe after."""
    table_rows = [
        {
            "method": name,
            "seconds": seconds,
            "fits/s": n_probes / seconds,
            "time / after": seconds / batched,
            "max |ΔF1| vs after": None if delta is None else float(delta.max()),
        }
        for name, seconds, delta in rows
    ]
    columns = {
        "method": "",
        "seconds": ".2f",
        "fits/s": ",.0f",
        "time / after": ".1f×",
        "max |ΔF1| vs after": ".4f",
    }
    slowest_sklearn = min(seconds for name, seconds, _ in rows if name.startswith("scikit")) / batched
    bench_results.write(
        args.out,
        title=(
            f"k-sparse probing of a synthetic MoE layer: {n_experts} experts × {d_expert} neurons, "
            f"{args.tokens:,} tokens, {n_concepts} concepts, ks {', '.join(map(str, KS))} ({n_probes:,} fits); "
            "the batched probe as it fits now (after), as it fitted before its speed-ups (before), and a "
            "per-expert scikit-learn loop on the same units and splits, all with the same threads"
        ),
        threads=args.threads,
        load_at_start=args.load_at_start,
        rows_table=bench_results.table(columns, table_rows),
        notes=[f"The batched probe is {slowest_sklearn:.1f}× faster than the fastest scikit-learn loop."],
        extra={"target batched vs scikit-learn": 10.0, "batched vs scikit-learn": slowest_sklearn},
    )


if __name__ == "__main__":
    main()
