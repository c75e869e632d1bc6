"""The sparsity family's verdict: ONE Holm family over every test the verdict sentence reads (members × ks ×
metrics × both routed-token controls), swap tests named by how their control is drawn, and the cells whose
unadjusted interval and unadjusted p-value disagree on 0 flagged and counted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

HEADLINE = "moe_vs_dense_on_routed_tokens_matched_count"
STRICT = "moe_vs_dense_on_routed_tokens"
SUBSETS = "moe_vs_matched_subsets"


def _record(comparison, metric, estimate, p, *, model="toy/moe-8x2", ratio=0.25, k=1, low=None, high=None):
    """A held-out record whose p-value is the test the comparison is tested with: the draw-mean t test for
    the count-matched control (3 draws), the document swap test for the one-draw controls."""
    half = 0.01
    low = estimate - half if low is None else low
    high = estimate + half if high is None else high
    record = {
        "protocol": "held_out",
        "comparison": comparison,
        "metric": metric,
        "k": k,
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "interval_available": True,
        "model": model,
        "active_ratio": ratio,
        "experts": int(2 / ratio),
        "bootstrap_resamples": 2000,
    }
    if comparison == HEADLINE:
        return {
            **record,
            "bootstrap_p": p,
            "n_draws": 3,
            "draws_df": 4.0,
            "swap_p": 0.5,
            "swap_permutations": 20_000,
        }
    return {**record, "bootstrap_p": 0.5, "n_draws": 1, "swap_p": p, "swap_permutations": 20_000}


def _result(records, ks=(1, 64)):
    from tl_moe.pipeline.results.sparsity import SparsityResult

    table = pd.DataFrame({"k": [1], "mean_best_f1": [0.8], "active_ratio": [0.25]})
    return SparsityResult(table=table, ks=ks, held_out=pd.DataFrame(records))


def _one_member(ps):
    """One member × ks 1 and 64 × both metrics × both controls: ``ps[(comparison, metric, k)]`` (0.5 where
    not given), each interval on the side of 0 its p-value says (unadjusted, they agree)."""
    records = []
    for comparison in (HEADLINE, STRICT):
        for metric in ("balanced_accuracy", "f1"):
            for k in (1, 64):
                p = ps.get((comparison, metric, k), 0.5)
                estimate = 0.03 if p <= 0.05 else 0.004
                records.append(_record(comparison, metric, estimate, p, k=k))
    return records


def test_one_metric_alone_would_reject_but_holm_over_both_metrics_and_controls_does_not():
    """Planted: balanced accuracy's headline test at k = 1 has p = 0.01, a strong effect at k = 64 has
    1e-5, the other 6 tests 0.5. Holm within balanced accuracy's headline tests alone (2 tests) rejects both;
    over the family of 8 (1 member × 2 ks × 2 metrics × 2 controls) the first becomes 7 × 0.01 = 0.07 (by
    hand: sorted 1e-5, 0.01, 0.5 ...: 8e-5, max(8e-5, 7 × 0.01)) and is not separated; the strong one,
    8 × 1e-5, survives."""
    from tl_moe.analysis.stats import holm

    result = _result(
        _one_member({(HEADLINE, "balanced_accuracy", 1): 0.01, (HEADLINE, "balanced_accuracy", 64): 1e-5})
    )
    alone = holm(np.array([0.01, 1e-5]))
    assert alone.tolist() == pytest.approx([0.01, 2e-5])  # the per-metric family would reject both
    tests = {(r["comparison"], r["metric"], r["k"]): r for r in result.verdict_tests()}
    assert len(tests) == 8 and {r["tests_in_family"] for r in tests.values()} == {8}
    assert {r["family"] for r in tests.values()} == {"1 member × 2 ks × 2 metrics × 2 controls"}
    weak, strong = tests[(HEADLINE, "balanced_accuracy", 1)], tests[(HEADLINE, "balanced_accuracy", 64)]
    assert weak["p_holm"] == pytest.approx(0.07) and weak["verdict"] == "not separated from 0"
    assert strong["p_holm"] == pytest.approx(8e-5) and strong["verdict"] == "above 0"
    assert tests[(STRICT, "f1", 64)]["p_holm"] == pytest.approx(1.0)
    # headline_tests reads the same family; the finding names it.
    (headline_row,) = [r for r in result.headline_tests() if r["k"] == 1]
    assert headline_row["p_holm"] == pytest.approx(0.07)
    finding = result.findings()[0]
    assert (
        "Verdicts: Holm over 8 tests: 1 member × 2 ks × 2 metrics × 2 controls (members × ks × metrics × "
        "controls)" in finding
    )
    assert "both routed-token controls" in finding and "so F1 stays in the family" in finding
    assert "within each metric only" not in finding
    assert (
        "in balanced accuracy: vs the count-matched control, expert neurons probe better in 1 of the 2 member "
        "× k tests, worse in 0, not separated in 1; vs all dense neurons on the routed tokens, expert neurons "
        "probe better in 0 of the 2 member × k tests, worse in 0, not separated in 2" in finding
    )


def test_the_same_p_value_in_the_other_metric_enters_the_same_family():
    """Planted the other way round: F1's headline test at k = 1 has p = 0.01: adjusted over the same 8
    tests, 8 × 0.01 = 0.08, not separated; alone in F1 it would have been 0.02."""
    result = _result(_one_member({(HEADLINE, "f1", 1): 0.01}))
    row = next(r for r in result.headline_tests(metric="f1") if r["k"] == 1)
    assert row["p_holm"] == pytest.approx(0.08) and row["verdict"] == "not separated from 0"
    assert row["tests_in_family"] == 8


def test_a_planted_effect_against_the_stricter_control_is_counted():
    """Planted: expert neurons worse than all dense neurons on the routed tokens at k = 1 (swap test at its
    floor, 1 / 20,001) in both metrics, no effect against the count-matched control. Holm over 8:
    8 / 20,001 < 0.05: both are below 0, and the verdict sentence counts them against that control."""
    floor = 1 / 20_001
    records = _one_member({(STRICT, "balanced_accuracy", 1): floor, (STRICT, "f1", 1): floor})
    for r in records:
        if r["comparison"] == STRICT and r["k"] == 1:
            r.update(estimate=-0.04, ci_low=-0.05, ci_high=-0.03)
    result = _result(records)
    strict = result.headline_tests(STRICT)
    row = next(r for r in strict if r["k"] == 1)
    assert row["p_test"] == "swap" and row["p_holm"] == pytest.approx(8 * floor)
    assert row["verdict"] == "below 0"
    finding = result.findings()[0]
    assert (
        "vs all dense neurons on the routed tokens, expert neurons probe better in 0 of the 2 member × k tests, "
        "worse in 1, not separated in 1" in finding
    )
    assert finding.count("worse in 1") == 2  # once per metric
    assert "all dense neurons -0.040 [-0.050, -0.030], Holm p = 0.0004: below 0" in finding
    assert (
        "2 of the 2 separated tests rest on their test's smallest p-value (5e-05: no swap reached" in finding
    )
    assert "times the 8 tests that is 0.0004, far below 0.05" in finding


def test_a_one_draw_random_control_is_labelled_held_fixed_and_a_deterministic_one_is_not():
    """The swap test's label follows the control's declared identity, not ``n_draws``: the routing-matched
    token subsets, the untrained MoE and a label permutation are one random draw held fixed; all dense
    neurons on the routed tokens is deterministic; the count-matched control with one draw holds every
    neuron (deterministic), with several draws and no t test its draws are held fixed."""
    from tl_moe.pipeline.results.sparsity import test_p_value
    from tl_moe.pipeline.sections.probing import ARM_DRAWS, COMPARISONS, NULL_CORRECTED, comparison_draws

    def p_test(comparison, n_draws=1, **extra):
        record = {"comparison": comparison, "swap_p": 0.01, "bootstrap_p": None, "n_draws": n_draws, **extra}
        return test_p_value(record)[1]

    assert p_test(SUBSETS) == "swap (one random draw held fixed)"
    assert p_test("moe_vs_untrained") == "swap (one random draw held fixed)"
    assert p_test("permuted_labels") == "swap (one random draw held fixed)"
    assert p_test(STRICT) == "swap"
    assert p_test("moe_vs_dense") == "swap"
    assert p_test(HEADLINE) == "swap"
    assert p_test(HEADLINE, n_draws=3) == "swap (random draws held fixed)"
    assert p_test(HEADLINE, n_draws=3, bootstrap_p=0.2, draws_df=4.0) == "draws_t"
    # Every arm of every comparison declares how it is drawn; an unknown comparison is an error.
    arms = {arm for pair in COMPARISONS.values() for arm in pair}
    arms |= {arm for pairs in NULL_CORRECTED.values() for pair in pairs for arm in pair}
    assert arms <= set(ARM_DRAWS)
    with pytest.raises(KeyError, match="unknown held-out comparison"):
        comparison_draws("moe_vs_something_else")
    # In a result: the matched-subsets rows carry the label, and the finding says the test is conditional.
    records = _one_member({})
    records.append({**_record(SUBSETS, "balanced_accuracy", 0.08, 1 / 20_001), "k": 1})
    result = _result(records)
    (subsets,) = [r for r in result.headline_tests(SUBSETS) if r["k"] == 1]
    assert subsets["p_test"] == "swap (one random draw held fixed)" and subsets["swap_permutations"] == 20_000
    assert subsets["tests_in_family"] == 1  # outside the verdict family: Holm over its own tests
    finding = result.findings()[0]
    assert "each conditional on its one draw of token subsets" in finding
    assert "the control is deterministic) for all dense neurons on the routed tokens" in finding
    assert "two-sided t tests of the draw mean" in finding and "for the count-matched control" in finding


def test_an_interval_and_a_p_value_that_disagree_are_flagged_and_counted():
    """Planted: an all-dense cell whose percentile interval excludes 0 while its swap p-value is 0.2, and one
    whose interval covers 0 while its p-value is 0.01; the rest agree. Both are flagged, counted, and read
    by the Holm verdict."""
    records = _one_member({(STRICT, "balanced_accuracy", 64): 0.01})
    for r in records:
        if r["comparison"] == STRICT and r["metric"] == "balanced_accuracy":
            if r["k"] == 1:
                r.update(estimate=0.02, ci_low=0.004, ci_high=0.036, swap_p=0.2)
            else:
                r.update(estimate=0.02, ci_low=-0.002, ci_high=0.04)
    result = _result(records)
    flags = {(r["comparison"], r["metric"], r["k"]): r["interval_disagrees"] for r in result.verdict_tests()}
    assert flags.pop((STRICT, "balanced_accuracy", 1)) is True
    assert flags.pop((STRICT, "balanced_accuracy", 64)) is True
    assert set(flags.values()) == {False}
    finding = result.findings()[0]
    assert "disagree in 2 of the 8 tests" in finding
    assert "follows the Holm-adjusted p-value of the named test" in finding
    assert (
        "+0.020 [+0.004, +0.036], Holm p = 1: not separated from 0 (interval and test disagree: unadjusted "
        "p = 0.2, the interval excludes 0)" in finding
    )
    assert "(interval and test disagree: unadjusted p = 0.01, the interval covers 0)" in finding
    recorded = result.records()["headline_tests"]
    assert len(recorded) == 8 and sum(r["interval_disagrees"] for r in recorded) == 2


def test_no_interval_means_no_disagreement_flag():
    from tl_moe.analysis.sparsity_family import interval_disagrees

    assert interval_disagrees({"p": 0.01, "interval_available": False}) is None
    assert interval_disagrees({"p": None, "interval_available": True, "ci_low": 0.1, "ci_high": 0.2}) is None
    assert interval_disagrees({"p": 0.01, "interval_available": True, "ci_low": 0.1, "ci_high": 0.2}) is False


def test_a_planted_no_effect_family_rejects_at_no_more_than_the_nominal_rate():
    """Planted null: 4 members × 7 ks × 2 metrics × 2 controls, each cell a t test of 40 documents' paired
    differences drawn with true mean 0 (scipy's p-value and t interval). Over 300 seeds the verdict family
    rejects any test in at most 5% + 2 binomial standard errors of the seeds; the old per-(metric, control)
    families of 28 would reject somewhere far more often (about 1 − 0.95^4 ≈ 0.19)."""
    from tl_moe.analysis.stats import holm
    from tl_moe.pipeline.results.sparsity import VERDICTS

    members = [(f"toy/moe-{e}x2", 2 / e) for e in (4, 8, 16, 32)]
    ks = (1, 2, 4, 8, 16, 32, 64)
    cells = [
        (comparison, metric, model, ratio, k)
        for comparison in (HEADLINE, STRICT)
        for metric in ("balanced_accuracy", "f1")
        for model, ratio in members
        for k in ks
    ]
    seeds, any_family, any_split = 300, 0, 0
    for seed in range(seeds):
        docs = np.random.default_rng(seed).normal(0.0, 0.02, size=(len(cells), 40))
        t = stats.ttest_1samp(docs, 0.0, axis=1)
        low, high = t.confidence_interval(0.95)
        records = [
            _record(
                c,
                m,
                float(docs[i].mean()),
                float(t.pvalue[i]),
                model=model,
                ratio=ratio,
                k=k,
                low=low[i],
                high=high[i],
            )
            for i, (c, m, model, ratio, k) in enumerate(cells)
        ]
        tests = VERDICTS.adjust(records)  # what verdict_tests adjusts; checked to be the same on seed 0
        if seed == 0:
            family = _result(records).verdict_tests()

            def key(r):
                return (r["comparison"], r["metric"], r["model"], r["k"])

            assert {key(r): r["p_holm"] for r in family} == {key(r): r["p_holm"] for r in tests}
        assert {r["tests_in_family"] for r in tests} == {112}
        assert not any(r["interval_disagrees"] for r in tests)  # t interval and t p-value agree
        any_family += any(r["verdict"] != "not separated from 0" for r in tests)
        split = t.pvalue.reshape(4, 28)  # one row per (control, metric), as the cells are ordered
        any_split += any((holm(row) <= 0.05).any() for row in split)
    se = np.sqrt(0.05 * 0.95 / seeds)
    assert any_family / seeds <= 0.05 + 2 * se
    assert any_split / seeds > 0.05 + 2 * se


def test_a_family_without_any_interval_has_no_verdict_and_says_why_once():
    reason = "73 documents split into 29 selection / 44 test documents"
    records = [
        {
            **_record(c, "f1", 0.0, 0.5, k=k),
            "estimate": None,
            "interval_available": False,
            "interval_unavailable_reason": reason,
        }
        for c in (HEADLINE, STRICT)
        for k in (1, 64)
    ]
    (finding, _) = _result(records).findings()
    assert finding.startswith(
        "**Sparsity family, held-out protocol**: none of the 4 tests of the verdict family"
    )
    assert "there is no verdict" in finding and finding.count(reason) == 1


def test_draw_counts_read_back_as_floats_are_printed_as_counts():
    """A member without an interval leaves ``n_draws`` missing, so the frame reads it back as 3.0: the finding
    still says "3 random neuron draws"."""
    unavailable = {
        "protocol": "held_out",
        "comparison": HEADLINE,
        "metric": "balanced_accuracy",
        "k": 1,
        "model": "toy/moe-32x2",
        "active_ratio": 0.0625,
        "experts": 32,
        "estimate": None,
        "interval_available": False,
        "interval_unavailable_reason": "too few documents",
    }
    finding = _result([*_one_member({}), unavailable]).findings()[0]
    assert "the control's 3 random neuron draws over 3, on Satterthwaite's" in finding
    assert "Holm over 8 tests (of the 1 member × 2 ks × 2 metrics × 2 controls = 8 cells" not in finding
    assert "Holm over 8 tests: 1 member × 2 ks × 2 metrics × 2 controls" in finding
