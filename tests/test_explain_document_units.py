"""The label scores' intervals resample documents, the unit the scoring items share: AUC, the share of
experts beating their shuffled control, and each expert's own F1 and own − shuffled difference.

Planted scores: experts score items drawn from shared documents; a per-document effect (an "easy"
document) moves every expert's answers there together, so items of one document are not independent.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tl_moe.explain.document_bootstrap import (
    _auc_levels,
    document_intervals,
    expert_interval,
    share_beating,
    weighted_auc,
)
from tl_moe.explain.scorers import Score, detection_metrics


def _scores(seed: int, *, documents: int = 40, experts: int = 40, items: int = 20, own_gain: float = 0.0,
            shuffled_gain: float = 0.0, document_sd: float = 0.8):  # fmt: skip
    """Own and shuffled-label scores of ``experts`` experts, ``items`` positives and negatives each, drawn
    from ``documents`` documents with a shared per-document effect. A label's graded answer is
    ``gain · truth + document effect + noise``; its verdict says yes above 0.5 · gain."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, document_sd, documents)
    own, shuffled = {}, {}
    for e in range(experts):
        docs = rng.integers(0, documents, 2 * items)
        truth = (np.arange(2 * items) < items).astype(int)
        for arm, gain in ((own, own_gain), (shuffled, shuffled_gain)):
            graded = gain * truth + effect[docs] + rng.normal(0, 1, len(docs))
            predicted = (graded > gain / 2).astype(int)
            arm[(0, e)] = Score(0, e, "concept", "label", (0, e), detection_metrics(truth, predicted, graded),
                                truth=tuple(truth), predicted=tuple(predicted), documents=tuple(docs.tolist()),
                                graded=tuple(graded.tolist()))  # fmt: skip
    return own, shuffled


def test_weighted_auc_equals_sklearn_with_the_documents_as_sample_weights():
    own, _ = _scores(0, own_gain=1.0)
    score = own[(0, 3)]
    documents = sorted(set(score.documents))
    column = {d: i for i, d in enumerate(documents)}
    weights = np.random.default_rng(1).integers(0, 3, (4, len(documents))).astype(float)
    weights[0] = 1.0
    got = weighted_auc(weights, *_auc_levels(score, column, len(documents)))
    for b in range(len(weights)):
        w = weights[b, [column[d] for d in score.documents]]
        assert got[b] == pytest.approx(roc_auc_score(score.truth, score.graded, sample_weight=w))
    assert got[0] == pytest.approx(score.metrics["auc"])


def test_auc_summary_resamples_documents_and_covers_a_planted_null():
    """AUC's summary interval is over documents; on labels with no information (true AUC 0.5 for every
    expert) it covers 0.5 at about the nominal rate, and a planted informative label is found."""
    keys = [(0, e) for e in range(40)]
    covered = []
    for seed in range(40):
        own, shuffled = _scores(seed)
        row = document_intervals(keys, own, {"shuffled": shuffled}, "auc", n_resamples=500, seed=seed)
        assert row["documents"] == 40 and row["interval"] == "available"
        assert row["mean"] == pytest.approx(np.mean([own[k].metrics["auc"] for k in keys]))
        covered.append(row["ci low"] <= 0.5 <= row["ci high"])
    assert np.mean(covered) >= 0.85
    own, shuffled = _scores(0, own_gain=1.5)
    row = document_intervals(keys, own, {"shuffled": shuffled}, "auc", n_resamples=500)
    assert row["ci low"] > 0.75 and row["diff ci low"] > 0.2


def test_share_beating_shuffled_is_high_for_informative_labels_and_covers_the_expected_share_on_a_null():
    keys = [(0, e) for e in range(40)]
    own, shuffled = _scores(0, own_gain=3.0)
    row = share_beating(keys, own, shuffled, n_resamples=500)
    assert row["share beating shuffled"] == 1.0 and row["share ci low"] >= 0.9
    assert row["share documents"] == 40 and row["share experts"] == 40
    # own and shuffled exchangeable: each expert's own beats with probability (1 − P(tie)) / 2, a tie not
    # beating (balanced accuracy on a 1/40 grid); the planted study's simulation of these same scores
    from planted_script import planted_studies

    expected = planted_studies().share_truth(200_000)["expected share"]
    assert 0.43 < expected < 0.47  # well below 1/2: ties are common
    covered = []
    for seed in range(40):
        own, shuffled = _scores(seed, own_gain=0.5, shuffled_gain=0.5)
        row = share_beating(keys, own, shuffled, n_resamples=500, seed=seed)
        direct = np.mean([own[k].metrics["balanced_accuracy"] > shuffled[k].metrics["balanced_accuracy"]
                          for k in keys])  # fmt: skip
        assert row["share beating shuffled"] == pytest.approx(direct)
        covered.append(row["share ci low"] <= expected <= row["share ci high"])
    assert np.mean(covered) >= 0.85


def test_below_30_documents_the_share_and_each_experts_interval_are_unavailable_with_the_reason():
    own, shuffled = _scores(0, documents=20, own_gain=2.0)
    row = share_beating([(0, e) for e in range(40)], own, shuffled, n_resamples=200)
    assert np.isnan(row["share ci low"]) and "needs at least 30" in row["share interval"]
    estimate, low, high, why = expert_interval(own[(0, 0)], shuffled[(0, 0)], n_resamples=200)
    assert np.isfinite(estimate) and np.isnan(low) and "needs at least 30" in why


def test_each_experts_intervals_are_over_its_documents_and_match_the_direct_metrics():
    own, shuffled = _scores(2, documents=200, items=60, own_gain=2.0)  # ~ 100 documents per expert
    score, other = own[(0, 5)], shuffled[(0, 5)]
    f1 = expert_interval(score, metric="f1", n_resamples=500)
    assert f1[0] == pytest.approx(score.metrics["f1"]) and f1[1] <= f1[0] <= f1[2] and f1[3] == ""
    diff = expert_interval(score, other, n_resamples=500)
    direct = score.metrics["balanced_accuracy"] - other.metrics["balanced_accuracy"]
    assert diff[0] == pytest.approx(direct) and diff[1] > 0
    # planted no difference: the interval covers 0 for most experts
    own, shuffled = _scores(3, documents=200, items=60, own_gain=1.0, shuffled_gain=1.0)
    covers = [
        (lambda d: d[1] <= 0 <= d[2])(expert_interval(own[k], shuffled[k], n_resamples=300)) for k in own
    ]
    assert np.mean(covers) >= 0.85


def test_a_share_at_its_bound_is_given_as_a_count_and_a_one_sided_bound():
    """At 100% the percentile bracket's upper end is the estimate by construction: the finding gives the
    count and the one-sided lower bound instead of a two-sided interval; an inner share keeps its bracket."""
    from tl_moe.pipeline.results.explain_findings import _share_part

    row = {"share beating shuffled": 1.0, "share ci low": 0.86, "share ci high": 1.0, "share experts": 51,
           "share documents": 58, "share interval": "[0.86, 1.00]"}  # fmt: skip
    text = _share_part(row)
    assert "51 of 51 (100%; one-sided 97.5% lower bound 86%" in text and "[86%, 100%]" not in text
    inner = _share_part({**row, "share beating shuffled": 0.8, "share ci low": 0.7, "share ci high": 0.9})
    assert "80% [70%, 90%] of 51" in inner
