"""The sparsity family's method without the pipeline: the held-out verdicts (ONE Holm family over members ×
ks × metrics × both routed-token controls, each p-value from its named test) against Holm's step-down
procedure written out here and values computed by hand, a planted no-effect family, and the paper table
over the concepts probed in every model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tl_moe.analysis import FamilyMember, SparsityVerdicts, paper_table
from tl_moe.analysis.sparsity_family import HEADLINE, UNMATCHED

SUBSETS = "moe_vs_matched_subsets"
MEMBERS = (("toy/moe-4x2", 0.5), ("toy/moe-8x2", 0.25))
KS = (1, 8)
METRICS = ("balanced_accuracy", "f1")
#: All dense neurons on the routed tokens is the one deterministic control here.
VERDICTS = SparsityVerdicts(deterministic=lambda comparison, n_draws: comparison == UNMATCHED)


def _record(comparison, metric, model, ratio, k, estimate, p, *, available=True):
    """A held-out record whose named test gives ``p``: the draw-mean t test for the count-matched control
    (3 random draws), the document swap test for the one-draw controls; interval on the side ``p`` says."""
    record = {
        "comparison": comparison,
        "metric": metric,
        "model": model,
        "active_ratio": ratio,
        "k": k,
        "estimate": estimate,
        "ci_low": estimate - 0.01 if p <= 0.05 else -0.01,
        "ci_high": estimate + 0.01 if p <= 0.05 else 0.01,
        "interval_available": available,
        "bootstrap_resamples": 2000,
    }
    if comparison == HEADLINE:
        return {
            **record,
            "bootstrap_p": p,
            "n_draws": 3,
            "draws_df": 4.0,
            "swap_p": 0.9,
            "swap_permutations": 999,
        }
    return {**record, "bootstrap_p": 0.9, "n_draws": 1, "swap_p": p, "swap_permutations": 999}


def _cells():
    return [
        (comparison, metric, model, ratio, k)
        for comparison in (HEADLINE, UNMATCHED)
        for metric in METRICS
        for model, ratio in MEMBERS
        for k in KS
    ]


def _step_down(pvalues: dict, alpha: float = 0.05) -> set:
    """Holm's procedure as he stated it: sort the m p-values; reject the j-th smallest (j from 0) while it
    is at most alpha / (m − j); stop at the first that is not."""
    ordered = sorted(pvalues, key=pvalues.get)
    rejected = set()
    for j, key in enumerate(ordered):
        if pvalues[key] > alpha / (len(ordered) - j):
            break
        rejected.add(key)
    return rejected


def test_the_verdict_family_is_one_holm_family_as_computed_by_hand():
    """Planted: 2 members × 2 ks × 2 metrics × 2 controls = 16 tests. Three effects: p = 1e-4 (count-matched,
    balanced accuracy, moe-4x2, k = 1, +0.05), p = 0.002 (all dense, F1, moe-8x2, k = 8, −0.03) and
    p = 0.01 (count-matched, F1, moe-4x2, k = 8); the other 13 have no effect, p = 0.5. By hand, sorted
    1e-4, 0.002, 0.01, 0.5 ...: 16 × 1e-4 = 0.0016 (above 0); max(0.0016, 15 × 0.002) = 0.03 (below 0);
    max(0.03, 14 × 0.01) = 0.14 (not separated, though 0.01 alone is under 5%); 13 × 0.5 > 1: 1."""
    planted = {
        (HEADLINE, "balanced_accuracy", "toy/moe-4x2", 1): (0.05, 1e-4),
        (UNMATCHED, "f1", "toy/moe-8x2", 8): (-0.03, 0.002),
        (HEADLINE, "f1", "toy/moe-4x2", 8): (0.02, 0.01),
    }
    records = []
    for comparison, metric, model, ratio, k in _cells():
        estimate, p = planted.get((comparison, metric, model, k), (0.001, 0.5))
        records.append(_record(comparison, metric, model, ratio, k, estimate, p))
    # Outside the family: matched subsets, Holm over its own tests (one has no interval: no test).
    records.append(_record(SUBSETS, "balanced_accuracy", "toy/moe-4x2", 0.5, 1, 0.1, 0.02))
    records.append(_record(SUBSETS, "balanced_accuracy", "toy/moe-8x2", 0.25, 1, 0.1, 0.02, available=False))
    held_out = pd.DataFrame(records)

    family = VERDICTS.family(held_out)
    rows = {(r["comparison"], r["metric"], r["model"], r["k"]): r for r in family}
    assert len(family) == 16 and {r["tests_in_family"] for r in family} == {16}
    assert {r["family"] for r in family} == {"2 members × 2 ks × 2 metrics × 2 controls"}
    by_hand = {
        (HEADLINE, "balanced_accuracy", "toy/moe-4x2", 1): (0.0016, "above 0"),
        (UNMATCHED, "f1", "toy/moe-8x2", 8): (0.03, "below 0"),
        (HEADLINE, "f1", "toy/moe-4x2", 8): (0.14, "not separated from 0"),
    }
    for key, row in rows.items():
        p_holm, verdict = by_hand.get(key, (1.0, "not separated from 0"))
        assert row["p_holm"] == pytest.approx(p_holm) and row["verdict"] == verdict, key
    # The same rejections as Holm's step-down procedure on the raw p-values.
    raw = {key: row["p"] for key, row in rows.items()}
    assert {key for key, row in rows.items() if row["p_holm"] <= 0.05} == _step_down(raw)
    # Each p-value from its named test: the draw-mean t test for the count-matched control, the swap test
    # for the deterministic one; matched subsets hold their one random draw fixed.
    assert {r["p_test"] for r in family if r["comparison"] == HEADLINE} == {"draws_t"}
    assert {r["p_test"] for r in family if r["comparison"] == UNMATCHED} == {"swap"}
    # The headline tests read the same family; matched subsets are adjusted over their own one test.
    assert [r["p_holm"] for r in VERDICTS.tests(held_out) if r["k"] == 1] == [
        1.0,
        pytest.approx(0.0016),
    ]  # by active ratio
    subsets = VERDICTS.tests(held_out, SUBSETS, "balanced_accuracy")
    assert [r["p_test"] for r in subsets] == [None, "swap (one random draw held fixed)"]
    assert [r["p_holm"] for r in subsets] == [None, pytest.approx(0.02)]
    assert [r["verdict"] for r in subsets] == ["no interval", "above 0"]
    assert {r["tests_in_family"] for r in subsets} == {1}


def test_a_planted_no_effect_family_separates_what_holm_separates_and_nothing_more():
    """Planted no effect: every cell a one-sample t test (scipy) of 30 documents' differences with true mean
    0. The verdicts are exactly Holm's step-down rejections, at family-wise 5%; here none."""
    docs = np.random.default_rng(7).normal(0.0, 0.02, size=(len(_cells()), 30))
    t = stats.ttest_1samp(docs, 0.0, axis=1)
    records = [
        _record(comparison, metric, model, ratio, k, float(docs[i].mean()), float(t.pvalue[i]))
        for i, (comparison, metric, model, ratio, k) in enumerate(_cells())
    ]
    family = VERDICTS.family(pd.DataFrame(records))
    raw = {(r["comparison"], r["metric"], r["model"], r["k"]): r["p"] for r in family}
    assert sorted(raw.values()) == pytest.approx(sorted(t.pvalue))
    separated = {
        (r["comparison"], r["metric"], r["model"], r["k"])
        for r in family
        if r["verdict"] != "not separated from 0"
    }
    assert separated == _step_down(raw) == set()
    assert min(r["p_holm"] for r in family) == pytest.approx(min(1.0, 16 * t.pvalue.min()))


