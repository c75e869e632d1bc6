"""Which bootstrap interval the drivers' Spearman ρ use, checked fast on the planted cases of
``benchmarks/planted_studies.py`` (study ``rho_interval_methods``, which measures the coverage of every
method, document gate and case over more seeds; docs/METHODS.md quotes it through a generated block).

The cases (``RHO_CASES``): 60 experts, 90 documents, per-document sums of REAP saliency, exact effect
and first-order estimate; a planted null (saliency unrelated to the effect) and rarely routed experts
(the rarest fifth with a saliency unrelated to their tiny effect, routed on a handful of documents).
The truth of each ρ is Spearman's ρ of the expected scores over the experts the statistic keeps (the
document gate, recomputed by hand). Here, on fewer seeds: the chosen method (``RHO_METHOD``) covers a
planted null with its estimate mid-interval; with rarely routed experts and the gate, the paired ρ do not
lean and the chosen method covers them at least as often as basic and BCa, while the split-halves ρ of
REAP is attenuated (its percentile interval sits below the truth, the estimate above mid-interval).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.stats

from planted_script import planted_studies
from tl_moe.analysis.drivers import HALVES_KEY, saliency_effect_spearman
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import RHO_METHOD, RHO_MIN_EXPERT_DOCUMENTS

SEEDS, RESAMPLES = 60, 300
STUDIES = planted_studies()


@functools.cache
def study(method: str, case: str, gate: int = RHO_MIN_EXPERT_DOCUMENTS) -> dict[str, tuple[float, float]]:
    """Coverage and median position of the estimate in its interval, per statistic, over the seeds."""
    hits: dict[str, list[tuple[bool, float]]] = {statistic: [] for statistic in STUDIES.RHO_STATISTICS}
    for seed in range(SEEDS):
        planted = STUDIES.rho_case(seed, **STUDIES.RHO_CASES[case])
        truths = STUDIES.rho_truths(planted, gate)
        for statistic, (value, low, high) in STUDIES.rho_intervals(
            planted, seed, RESAMPLES, method, gate
        ).items():
            hits[statistic].append((low <= truths[statistic] <= high, (value - low) / (high - low)))
    return {
        k: (float(np.mean([c for c, _ in v])), float(np.median([p for _, p in v]))) for k, v in hits.items()
    }


def test_the_truth_keeps_the_experts_the_split_gate_keeps():
    """The split-halves truth is over the experts routed on at least 5 documents of each half, counted
    here from the routing; the interval's estimate is scipy's ρ over the same experts."""
    planted = STUDIES.rho_case(3, **STUDIES.RHO_CASES["rarely routed experts"])
    effect_sums, _, saliency_sums, routed, tokens, (effect, _, saliency, rate_) = planted
    half = document_split(np.arange(routed.shape[1]), key=HALVES_KEY)
    kept = [
        e
        for e in range(routed.shape[0])
        if sum(routed[e, d] > 0 for d in np.flatnonzero(half == 0)) >= 5
        and sum(routed[e, d] > 0 for d in np.flatnonzero(half == 1)) >= 5
    ]
    assert 0 < len(kept) < routed.shape[0]  # the gate leaves some rare experts out
    truth = STUDIES.rho_truths(planted, 5)["REAP, split halves"]
    assert truth == pytest.approx(scipy.stats.spearmanr(saliency[kept], effect[kept]).statistic)
    share = scipy.stats.spearmanr(rate_[kept], effect[kept]).statistic  # the routed share ranks as the rate
    frequency = STUDIES.frequency_truths(planted, 5)
    assert frequency["routed share, split halves"] == pytest.approx(share)
    assert frequency["REAP − frequency, split halves"] == pytest.approx(truth - share)
    selection, report = half == 0, half == 1
    observed_saliency = saliency_sums[kept][:, selection].sum(1) / routed[kept][:, selection].sum(1)
    observed_effect = effect_sums[kept][:, report].sum(1) / tokens[report].sum()
    interval = saliency_effect_spearman(effect_sums, tokens, saliency_sums, routed, n_resamples=50)
    assert interval.estimate == pytest.approx(
        scipy.stats.spearmanr(observed_saliency, observed_effect).statistic
    )


def test_the_chosen_interval_covers_a_planted_null_rho_with_its_estimate_mid_interval():
    for key, (coverage, position) in study(RHO_METHOD, "planted null").items():
        assert coverage >= 0.88, (key, coverage)
        assert 0.35 <= position <= 0.65, (key, position)


def test_with_the_document_gate_the_paired_rho_of_rare_experts_does_not_lean():
    chosen = study(RHO_METHOD, "rarely routed experts")
    for key in ("estimate, paired", "REAP, paired", "estimate − REAP, paired"):
        coverage, position = chosen[key]
        assert coverage >= 0.83, (key, coverage)
        assert 0.38 <= position <= 0.62, (key, position)


@pytest.mark.parametrize("other", ["basic", "BCa"])
def test_with_rarely_routed_experts_the_chosen_interval_covers_the_paired_rho_at_least_as_often(other):
    chosen, alternative = study(RHO_METHOD, "rarely routed experts"), study(other, "rarely routed experts")
    for key in ("estimate, paired", "REAP, paired", "estimate − REAP, paired"):
        assert chosen[key][0] >= alternative[key][0], (key, chosen[key], other, alternative[key])
    # the split-halves ρ is attenuated by noise: the percentile interval sits below the truth
    assert chosen["REAP, split halves"][1] > 0.5
