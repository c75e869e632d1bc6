"""The interval of a difference whose control averages a few random draws (the matched-count routed-token
control's random neuron subsets): the documents' bootstrap variance of the draw mean plus the variance
between the draws over their number, with a t distribution on Satterthwaite's degrees of freedom
(``stats.draw_mean_t``, used by ``held_out_probing.compare`` wherever the control has several draws).

Planted as in the held-out tests: 40 test documents, 3 concepts, the first arm's probes hit at
(0.8, 0.6, 0.7), each control draw hits at those rates plus a draw offset per concept (sd ``draw_sd``),
false alarms 0.1; balanced accuracy, so the true difference from the draws' population is
``gain / 2``. The seeds are vectorised: one array of every seed's counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from tl_moe.analysis.held_out_probing import FN, FP, TN, TP, HeldOutArm, balanced_accuracy, compare
from tl_moe.analysis.stats import draw_mean_t, resample_weights

N_DOCS, HITS, FALSE_ALARM = 40, np.array([0.8, 0.6, 0.7]), 0.1


def _planted(rng, n_seeds: int, n_draws: int, draw_sd: float, gain: float = 0.0) -> np.ndarray:
    """``[seed, arm, concept, doc, 4]`` confusion counts; arm 0 is the first arm, arms 1.. the draws."""
    rates = np.broadcast_to(HITS, (n_seeds, 1 + n_draws, len(HITS))).copy()
    rates[:, 0] += gain
    rates[:, 1:] += rng.normal(0, draw_sd, (n_seeds, n_draws, len(HITS)))
    rates = np.clip(rates, 0, 1)[..., None]
    positives = rng.poisson(20.0, (*rates.shape[:-1], N_DOCS))
    negatives = rng.poisson(60.0, positives.shape)
    tp, fp = rng.binomial(positives, rates), rng.binomial(negatives, FALSE_ALARM)
    counts = np.zeros((*positives.shape, 4))
    counts[..., TP], counts[..., FN], counts[..., FP], counts[..., TN] = (
        tp,
        positives - tp,
        fp,
        negatives - fp,
    )
    return counts


def _per_draw(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[seed, resample, draw]``: mean over concepts of first arm minus draw, on weighted documents."""
    totals = np.einsum("srd,sacdk->srack", weights, counts)
    scores = balanced_accuracy(totals)  # [seed, resample, arm, concept]
    return (scores[:, :, :1] - scores[:, :, 1:]).mean(-1)