def test_an_interval_that_disagrees_with_its_test_is_flagged_and_the_verdict_follows_the_test():
    """Planted: an interval that excludes 0 beside a swap p-value of 0.2: flagged; the verdict is the test's."""
    record = {**_record(UNMATCHED, "f1", "toy/moe-4x2", 0.5, 1, 0.02, 0.2), "ci_low": 0.004, "ci_high": 0.036}
    (row,) = VERDICTS.adjust([record])
    assert row["interval_disagrees"] is True and row["verdict"] == "not separated from 0"
    (agree,) = VERDICTS.adjust([_record(UNMATCHED, "f1", "toy/moe-4x2", 0.5, 1, 0.02, 0.01)])
    assert agree["interval_disagrees"] is False and agree["verdict"] == "above 0"


def test_the_paper_table_averages_the_concepts_probed_in_every_model():
    """Planted: member a probes concepts x and y, member b only x (y failed); the dense twin x and y. Only
    x enters the means: a's best F1 for x is 0.9 (of 0.9 and 0.5), b's 0.6, the twin's 0.7."""

    def units(rows):
        return pd.DataFrame(rows, columns=["concept", "k", "f1", "draw"])

    a = units([("x", 1, 0.9, -1), ("x", 1, 0.5, -1), ("y", 1, 0.99, -1)])
    b = units([("x", 1, 0.6, -1), ("y", 1, np.nan, -1)])
    dense = units([("x", 1, 0.7, -1), ("y", 1, 0.8, -1), ("x", 1, 0.95, 0)])  # draw 0: not the twin's layers
    table = paper_table([FamilyMember("a", 0.5, 4, a), FamilyMember("b", 0.25, 8, b)], dense)
    assert table["model"].tolist() == ["a", "b", "dense twin"]
    assert table["mean_best_f1"].tolist() == pytest.approx([0.9, 0.6, 0.7])
    assert table["concepts"].tolist() == [1, 1, 1]
    assert table[["active_ratio", "experts"]].values.tolist() == [[0.5, 4], [0.25, 8], [1.0, 1]]
