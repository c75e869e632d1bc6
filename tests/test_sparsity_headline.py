"""The sparsity family's findings: the matched-count routed-token control is the headline at every k and
all dense neurons on the routed tokens beside it, both Holm-adjusted as one family (members × ks × metrics
× controls), with matched subsets and the headline's null beside them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

HEADLINE = "moe_vs_dense_on_routed_tokens_matched_count"


def _record(model, ratio, comparison, estimate, low, high, p, k=1):
    return {
        "protocol": "held_out",
        "comparison": comparison,
        "k": k,
        "metric": "f1",
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "bootstrap_p": p,
        "interval_available": True,
        "model": model,
        "active_ratio": ratio,
        "experts": int(2 / ratio),
    }


def test_holm_adjusts_as_computed_by_hand():
    from tl_moe.analysis.stats import holm

    # Sorted 0.001, 0.02, 0.03, 0.4 -> 4 x 0.001, max(.., 3 x 0.02), max(.., 2 x 0.03), max(.., 1 x 0.4).
    adjusted = holm(np.array([0.03, 0.001, np.nan, 0.4, 0.02]))
    assert adjusted[1] == pytest.approx(0.004)
    assert adjusted[4] == pytest.approx(0.06) and adjusted[0] == pytest.approx(0.06)
    assert adjusted[3] == pytest.approx(0.4) and np.isnan(adjusted[2])
    assert holm(np.array([0.01, 0.9])).tolist() == pytest.approx([0.02, 0.9])
    assert holm(np.array([0.6, 0.7])).tolist() == [1.0, 1.0]


def test_bootstrap_p_value_is_the_level_at_which_the_percentile_interval_reaches_zero():
    from tl_moe.analysis.stats import bootstrap_p_value

    resampled = np.r_[np.full(10, -1.0), np.full(989, 1.0)]
    assert bootstrap_p_value(resampled) == pytest.approx(2 * 11 / 1000)
    assert bootstrap_p_value(np.full(999, 1.0)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.r_[np.full(500, -1.0), np.full(499, 1.0)]) == 1.0


def _family():
    """Planted: two members at k = 1 and 64. Unadjusted, three headline intervals exclude 0; Holm over
    the 5 tests of the verdict family (4 headline tests and the one of all dense neurons) keeps one headline
    test (p 0.001 -> 0.005) and the all-dense one (0.001 -> 0.005); 0.02 and 0.03 -> 0.06: not separated."""
    rows = [
        _record("toy/moe-4x2", 0.5, HEADLINE, -0.030, -0.050, -0.012, 0.001),
        _record("toy/moe-4x2", 0.5, HEADLINE, 0.020, 0.004, 0.036, 0.02, k=64),
        _record("toy/moe-32x2", 0.0625, HEADLINE, 0.015, 0.002, 0.030, 0.03),
        _record("toy/moe-32x2", 0.0625, HEADLINE, 0.004, -0.010, 0.020, 0.4, k=64),
        _record("toy/moe-4x2", 0.5, "moe_vs_dense_on_routed_tokens", -0.045, -0.06, -0.02, 0.001),
        _record("toy/moe-4x2", 0.5, "moe_vs_matched_subsets", 0.036, 0.022, 0.051, 0.001),
        _record("toy/moe-4x2", 0.5, "permuted_labels_on_routed_tokens", 0.001, -0.004, 0.006, 0.7),
        _record("toy/moe-32x2", 0.0625, "moe_vs_matched_subsets", 0.086, 0.062, 0.136, 0.001),
    ]
    return pd.DataFrame(rows)


def test_the_headline_is_the_matched_count_control_at_every_k_and_follows_holm():
    from tl_moe.pipeline.results.sparsity import SparsityResult

    table = pd.DataFrame({"k": [1, 1], "mean_best_f1": [0.8, 0.9], "active_ratio": [0.5, 0.0625]})
    result = SparsityResult(
        table=table,
        ks=(1, 64),
        held_out=_family(),
        parameters={"toy/moe-4x2": 1_577_088, "toy/moe-32x2": 7_096_448},
    )
    tests = {(r["model"], r["k"]): r for r in result.headline_tests()}
    assert tests[("toy/moe-4x2", 1)]["p_holm"] == pytest.approx(0.005)
    assert tests[("toy/moe-4x2", 64)]["p_holm"] == pytest.approx(0.06)
    assert tests[("toy/moe-32x2", 1)]["verdict"] == "not separated from 0"  # unadjusted it excluded 0
    assert tests[("toy/moe-4x2", 1)]["verdict"] == "below 0"
    assert {r["tests_in_family"] for r in tests.values()} == {5}
    headline, paper, confound = result.findings()
    assert "same number of dense neurons (d_expert" in headline and "every probed k" in headline
    # Members in order of active ratio; each k with its Holm result; the unmatched control, matched
    # subsets and the null beside it.
    assert headline.index(
        "moe-32x2 (0.0625): k = 1: +0.015 [+0.002, +0.030], Holm p = 0.06"
    ) < headline.index(
        "moe-4x2 (0.5): k = 1: -0.030 [-0.050, -0.012], Holm p = 0.005: below 0; all dense neurons -0.045 "
        "[-0.060, -0.020], Holm p = 0.005: below 0 (matched subsets"
    )
    assert "matched subsets +0.036 [+0.022, +0.051]; permuted-label null +0.001 [-0.004, +0.006])" in headline
    assert "k = 64: +0.020 [+0.004, +0.036], Holm p = 0.06: not separated from 0" in headline
    assert (
        "vs the count-matched control, expert neurons probe better in 0 of the 4 member × k tests, worse in 1, "
        "not separated in 3; vs all dense neurons on the routed tokens, expert neurons probe better in 0 of the "
        "1 member × k tests, worse in 1, not separated in 0." in headline
    )
    assert "Holm over 5 tests (of the 2 members × 2 ks × 1 metric × 2 controls = 8 cells" in headline
    # Matched subsets (Holm over its own 2 tests: above 0) vs the headline: the conclusion changes.
    assert (
        "above 0 on matched subsets, below 0 on routed tokens in 1 of 4 tests (moe-4x2 at k = 1)" in headline
    )
    assert (
        "above 0 on matched subsets, not separated from 0 on routed tokens in 1 of 4 tests (moe-32x2 at k = 1)"
        in headline
    )
    assert "class-balanced F1" in headline  # the planted family recorded F1 only
    assert "paper's protocol" in paper
    assert "moe-4x2 1.58 M" in confound and "cannot separate routing sparsity from model size" in confound
    records = result.records()
    assert records["parameters"]["toy/moe-32x2"] == 7_096_448
    assert len(records["headline_tests"]) == 5


def test_a_planted_no_effect_family_reports_no_member_separated():
    """Every headline p-value uniform-ish and above the Holm thresholds: nothing is called."""
    from tl_moe.pipeline.results.sparsity import SparsityResult

    held = pd.DataFrame(
        [
            _record(f"toy/moe-{e}x2", 2 / e, HEADLINE, 0.001 * i, -0.01, 0.012, p, k=k)
            for i, (e, k, p) in enumerate([(4, 1, 0.04), (4, 64, 0.3), (8, 1, 0.5), (8, 64, 0.9)])
        ]
    )
    table = pd.DataFrame({"k": [1], "mean_best_f1": [0.8], "active_ratio": [0.25]})
    (headline, _) = SparsityResult(table=table, ks=(1, 64), held_out=held).findings()
    assert "changes the conclusion" not in headline
    assert "better in 0 of the 4 member × k tests, worse in 0, not separated in 4." in headline


def test_the_headline_tests_balanced_accuracy_when_recorded_and_shows_the_f1_count_beside():
    """Planted: in F1 the member is above 0 (a probe-rate effect), in balanced accuracy it is not; the
    headline leads with balanced accuracy, F1 beside it, both in one Holm family of 2 tests."""
    from tl_moe.pipeline.results.sparsity import SparsityResult

    f1 = _record("toy/moe-8x2", 0.25, HEADLINE, 0.030, 0.015, 0.045, 0.001)
    ba = dict(_record("toy/moe-8x2", 0.25, HEADLINE, 0.002, -0.008, 0.012, 0.7), metric="balanced_accuracy")
    table = pd.DataFrame({"k": [1], "mean_best_f1": [0.8], "active_ratio": [0.25]})
    result = SparsityResult(table=table, ks=(1,), held_out=pd.DataFrame([f1, ba]))
    (tests,) = result.headline_tests()
    assert tests["metric"] == "balanced_accuracy" and tests["verdict"] == "not separated from 0"
    assert result.headline_tests(metric="f1")[0]["verdict"] == "above 0"
    (headline, _) = result.findings()
    assert "balanced accuracy first (chance 0.5 for any probe" in headline
    # Both metrics' verdicts side by side in the test's cell.
    assert (
        "k = 1: +0.002 [-0.008, +0.012], Holm p = 0.7: not separated from 0 | F1 +0.030 [+0.015, +0.045], "
        "Holm p = 0.002: above 0" in headline
    )
    assert (
        "in balanced accuracy: vs the count-matched control, expert neurons probe better in 0 of the 1 member "
        "× k tests" in headline
    )
    assert (
        "in class-balanced F1 (the held-out protocol's F1 on a balanced test set, not the paper's" in headline
    )
    assert "after the F1 results were seen, so F1 stays in the family" in headline
    assert "the count-matched control, expert neurons probe better in 1 of the 1 member × k tests" in headline


def test_separated_tests_at_the_bootstraps_floor_are_counted():
    """Planted, an older run without swap tests: two of the three separated tests have the smallest raw
    bootstrap p-value of the family (no resample crossed 0); the finding says so, with that floor."""
    from tl_moe.pipeline.results.sparsity_cells import floor_text

    def row(verdict, p):
        return {"verdict": verdict, "p": p, "p_test": "bootstrap", "tests_in_family": 28}

    tests = [
        row("above 0", 0.001),
        row("below 0", 0.001),
        row("above 0", 0.0012),
        row("not separated from 0", 0.4),
    ]
    text = floor_text(tests)
    assert (
        "2 of the 3 separated tests rest on their test's smallest p-value (0.001: no resample of documents "
        "and control draws crossed 0)" in text
    )
    assert "times the 28 tests that is 0.028, below 0.05: a test at the floor can still be separated" in text
    assert floor_text([row("not separated from 0", 0.3)]) == ""


def test_swap_tests_at_their_floor_say_how_far_below_the_holm_threshold_it_is():
    from tl_moe.pipeline.results.sparsity_cells import floor_text

    floor = 1 / 20_001
    tests = [
        {
            "verdict": "above 0",
            "p": floor,
            "p_test": "swap",
            "swap_permutations": 20_000,
            "tests_in_family": 28,
        },
        {
            "verdict": "not separated from 0",
            "p": 0.3,
            "p_test": "swap",
            "swap_permutations": 20_000,
            "tests_in_family": 28,
        },
    ]
    text = floor_text(tests)
    assert "1 of the 1 separated tests rest on their test's smallest p-value (5e-05: no swap reached" in text
    assert "times the 28 tests that is 0.0014, far below 0.05" in text


def test_the_headline_verdicts_follow_the_swap_test_not_the_bootstrap_p_value():
    """Planted: the bootstrap p-value sits at its floor (0.001) but the swap test finds 0.2, and the other way
    round: the verdicts follow the swap test, whose p-value the rows carry."""
    from tl_moe.pipeline.results.sparsity import SparsityResult

    rows = [
        dict(
            _record("toy/moe-4x2", 0.5, HEADLINE, 0.02, 0.005, 0.03, 0.001),
            swap_p=0.2,
            swap_permutations=20_000,
        ),
        dict(
            _record("toy/moe-8x2", 0.25, HEADLINE, 0.03, 0.01, 0.05, 0.3),
            swap_p=1 / 20_001,
            swap_permutations=20_000,
        ),
    ]
    table = pd.DataFrame({"k": [1, 1], "mean_best_f1": [0.8, 0.9], "active_ratio": [0.5, 0.25]})
    result = SparsityResult(table=table, ks=(1,), held_out=pd.DataFrame(rows))
    tests = {t["model"]: t for t in result.headline_tests()}
    assert tests["toy/moe-4x2"]["p_test"] == "swap" and tests["toy/moe-4x2"]["p"] == 0.2
    assert tests["toy/moe-4x2"]["verdict"] == "not separated from 0"  # Holm: 0.2 x 1 (second smallest)
    assert tests["toy/moe-8x2"]["p_holm"] == pytest.approx(2 / 20_001)
    assert tests["toy/moe-8x2"]["verdict"] == "above 0"
    (headline, _) = result.findings()
    assert "two-sided document swap tests (20,000 random swaps" in headline


def test_an_older_run_with_random_draws_is_tested_with_its_two_stage_bootstrap():
    """Planted: a run recorded before the draw-mean t test (no ``draws_df``); the matched-count control has
    3 random draws. Its swap test (draws held fixed) says 1/20,001
    but the two-stage bootstrap, which resamples the draws, says 0.3: the Holm verdict follows the
    bootstrap; a one-draw (deterministic) control keeps its swap test."""
    from tl_moe.pipeline.results.sparsity import SparsityResult, test_p_value

    random_control = dict(
        _record("toy/moe-8x2", 0.25, HEADLINE, 0.03, -0.01, 0.07, 0.3),
        swap_p=1 / 20_001,
        swap_permutations=20_000,
        n_draws=3,
        bootstrap_resamples=2000,
    )
    assert test_p_value(random_control) == (0.3, "bootstrap")
    assert test_p_value({**random_control, "n_draws": 1}) == (1 / 20_001, "swap")
    assert test_p_value({**random_control, "bootstrap_p": None}) == (
        1 / 20_001,
        "swap (random draws held fixed)",
    )
    table = pd.DataFrame({"k": [1], "mean_best_f1": [0.9], "active_ratio": [0.25]})
    result = SparsityResult(table=table, ks=(1,), held_out=pd.DataFrame([random_control]))
    (test,) = result.headline_tests()
    assert test["p_test"] == "bootstrap" and test["p"] == 0.3
    assert test["verdict"] == "not separated from 0"
    (headline, _) = result.findings()
    assert "two-stage bootstrap (2,000 resamples, test documents and the control's 3 random" in headline
    assert "Holm over 1 test: 1 member × 1 k × 1 metric × 1 control" in headline


def test_the_bootstraps_floor_times_28_tests_stays_below_five_percent():
    """2,000 resamples: floor 2 / 2,001; times the 28 tests of the family 0.028 < 0.05, said so."""
    from tl_moe.pipeline.results.sparsity_cells import floor_text

    floor = 2 / 2001
    row = {"verdict": "above 0", "p": floor, "p_test": "bootstrap", "bootstrap_resamples": 2000}
    text = floor_text([{**row, "tests_in_family": 28}])
    assert "(0.001: no resample of documents and control draws crossed 0)" in text
    assert "times the 28 tests that is 0.028, below 0.05" in text


def test_a_control_with_random_draws_is_tested_with_the_draw_mean_t_test_and_says_so():
    """Planted: a current run's matched-count record (3 draws, ``draws_df`` recorded). Its swap test (draws
    held fixed) says 1/20,001, the draw-mean t test 0.3: the Holm verdict follows the t test, the finding
    names it and no longer says the test over-rejects; a t p-value below 2 / (1 + resamples) is not read as
    sitting at a bootstrap floor."""
    from tl_moe.pipeline.results.sparsity import SparsityResult, test_p_value
    from tl_moe.pipeline.results.sparsity_cells import floor_text

    record = dict(
        _record("toy/moe-8x2", 0.25, HEADLINE, 0.03, -0.01, 0.07, 0.3),
        swap_p=1 / 20_001,
        swap_permutations=20_000,
        n_draws=3,
        draws_df=2.4,
        bootstrap_resamples=2000,
    )
    assert test_p_value(record) == (0.3, "draws_t")
    assert test_p_value({**record, "n_draws": 1, "draws_df": None}) == (1 / 20_001, "swap")
    table = pd.DataFrame({"k": [1], "mean_best_f1": [0.9], "active_ratio": [0.25]})
    result = SparsityResult(table=table, ks=(1,), held_out=pd.DataFrame([record]))
    (test,) = result.headline_tests()
    assert test["p_test"] == "draws_t" and test["p"] == 0.3 and test["draws_df"] == 2.4
    assert test["verdict"] == "not separated from 0"
    (headline, _) = result.findings()
    assert "two-sided t tests of the draw mean" in headline
    assert "3 random neuron draws over 3, on Satterthwaite's degrees of freedom" in headline
    assert "over-reject" not in headline and "more often than its nominal level" not in headline
    row = {"verdict": "above 0", "p": 1e-6, "p_test": "draws_t", "tests_in_family": 28}
    assert floor_text([row]) == ""


def test_a_missing_draws_df_read_back_as_nan_is_not_a_t_test():
    from tl_moe.pipeline.results.sparsity import test_p_value

    record = dict(
        _record("toy/moe-8x2", 0.25, HEADLINE, 0.03, -0.01, 0.07, 0.3), n_draws=3, draws_df=float("nan")
    )
    assert test_p_value(record) == (0.3, "bootstrap")