def _tests(seed: int, n_seeds: int, n_draws: int, draw_sd: float, gain: float = 0.0, n_resamples: int = 199):
    """Every seed's draw-mean t test: the estimate, the interval and the p-value, as arrays ``[seed]``."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_seeds, 250):
        counts = _planted(rng, min(250, n_seeds - start), n_draws, draw_sd, gain)
        indices = rng.integers(0, N_DOCS, (len(counts), n_resamples, N_DOCS))
        observed = _per_draw(counts, np.ones((len(counts), 1, N_DOCS)))[:, 0]  # [seed, draw]
        resampled = _per_draw(counts, resample_weights(indices, N_DOCS)).mean(-1)  # [seed, resample]
        t = draw_mean_t(observed.mean(-1), resampled, observed, N_DOCS)
        out.append(
            pd.DataFrame(
                {"estimate": observed.mean(-1), "low": t["low"], "high": t["high"], "p": t["p_value"]}
            )
        )
    return pd.concat(out, ignore_index=True)


def _band(rate: float, n: int, z: float = 2.6) -> float:
    return z * np.sqrt(rate * (1 - rate) / n)


def test_a_planted_null_with_three_varying_draws_rejects_at_the_nominal_rate():
    """Draw sd 0.05, 3 draws, 2,000 seeds, 199 resamples. Measured: rejections at 5% 0.060 (the previous
    two-stage bootstrap, documents then the 3 draws resampled: 0.115; the swap test, draws fixed: 0.25)."""
    tests = _tests(0, 2000, 3, 0.05)
    rate = float((tests["p"] <= 0.05).mean())
    print("rejection rate", rate)
    assert abs(rate - 0.05) <= _band(0.05, 2000)
    # The interval and the p-value are one test: 0 lies outside the interval exactly when p <= 5%.
    assert ((tests["p"] <= 0.05) == ((tests["low"] > 0) | (tests["high"] < 0))).all()


def test_the_interval_covers_a_planted_nonzero_difference_at_the_nominal_rate():
    """A real gain of 0.04 in hit rate (0.02 in balanced accuracy) over draws that vary (sd 0.03), 3 draws,
    2,000 seeds. Measured coverage of the true 0.02: 0.957."""
    tests = _tests(1, 2000, 3, 0.03, gain=0.04)
    covered = float(((tests["low"] <= 0.02) & (0.02 <= tests["high"])).mean())
    print("coverage", covered)
    assert abs(covered - 0.95) <= _band(0.05, 2000)


def test_draws_that_vary_only_by_document_noise_leave_the_test_conservative_not_liberal():
    """No draw offsets (sd 0): the draws differ only by their own document noise, which the documents'
    variance and the between-draw variance both count. 1,000 seeds; measured rejections 0.034."""
    rate = float((_tests(2, 1000, 3, 0.0)["p"] <= 0.05).mean())
    print("rejection rate", rate)
    assert rate <= 0.05 + _band(0.05, 1000)


def test_a_planted_real_difference_beyond_the_draws_is_detected():
    """A gain of 0.1 in hit rate (0.05 in balanced accuracy), draw sd 0.05, 3 draws, 1,000 seeds. Measured:
    detected (p <= 5%, positive estimate) in 0.88 of seeds."""
    tests = _tests(3, 1000, 3, 0.05, gain=0.1)
    power = float(((tests["p"] <= 0.05) & (tests["estimate"] > 0)).mean())
    print("power", power)
    assert power >= 0.75


def _arms(counts: np.ndarray) -> tuple[HeldOutArm, list[HeldOutArm]]:
    concepts = ("noun", "verb", "digit")

    def arm(name, c):
        return HeldOutArm(name, pd.DataFrame(), pd.DataFrame(), c[None], concepts, (1,), np.arange(N_DOCS))

    return arm("moe", counts[0]), [arm(f"control[{j}]", c) for j, c in enumerate(counts[1:])]


def test_compare_gives_the_t_interval_recomputed_by_hand():
    """compare's record with 3 draws against a reference written here: the one-stage document bootstrap
    (the same seeded resamples), the draws' sample variance over 3, Satterthwaite's df, scipy's t."""
    counts = _planted(np.random.default_rng(7), 1, 3, 0.05)[0]
    moe, draws = _arms(counts)
    (record,) = [
        r for r in compare(moe, draws, n_resamples=300, seed=4) if r["metric"] == "balanced_accuracy"
    ]
    weights = resample_weights(np.random.default_rng(4).integers(0, N_DOCS, (300, N_DOCS)), N_DOCS)
    observed = _per_draw(counts[None], np.ones((1, 1, N_DOCS)))[0, 0]
    resampled = _per_draw(counts[None], weights[None])[0].mean(-1)
    v, b = resampled.var(ddof=1), observed.var(ddof=1) / 3
    df = (v + b) ** 2 / (v**2 / (N_DOCS - 1) + b**2 / 2)
    half = scipy.stats.t.ppf(0.975, df) * np.sqrt(v + b)
    assert record["estimate"] == pytest.approx(observed.mean())
    assert record["draws_df"] == pytest.approx(df)
    assert (record["ci_low"], record["ci_high"]) == pytest.approx(
        (observed.mean() - half, observed.mean() + half)
    )
    assert record["bootstrap_p"] == pytest.approx(
        2 * scipy.stats.t.sf(abs(observed.mean()) / np.sqrt(v + b), df)
    )
    assert record["interval_method"] == "t (document bootstrap + between draws)"


