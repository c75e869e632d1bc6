"""The per-layer diagnostics of the drivers' paired Spearman ρ: where each ρ sits in its percentile
interval, the bootstrap bias and the basic interval, recomputed by hand from the bootstrap distribution
(scipy's bootstrap on document indices, the same draws, ρ by scipy's Spearman)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from tl_moe.analysis.effect_estimate import paired_rho_difference
from tl_moe.analysis.stats import basic_interval, interval_position

N_RESAMPLES = 200


def _layered(seed: int = 0, n_layers: int = 3, per_layer: int = 12, n_docs: int = 40):
    """Exact effects, estimate and REAP sums per document of ``n_layers`` × ``per_layer`` experts; the
    estimate tracks the effect closely, so each layer's ρ sits near 1 and its interval leans."""
    rng = np.random.default_rng(seed)
    layer = np.repeat(np.arange(n_layers), per_layer)
    truth = rng.normal(0, 1, layer.size)
    counts = rng.integers(10, 30, n_docs).astype(float)
    exact = truth[:, None] * counts + rng.normal(0, 3, (layer.size, n_docs)) * np.sqrt(counts)
    estimate = (truth + rng.normal(0, 0.2, layer.size))[:, None] * counts
    routed = rng.integers(5, 15, (layer.size, n_docs)).astype(float)
    reap = (truth + rng.normal(0, 0.6, layer.size))[:, None] * routed
    reap = reap + rng.normal(0, 1, (layer.size, n_docs)) * np.sqrt(routed)
    return exact, counts, estimate, reap, routed, layer


def _by_hand(exact, counts, estimate, reap, routed, rows, score: str) -> np.ndarray:
    """The bootstrap distribution of one layer's ρ, from scipy's draws of document indices (the draws
    the drivers' bootstrap makes with the same seed), each ρ by scipy.stats.spearmanr."""

    def rho(docs: np.ndarray, axis: int = -1) -> np.ndarray:
        docs = np.atleast_2d(docs)
        out = []
        for drawn in docs:
            effect = exact[rows][:, drawn].sum(1) / counts[drawn].sum()
            if score == "first-order estimate":
                value = estimate[rows][:, drawn].sum(1) / counts[drawn].sum()
            else:
                value = reap[rows][:, drawn].sum(1) / routed[rows][:, drawn].sum(1)
            out.append(scipy.stats.spearmanr(value, effect).statistic)
        return np.asarray(out)

    result = scipy.stats.bootstrap(
        (np.arange(len(counts)),),
        rho,
        vectorized=True,
        n_resamples=N_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
        batch=N_RESAMPLES,
    )
    return result.bootstrap_distribution


def test_the_per_layer_diagnostics_equal_a_hand_recomputation_from_the_bootstrap_distribution():
    exact, counts, estimate, reap, routed, layer = _layered()
    table = paired_rho_difference(
        exact, counts, estimate, counts, reap, routed, layers=layer, n_resamples=N_RESAMPLES, seed=0
    )
    column = "spearman with exact zeroing effect"
    for value in range(3):
        for score in ("first-order estimate", "REAP saliency"):
            row = table[(table["layer"] == str(value)) & (table["score"] == score)].iloc[0]
            distribution = _by_hand(exact, counts, estimate, reap, routed, layer == value, score)
            q_low, q_high = np.percentile(distribution, [2.5, 97.5])
            rho = row[column]
            assert row["ci low"] == pytest.approx(q_low, abs=1e-10)
            assert row["ci high"] == pytest.approx(q_high, abs=1e-10)
            assert row["basic ci low"] == pytest.approx(np.clip(2 * rho - q_high, -1, 1), abs=1e-10)
            assert row["basic ci high"] == pytest.approx(np.clip(2 * rho - q_low, -1, 1), abs=1e-10)
            assert row["bootstrap bias"] == pytest.approx(distribution.mean() - rho, abs=1e-10)
            assert row["interval position"] == pytest.approx((rho - q_low) / (q_high - q_low), abs=1e-10)
    # planted: the estimate tracks the effect closely, so its ρ sits near 1 and every interval leans up
    first = table[(table["score"] == "first-order estimate") & table["layer"].isin(["0", "1", "2"])]
    assert (first["interval position"] > 0.5).all() and (first["bootstrap bias"] < 0).all()


def test_the_shared_helpers_reflect_the_bounds_and_place_the_estimate():
    assert basic_interval(0.8, 0.5, 0.9) == pytest.approx((0.7, 1.1))
    assert interval_position(0.8, 0.5, 0.9) == pytest.approx(0.75)
    assert np.isnan(interval_position(0.8, 0.5, 0.5)) and np.isnan(basic_interval(0.8, np.nan, 0.9)[0])


def test_the_finding_names_the_most_leaning_per_layer_interval_with_its_basic_interval():
    from tl_moe.pipeline.sections.drivers import DriversResult

    exact, counts, estimate, reap, routed, layer = _layered()
    table = paired_rho_difference(
        exact, counts, estimate, counts, reap, routed, layers=layer, n_resamples=N_RESAMPLES, seed=0
    )
    result = DriversResult(pd.DataFrame(), pd.DataFrame(), 0.5, paired=table)
    text = result._layer_diagnostics(["0", "1", "2"])
    rows = table[table["layer"].isin(["0", "1", "2"]) & (table["score"] != "estimate − REAP")]
    worst = rows.loc[(rows["interval position"] - 0.5).abs().idxmax()]
    label = f"{worst['score']}, layer {worst['layer']} at {worst['interval position']:.2f}"
    basic = f"[{worst['basic ci low']:+.2f}, {worst['basic ci high']:+.2f}]"
    assert "Diagnostics of these 6 per-layer percentile intervals" in text
    assert label in text and basic in text
    low, high = rows["interval position"].min(), rows["interval position"].max()
    assert f"{low:.2f}–{high:.2f}" in text


def test_a_basic_interval_of_a_correlation_stays_within_its_range():
    """The reflected bounds of ρ = 1.00 with percentile [−0.60, +1.00] are [+1.00, +2.60] unclipped; a
    correlation's basic interval is clipped to [−1, 1] (a difference of two to [−2, 2]); inside the range
    nothing changes."""
    from tl_moe.analysis.stats import RHO_DIFFERENCE_RANGE, RHO_RANGE, basic_interval

    assert basic_interval(1.0, -0.6, 1.0) == pytest.approx((1.0, 2.6))
    assert basic_interval(1.0, -0.6, 1.0, RHO_RANGE) == (1.0, 1.0)
    assert basic_interval(-0.9, -0.95, -0.2, RHO_RANGE) == pytest.approx((-1.0, -0.85))
    assert basic_interval(1.5, 0.2, 1.9, RHO_DIFFERENCE_RANGE) == pytest.approx((1.1, 2.0))
    assert basic_interval(0.3, 0.1, 0.4, RHO_RANGE) == pytest.approx((0.2, 0.5))


def test_row_spearman_equals_scipys_and_is_quietly_undefined_without_experts():
    """Each row's ρ equals scipy's spearmanr (ties included); a batch of rows with no experts gives NaN
    without numpy's empty-slice warning (it leaked to the console on tiny models)."""
    import warnings

    from tl_moe.analysis.effect_estimate import _rows_spearman

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (5, 9)).astype(float), rng.normal(size=(5, 9))
    expected = [scipy.stats.spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(_rows_spearman(a, b), expected, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(_rows_spearman(np.zeros((3, 0)), np.zeros((3, 0)))).all()
