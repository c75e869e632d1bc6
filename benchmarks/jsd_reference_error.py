"""How much the paper's reference code inflates specialization by its JSD error, measured on a toy MoE.

tl_moe scores an expert by ``JSD(P_e ‖ P_l) = ½ KL(P_e ‖ M_e) + ½ KL(P_l ‖ M_e)``, ``M_e = ½(P_e + P_l)``,
each KL term summed over the groups of the expert's own row (docs/METHODS.md). The reference code
(jerryy33/MoE_analysis, ``spec.py``) sums its second term over the whole ``[expert, group]`` matrix,
so every expert's score becomes ``½ KL(P_e ‖ M_e) + ½ Σ_e' KL(P_l ‖ M_e')``: it is inflated by
``½ Σ_{e' ≠ e} KL(P_l ‖ M_e')``, the other experts' terms. Its random baseline has the same error over
its 10 multinomial draws (the second term summed over the draws, not averaged), and its published
figure plots score − baseline; both are recomputed here with and without the error, the reference's
way (its own sample size: the expert's counts; 10 draws), to state how far the published excess moves.

The erroneous variant lives in this script only: it is a measurement of the reference, never a
default. The reference's ``1e-8`` smoothing of the distributions is left out (it moves neither
number at the precision reported).

Counts come from tl_moe's own specialization pass on ``toy/moe-16x2`` (routing by vocabulary
cluster, routing by domain, functional by vocabulary cluster), captured as the section computes its
scores. Writes a small JSON (default ``docs/results/jsd_reference_error.json``) with the per-layer
means over non-empty experts.

Run: ``python benchmarks/jsd_reference_error.py [--max-tokens 6000] [--out docs/results/jsd_reference_error.json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float

from tl_moe.analysis.specialization import js_divergence
from tl_moe.pipeline import RunOptions, run
from tl_moe.pipeline.sections import specialization as section

#: Multinomial draws behind the reference's baseline.
REFERENCE_DRAWS = 10


def kl_terms(p: Float[np.ndarray, "row group"], q: Float[np.ndarray, " group"]) -> np.ndarray:
    """``KL(p_r ‖ m_r)`` and ``KL(q ‖ m_r)`` per row r, in bits, with ``m_r = ½(p_r + q)``."""
    m = 0.5 * (p + q[None])
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(p > 0, p * np.log2(p / m), 0.0).sum(1)
        second = np.where(q[None] > 0, q[None] * np.log2(q[None] / m), 0.0).sum(1)
    return first, second


def reference_jsd(p: Float[np.ndarray, "row group"], q: Float[np.ndarray, " group"]) -> np.ndarray:
    """The reference's erroneous JSD of every row against q: the second term summed over ALL rows."""
    first, second = kl_terms(p, q)
    return 0.5 * first + 0.5 * second.sum()


def layer_numbers(counts: np.ndarray, rng: np.random.Generator) -> dict:
    """One layer's ``[expert, group]`` counts -> per-expert scores and excesses, correct and erroneous."""
    n = counts.sum(1)
    scored = n > 0
    pooled = counts.sum(0) / counts.sum()
    p = counts[scored] / n[scored, None]
    correct = js_divergence(torch.from_numpy(p), torch.from_numpy(pooled)[None]).numpy()
    erroneous = reference_jsd(p, pooled)
    base, base_err = [], []
    for size in n[scored]:
        draws = rng.multinomial(int(size), pooled, size=REFERENCE_DRAWS) / size
        base.append(js_divergence(torch.from_numpy(draws), torch.from_numpy(pooled)[None]).numpy().mean())
        base_err.append(reference_jsd(draws, pooled).mean())
    excess, excess_err = correct - np.array(base), erroneous - np.array(base_err)
    return {
        "experts_scored": int(scored.sum()),
        "experts_empty": int((~scored).sum()),
        "mean_jsd_bits": float(correct.mean()),
        "mean_jsd_reference_error_bits": float(erroneous.mean()),
        "mean_jsd_inflation_bits": float((erroneous - correct).mean()),
        "min_jsd_inflation_bits": float((erroneous - correct).min()),
        "max_jsd_inflation_bits": float((erroneous - correct).max()),
        "mean_excess_bits": float(excess.mean()),
        "mean_excess_reference_error_bits": float(excess_err.mean()),
        "mean_excess_inflation_bits": float((excess_err - excess).mean()),
    }


def captured_counts(options: RunOptions) -> list[tuple[str, torch.Tensor, tuple[int, ...]]]:
    """Run tl_moe's specialization analysis and keep the counts of every measure it scores."""
    captured = []
    original = section.specialization_scores

    def capture(counts, sample_sizes=None, **kwargs):
        captured.append((kwargs.get("kind", "routing"), torch.as_tensor(counts), kwargs.get("layers")))
        return original(counts, sample_sizes, **kwargs)

    section.specialization_scores = capture
    try:
        run(options, analyses=["specialization"], write_report=False)
    finally:
        section.specialization_scores = original
    # The section scores the main model's measures first, in this order (then the untrained model's).
    names = (
        f"routing, {options.n_token_groups} token clusters",
        "routing, domains",
        f"functional, {options.n_token_groups} token clusters",
    )
    return [(name, counts, layers) for name, (_, counts, layers) in zip(names, captured, strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy/moe-16x2")
    parser.add_argument("--max-tokens", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/jsd_reference_error.json"))
    args = parser.parse_args()
    options = RunOptions(
        model=args.model,
        dense_baseline=None,
        max_tokens=args.max_tokens,
        seed=args.seed,
        skip_untrained_null=True,
        permutations=19,  # the document-permutation baseline is not used here
        progress=False,
        threads=1,
        out=Path(tempfile.mkdtemp(prefix="jsd_reference_error_")),
    )
    rng = np.random.default_rng(args.seed)
    measures = {}
    for name, counts, layers in captured_counts(options):
        counts = counts.double().numpy()
        rows = [
            {"layer": int(layer), **layer_numbers(counts[i], rng)}
            for i, layer in enumerate(layers or range(counts.shape[0]))
        ]
        inflation = [row["mean_jsd_inflation_bits"] for row in rows]
        excess = [row["mean_excess_inflation_bits"] for row in rows]
        measures[name] = {
            "groups": int(counts.shape[-1]),
            "per_layer": rows,
            "layer_mean_jsd_inflation_bits_range": [min(inflation), max(inflation)],
            "layer_mean_excess_inflation_bits_range": [min(excess), max(excess)],
        }
    result = {
        "what": (
            "Per-layer mean over non-empty experts of tl_moe's JSD(P_e || P_layer) and of the reference "
            "code's erroneous variant (second KL term summed over all experts, and over its 10 baseline "
            "draws), in bits; inflation = erroneous minus correct. Excess = score minus the reference's "
            "10-draw multinomial baseline (its sample size: the expert's counts). Empty experts are left out "
            "of the sum; the reference, smoothing them to uniform, would add their terms too."
        ),
        "command": f"python benchmarks/jsd_reference_error.py --max-tokens {args.max_tokens} --seed {args.seed}",
        "model": args.model,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "reference_baseline_draws": REFERENCE_DRAWS,
        "measures": measures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, measure in measures.items():
        low, high = measure["layer_mean_jsd_inflation_bits_range"]
        elow, ehigh = measure["layer_mean_excess_inflation_bits_range"]
        print(
            f"{name}: JSD inflated by {low:+.3f} .. {high:+.3f} bits per layer; excess by {elow:+.3f} .. {ehigh:+.3f}"
        )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