def test_one_draw_keeps_the_percentile_document_bootstrap():
    counts = _planted(np.random.default_rng(8), 1, 1, 0.0)[0]
    moe, (control,) = _arms(counts)
    (one,) = [r for r in compare(moe, control, n_resamples=300, seed=1) if r["metric"] == "balanced_accuracy"]
    (listed,) = [
        r for r in compare(moe, [control], n_resamples=300, seed=1) if r["metric"] == "balanced_accuracy"
    ]
    assert one["interval_method"] == "percentile" and one["draws_df"] is None
    assert listed == one
    weights = resample_weights(np.random.default_rng(1).integers(0, N_DOCS, (300, N_DOCS)), N_DOCS)
    resampled = _per_draw(counts[None], weights[None])[0, :, 0]
    # scipy's percentile bootstrap draws its own resamples: its bounds sit near the reference's quantiles.
    low, high = np.quantile(resampled, [0.025, 0.975])
    assert one["ci_low"] == pytest.approx(low, abs=0.01) and one["ci_high"] == pytest.approx(high, abs=0.01)


def test_a_null_pairs_its_draws_with_the_controls_by_index():
    rng = np.random.default_rng(9)
    moe, draws = _arms(_planted(rng, 1, 3, 0.05)[0])
    moe_p, draws_p = _arms(_planted(rng, 1, 3, 0.05)[0])
    (record,) = [
        r
        for r in compare(moe, draws, null=(moe_p, draws_p), n_resamples=200)
        if r["metric"] == "balanced_accuracy"
    ]

    def per_draw(first, controls):
        a = balanced_accuracy(first.doc_counts[0].sum(1))
        return np.array([(a - balanced_accuracy(c.doc_counts[0].sum(1))).mean() for c in controls])

    paired = per_draw(moe, draws) - per_draw(moe_p, draws_p)
    assert record["estimate"] == pytest.approx(paired.mean())
    with pytest.raises(ValueError, match="same number of control draws"):
        compare(moe, draws, null=(moe_p, draws_p[:2]), n_resamples=50)


def test_a_null_with_draws_behind_a_one_draw_control_still_gets_the_draws_variance():
    rng = np.random.default_rng(10)
    moe, (control,) = _arms(_planted(rng, 1, 1, 0.0)[0])
    moe_p, draws_p = _arms(_planted(rng, 1, 3, 0.05)[0])
    (record,) = [
        r
        for r in compare(moe, control, null=(moe_p, draws_p), n_resamples=200)
        if r["metric"] == "balanced_accuracy"
    ]
    assert record["interval_method"] == "t (document bootstrap + between draws)" and record["draws_df"] > 0


def test_the_documents_part_counts_only_the_informative_documents():
    """With 40 documents of which 12 carry the statistic (the others hold no positive), the documents'
    variance gets 11 degrees of freedom, not 39: Satterthwaite's df recomputed by hand from the same
    resamples, and the interval widens accordingly."""
    from tl_moe.analysis.stats import draw_mean_interval

    rng = np.random.default_rng(3)
    values = np.zeros((40, 3))
    values[:12] = rng.normal([0.1, 0.2, 0.15], 0.3, (12, 3))  # per document, per draw

    def statistic(weights: np.ndarray) -> np.ndarray:
        per_draw = weights @ values / weights.sum(-1, keepdims=True)
        return np.column_stack([per_draw.mean(-1), per_draw])

    every, df_every = draw_mean_interval(statistic, 40, 3, n_resamples=400, seed=1)
    few, df_few = draw_mean_interval(statistic, 40, 3, n_resamples=400, seed=1, informative_clusters=12)
    weights = resample_weights(np.random.default_rng(1).integers(0, 40, (400, 40)), 40)
    v, b = statistic(weights)[:, 0].var(ddof=1), statistic(np.ones((1, 40)))[0, 1:].var(ddof=1) / 3
    assert df_few == pytest.approx((v + b) ** 2 / (v**2 / 11 + b**2 / 2))
    assert df_every == pytest.approx((v + b) ** 2 / (v**2 / 39 + b**2 / 2))
    assert few.high - few.low > every.high - every.low
    assert few.estimate == every.estimate
