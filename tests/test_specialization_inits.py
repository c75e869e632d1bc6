"""Trained − untrained specialization against the mean over several random initializations of the untrained
model: the draw-mean t interval (documents' bootstrap variance + the variance between initializations over
their number) recomputed by hand, its coverage over seeds on a planted spread between initializations, and
the study's rows end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from test_specialization_study import CLUSTERS, STUDY, planted
from tl_moe.analysis import SpecializationConfig
from tl_moe.analysis.specialization_permutation import draw_mean_rows
from tl_moe.analysis.specialization_study import DIFFERENCE
from tl_moe.analysis.stats import DRAW_MEAN_METHOD, Interval
from tl_moe.errors import InputError


def paired_row(difference: float, se: float, n_documents: int = 200) -> dict:
    """A trained − first-initialization row as excess_intervals gives it (a normal interval of ``se``)."""
    return {
        "model": DIFFERENCE,
        "layer": 0,
        "estimate": difference,
        "ci_low": difference - 1.96 * se,
        "ci_high": difference + 1.96 * se,
        "interval_available": True,
        "reason": None,
        "n_documents": n_documents,
        "confidence": 0.95,
        "method": "basic",
        "bootstrap_bias": 0.0,
        "bootstrap_se": se,
        "interval_position": 0.5,
        "null_mean_se": 0.0,
    }


def test_the_interval_is_the_t_interval_of_the_documents_and_between_initializations_variances():
    trained, untrained, se, n_docs = 0.10, np.array([0.03, 0.05, 0.02, 0.04, 0.06]), 0.004, 200
    row = draw_mean_rows(
        [paired_row(trained - untrained[0], se, n_docs)],
        [Interval(float(untrained[0]), math.nan, math.nan, n_docs)],
        untrained[1:, None],
    )[0]
    m = len(untrained)
    between = np.var(trained - untrained, ddof=1) / m  # by hand
    total = se**2 + between
    df = total**2 / (se**4 / (n_docs - 1) + between**2 / (m - 1))
    half = scipy.stats.t.ppf(0.975, df) * math.sqrt(total)
    estimate = trained - untrained.mean()
    assert row["method"] == DRAW_MEAN_METHOD and row["n_untrained_inits"] == m
    assert row["estimate"] == pytest.approx(estimate)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((estimate - half, estimate + half))
    assert row["df"] == pytest.approx(df) and row["draws_variance"] == pytest.approx(between)
    assert row["untrained_inits_mean"] == pytest.approx(untrained.mean())
    assert row["untrained_inits_sd"] == pytest.approx(np.std(untrained, ddof=1))
    # The one-initialization interval stays beside it; the draw-mean one is wider (it adds B / m).
    assert row["first_init_estimate"] == pytest.approx(trained - untrained[0])
    assert row["ci_high"] - row["ci_low"] > 2 * 1.96 * se


def test_identical_initializations_leave_the_documents_interval():
    """No spread between initializations: B = 0, the t interval on n − 1 df of the documents' variance."""
    row = draw_mean_rows(
        [paired_row(0.05, 0.01)], [Interval(0.02, math.nan, math.nan, 200)], np.full((4, 1), 0.02)
    )[0]
    half = scipy.stats.t.ppf(0.975, 199) * 0.01
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.05 - half, 0.05 + half))


@pytest.mark.parametrize("spread", [0.0, 0.5, 2.0])
def test_the_interval_covers_the_mean_over_initializations_at_the_nominal_rate(spread):
    """Planted: each initialization's excess = the population mean + a between-initialization effect of sd
    ``spread`` (× the documents' sd) + its own small document noise; the trained − first-initialization
    difference carries document noise of known sd (the ``V`` passed). Over seeds the draw-mean interval of
    5 initializations covers trained − the population mean near 95% (a little over: ``B`` counts the
    initializations' own document noise again); the one-initialization interval, conditional on its draw,
    falls short once the spread is large."""
    rng = np.random.default_rng(7)
    truth, doc_sd, own_sd, m, n_docs = 0.03, 0.003, 0.001, 5, 300
    covered = covered_one = 0
    seeds = 600
    for _ in range(seeds):
        untrained = 0.02 + spread * doc_sd * rng.normal(size=m) + own_sd * rng.normal(size=m)
        document_noise = math.sqrt(doc_sd**2 - own_sd**2) * rng.normal()  # V = doc_sd²: with init 0's own
        trained = 0.05 + document_noise
        row = draw_mean_rows(
            [paired_row(trained - untrained[0], doc_sd, n_docs)],
            [Interval(float(untrained[0]), math.nan, math.nan, n_docs)],
            untrained[1:, None],
        )[0]
        covered += row["ci_low"] <= truth <= row["ci_high"]
        covered_one += row["first_init_ci_low"] <= truth <= row["first_init_ci_high"]
    rate, se = covered / seeds, math.sqrt(0.95 * 0.05 / seeds)
    assert 0.95 - 3 * se <= rate <= 0.995
    if spread >= 2.0:
        assert covered_one / seeds < 0.8  # the single draw's variance is missing from its interval


