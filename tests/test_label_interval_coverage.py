"""Coverage of the label scores' document intervals on planted scores with a known true mean.

The planted model is ``benchmarks/planted_studies.py``'s ``label_mean_interval_coverage`` study (which
measures the rates the docs quote, over 200 corpora): 50 experts, 58 score documents of 7 domains, each
expert scored on a fixed number of positives (20; 6 for a few experts) and 20 negatives. An expert's
positives come mostly from documents of its home domain and, within a domain, from documents where it
is routed more (a per-document intensity exp(γ u_d)); its label is right more often in those same
documents; every item is drawn in proportion to its document's size (log-normal; equal sizes in the
"earlier model" cell). The true metric of an expert is that of the document population (expected counts
by Gauss–Hermite quadrature): the limit of its score over ever more documents. These tests assert ranges
on fewer corpora.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from planted_script import planted_studies
from tl_moe.explain.document_bootstrap import MEAN_METHOD, document_intervals, interval_position
from tl_moe.explain.scorers import Score


@pytest.fixture(scope="module")
def studies():
    return planted_studies()


def _balanced_accuracy(score: Score) -> float:
    y, p = np.asarray(score.truth, bool), np.asarray(score.predicted, bool)
    return (p[y].mean() + (~p[~y]).mean()) / 2


def test_the_true_means_equal_a_monte_carlo_over_many_documents(studies):
    """The quadrature truth of each cell equals the same expectation drawn by Monte Carlo: 400,000
    documents, each expert's recall the size × intensity-weighted mean of its hit rate, its false-alarm
    rate the size-weighted mean of its rate on negatives."""
    rng = np.random.default_rng(7)
    n = 400_000
    for cell in studies.LABEL_CELLS.values():
        x = studies.label_experts(cell)
        domain, u, z = rng.integers(0, 7, n), rng.normal(0, 1, n), rng.normal(0, 1, n)
        size = np.exp(cell["size sd"] * z)
        intensity, hit, false = studies.label_rates(x, domain[None, :], u[None, :], z[None, :])
        recall = (size * intensity * hit).sum(1) / (size * intensity).sum(1)
        alarm = (size * false).sum(1) / size.sum()
        p, m = x["positives"], studies.LABEL_NEGATIVES
        tp, fn, fp = p * recall, p * (1 - recall), m * alarm
        expected = {
            "balanced_accuracy": ((recall + 1 - alarm) / 2).mean(),
            "f1": (2 * tp / (2 * tp + fp + fn)).mean(),
            "recall": recall.mean(),
        }
        truth = studies.label_truth(x)
        for metric, value in expected.items():
            assert truth[metric] == pytest.approx(value, abs=3e-3)


def test_the_study_counts_the_library_intervals(studies):
    """A cell's per-seed rows are ``document_intervals``' own: recomputed here for two seeds."""
    cell = studies.LABEL_CELLS["run shaped"]
    measured = studies.label_cell(cell, 2, 99)
    x = studies.label_experts(cell)
    truth = studies.label_truth(x)
    for seed in range(2):
        scores = studies.planted_label_scores(x, seed)
        keys = list(scores)
        row = document_intervals(keys, scores, {}, "recall", n_resamples=99, seed=seed, mean_method="basic")
        covered, position, t, value, above, bias = measured["hits"]["basic", "recall"][seed]
        assert covered == (row["ci low"] <= truth["recall"] <= row["ci high"])
        assert position == pytest.approx((row["mean"] - row["ci low"]) / (row["ci high"] - row["ci low"]))
        assert (t, value, bias) == (truth["recall"], row["mean"], row["bootstrap bias"])
        assert above == (truth["recall"] > row["ci high"])
        ba = document_intervals(keys, scores, {}, "balanced_accuracy", n_resamples=99, seed=seed)
        assert ba["mean"] == pytest.approx(np.mean([_balanced_accuracy(s) for s in scores.values()]))
        assert ba["position in interval"] == pytest.approx(
            (ba["mean"] - ba["ci low"]) / (ba["ci high"] - ba["ci low"])
        )
        assert ba["own - chance"] == pytest.approx(ba["mean"] - 0.5)
        assert (ba["chance diff ci low"], ba["chance diff ci high"]) == pytest.approx(
            (ba["ci low"] - 0.5, ba["ci high"] - 0.5)
        )
        assert "own - chance" not in row  # recall has no single chance level


def test_mean_interval_covers_the_true_mean_with_its_estimate_mid_interval(studies):
    """Over 60 planted corpora of the earlier model: the BCa interval of the mean balanced accuracy
    (MEAN_METHOD) covers the true mean about as the 200-corpus study measures (a little below 0.95) with
    its estimate mid-interval, where the percentile interval of the same resamples leaves the estimate
    high (its resamples lean low: a negative bootstrap bias)."""
    assert MEAN_METHOD == "BCa"
    measured = studies.label_cell(studies.LABEL_CELLS["earlier model"], 60, 499)
    bca = np.array(measured["hits"]["BCa", "balanced_accuracy"], dtype=float)
    percentile = np.array(measured["hits"]["percentile", "balanced_accuracy"], dtype=float)
    assert bca[:, 0].mean() >= 0.83
    assert 0.4 <= np.median(bca[:, 1]) <= 0.6
    assert np.median(percentile[:, 1]) >= 0.55
    assert bca[:, 5].mean() < 0  # the resampled means sit below the estimate


def test_precision_interval_holds_the_class_sizes_and_covers_the_true_mean(studies):
    """Precision moves with the share of positives among the items, which the scorer fixes; each resample
    holds every expert's class sizes, so the interval neither widens nor leans with that share. Over 100
    planted corpora the BCa interval covers the true mean precision at about the nominal rate with its
    estimate mid-interval (measured on 200: 0.955, median position 0.59; with the class sizes left free,
    as the plain document resample does, the same corpora gave intervals nearly twice as wide with the
    percentile estimate at 0.67)."""
    x = studies.label_experts(studies.LABEL_CELLS["earlier model"])
    tp, fn, fp, tn = studies.label_true_counts(x)
    truth = float((tp / (tp + fp)).mean())
    keys = [(0, e) for e in range(studies.LABEL_EXPERTS)]
    covered, position = [], []
    for seed in range(100):
        scores = studies.planted_label_scores(x, seed)
        row = document_intervals(keys, scores, {}, "precision", n_resamples=499, seed=seed)
        covered.append(row["ci low"] <= truth <= row["ci high"])
        position.append(row["position in interval"])
    assert np.mean(covered) >= 0.9
    assert 0.35 <= np.median(position) <= 0.7


def test_interval_position_is_zero_at_the_lower_end_and_nan_without_an_interval():
    from tl_moe.analysis.stats import Interval

    assert interval_position(Interval(0.2, 0.2, 1.2, 40)) == 0.0
    assert interval_position(Interval(0.95, 0.2, 1.2, 40)) == pytest.approx(0.75)
    assert np.isnan(interval_position(Interval(0.5, np.nan, np.nan, 10, available=False)))


def test_the_summary_row_and_its_finding_name_the_interval_methods(studies):
    from tl_moe.pipeline.results.explain_findings import _unit

    scores = studies.planted_label_scores(studies.label_experts(studies.LABEL_CELLS["earlier model"]), 0)
    row = document_intervals(list(scores), scores, {"shuffled": scores}, "balanced_accuracy", n_resamples=99)
    assert (row["mean interval method"], row["difference interval method"]) == ("BCa", "percentile")
    row["interval over"] = "score documents"
    assert _unit(row).endswith(
        "58 score documents of the scoring items (BCa for the means and for own − chance, the mean's interval "
        "moved by the chance constant; percentile for the paired differences between arms)"
    )
    del row["mean interval method"]  # a results file written before the methods were recorded
    assert _unit(row).endswith("58 score documents of the scoring items")


def _arm(scores: dict, seed: int, yes_on_positive: float, yes_on_negative: float) -> dict:
    """Another label's verdicts on the same items: yes with these rates on positives and negatives."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, s in scores.items():
        y = np.asarray(s.truth, bool)
        yes = rng.random(len(y)) < np.where(y, yes_on_positive, yes_on_negative)
        out[key] = Score(*key, "concept", "other", key, truth=s.truth, predicted=tuple(yes.astype(int)),
                         documents=s.documents)  # fmt: skip
    return out


