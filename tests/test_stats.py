"""The statistics helpers against scipy.stats and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from tl_moe.analysis.stats import (
    MIN_DOCUMENTS,
    benjamini_hochberg,
    cluster_bootstrap,
    paired_difference,
    permutation_pvalues,
    resample_weights,
)
from tl_moe.errors import InputError


def test_resample_weights_count_each_cluster():
    weights = resample_weights(np.array([[0, 0, 2], [1, 2, 2]]), 4)
    np.testing.assert_array_equal(weights, [[2, 0, 1, 0], [0, 1, 2, 0]])


def test_one_token_per_document_bootstrap_equals_scipy_bootstrap_of_the_mean():
    x = np.random.default_rng(1).normal(size=50)
    ours = cluster_bootstrap(lambda w: (w @ x) / w.sum(1), len(x), n_resamples=999, seed=3)
    theirs = scipy.stats.bootstrap(
        (x,), np.mean, n_resamples=999, method="percentile", rng=np.random.default_rng(3)
    )
    assert ours.estimate == pytest.approx(x.mean())
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=1e-12)
    assert ours.n == 50 and ours.available


def test_documents_not_tokens_are_resampled():
    """40 documents of 50 identical tokens each: the document-level interval of the token mean is
    the interval of 40 draws, far wider than a token-level bootstrap of 2000 draws would give."""
    rng = np.random.default_rng(0)
    doc_values = rng.normal(size=40)
    sums, counts = doc_values * 50, np.full(40, 50.0)
    interval = cluster_bootstrap(lambda w: (w @ sums) / (w @ counts), 40, n_resamples=2000)
    tokens = np.repeat(doc_values, 50)
    naive = scipy.stats.bootstrap((tokens,), np.mean, n_resamples=500, rng=np.random.default_rng(0))
    width = interval.high - interval.low
    assert width > 4 * (naive.confidence_interval.high - naive.confidence_interval.low)
    # ~ 2 * 1.96 * sd / sqrt(40)
    assert width == pytest.approx(2 * 1.96 * doc_values.std() / np.sqrt(40), rel=0.25)


def test_several_statistics_get_one_interval_each():
    x = np.arange(30.0)
    low, high = cluster_bootstrap(lambda w: np.stack([(w @ x) / 30, 2 * (w @ x) / 30], 1), 30)
    assert low.estimate == pytest.approx(14.5) and high.estimate == pytest.approx(29.0)
    assert high.low == pytest.approx(2 * low.low) and high.high == pytest.approx(2 * low.high)


def test_too_few_documents_is_an_error_naming_the_minimum_or_an_unavailable_interval():
    with pytest.raises(InputError, match=f"at least {MIN_DOCUMENTS}"):
        cluster_bootstrap(lambda w: w.sum(1), 3)
    interval = cluster_bootstrap(lambda w: w.sum(1), 3, on_too_few="unavailable", what="mean F1")
    assert not interval.available and np.isnan(interval.low) and "mean F1" in interval.reason
    assert interval.to_dict()["ci_low"] is None and interval.estimate == 3


def test_paired_difference_of_equal_statistics_is_exactly_zero_and_a_real_one_is_not():
    x = np.random.default_rng(2).normal(size=30)
    same = paired_difference(lambda w: (w @ x) / w.sum(1), lambda w: (w @ x) / w.sum(1), 30)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and same.covers(0.0)
    shifted = paired_difference(lambda w: (w @ (x + 1)) / w.sum(1), lambda w: (w @ x) / w.sum(1), 30)
    assert shifted.low == pytest.approx(1.0) and shifted.high == pytest.approx(1.0)
    noisy = paired_difference(lambda w: (w @ (2 * x)) / w.sum(1), lambda w: (w @ x) / w.sum(1), 30)
    assert noisy.low < noisy.estimate < noisy.high


def test_exact_permutation_pvalue_equals_scipy_permutation_test():
    x = np.array([0.3, 1.2, -0.4, 2.2, 0.9, -1.0])
    labels = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])

    def statistic(permuted):
        return permuted @ x  # [batch, 6] @ [6] -> [batch]

    observed, p = permutation_pvalues(statistic, labels, n_resamples=10_000)
    theirs = scipy.stats.permutation_test(
        (labels,),
        lambda lab, axis=-1: np.sum(lab * x, axis=axis),
        permutation_type="pairings",
        alternative="greater",
        vectorized=True,
        n_resamples=10_000,
    )
    assert observed == pytest.approx(theirs.statistic)
    assert p == pytest.approx(theirs.pvalue)
    # By hand: the observed labels put 1s on the three largest x: only the 3! * 3! = 36 of 720
    # orderings that keep that assignment reach the observed sum.
    assert p == pytest.approx(36 / 720)


def test_randomized_permutation_pvalues_are_never_zero_and_vectorized_over_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    x[:, 0] += np.arange(40) % 2 * 3.0  # statistic 0 truly depends on the labels
    labels = (np.arange(40) % 2).astype(float)
    observed, p = permutation_pvalues(lambda lab: lab @ x, labels, n_resamples=499, seed=1)
    assert observed.shape == p.shape == (3,)
    assert p[0] == pytest.approx(1 / 500)  # nothing in the null reaches it: (0 + 1) / (499 + 1)
    assert p[1] > 0.01 and p[2] > 0.01


def test_benjamini_hochberg_matches_scipy_and_a_hand_computed_case():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    adjusted, discovered = benjamini_hochberg(p, alpha=0.05)
    # sorted 0.01, 0.03, 0.04, 0.2 -> p * m / rank = 0.04, 0.06, 0.0533, 0.2 -> running minimum from the top
    np.testing.assert_allclose(adjusted, [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    np.testing.assert_array_equal(discovered, [True, False, False, False])
    many = np.random.default_rng(0).uniform(size=200) ** 3
    np.testing.assert_allclose(benjamini_hochberg(many)[0], scipy.stats.false_discovery_control(many))
    with_nan, found = benjamini_hochberg(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(with_nan[1]) and not found[1]
    np.testing.assert_allclose(with_nan[[0, 2]], [0.02, 0.04])


def test_stratified_bootstrap_keeps_each_stratum_size():
    """Planted: a statistic equal to how many stratum-0 documents a resample drew. Stratified, every
    resample draws exactly the stratum's size (a zero-width interval at it); pooled, the count varies."""
    strata = np.repeat([0, 1], [12, 28])

    def drawn_from_first(weights):
        return weights[:, strata == 0].sum(1)

    stratified = cluster_bootstrap(
        drawn_from_first, 40, n_resamples=300, seed=1, strata=strata, min_clusters=10
    )
    pooled = cluster_bootstrap(drawn_from_first, 40, n_resamples=300, seed=1)
    assert stratified.low == stratified.high == 12
    assert pooled.high - pooled.low > 5


