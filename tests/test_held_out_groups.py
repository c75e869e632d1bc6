"""Held-out differences per concept group: each group's concepts and test documents with positives; a
concept whose positives sit in fewer than the minimum of test documents is dropped by the per-concept
gate, with the reason, and a group left without concepts has no estimate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tl_moe.analysis.held_out_probing import TN, TP, HeldOutArm, balanced_f1
from tl_moe.analysis.stats import MIN_DOCUMENTS

N_DOCS = 60
# Two code concepts with positives in every document; one text concept with positives in 12 documents.
CONCEPTS = ("code_keyword", "code_identifier", "text_capitalized_word")


def _arm(name: str, hit: float, seed: int) -> HeldOutArm:
    rng = np.random.default_rng(seed)
    counts = np.zeros((1, len(CONCEPTS), N_DOCS, 4))
    for c in range(len(CONCEPTS)):
        positives = rng.poisson(15, N_DOCS)
        if c == 2:
            positives[12:] = 0
        negatives = rng.poisson(40, N_DOCS)
        tp, fp = rng.binomial(positives, hit), rng.binomial(negatives, 0.1)
        counts[0, c, :, TP], counts[0, c, :, 1] = tp, positives - tp
        counts[0, c, :, 2], counts[0, c, :, TN] = fp, negatives - fp
    return HeldOutArm(name, pd.DataFrame(), pd.DataFrame(), counts, CONCEPTS, (1,), np.arange(N_DOCS))


def test_each_group_is_compared_over_its_own_concepts_and_a_rare_group_gets_no_interval():
    from tl_moe.analysis.held_out_comparisons import concept_group, group_comparisons

    assert concept_group("code_keyword") == "code" and concept_group("pos_NOUN") == "pos"
    assert concept_group("not_a_library_concept") == "other"
    arms = {"moe": _arm("moe", 0.9, 0), "dense": _arm("dense", 0.6, 1)}
    records = group_comparisons(arms, n_resamples=300, seed=0, min_clusters=MIN_DOCUMENTS)
    f1 = {r["group"]: r for r in records if r["metric"] == "f1"}
    assert set(f1) == {"code", "text"} and {r["comparison"] for r in records} == {"moe_vs_dense"}
    code, text = f1["code"], f1["text"]
    assert code["n_concepts"] == 2 and code["n_documents_with_positives"] == N_DOCS
    expected = (
        balanced_f1(arms["moe"].doc_counts[0, :2].sum(1))
        - balanced_f1(arms["dense"].doc_counts[0, :2].sum(1))
    ).mean()
    assert code["estimate"] == pytest.approx(expected)
    assert code["interval_available"] and code["ci_low"] > 0  # a planted gain of 0.9 vs 0.6 recall
    # The text concept: positives in 12 test documents (< 30): dropped by the gate, the group has no
    # estimate, and the record names the concept and why.
    assert text["n_concepts"] == 0 and text["n_concepts_dropped"] == 1 and text["estimate"] is None
    assert not text["interval_available"] and text["ci_low"] is None
    assert text["dropped_concepts"] == (
        f"text_capitalized_word: positives in 12 test documents in moe (at least {MIN_DOCUMENTS} needed)"
    )
    # The text group leads the records.
    assert records[0]["group"] == "text"


def test_the_readme_group_table_shows_kept_and_dropped_counts_and_no_estimate_for_a_gated_group():
    from readme_results import _group_table
    from tl_moe.analysis.held_out_comparisons import group_comparisons

    arms = {"moe": _arm("moe", 0.9, 0), "dense": _arm("dense", 0.6, 1)}
    records = group_comparisons(arms, n_resamples=300, seed=0, min_clusters=MIN_DOCUMENTS)
    lines = _group_table(records, "f1")
    code = next(line for line in lines if line.startswith("| code |"))
    text = next(line for line in lines if line.startswith("| text |"))
    f1 = {r["group"]: r for r in records if r["metric"] == "f1"}
    assert code.startswith(f"| code | 2 | 0 | {N_DOCS} | {f1['code']['estimate']:+.3f} [")
    assert text == "| text | 0 | 1 | 0 | – |"
    assert lines.index(text) < lines.index(code)  # text leads


def _k1(comparison: str, metric: str, estimate: float, low: float, high: float) -> dict:
    return {
        "protocol": "held_out",
        "comparison": comparison,
        "k": 1,
        "metric": metric,
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "interval_available": True,
        "n_concepts": 30,
    }


def test_the_reading_names_its_metric_leads_with_the_sparsity_headlines_and_tests_the_null_directly():
    """Planted: in balanced accuracy the remainder over the matched-count control does not exceed its own
    null (its interval covers 0); in F1 it would look positive. The reading leads with balanced accuracy,
    names it, gives F1 beside, and reads the null-corrected difference, not two intervals."""
    from readme_results import LEAD_METRIC, _reading
    from tl_moe.analysis.sparsity_family import HEADLINE_METRIC

    records = [
        _k1("moe_vs_dense", "balanced_accuracy", 0.08, 0.06, 0.10),
        _k1("moe_vs_dense", "f1", 0.09, 0.07, 0.14),
        _k1("moe_vs_dense_on_routed_tokens_matched_count", "balanced_accuracy", 0.01, 0.002, 0.02),
        _k1("moe_vs_dense_on_routed_tokens_matched_count", "f1", 0.035, 0.019, 0.05),
        _k1("matched_count_minus_its_null", "balanced_accuracy", 0.004, -0.008, 0.015),
        _k1("matched_count_minus_its_null", "f1", 0.015, 0.001, 0.03),
    ]
    text = _reading(records)
    assert LEAD_METRIC == HEADLINE_METRIC == "balanced_accuracy"
    assert text.startswith(
        "Reading (balanced accuracy, gated token-level concepts pooled, the number of concepts behind each "
        "number beside it; F1 in brackets)"
    )
    assert "+0.080 [+0.060, +0.100] over 30 concepts (F1 +0.090 [+0.070, +0.140] over 30 concepts)" in text
    assert (
        "the remainder is +0.004 [-0.008, +0.015] over 30 concepts (F1 +0.015 [+0.001, +0.030] over 30 "
        "concepts)" in text
    )
    # Equal counts are not known to be the same concepts: no share of the gap is formed.
    assert "Both average 30 concepts, but the records do not list which" in text and "%" not in text
    assert "its interval covers 0, so on the same tokens the expert neurons are not shown to add" in text
    # A remainder above its null in the lead metric says so.
    records[4] = _k1("matched_count_minus_its_null", "balanced_accuracy", 0.02, 0.01, 0.03)
    assert "its unadjusted interval excludes 0" in _reading(records)


def test_the_lean_is_given_per_comparison():
    from readme_results import _interval_lean

    rows = [
        dict(_k1("moe_vs_dense", "f1", 0.1, 0.0, 1.0), bootstrap_bias=0.0),
        dict(_k1("moe_vs_untrained", "f1", 0.9, 0.0, 1.0), bootstrap_bias=0.0),
        dict(_k1("moe_vs_dense_on_routed_tokens_matched_count", "f1", 0.5, 0.0, 1.0), bootstrap_bias=0.0),
    ]
    text = _interval_lean(rows)
    assert "MoE − dense: a median 0.10 of the way" in text
    assert "MoE − untrained: a median 0.90 of the way" in text
    assert "MoE − matched-count routed-token control: a median 0.50 of the way" in text


def test_a_group_the_gate_empties_is_still_reported_with_the_reason():
    from tl_moe.analysis.held_out_comparisons import group_comparisons
    from tl_moe.pipeline.results.probing_findings import _held_out_finding

    arms = {"moe": _arm("moe", 0.9, 0), "dense": _arm("dense", 0.6, 1)}
    records = group_comparisons(arms, n_resamples=100, seed=0, min_clusters=MIN_DOCUMENTS)
    text = _held_out_finding([r for r in records if r["group"] == "text"], "text concepts")
    assert text.startswith("**Probing, held-out protocol, text concepts**")
    assert "no estimate (no concept has positives and negatives in at least 30 test documents" in text
    assert "0 concepts kept, 1 dropped by the gate" in text
    assert "e.g. text_capitalized_word: positives in 12 test documents in moe" in text
    code = _held_out_finding([r for r in records if r["group"] == "code"], "code concepts")
    assert "2 concepts kept" in code and "vs the dense model +" in code and "(F1 +" in code