def test_the_finding_gives_own_minus_chance_and_says_why_a_shuffled_control_sits_below_chance(studies):
    """A shuffled label that says yes to negatives more than to positives (planted: 0.30 vs 0.15, balanced
    accuracy 0.425) sits below chance: the finding gives own − chance with the own mean's interval moved by
    0.5, beside own − shuffled, and says why the control is below chance; a shuffled label at chance
    (yes at the same rate on both classes) gets no such clause."""
    from tl_moe.pipeline.results.explain_findings import labels_finding

    scores = studies.planted_label_scores(studies.label_experts(studies.LABEL_CELLS["earlier model"]), 3)
    keys = list(scores)
    for rates, below in (((0.15, 0.30), True), ((0.2, 0.2), False)):
        row = document_intervals(keys, scores, {"shuffled": _arm(scores, 1, *rates)}, "balanced_accuracy",
                                 n_resamples=199, seed=3)  # fmt: skip
        assert (row["shuffled ci high"] < 0.5) == below
        row.update({"metric": "balanced_accuracy", "experts scored": 50, "experts not scored": 0, "chance": 0.5,
                    "interval over": "score documents", "layer": "all"})  # fmt: skip
        text = labels_finding(row, {}, "offline", "concept", pd.DataFrame())
        own = (
            f"own − chance {row['mean'] - 0.5:+.3f} [{row['ci low'] - 0.5:+.3f}, {row['ci high'] - 0.5:+.3f}]"
        )
        assert own in text and "own − shuffled" in text
        assert ("below chance 0.500: half of each expert's negatives" in text) == below
        assert f"the estimate at {row['position in interval']:.2f} of its interval" in text