def test_stratified_bootstrap_equals_scipys_two_sample_bootstrap():
    """The difference of two halves' document means, stratified by half, is scipy's independent
    two-sample bootstrap of the same data with the same generator."""
    rng = np.random.default_rng(0)
    first, second = rng.normal(0, 1, 31), rng.normal(0.5, 2, 37)
    values = np.concatenate([first, second])
    strata = np.repeat([0, 1], [31, 37])

    def difference(weights):
        w0, w1 = weights * (strata == 0), weights * (strata == 1)
        return (w1 @ values) / w1.sum(1) - (w0 @ values) / w0.sum(1)

    ours = cluster_bootstrap(difference, 68, n_resamples=999, seed=4, strata=strata)
    reference = scipy.stats.bootstrap(
        (first, second),
        lambda a, b, axis=-1: b.mean(axis) - a.mean(axis),
        n_resamples=999,
        method="percentile",
        rng=np.random.default_rng(4),
    ).confidence_interval
    assert ours.low == pytest.approx(reference.low, abs=1e-12)
    assert ours.high == pytest.approx(reference.high, abs=1e-12)


def test_stratified_bootstrap_needs_the_fewest_documents_in_each_stratum():
    """Each half carries one side of a split-halves statistic: 40 + 6 documents pass a pooled gate of 30
    but not the per-stratum one; the reason names both sizes."""
    strata = np.repeat([0, 1], [40, 6])
    interval = cluster_bootstrap(
        lambda w: w.sum(1), 46, n_resamples=50, strata=strata, on_too_few="unavailable"
    )
    assert not interval.available and "40, 6" in interval.reason and "at least 30" in interval.reason
    fine = cluster_bootstrap(lambda w: w.sum(1), 60, n_resamples=50, strata=np.repeat([0, 1], [30, 30]))
    assert fine.available
