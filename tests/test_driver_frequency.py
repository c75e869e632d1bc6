"""REAP saliency against routing frequency: ρ of each with the exact effect and their paired difference,
on planted cases whose answer is known."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from tl_moe.analysis.driver_frequency import saliency_frequency_spearman
from tl_moe.analysis.drivers import HALVES_KEY, saliency_effect_spearman
from tl_moe.analysis.splits import document_split

N_DOCS, N_LAYERS, N_EXPERTS = 120, 2, 12


def _case(seed: int, reap_beyond_frequency: bool, noise: float = 1.5):
    """Per-document effect sums, edited positions, REAP sums and routed slots of ``N_LAYERS × N_EXPERTS``
    experts. Frequency (routing rate) and a second trait both drive the effect when
    ``reap_beyond_frequency``: REAP's level is that trait, unrelated to the rate. Otherwise the effect
    follows the rate alone and REAP's level is the rate plus noise unrelated to the effect."""
    rng = np.random.default_rng(seed)
    n = N_LAYERS * N_EXPERTS
    rate = rng.uniform(2, 20, n)
    trait = rng.normal(0, 1, n)
    if reap_beyond_frequency:
        truth, level = 0.3 * (rate - rate.mean()) / rate.std() + trait, 2 + trait
    else:
        truth, level = rate, rate / 5 + rng.normal(0, noise, n)
    half = document_split(np.arange(N_DOCS), key=HALVES_KEY)
    counts = np.where(half == 1, rng.integers(20, 40, N_DOCS), 0).astype(float)
    effect = truth[:, None] * counts + rng.normal(0, 2, (n, N_DOCS)) * np.sqrt(counts)
    routed = rng.poisson(rate[:, None], (n, N_DOCS)).astype(float)
    saliency = level[:, None] * routed + rng.normal(0, 1, (n, N_DOCS)) * np.sqrt(routed)
    return effect, counts, saliency, routed


def test_frequency_control_matches_the_saliency_rho_and_scipy_on_the_observed_data():
    effect, counts, saliency, routed = _case(0, reap_beyond_frequency=True)
    found = saliency_frequency_spearman(effect, counts, saliency, routed, N_EXPERTS, n_resamples=200, seed=3)
    reap = saliency_effect_spearman(effect, counts, saliency, routed, n_resamples=200, seed=3)
    got = found["REAP saliency"]
    assert (got.estimate, got.low, got.high) == pytest.approx((reap.estimate, reap.low, reap.high))
    selection = document_split(np.arange(N_DOCS), key=HALVES_KEY) == 0
    slots = routed[:, selection].sum(1).reshape(N_LAYERS, N_EXPERTS)
    share = (slots / slots.sum(1, keepdims=True)).reshape(-1)
    rho = scipy.stats.spearmanr(share, effect.sum(1) / counts.sum()).statistic
    assert found["routed share (selection)"].estimate == pytest.approx(rho)
    difference = found["REAP − frequency"].estimate
    assert difference == pytest.approx(got.estimate - rho)
    assert found["experts"] == N_LAYERS * N_EXPERTS


def test_reap_beyond_frequency_is_found_and_reap_equal_to_frequency_is_not():
    beyond = saliency_frequency_spearman(
        *_case(1, reap_beyond_frequency=True), N_EXPERTS, n_resamples=300, seed=1
    )["REAP − frequency"]
    assert beyond.estimate > 0 and beyond.low > 0  # planted: REAP carries the effect beyond frequency
    for seed in range(4):  # planted: REAP is frequency plus noise unrelated to the effect
        same = saliency_frequency_spearman(
            *_case(seed, reap_beyond_frequency=False), N_EXPERTS, n_resamples=300, seed=seed
        )["REAP − frequency"]
        assert same.estimate < 0.05 and same.low < 0
    equal = saliency_frequency_spearman(
        *_case(5, reap_beyond_frequency=False, noise=0.0), N_EXPERTS, n_resamples=300, seed=5
    )["REAP − frequency"]
    assert abs(equal.estimate) < 0.05  # planted: REAP ranks experts as their routing rate does


def test_the_frequency_share_is_within_each_layer():
    """An expert's routed share divides by its own layer's slots: doubling one layer's routing leaves
    every share, so the frequency ρ, unchanged."""
    effect, counts, saliency, routed = _case(2, reap_beyond_frequency=False)
    scaled = routed.copy()
    scaled[:N_EXPERTS] *= 2
    base = saliency_frequency_spearman(effect, counts, saliency, routed, N_EXPERTS, n_resamples=50)
    again = saliency_frequency_spearman(effect, counts, saliency, scaled, N_EXPERTS, n_resamples=50)
    key = "routed share (selection)"
    assert again[key].estimate == pytest.approx(base[key].estimate)


def _result_with(case_seed: int, beyond: bool):
    from tl_moe.analysis.drivers import _frequency_control
    from tl_moe.pipeline.sections.drivers import DriversResult

    comparison = pd.DataFrame()
    comparison.attrs["saliency_frequency"] = _frequency_control(
        *_case(case_seed, reap_beyond_frequency=beyond), N_EXPERTS, n_resamples=300, seed=case_seed
    )
    return DriversResult(pd.DataFrame(), comparison, 0.5)


def test_the_finding_names_frequency_beside_reap_and_follows_the_difference():
    beyond = _result_with(1, beyond=True)
    text = beyond._frequency_control()
    kept = beyond.comparison.attrs["saliency_frequency"]["routed share (selection)"]
    assert "routing frequency alone (the selection half's routed share" in text
    assert f"ρ = {kept['estimate']:+.2f} [{kept['low']:+.2f}, {kept['high']:+.2f}]" in text
    assert "REAP ranks experts better than routing frequency alone (two marginal ρs compared" in text
    assert text.endswith("REAP's ρ given frequency is not computed)")
    assert beyond._frequency_signed().above_zero()
    same = _result_with(0, beyond=False)._frequency_control()
    assert "REAP ranks experts better" not in same
    assert "routing frequency alone ranks experts better than REAP (two marginal ρs" in same
    metrics = beyond._frequency_metrics()
    key = "Spearman(REAP saliency) − Spearman(routed share), removal effect"
    assert metrics[key] == pytest.approx(
        beyond.comparison.attrs["saliency_frequency"]["REAP − frequency"]["estimate"], abs=1e-4
    )
    assert metrics[f"{key} | experts"] == N_LAYERS * N_EXPERTS
    older = type(beyond)(pd.DataFrame(), pd.DataFrame(), 0.5)  # a result without the control
    assert older._frequency_control() == "" and older._frequency_metrics() == {}


def test_top_overlaps_count_the_shared_top_experts_on_one_set_with_its_chance():
    from tl_moe.analysis.effect_estimate import top_overlaps

    exact = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    scores = {"a": np.array([0.0, 9.0, 8.0, 1.0, 2.0, 3.0]), "b": exact[::-1].copy()}
    found = top_overlaps(scores, exact, 3)  # exact top 3: {0, 1, 2}; a's: {1, 2, 5}; b's: {3, 4, 5}
    assert found == {"top n": 3, "experts": 6, "chance": pytest.approx(1.5), "a": 2, "b": 0}
