"""Held-out comparisons: the per-concept document gate, the document swap test, a difference tested
against its own null, and the control's draw-to-draw variation in the interval (planted cases)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from tl_moe.analysis.held_out_probing import (
    FN,
    FP,
    TN,
    TP,
    HeldOutArm,
    Side,
    _concept_scores,
    balanced_accuracy,
    balanced_f1,
    compare,
    swap_test,
)
from tl_moe.analysis.stats import MIN_DOCUMENTS, cluster_bootstrap, paired_item_means

N_DOCS = 40
CONCEPTS = ("noun", "verb", "digit", "code_keyword")  # the last one is rare in the gate's cases


def _counts(rng, hits, false_alarm=0.1, rate=20.0, rare=(), rare_docs=2, n_docs=N_DOCS) -> np.ndarray:
    """``[1, concept, doc, 4]`` confusion counts; concept c's probe flags a positive with ``hits[c]``.
    A concept in ``rare`` has positives in ``rare_docs`` documents only."""
    counts = np.zeros((1, len(hits), n_docs, 4))
    for c, hit in enumerate(hits):
        positives = rng.poisson(rate, n_docs)
        if c in rare:
            positives[rare_docs:] = 0
        negatives = rng.poisson(60, n_docs)
        tp, fp = rng.binomial(positives, hit), rng.binomial(negatives, false_alarm)
        counts[0, c, :, TP], counts[0, c, :, FN] = tp, positives - tp
        counts[0, c, :, FP], counts[0, c, :, TN] = fp, negatives - fp
    return counts


def _arm(name: str, counts: np.ndarray, concepts=CONCEPTS) -> HeldOutArm:
    return HeldOutArm(
        name, pd.DataFrame(), pd.DataFrame(), counts, concepts, (1,), np.arange(counts.shape[2])
    )


def _record(records: list[dict], metric: str = "f1") -> dict:
    (record,) = [r for r in records if r["metric"] == metric]
    return record


# --------------------------------------------------------------------------------------------------
# the per-concept gate
# --------------------------------------------------------------------------------------------------
def _gate_arms(seed: int) -> tuple[HeldOutArm, HeldOutArm]:
    """True difference 0 on the three common concepts; the rare one (positives in 2 documents) has a large
    planted difference that the gate must keep out."""
    rng = np.random.default_rng(seed)
    a = _counts(rng, (0.9, 0.7, 0.8, 0.95), rare=(3,))
    b = _counts(rng, (0.9, 0.7, 0.8, 0.3), rare=(3,))
    return _arm("moe", a), _arm("dense", b)


def test_a_concept_with_positives_in_few_test_documents_is_dropped_with_the_reason():
    a, b = _gate_arms(0)
    record = _record(compare(a, b, n_resamples=200, seed=0))
    assert record["n_concepts_selected"] == 4 and record["n_concepts"] == 3
    assert record["n_concepts_dropped"] == 1
    assert record["dropped_concepts"] == (
        f"code_keyword: positives in 2 test documents in moe (at least {MIN_DOCUMENTS} needed)"
    )
    # The estimate is the mean over the three kept concepts, by hand.
    hand = balanced_f1(a.doc_counts[0, :3].sum(1)) - balanced_f1(b.doc_counts[0, :3].sum(1))
    assert record["estimate"] == pytest.approx(hand.mean())


def test_the_gate_counts_negatives_and_every_arm():
    rng = np.random.default_rng(3)
    a = _counts(rng, (0.8, 0.8, 0.8, 0.8))
    b = _counts(rng, (0.8, 0.8, 0.8, 0.8))
    b[0, 1, 5:, FP] = b[0, 1, 5:, TN] = 0  # verb: negatives in 5 documents, in the control only
    record = _record(compare(_arm("moe", a), _arm("dense", b), n_resamples=100))
    assert record["n_concepts"] == 3
    assert (
        record["dropped_concepts"]
        == f"verb: negatives in 5 test documents in dense (at least {MIN_DOCUMENTS} needed)"
    )


def test_a_group_without_a_gated_concept_has_no_estimate():
    a, b = _gate_arms(1)
    record = _record(compare(a, b, n_resamples=100, concepts={"code_keyword"}))
    assert record["estimate"] is None and record["n_concepts"] == 0 and record["n_concepts_dropped"] == 1
    assert "no concept has positives and negatives in at least 30" in record["interval_unavailable_reason"]


def test_the_gated_interval_covers_the_planted_null_without_a_lean():
    """Planted null on the kept concepts over 200 seeds (the rare concept's large difference is gated out).
    Measured: coverage 0.91 (300 seeds: 0.92; a percentile interval over 40 documents), median position of
    the estimate in its interval 0.50."""
    covered, position = [], []
    for seed in range(200):
        record = _record(compare(*_gate_arms(seed), n_resamples=400, seed=seed))
        covered.append(record["ci_low"] <= 0 <= record["ci_high"])
        position.append((record["estimate"] - record["ci_low"]) / (record["ci_high"] - record["ci_low"]))
    print("coverage", np.mean(covered), "median position", np.median(position))
    assert 0.87 <= np.mean(covered) <= 0.99
    assert 0.4 <= np.median(position) <= 0.6


# --------------------------------------------------------------------------------------------------
# the document swap test
# --------------------------------------------------------------------------------------------------
def _exact_swap_p(side: Side, score) -> float:
    """The swap test's p-value over all 2^n swaps (a reference written independently: a loop over swaps,
    each recomputing both sides' totals from the documents)."""
    n_docs = side.first.shape[1]
    observed = None
    values = []
    for keep in itertools.product((1, 0), repeat=n_docs):
        keep = np.array(keep, dtype=bool)
        diffs = []
        for draw in side.draws:
            a = side.first[:, keep].sum(1) + draw[:, ~keep].sum(1)
            b = draw[:, keep].sum(1) + side.first[:, ~keep].sum(1)
            diffs.append((score(a), score(b)))
        a_mean = np.mean([d[0] for d in diffs], axis=0)
        b_mean = np.mean([d[1] for d in diffs], axis=0)
        value = paired_item_means(a_mean[None], b_mean[None])[0][0]
        if observed is None:
            observed = value  # the first product is all ones: the observed assignment
        values.append(value)
    values = np.abs(np.array(values))
    return float((values >= abs(observed) - 1e-12).mean())


def test_the_swap_test_matches_the_exact_test_over_every_swap():
    rng = np.random.default_rng(5)
    a = _counts(rng, (0.85, 0.6), n_docs=10)[0]
    b = [_counts(rng, (0.75, 0.6), n_docs=10)[0], _counts(rng, (0.7, 0.65), n_docs=10)[0]]
    side = Side(a, tuple(b))
    exact = _exact_swap_p(side, balanced_accuracy)
    randomized = swap_test(side, balanced_accuracy, permutations=20_000, seed=1)
    # 20,000 random swaps: the sd of the estimated p is at most 0.0035.
    assert randomized == pytest.approx(exact, abs=0.015)
    assert 0.02 < exact < 0.98  # a case where the p-value is not at an end


def test_a_planted_effect_reaches_the_swap_tests_floor_and_the_floor_is_one_over_n_plus_one():
    rng = np.random.default_rng(0)
    side = Side(_counts(rng, (0.9, 0.9, 0.9))[0], (_counts(rng, (0.6, 0.6, 0.6))[0],))
    assert swap_test(side, balanced_accuracy, permutations=20_000) == pytest.approx(1 / 20_001)


def test_the_swap_test_rejects_a_planted_null_at_the_nominal_rate():
    """Planted null: both arms' probes have the same hit and false-alarm rates, but the control sees
    fewer positives per document (another unit's tokens). Over 300 seeds, rejections at 5%: measured 0.04."""
    rejected = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        first = _counts(rng, (0.8, 0.6, 0.7), rate=20.0)[0]
        draws = (_counts(rng, (0.8, 0.6, 0.7), rate=8.0)[0], _counts(rng, (0.8, 0.6, 0.7), rate=8.0)[0])
        rejected.append(swap_test(Side(first, draws), balanced_accuracy, permutations=499, seed=seed) <= 0.05)
    print("rejection rate", np.mean(rejected))
    assert 0.02 <= np.mean(rejected) <= 0.09


def _random_draw_null(seed: int, n_draws: int, permutations: int = 199) -> tuple[float, float]:
    """Planted null "the expert scores as random dense neurons do": each control draw's probes hit at the
    expert's rates plus a draw-to-draw offset (sd 0.05), so the true difference from the draws' population
    is 0. Returns (fixed-draw swap p, compare's p-value: the draw-mean t test)."""
    rng = np.random.default_rng(seed)
    hits = np.array([0.8, 0.6, 0.7])
    first = _counts(rng, tuple(hits))
    draws = [_counts(rng, tuple(np.clip(hits + rng.normal(0, 0.05, 3), 0, 1))) for _ in range(n_draws)]
    side = Side(first[0], tuple(d[0] for d in draws))
    swap = swap_test(side, balanced_accuracy, permutations=permutations, seed=seed)
    concepts = CONCEPTS[:3]
    arms = [_arm(f"control[{j}]", d, concepts) for j, d in enumerate(draws)]
    record = _record(
        compare(_arm("moe", first, concepts), arms, n_resamples=permutations, seed=seed), "balanced_accuracy"
    )
    return swap, record["bootstrap_p"]


def test_random_draws_the_draw_mean_test_carries_their_variance_and_the_swap_test_does_not():
    """Planted null with random control draws (true difference 0 from the draws' population). The swap
    test holds the draws fixed, so it tests "expert = these draws" and rejects far above 5%; compare's
    p-value (documents' bootstrap variance plus the variance between the draws, t on Satterthwaite's df)
    is near 5%. In this test's 300 seeds (3 draws, 199 resamples/swaps): swap 0.24, compare 0.06
    (tests/test_draw_mean_interval.py measures the rate over 2,000 seeds)."""
    three = np.array([_random_draw_null(seed, 3) for seed in range(300)]) <= 0.05
    swap_rate, rate = three.mean(0)
    print("3 draws: swap", swap_rate, "draw-mean t", rate)
    assert swap_rate >= 0.15
    assert rate <= 0.05 + 2.6 * np.sqrt(0.05 * 0.95 / 300)


def test_compare_records_the_swap_p_value_when_asked():
    a, b = _gate_arms(0)
    record = _record(compare(a, b, n_resamples=100, permutations=999))
    side = Side(a.doc_counts[0, :3], (b.doc_counts[0, :3],))
    assert record["swap_p"] == pytest.approx(swap_test(side, balanced_f1, permutations=999, seed=0))
    assert record["swap_permutations"] == 999
    assert _record(compare(a, b, n_resamples=100))["swap_p"] is None


# --------------------------------------------------------------------------------------------------
# a difference tested against its own null
# --------------------------------------------------------------------------------------------------
def _null_arms(seed: int, gain: float):
    """MoE − control with a planted bias of the protocol that the permuted-label pair shares: the MoE's
    probes hit 0.8 + bias + gain, the control's 0.8; with permuted labels, 0.5 + bias vs 0.5."""
    rng = np.random.default_rng(seed)
    bias = 0.08
    arms = [
        _counts(rng, (0.8 + bias + gain,) * 3),
        _counts(rng, (0.8,) * 3),
        _counts(rng, (0.5 + bias,) * 3, false_alarm=0.5),
        _counts(rng, (0.5,) * 3, false_alarm=0.5),
    ]
    concepts = CONCEPTS[:3]
    return [
        _arm(name, c, concepts)
        for name, c in zip(("moe", "control", "moe_p", "control_p"), arms, strict=True)
    ]


def test_the_null_corrected_estimate_is_the_difference_of_the_two_differences_by_hand():
    moe, control, moe_p, control_p = _null_arms(0, 0.0)
    record = _record(compare(moe, control, null=(moe_p, control_p), n_resamples=200), "balanced_accuracy")

    def mean(arm):
        return balanced_accuracy(arm.doc_counts[0].sum(1))

    hand = ((mean(moe) - mean(control)) - (mean(moe_p) - mean(control_p))).mean()
    assert record["estimate"] == pytest.approx(hand)
    assert record["swap_p"] is None  # no swap test of a null-corrected difference


def test_the_null_corrected_record_carries_both_parts_over_the_same_concepts():
    """Its ``uncorrected_*`` is MoE − control and its ``null_*`` the same with permuted labels, each over
    the concepts gated in all four arms with its own interval: the first is ``compare`` of the two arms
    alone (same seed, same resamples), the second ``compare`` of the permuted pair, and the corrected
    estimate is their difference (by hand)."""
    moe, control, moe_p, control_p = _null_arms(1, 0.04)
    record = _record(
        compare(moe, control, null=(moe_p, control_p), n_resamples=300, seed=2), "balanced_accuracy"
    )
    plain = _record(compare(moe, control, n_resamples=300, seed=2), "balanced_accuracy")
    null = _record(compare(moe_p, control_p, n_resamples=300, seed=2), "balanced_accuracy")
    assert plain["n_concepts"] == null["n_concepts"] == record["n_concepts"] == 3
    for key, other in (("uncorrected", plain), ("null", null)):
        for end in ("estimate", "ci_low", "ci_high"):
            assert record[f"{key}_{end}"] == pytest.approx(other[end], abs=1e-12)
    assert record["uncorrected_estimate"] - record["null_estimate"] == pytest.approx(record["estimate"])
    assert record["null_estimate"] == pytest.approx(0.04, abs=0.05)  # the shared bias of 0.08 halves
    assert "uncorrected_estimate" not in plain


def test_a_difference_equal_to_its_null_covers_zero_and_a_real_gain_does_not():
    covered = []
    for seed in range(40):
        record = _record(
            compare(*_null_arms(seed, 0.0)[:2], null=_null_arms(seed, 0.0)[2:], n_resamples=400, seed=seed),
            "balanced_accuracy",
        )
        covered.append(record["ci_low"] <= 0 <= record["ci_high"])
    print("coverage", np.mean(covered))
    assert np.mean(covered) >= 0.85
    arms = _null_arms(99, 0.08)
    gain = _record(compare(arms[0], arms[1], null=(arms[2], arms[3]), n_resamples=400), "balanced_accuracy")
    assert gain["ci_low"] > 0


# --------------------------------------------------------------------------------------------------
# the control's draws inside the interval (draw-mean t interval)
# --------------------------------------------------------------------------------------------------
def _one_stage_width(first: np.ndarray, draws: list[np.ndarray], n_resamples: int, seed: int) -> float:
    """The interval that ignores the draws' variation: documents resampled, every draw kept once (a
    reference built from the per-concept scores)."""
    score_a = _concept_scores(first, balanced_accuracy)
    score_b = [_concept_scores(d, balanced_accuracy) for d in draws]
    statistic = lambda w: paired_item_means(score_a(w), sum(f(w) for f in score_b) / len(score_b))[0]  # noqa: E731
    interval = cluster_bootstrap(statistic, first.shape[1], n_resamples=n_resamples, seed=seed)
    return interval.high - interval.low


def test_draws_that_differ_widen_the_interval_and_identical_draws_do_not():
    rng = np.random.default_rng(2)
    concepts = CONCEPTS[:3]
    first = _counts(rng, (0.8,) * 3)
    far_apart = [_counts(rng, (hit,) * 3) for hit in (0.95, 0.5, 0.75)]
    moe = _arm("moe", first, concepts)
    draws = [_arm(f"control[{d}]", c, concepts) for d, c in enumerate(far_apart)]
    with_draws = _record(compare(moe, draws, n_resamples=2000, seed=0), "balanced_accuracy")
    one_stage = _one_stage_width(first[0], [c[0] for c in far_apart], 2000, 0)
    assert with_draws["ci_high"] - with_draws["ci_low"] > 1.5 * one_stage
    # Identical draws: no variance between them, so the t interval is the documents' alone (n - 1 df),
    # as wide as the one-stage percentile interval up to the t quantile and resampling noise.
    same = [_arm(f"control[{d}]", far_apart[1], concepts) for d in range(3)]
    record = _record(compare(moe, same, n_resamples=2000, seed=0), "balanced_accuracy")
    assert record["draws_df"] == pytest.approx(N_DOCS - 1)
    assert record["ci_high"] - record["ci_low"] == pytest.approx(
        _one_stage_width(first[0], [far_apart[1][0]] * 3, 2000, 0), rel=0.12
    )
