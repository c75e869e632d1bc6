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


def _holm(
    comparison: str, metric: str, estimate: float, p_holm: float, verdict: str, model: str = "toy/m"
) -> dict:
    return {
        **_k1(comparison, metric, estimate, estimate - 0.01, estimate + 0.01),
        "model": model,
        "p_holm": p_holm,
        "verdict": verdict,
        "tests_in_family": 112,
        "family": "4 members × 7 ks × 2 metrics × 2 controls",
    }


def _reading_records() -> list[dict]:
    """k = 1 records of a planted run: a gap over the dense model, a small count-matched difference, and
    its permuted-label check whose null is near 0 in balanced accuracy and positive in F1."""
    corrected = _k1("matched_count_minus_its_null", "balanced_accuracy", 0.045, 0.031, 0.060)
    corrected.update(
        n_concepts=11, uncorrected_estimate=0.034, uncorrected_ci_low=0.020, uncorrected_ci_high=0.048,
        null_estimate=-0.012, null_ci_low=-0.025, null_ci_high=0.002,
    )  # fmt: skip
    corrected_f1 = _k1("matched_count_minus_its_null", "f1", 0.029, 0.003, 0.056)
    corrected_f1.update(
        n_concepts=11, uncorrected_estimate=0.044, uncorrected_ci_low=0.03, uncorrected_ci_high=0.058,
        null_estimate=0.015, null_ci_low=0.004, null_ci_high=0.026,
    )  # fmt: skip
    return [
        _k1("moe_vs_dense", "balanced_accuracy", 0.08, 0.06, 0.10),
        _k1("moe_vs_dense", "f1", 0.09, 0.07, 0.14),
        _k1("moe_vs_dense_on_routed_tokens_matched_count", "balanced_accuracy", 0.028, 0.012, 0.044),
        _k1("moe_vs_dense_on_routed_tokens_matched_count", "f1", 0.035, 0.019, 0.05),
        corrected,
        corrected_f1,
    ]


def test_the_reading_leads_with_the_holm_verdict_and_reads_the_null_as_a_check_in_balanced_accuracy():
    """Planted: the count-matched difference's unadjusted interval excludes 0, but its Holm-adjusted test
    (the sparsity family's, same model and k) does not separate it. The reading names its metric, gives
    the Holm verdicts of both routed-token controls before any unadjusted interval, then the gap over the
    dense model, then the permuted-label check on its own set: MoE − control beside its null and their
    difference, the subtraction said to be a check in balanced accuracy and a correction in F1."""
    from readme_results import LEAD_METRIC, _reading
    from tl_moe.analysis.sparsity_family import HEADLINE_METRIC

    holm = [
        _holm("moe_vs_dense_on_routed_tokens_matched_count", "balanced_accuracy", 0.028, 0.4507, "not separated from 0"),
        _holm("moe_vs_dense_on_routed_tokens_matched_count", "f1", 0.035, 0.0555, "not separated from 0"),
        _holm("moe_vs_dense_on_routed_tokens", "balanced_accuracy", 0.016, 0.2323, "not separated from 0"),
        _holm("moe_vs_dense_on_routed_tokens", "balanced_accuracy", 0.5, 0.001, "above 0", model="toy/other"),
    ]  # fmt: skip
    text = _reading(_reading_records(), holm_tests=holm, model="toy/m")
    assert LEAD_METRIC == HEADLINE_METRIC == "balanced_accuracy"
    assert text.startswith(
        "Reading (balanced accuracy, gated token-level concepts pooled, the number of concepts behind each "
        "number beside it; F1 in brackets): at k = 1, against dense neurons probed on exactly each expert's "
        "routed tokens, the sparsity family's Holm-adjusted tests of this model (toy/m; Holm over its 112 tests"
    )
    verdict = (
        "vs d_expert random dense neurons (count-matched) +0.028 [+0.018, +0.038] over 30 concepts, Holm p = "
        "0.4507: not separated from 0 (F1 +0.035 [+0.025, +0.045] over 30 concepts, Holm p = 0.0555: not "
        "separated from 0); vs all dense neurons +0.016 [+0.006, +0.026] over 30 concepts, Holm p = 0.2323: "
        "not separated from 0."
    )
    assert verdict in text and "above 0" not in text.split("Without that control")[0]  # another model's
    # The verdict comes before every unadjusted interval of the run's own records.
    assert text.index(verdict) < text.index("+0.080 [+0.060, +0.100]") < text.index("+0.045 [+0.031, +0.060]")
    assert "so the controlled verdict above is the result" in text
    assert (
        "over the 11 concepts gated in all four arms (its own, smaller set; a document bootstrap each, "
        "unadjusted, outside the Holm family): MoE − control +0.034 [+0.020, +0.048], the same with labels "
        "permuted -0.012 [-0.025, +0.002], the first minus the second +0.045 [+0.031, +0.060]"
    ) in text
    assert (
        "the null's expectation is 0 (chance is 0.5 for any probe), so the subtraction is a check, not a correction"
        in text
    )
    assert "here the null's interval covers 0" in text
    assert "(F1, whose null is not 0, so the subtraction corrects, with this one permutation of the labels: MoE − control +0.044 [+0.030, +0.058], its null +0.015 [+0.004, +0.026], corrected +0.029 [+0.003, +0.056])" in text  # fmt: skip
    assert "%" not in text


def test_without_holm_tests_the_reading_says_every_interval_is_unadjusted_and_reads_old_records():
    """A run with no sparsity family has no Holm verdict to lead with: the reading says so. A results file
    written before the parts were recorded still gives MoE − control and its null from the arm means."""
    from readme_results import _reading

    records = _reading_records()
    for r in records[4:]:
        for key in ("uncorrected", "null"):
            for end in ("estimate", "ci_low", "ci_high"):
                del r[f"{key}_{end}"]
    records[4].update(a_mean=0.8447, b_mean=0.8110)
    text = _reading(records)
    assert (
        "no Holm-adjusted test of these differences: no sparsity family; every interval here is unadjusted"
        in text
    )
    assert "Holm p" not in text
    assert "MoE − control +0.034 (no interval in this results file)" in text
    assert "the same with labels permuted -0.011 (no interval in this results file)" in text


def test_the_group_clause_names_the_documents_a_carrying_group_rests_on():
    """Planted: latex's MoE − control excludes 0 on 34 informative documents, text's covers 0; the reading
    says the pooled result is carried by latex and on how many documents it rests."""
    from readme_results import _groups_clause

    def group(name: str, low: float, docs: int, n: int) -> dict:
        r = _k1("matched_count_minus_its_null", "balanced_accuracy", low + 0.02, low, low + 0.04)
        r.update(group=name, n_concepts=n, n_documents_with_positives=docs, uncorrected_estimate=low + 0.01,
                 uncorrected_ci_low=low - 0.01, uncorrected_ci_high=low + 0.03, null_estimate=-0.01)  # fmt: skip
        return r

    text = _groups_clause([group("text", -0.05, 85, 2), group("latex", 0.02, 34, 9)], "balanced_accuracy")
    assert "text MoE − control -0.040 [-0.060, -0.020], minus its null -0.030 [-0.050, -0.010] (2) (below 0, 85 informative test documents)" in text  # fmt: skip
    assert "latex MoE − control" in text and "(above 0, 34 informative test documents)" in text
    text = _groups_clause([group("text", -0.03, 85, 2), group("latex", 0.02, 34, 9)], "balanced_accuracy")
    assert "the pooled, unadjusted result is carried by latex, whose 9 concepts rest on 34 informative test documents; for text it is not shown" in text  # fmt: skip


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