def test_the_study_takes_trained_minus_untrained_against_the_mean_of_the_initializations():
    trained, untrained = planted(specialized=True), planted(specialized=False)
    more = [planted(specialized=False, seed=seed).routing for seed in (1, 2, 3)]
    outcome = STUDY(trained, untrained=untrained, more_untrained=more)
    for name in (CLUSTERS, "routing, domains"):
        row = outcome.interval_rows(name, DIFFERENCE).iloc[-1]
        first = outcome.interval_rows(name, "untrained").iloc[-1]
        trained_row = outcome.interval_rows(name, "trained").iloc[-1]
        assert row["method"] == DRAW_MEAN_METHOD and row["n_untrained_inits"] == 4
        assert row["estimate"] == pytest.approx(trained_row["estimate"] - row["untrained_inits_mean"])
        assert row["first_init_estimate"] == pytest.approx(trained_row["estimate"] - first["estimate"])
        assert row["ci_low"] < row["estimate"] < row["ci_high"]
    # Without further initializations the paired bootstrap row is kept as it was.
    alone = STUDY(trained, untrained=untrained).interval_rows(CLUSTERS, DIFFERENCE).iloc[-1]
    assert alone["method"] == "basic" and "n_untrained_inits" not in alone.index


def test_fewer_than_one_initialization_is_refused_naming_the_flag():
    with pytest.raises(InputError, match="untrained-inits"):
        SpecializationConfig(untrained_inits=0)


def test_the_findings_print_both_intervals_and_say_what_the_difference_is_against():
    from tl_moe.pipeline.results.specialization import SpecializationSummary

    trained, untrained = planted(specialized=True), planted(specialized=False)
    more = [planted(specialized=False, seed=seed).routing for seed in (1, 2)]
    several = SpecializationSummary.of(STUDY(trained, untrained=untrained, more_untrained=more)).findings()[1]
    row = STUDY(trained, untrained=untrained).interval_rows(CLUSTERS, "trained").iloc[-1]
    basic = f"basic [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    # the percentile bounds of the same resamples: the basic ones reflected about the estimate
    low, high = 2 * row["estimate"] - row["ci_high"], 2 * row["estimate"] - row["ci_low"]
    assert f"{basic}, percentile [{low:+.4f}, {high:+.4f}]" in several
    assert "against the mean of 3 random initializations of the untrained model" in several
    assert "untrained model (first initialization)" in several and "upward" not in several
    one = SpecializationSummary.of(STUDY(trained, untrained=untrained)).findings()[1]
    assert (
        "one random initialization of the untrained model: the interval is conditional on it and leaves out the variance between initializations"
        in one
    )


def test_the_logit_lens_untrained_share_says_it_is_one_initialization():
    from types import SimpleNamespace

    import pandas as pd

    from tl_moe.pipeline.results.logit_lens import LogitLensResult

    share = Interval(0.0, 0.0, 0.0, 40)
    view = SimpleNamespace(
        top_tokens=pd.DataFrame({"rank": [0], "token": ["a"]}),
        share=SimpleNamespace(
            held_out=True,
            trained=Interval(0.5, 0.4, 0.6, 40),
            untrained=share,
            difference=Interval(0.5, 0.4, 0.6, 40),
            n_experts=64,
            n_experts_untrained=64,
            selection_documents=40,
            test_documents=40,
        ),
        _shown=lambda: "a",
        _own_token_verdict=lambda: "verdict",
    )
    (finding,) = LogitLensResult.findings(view)
    assert "(one random initialization: its share and the interval are conditional on it" in finding
    assert "0 of 64, 0.00 [0.00, 0.00]" in finding


def test_an_unavailable_paired_interval_leaves_the_draw_mean_one_unavailable_with_its_reason():
    row = {**paired_row(0.05, math.nan), "interval_available": False, "reason": "12 documents, 30 needed"}
    (out,) = draw_mean_rows([row], [Interval(0.02, math.nan, math.nan, 12)], np.full((2, 1), 0.03))
    assert not out["interval_available"] and out["reason"] == "12 documents, 30 needed"
    assert math.isnan(out["ci_low"]) and math.isnan(out["df"])
    assert out["estimate"] == pytest.approx(0.07 - np.mean([0.02, 0.03, 0.03]))
