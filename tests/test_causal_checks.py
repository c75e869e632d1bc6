"""The causal checks of labels (tl_moe.explain.causal): planted cases with known answers.

The planted data mimic what a labeled expert looks like on held-out windows: it is routed far more
often on the tokens its label describes than elsewhere (``ROUTED_DESCRIBED`` vs ``ROUTED_OTHER``), and it
changes the loss only where it is routed. Documents differ in how much the expert matters (a per-document effect), so
positions of one document are not independent. With no causal effect specific to the label, the
check (described vs other *routed* positions, a bootstrap over documents) must find none at about
the nominal rate; a comparison over all positions would credit the label with routing alone.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tl_moe.explain.causal import (
    BALANCE_CALIPER,
    MIN_CAUSAL_DOCUMENTS,
    CausalResult,
    ControlChoice,
    RoutingPool,
    described_positions,
    label_effects,
    label_rule,
    routing_chosen_control,
    rule_chosen_control,
    rule_routing_rates,
    standardized_difference,
)
from tl_moe.explain.explainers import Explanation
from tl_moe.explain.labels import ExplainItems, LabelRule

ROUTED_DESCRIBED, ROUTED_OTHER = 0.35, 0.14


def planted(seed: int, *, n_documents: int = 40, experts: int = 4, positions: int = 120, gain: float = 1.0):
    """Positions of ``n_documents`` documents; arm 0 (labeled) multiplies its |Δloss| on described routed
    positions by ``gain`` (1: no label-specific effect); arm 1 (control) never does."""
    rng = np.random.default_rng(seed)
    documents = np.repeat(np.arange(n_documents), positions)
    n = len(documents)
    share = rng.uniform(0.1, 0.4, (experts, n_documents))[:, documents]  # described share varies per document
    described = rng.random((experts, n)) < share
    other = ~described
    rate = np.where(described, ROUTED_DESCRIBED, ROUTED_OTHER)
    routed = rng.random((2, experts, n)) < rate
    scale = rng.gamma(2.0, 0.05, (2, experts, n_documents))[..., documents]  # how much each document cares
    delta = scale * rng.exponential(1.0, (2, experts, n)) * routed + 0.002 * rng.random((2, experts, n))
    # Described tokens of some documents are harder for every expert (shared across experts, mean 1):
    # experts that share documents are not independent.
    hard = np.exp(0.4 * rng.standard_normal(n_documents) - 0.08)[documents]
    delta *= np.where(described, hard, 1.0)
    delta[0] *= np.where(described & routed[0], gain, 1.0)
    return documents, described, other, routed, delta


def mixing_weights(routed: np.ndarray, seed: int) -> np.ndarray:
    return routed * np.random.default_rng(seed).uniform(0.1, 0.9, routed.shape)


def run(seed: int, **kwargs):
    documents, described, other, routed, delta = planted(seed, **kwargs)
    observed, summary = label_effects(
        documents, described, other, routed, {"remove": delta}, mixing_weight=mixing_weights(routed, seed),
        n_resamples=999, seed=seed,
    )  # fmt: skip
    return observed, summary.set_index("quantity"), (documents, described, other, routed, delta)


def test_per_expert_effects_equal_a_direct_computation():
    observed, summary, (documents, described, other, routed, delta) = run(0)
    for j in range(described.shape[0]):
        on, off = described[j] & routed[0, j], other[j] & routed[0, j]
        expected = delta[0, j][on].mean() - delta[0, j][off].mean()
        assert observed["remove_effect"][j] == pytest.approx(expected)
        control = (
            delta[1, j][described[j] & routed[1, j]].mean() - delta[1, j][other[j] & routed[1, j]].mean()
        )
        assert observed["remove_labeled_minus_control"][j] == pytest.approx(expected - control)
        assert observed["routing_described"][j] == pytest.approx(routed[0, j][described[j]].mean())
        assert observed["control_routing_other"][j] == pytest.approx(routed[1, j][other[j]].mean())
        weight = mixing_weights(routed, 0)
        assert observed["weight_described"][j] == pytest.approx(weight[0, j][on].mean())
        assert observed["control_weight_other"][j] == pytest.approx(
            weight[1, j][other[j] & routed[1, j]].mean()
        )
    assert summary.loc["remove_effect", "mean"] == pytest.approx(observed["remove_effect"].mean())
    assert summary.loc["remove_effect", "documents"] == 40 and summary.loc["remove_effect", "experts"] == 4


def test_planted_label_without_causal_effect_is_not_found_at_the_nominal_rate():
    """Routed more on described tokens, no label-specific effect: the interval covers 0 at about the
    nominal rate over these seeds, for the labeled expert's effect and for labeled − control (the ranges
    asserted below), while the all-positions comparison is positive every time."""
    covered, covered_control, naive = [], [], []
    for seed in range(200):
        _, summary, (_, described, other, routed, delta) = run(seed)
        covered.append(summary.loc["remove_effect", "ci low"] <= 0 <= summary.loc["remove_effect", "ci high"])
        row = summary.loc["remove_labeled_minus_control"]
        covered_control.append(row["ci low"] <= 0 <= row["ci high"])
        naive.append(
            np.mean([delta[0, j][described[j]].mean() - delta[0, j][other[j]].mean() for j in range(4)])
        )
        routing = summary.loc["routing_described", "mean"] - summary.loc["routing_other", "mean"]
        assert routing > 0.1  # the planted routing confound is there
    assert 0.90 <= np.mean(covered) <= 0.99
    assert 0.90 <= np.mean(covered_control) <= 0.99
    assert min(naive) > 0  # what comparing all positions would have reported


def test_planted_label_with_a_causal_effect_is_found():
    found = [run(seed, gain=1.6)[1].loc[q, "ci low"] > 0 for seed in range(20)
             for q in ("remove_effect", "remove_labeled_minus_control")]  # fmt: skip
    assert np.mean(found) >= 0.9


def test_fewer_than_30_documents_give_no_interval_and_say_why():
    _, summary, _ = run(0, n_documents=MIN_CAUSAL_DOCUMENTS - 1)
    assert summary["ci low"].isna().all() and summary["ci high"].isna().all()
    assert np.isfinite(summary.loc["remove_effect", "mean"])
    reason = summary.loc["remove_effect", "interval"]
    assert reason.startswith("unavailable") and f"{MIN_CAUSAL_DOCUMENTS - 1} document(s)" in reason
    assert "at least 30" in reason
    _, summary, _ = run(0, n_documents=MIN_CAUSAL_DOCUMENTS)
    assert (summary.loc["remove_effect", "interval"] == "available") and np.isfinite(summary["ci low"]).any()


def test_resampling_documents_is_wider_than_pretending_positions_are_independent():
    """Every position its own document (the pseudo-replication the check must avoid) narrows the interval."""
    for seed in range(3):
        documents, described, other, routed, delta = planted(seed)
        _, clustered = label_effects(documents, described, other, routed, {"remove": delta}, n_resamples=999)
        _, tokens = label_effects(np.arange(len(documents)), described, other, routed, {"remove": delta},
                                  n_resamples=999)  # fmt: skip
        width = (clustered["ci high"] - clustered["ci low"]).iloc[0]
        assert width > 1.3 * (tokens["ci high"] - tokens["ci low"]).iloc[0]


def _examples(rate_at_concept, frequency, domain_names=("a", "b")):
    """A stand-in for ExpertExamples with one layer, one concept: explain-split routing counts."""
    experts = len(frequency)
    routed_concept = torch.zeros(3, 1, experts, 1, len(domain_names), dtype=torch.float64)
    routed_total = torch.zeros(3, 1, experts, len(domain_names), dtype=torch.float64)
    for d in range(len(domain_names)):
        routed_concept[0, 0, :, 0, d] = 100 * torch.tensor(rate_at_concept[d])
        routed_total[0, 0, :, d] = torch.tensor(frequency, dtype=torch.float64)
    concept_total = torch.full((3, 1, len(domain_names)), 100.0, dtype=torch.float64)
    return SimpleNamespace(routed_concept=routed_concept, concept_total=concept_total, routed_total=routed_total,
                           domain_names=domain_names, layer_row=lambda layer: 0)  # fmt: skip


def test_control_expert_is_chosen_by_routing_at_the_described_tokens_not_on_frequency():
    # expert 0 is labeled; expert 1 has its overall frequency but is rarely routed on the concept;
    # expert 2 is routed on the concept about as often. In domain "b", expert 3 is the closest.
    examples = _examples([[0.6, 0.1, 0.55, 0.0], [0.6, 0.1, 0.5, 0.58]], [1000, 1000, 400, 300])
    assert routing_chosen_control(examples, 0, 0, 0) == 2  # over both domains: 0.6 vs 0.1, 0.525, 0.29
    assert routing_chosen_control(examples, 0, 0, 0, domain="a") == 2
    assert routing_chosen_control(examples, 0, 0, 0, domain="b") == 3


def test_the_finding_gives_no_interval_below_30_documents_and_names_the_unit():
    from tl_moe.explain.causal import CausalResult
    from tl_moe.pipeline.results.explain_causal import causal_finding

    for n_documents, available in ((20, False), (40, True)):
        _, summary, _ = run(0, n_documents=n_documents)
        text = causal_finding(CausalResult(pd.DataFrame(), summary.reset_index(), n_documents, n_documents))
        assert f"{n_documents} windows of {n_documents} documents" in text
        effect = summary.loc["remove_effect"]
        if available:
            assert "95% bootstrap over documents" in text and "p =" not in text
            assert f"{effect['mean']:.3f} [{effect['ci low']:.3f}, {effect['ci high']:.3f}]" in text
        else:
            assert "intervals unavailable: 20 document(s)" in text and "[" not in text
            assert f"{effect['mean']:.3f} (no interval)" in text


def test_described_positions_apply_each_rule_to_each_window_position():
    """Two windows of three tokens, concepts ``a`` and ``b``, domains ``web`` and ``code``: each kind's
    answer worked out by hand."""
    tokens = [(" the", " cat", "."), (" def", " the", " x")]
    labels = torch.tensor([[[0, 0], [1, 0], [0, 1]], [[1, 1], [0, 0], [1, 0]]], dtype=torch.bool)
    domains, names = ["web", "code"], ("a", "b")
    cases = {
        LabelRule("tokens", tokens=(" the", "."), weights=(0.3, 0.1)): [[1, 0, 1], [0, 1, 0]],
        LabelRule("concept", ("a",)): [[0, 1, 0], [1, 0, 1]],
        LabelRule("concept_and_tokens", ("a",), (" x", " cat"), (0.2, 0.1)): [[0, 1, 0], [0, 0, 1]],
        LabelRule("concept_or_tokens", ("b",), (" the",), (0.2,)): [[1, 0, 1], [1, 1, 0]],
        LabelRule("concept_or_concept", ("a", "b")): [[0, 1, 1], [1, 0, 1]],
        LabelRule("concept_and_domain", ("a",), domain="code"): [[0, 0, 0], [1, 0, 1]],
    }
    for rule, expected in cases.items():
        got = described_positions(rule, tokens, labels, domains, names)
        assert got.tolist() == torch.tensor(expected, dtype=torch.bool).tolist(), rule.label


def test_label_rule_is_the_explanations_rule_else_its_concept():
    rule = LabelRule("tokens", tokens=(" x",), weights=(0.5,))
    assert label_rule(Explanation(0, 1, rule.label, rule=rule), ("a",)) == rule
    assert label_rule(Explanation(0, 1, "a", concept="a"), ("a",)) == LabelRule("concept", ("a",))
    assert label_rule(Explanation(0, 1, "a", concept="a", domain="web"), ("a",)) == LabelRule(
        "concept_and_domain", ("a",), domain="web"
    )
    assert label_rule(Explanation(0, 1, "free text"), ("a",)) is None


def test_rule_routing_rates_count_routing_on_the_described_pool_positions():
    """Five pool positions, three experts, top-1 routing: a token set `x` describes positions 0, 2, 3,
    where expert 0 is routed twice, expert 1 once, expert 2 never."""
    items = ExplainItems(("x", "y", "x", "x", "z"), np.zeros((5, 1), bool), np.array(["d"] * 5, object),
                         np.zeros(5, bool))  # fmt: skip
    pool = RoutingPool(items, torch.tensor([[0], [2], [1], [0], [2]]))
    rates, n = rule_routing_rates(pool, LabelRule("tokens", tokens=("x",), weights=(1.0,)), ("c",), 3)
    assert n == 3 and rates.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    rates, n = rule_routing_rates(pool, LabelRule("tokens", tokens=("w",), weights=(1.0,)), ("c",), 3)
    assert n == 0 and rates.tolist() == [0.0, 0.0, 0.0]


VOCABULARY = tuple(f" t{i}" for i in range(30))


def planted_token_sets(
    seed: int, *, gain: float, n_documents: int = 40, experts: int = 4, positions: int = 120
):
    """Token-set labels on windows of random tokens (one window per document): expert ``j``'s label is
    the token set ``VOCABULARY[5j : 5j + 5]`` and its described positions come from applying the rule
    to the token texts. Routed on ``ROUTED_DESCRIBED`` of described vs ``ROUTED_OTHER`` of other positions
    (both arms); arm 0 (the
    labeled expert) multiplies its |Δloss| on described routed positions by ``gain``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(VOCABULARY), (n_documents, positions))
    tokens = [tuple(VOCABULARY[i] for i in row) for row in ids]
    labels = torch.zeros(n_documents, positions, 0, dtype=torch.bool)
    rules = [
        LabelRule("tokens", tokens=VOCABULARY[5 * j : 5 * j + 5], weights=(0.1,) * 5) for j in range(experts)
    ]
    described = np.stack([described_positions(r, tokens, labels, ["web"] * n_documents, ()).numpy().reshape(-1)
                          for r in rules])  # fmt: skip
    documents = np.repeat(np.arange(n_documents), positions)
    n = len(documents)
    routed = rng.random((2, experts, n)) < np.where(described, ROUTED_DESCRIBED, ROUTED_OTHER)
    scale = rng.gamma(2.0, 0.05, (2, experts, n_documents))[..., documents]
    delta = scale * rng.exponential(1.0, (2, experts, n)) * routed + 0.002 * rng.random((2, experts, n))
    delta[0] *= np.where(described & routed[0], gain, 1.0)
    return documents, described, ~described, routed, delta


def run_token_sets(seed: int, gain: float):
    documents, described, other, routed, delta = planted_token_sets(seed, gain=gain)
    _, summary = label_effects(
        documents, described, other, routed, {"remove": delta}, n_resamples=999, seed=seed
    )
    return summary.set_index("quantity"), (described, routed, delta)


def test_planted_token_set_label_whose_expert_matters_on_its_tokens_is_found():
    found = [run_token_sets(seed, 1.6)[0].loc[q, "ci low"] > 0 for seed in range(20)
             for q in ("remove_effect", "remove_labeled_minus_control")]  # fmt: skip
    assert np.mean(found) >= 0.9


def test_planted_token_set_label_routed_on_its_tokens_without_effect_is_not_found():
    """Routed far more on its tokens, no effect specific to them: the interval covers 0 in most seeds
    (measured: 37 of these 40) while the comparison over all positions (what routing alone gives) is
    positive in every seed."""
    covered, naive = [], []
    for seed in range(40):
        summary, (described, routed, delta) = run_token_sets(seed, 1.0)
        row = summary.loc["remove_effect"]
        covered.append(row["ci low"] <= 0 <= row["ci high"])
        assert summary.loc["routing_described", "mean"] - summary.loc["routing_other", "mean"] > 0.1
        naive.append(np.mean([delta[0, j][described[j]].mean() - delta[0, j][~described[j]].mean()
                              for j in range(described.shape[0])]))  # fmt: skip
    assert np.mean(covered) >= 0.85
    assert min(naive) > 0


def test_causal_budget_warns_before_the_pass_and_names_what_helps():
    import warnings

    import pytest

    from tl_moe.explain.checks import check_causal_budget

    small, large = [{"text": "x"}] * 40, [{"text": "x"}] * 400
    with pytest.warns(UserWarning, match="corpus"):
        assert check_causal_budget(small, 64) < 30  # about a fifth of 40 documents
    with pytest.warns(UserWarning, match="raise --explain-causal-windows"):
        assert check_causal_budget(large, 10) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reach = check_causal_budget(large, 64)
        assert 30 <= reach <= 64
        assert check_causal_budget(large, 0) == 0


def planted_weight_only(seed: int, *, n_documents: int = 40, experts: int = 4, positions: int = 120,
                        gain: float = 1.0):  # fmt: skip
    """The labeled expert's removal effect is proportional to its mixing weight only (times a
    per-document scale and noise), and its mixing weight is higher on described routed positions
    (uniform on [0.25, 0.70] vs [0.10, 0.55]); the control's weight is the same on both. ``gain``
    multiplies the labeled expert's |Δloss| on described routed positions (1: no label-specific effect)."""
    rng = np.random.default_rng(seed)
    documents, described, other, routed, _ = planted(
        seed, n_documents=n_documents, experts=experts, positions=positions
    )
    low = np.where(described, 0.25, 0.10)
    weight = np.stack([rng.uniform(low, low + 0.45), rng.uniform(0.10, 0.55, described.shape)]) * routed
    scale = rng.gamma(2.0, 0.5, (2, experts, n_documents))[..., documents]
    noise = rng.exponential(1.0, (2, experts, len(documents)))
    delta = scale * weight * noise + 0.002 * rng.random((2, experts, len(documents)))
    delta[0] *= np.where(described & routed[0], gain, 1.0)
    return documents, described, other, routed, delta, weight


def run_weight_only(seed: int, **kwargs):
    documents, described, other, routed, delta, weight = planted_weight_only(seed, **kwargs)
    observed, summary = label_effects(
        documents, described, other, routed, {"remove": delta}, mixing_weight=weight, n_resamples=999, seed=seed
    )  # fmt: skip
    return observed, summary.set_index("quantity"), (described, other, routed, delta, weight)


def test_weight_adjusted_effect_equals_a_least_squares_fit_per_expert():
    """The adjusted effect is the coefficient of 'described' in |Δ| = a + b·weight + c·described over the
    expert's routed positions, as numpy's least squares finds it."""
    observed, _, (described, other, routed, delta, weight) = run_weight_only(0, gain=1.3)
    for arm, who in enumerate(("", "control_")):
        for j in range(described.shape[0]):
            at = routed[arm, j] & (described[j] | other[j])
            design = np.stack([np.ones(at.sum()), weight[arm, j][at], described[j][at]], axis=1)
            coefficients = np.linalg.lstsq(design, delta[arm, j][at], rcond=None)[0]
            assert observed[f"{who}remove_effect_weight_adjusted"][j] == pytest.approx(coefficients[2])
    assert observed["remove_labeled_minus_control_weight_adjusted"] == pytest.approx(
        observed["remove_effect_weight_adjusted"] - observed["control_remove_effect_weight_adjusted"]
    )


def test_effect_of_mixing_weight_alone_is_not_credited_to_the_label():
    """Removal matters in proportion to the mixing weight only, and the weight is higher where the label
    applies: the unadjusted labeled − control difference is positive (its interval rarely covers 0), the
    weight-adjusted one and the labeled expert's own adjusted effect cover 0 at about the nominal rate
    (the ranges asserted below)."""
    adjusted, adjusted_own, unadjusted = [], [], []
    for seed in range(100):
        _, summary, _ = run_weight_only(seed)
        for out, name in ((adjusted, "remove_labeled_minus_control_weight_adjusted"),
                          (adjusted_own, "remove_effect_weight_adjusted"),
                          (unadjusted, "remove_labeled_minus_control")):  # fmt: skip
            out.append(summary.loc[name, "ci low"] <= 0 <= summary.loc[name, "ci high"])
        assert summary.loc["weight_described", "mean"] > summary.loc["weight_other", "mean"] + 0.1
    assert 0.88 <= np.mean(adjusted) <= 0.99
    assert 0.88 <= np.mean(adjusted_own) <= 0.99
    assert np.mean(unadjusted) <= 0.1


def test_a_label_specific_effect_survives_the_weight_adjustment():
    found = [run_weight_only(seed, gain=1.6)[1].loc["remove_labeled_minus_control_weight_adjusted", "ci low"] > 0
             for seed in range(20)]  # fmt: skip
    assert np.mean(found) >= 0.9


def test_the_finding_gives_the_unadjusted_and_the_weight_adjusted_difference_side_by_side():
    """Removal has a label-specific effect (its interval is above 0 at equal weight too); boosting has
    none (covers 0): the finding gives each labeled − control difference unadjusted and at equal mixing
    weight, each with its interval and what it says, the adjusted one read as an excess beyond the mixing
    weight (never as for or against the label), the adjustment's limits, and the DLA rank-1 difference."""
    from tl_moe.explain.causal import CausalResult
    from tl_moe.pipeline.results.explain_causal import ADJUSTMENT_LIMITS, causal_expert_table, causal_finding

    documents, described, other, routed, delta, weight = planted_weight_only(3, gain=1.8)
    _, _, _, _, boost, _ = planted_weight_only(4)
    rank_one = routed & (np.random.default_rng(0).random(routed.shape) < 0.5)
    observed, summary = label_effects(documents, described, other, routed, {"remove": delta, "boost": boost},
                                      rank_one=rank_one, mixing_weight=weight, n_resamples=999)  # fmt: skip
    rows = summary.set_index("quantity")
    remove, boosted = (
        rows.loc["remove_labeled_minus_control_weight_adjusted"],
        rows.loc["boost_labeled_minus_control_weight_adjusted"],
    )
    assert remove["ci low"] > 0 and boosted["ci low"] <= 0 <= boosted["ci high"]
    text = causal_finding(CausalResult(pd.DataFrame(), summary, 40, 40))

    def shown(row):
        return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"

    raw = rows.loc["remove_labeled_minus_control"]
    assert raw["ci low"] > 0
    assert (
        f"removing a labeled expert, labeled − control unadjusted {shown(raw)} (interval above 0: for the label)"
        in text
    )
    assert (
        f"at equal mixing weight {shown(remove)} (interval above 0: an excess beyond the mixing weight)"
        in text
    )
    assert (
        f"within weight strata {shown(rows.loc['remove_labeled_minus_control_weight_stratified'])})" in text
    )
    assert f"{shown(boosted)} (interval covers 0: no excess beyond the mixing weight shown)" in text
    assert "accounted for" not in text.split("boosting")[0]  # removal's excess outlives the adjustment
    assert ADJUSTMENT_LIMITS in text and "two headlines of equal rank" in text
    dla = rows.loc["dla_rank1_rate labeled - control"]
    assert f"labeled − control {shown(dla)}" in text
    frame = pd.DataFrame({"layer": [0] * 4, "expert": range(4), "label": list("abcd"),
                          "kind": ["concept", "tokens", "concept_or_tokens", "tokens"]})  # fmt: skip
    for name, values in observed.items():
        frame[name] = values
    table = causal_expert_table(CausalResult(frame, summary, 40, 40))
    assert list(table.columns[:4]) == ["layer", "expert", "label", "label kind"]
    assert table["effect - control, adjusted"].tolist() == pytest.approx(
        observed["remove_labeled_minus_control_weight_adjusted"].round(4).tolist()
    )


def test_no_interval_when_fewer_than_30_documents_hold_a_described_routed_position():
    """40 documents, but the label describes tokens of only 20 of them: the described side rests on 20
    independent units, so no interval, and the reason names them."""
    documents, described, other, routed, delta = planted(0)
    described = described & (documents < 20)
    _, summary = label_effects(documents, described, ~described, routed, {"remove": delta}, n_resamples=99)
    row = summary.set_index("quantity").loc["remove_effect"]
    assert row["documents"] == 40 and row["documents with described routed positions"] == 20
    assert row["interval"].startswith("unavailable: 20 document(s)") and np.isnan(row["ci low"])


def test_weight_stratified_effect_equals_a_direct_computation_and_covers_a_weight_only_effect():
    """Within 5 quantile strata of each expert's weight: described − other per stratum, averaged with the
    described positions as weights (recomputed here per expert); on the weight-only plant it covers 0 in
    most seeds (the range asserted below)."""
    from tl_moe.explain.causal import WEIGHT_STRATA

    observed, _, (described, other, routed, delta, weight) = run_weight_only(0, gain=1.3)
    for arm, who in enumerate(("", "control_")):
        for j in range(described.shape[0]):
            at = routed[arm, j] & (described[j] | other[j])
            edges = np.quantile(weight[arm, j][at], np.linspace(0, 1, WEIGHT_STRATA + 1)[1:-1])
            stratum = np.searchsorted(edges, weight[arm, j], side="right")
            gaps, shares = [], []
            for s in range(WEIGHT_STRATA):
                d, o = at & described[j] & (stratum == s), at & other[j] & (stratum == s)
                if d.any() and o.any():
                    gaps.append(delta[arm, j][d].mean() - delta[arm, j][o].mean())
                    shares.append(d.sum())
            expected = np.average(gaps, weights=shares)
            assert observed[f"{who}remove_effect_weight_stratified"][j] == pytest.approx(expected)
    covered = []
    for seed in range(40):
        row = run_weight_only(seed)[1].loc["remove_labeled_minus_control_weight_stratified"]
        covered.append(row["ci low"] <= 0 <= row["ci high"])
    assert np.mean(covered) >= 0.8


def test_the_control_choice_reports_both_experts_routing_rates_where_it_was_chosen():
    examples = _examples([[0.6, 0.1, 0.55, 0.0], [0.6, 0.1, 0.5, 0.58]], [1000, 1000, 400, 300])
    examples.concept_names = ("c",)
    choice = rule_chosen_control(examples, None, 0, 0, LabelRule("concept", ("c",)))
    # over both domains: expert 0 routed on 120 of the 200 concept tokens, expert 2 (the closest) on 105
    assert choice == ControlChoice(2, -1, "dissection counts", pytest.approx(0.6), pytest.approx(0.525))


def test_standardized_difference_of_routing_rates_equals_the_formula_by_hand():
    assert standardized_difference(0.536, 0.380) == pytest.approx(
        (0.536 - 0.380) / np.sqrt((0.536 * 0.464 + 0.380 * 0.620) / 2)
    )
    assert standardized_difference(0.3, 0.3) == 0.0 and standardized_difference(1.0, 1.0) == 0.0
    assert standardized_difference(np.array([0.2, 0.5]), np.array([0.5, 0.2])).tolist() == pytest.approx(
        [-0.3 / np.sqrt((0.16 + 0.25) / 2), 0.3 / np.sqrt((0.16 + 0.25) / 2)]
    )


def _unbalanced(seed: int, control_rate: float):
    """:func:`planted` with the control expert routed at ``control_rate`` on described positions (the
    labeled one at ``ROUTED_DESCRIBED``)."""
    documents, described, other, routed, delta = planted(seed)
    rng = np.random.default_rng([seed, 1])
    routed[1] = rng.random(routed[1].shape) < np.where(described[1], control_rate, ROUTED_OTHER)
    return documents, described, other, routed, delta


def test_balance_diagnostic_equals_a_direct_computation_and_tells_a_balanced_control_from_an_unbalanced_one():
    """Both arms routed at 35% on described positions: the standardized difference is near 0 and its
    interval covers 0; a control routed at 15% there: labeled − control ≈ +0.20, d ≈ 0.46, above 0.1."""
    balanced = []
    for seed in range(20):
        documents, described, other, routed, delta = planted(seed)
        observed, summary = label_effects(documents, described, other, routed, {"remove": delta},
                                          n_resamples=499, seed=seed)  # fmt: skip
        row = summary.set_index("quantity").loc["routing_described standardized difference"]
        balanced.append(row["ci low"] <= 0 <= row["ci high"])
    assert np.mean(balanced) >= 0.85
    documents, described, other, routed, delta = _unbalanced(0, control_rate=0.15)
    observed, summary = label_effects(documents, described, other, routed, {"remove": delta}, n_resamples=499)
    for i in range(described.shape[0]):
        mine, theirs = routed[0, i][described[i]].mean(), routed[1, i][described[i]].mean()
        assert observed["routing_described labeled - control"][i] == pytest.approx(mine - theirs)
        assert observed["routing_described standardized difference"][i] == pytest.approx(
            (mine - theirs) / np.sqrt((mine * (1 - mine) + theirs * (1 - theirs)) / 2)
        )
    rows = summary.set_index("quantity")
    assert rows.loc["routing_described labeled - control", "mean"] == pytest.approx(0.20, abs=0.03)
    assert rows.loc["routing_described standardized difference", "ci low"] > BALANCE_CALIPER


def test_the_finding_prints_the_balance_and_the_check_over_balanced_controls():
    """The finding gives labeled − control routing rate and its standardized difference on the causal
    windows, the rates where the controls were chosen, how many are within the caliper there, and the
    headline over those experts; a planted label without a causal effect is not found over them."""
    from tl_moe.pipeline.results.explain_causal import causal_finding

    documents, described, other, routed, delta = planted(1)
    weight = mixing_weights(routed, 1)
    observed, summary = label_effects(documents, described, other, routed, {"remove": delta},
                                      mixing_weight=weight, n_resamples=499)  # fmt: skip
    keep = [0, 1, 2]  # chosen with |d| <= 0.1 on the explain documents
    _, balanced = label_effects(documents, described[keep], other[keep], routed[:, keep],
                                {"remove": delta[:, keep]}, mixing_weight=weight[:, keep], n_resamples=499)  # fmt: skip
    frame = pd.DataFrame({"layer": 0, "expert": range(4), "status": "ok",
                          "explain_routing_described": [0.5, 0.4, 0.3, 0.6],
                          "control_explain_routing_described": [0.48, 0.42, 0.3, 0.3]})  # fmt: skip
    frame["explain_routing_standardized_difference"] = standardized_difference(
        frame["explain_routing_described"], frame["control_explain_routing_described"]
    )
    text = causal_finding(CausalResult(frame, summary, 40, 40, balanced=balanced))
    rows, over = summary.set_index("quantity"), balanced.set_index("quantity")

    def shown(row):
        return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"

    assert f"labeled − control routing rate {shown(rows.loc['routing_described labeled - control'])}" in text
    assert f"standardized difference {shown(rows.loc['routing_described standardized difference'])}" in text
    assert (
        "described tokens 0.450 vs 0.375" in text and "3 of 4 checked experts have a control within" in text
    )
    headline = over.loc["remove_labeled_minus_control_weight_adjusted"]
    assert headline["ci low"] <= 0 <= headline["ci high"]  # no label-specific effect was planted
    unadjusted = over.loc["remove_labeled_minus_control"]
    assert (
        f"over those experts, removal, labeled − control unadjusted {shown(unadjusted)}"
        f" ({'interval above 0: for the label' if unadjusted['ci low'] > 0 else ''}"
    )[:-1] in text
    assert f"and at equal mixing weight {shown(headline)}" in text
    assert "matched" not in text


def test_an_excess_carried_by_the_mixing_weight_alone_is_said_to_be_accounted_for_by_it():
    """Planted: the labeled expert's removal effect follows its mixing weight only, and the router gives
    it a larger weight on described tokens (no effect beyond the weight). The unadjusted labeled − control
    difference is above 0, the one at equal weight covers 0, and the finding says the described-token
    excess is accounted for by the larger weight, without calling the label unsupported."""
    from tl_moe.explain.causal import CausalResult
    from tl_moe.pipeline.results.explain_causal import causal_finding

    documents, described, other, routed, delta, weight = planted_weight_only(5, gain=1.0)
    _, summary = label_effects(documents, described, other, routed, {"remove": delta}, mixing_weight=weight,
                               n_resamples=999, seed=5)  # fmt: skip
    rows = summary.set_index("quantity")
    raw, adjusted = (
        rows.loc["remove_labeled_minus_control"],
        rows.loc["remove_labeled_minus_control_weight_adjusted"],
    )
    assert raw["ci low"] > 0 and adjusted["ci low"] <= 0 <= adjusted["ci high"]
    text = causal_finding(CausalResult(pd.DataFrame(), summary, 40, 40))
    assert (
        f"the described-token excess ({raw['mean']:+.3f}) is accounted for by the router's larger mixing weight there"
        in text
    )
    assert "no excess beyond the mixing weight shown" in text
    assert "against the label" not in text and "neither alone makes the label causally supported" in text


def _items(documents, described, other, routed, delta, weight):
    """The planted experts as :func:`causal_checks` gathers them (boost: half the removal's |Δloss|)."""
    return [
        {"row": j, "described": described[j], "other": other[j], "routed": routed[:, j],
         "rank_one": routed[:, j], "weight": weight[:, j],
         "deltas": {"remove": delta[:, j], "boost": 0.5 * delta[:, j]}}
        for j in range(described.shape[0])
    ]  # fmt: skip


@pytest.mark.parametrize(("least", "available"), [(None, False), (25, False), (15, True)])
def test_the_runs_min_documents_decides_whether_the_causal_interval_is_available(least, available):
    """20 documents: no interval at the default (30) or at --min-documents 25, the reason naming the
    value; an interval at 15 — in label_effects and in the helpers causal_checks calls with the run's
    value (all checked experts, and those whose control is balanced)."""
    from tl_moe.explain.causal import _balanced_effects, _item_effects

    documents, described, other, routed, delta = planted(0, n_documents=20)
    weight = mixing_weights(routed, 0)
    extra = {} if least is None else {"min_documents": least}
    _, direct = label_effects(documents, described, other, routed, {"remove": delta}, mixing_weight=weight,
                              n_resamples=199, **extra)  # fmt: skip
    items = _items(documents, described, other, routed, delta, weight)
    _, checked = _item_effects(documents, items, n_resamples=199, seed=0, **extra)
    rows = [{"explain_routing_standardized_difference": 0.0}] * len(items)
    balanced = _balanced_effects(documents, items, rows, n_resamples=199, seed=0, **extra)
    for summary in (direct, checked, balanced):
        row = summary.set_index("quantity").loc["remove_labeled_minus_control" if summary is not direct
                                                 else "remove_effect"]  # fmt: skip
        assert row["documents"] == 20
        if available:
            assert row["interval"] == "available" and row["ci low"] < row["mean"] < row["ci high"]
        else:
            assert row["interval"].startswith("unavailable: 20 document(s)") and np.isnan(row["ci low"])
            assert f"at least {least or 30}" in row["interval"]


def test_the_labeler_passes_the_runs_min_documents_to_the_causal_checks(monkeypatch):
    import tl_moe.explain.labeler as labeler
    from tl_moe.analysis.configs import ExplainConfig, Statistics
    from tl_moe.explain import ExpertLabeler

    seen = {}
    monkeypatch.setattr(labeler, "causal_checks", lambda *args, **kwargs: seen.update(kwargs))
    labeling = SimpleNamespace(explanations={(0, 0): SimpleNamespace(ok=True, rule="a rule", concept=None)})
    for statistics, least in ((Statistics(min_documents=15), 15), (Statistics(), 30)):
        ExpertLabeler(ExplainConfig(causal_windows=4), statistics, progress=False).causal(
            None, None, None, labeling, seq_len=16
        )
        assert seen["min_documents"] == least


def test_the_causal_captions_name_the_runs_min_documents():
    from tl_moe.pipeline.results.explain import ExplainResult

    documents, described, other, routed, delta = planted(0, n_documents=20)
    weight = mixing_weights(routed, 0)
    observed, summary = label_effects(documents, described, other, routed, {"remove": delta},
                                      mixing_weight=weight, n_resamples=99, min_documents=15)  # fmt: skip
    frame = pd.DataFrame({"layer": [0] * 4, "expert": range(4), "label": list("abcd"),
                          "kind": ["concept", "tokens", "concept_or_tokens", "tokens"], "status": "ok",
                          "control_expert": [1, 0, 3, 2]})  # fmt: skip
    for name, values in observed.items():
        frame[name] = values
    by_kind = summary.assign(**{"kind group": "tokens"})
    labeling = SimpleNamespace(frame=frame[["layer", "expert", "status"]], summary=pd.DataFrame())
    for least in (15, 30):
        causal = CausalResult(frame, summary, 20, 20, by_kind, summary, min_documents=least)
        result = ExplainResult(labeling=labeling, explainer="offline", main_scorer="concept", causal=causal)
        captions = {t.name: t.caption for t in result.tables()}
        for name in ("explain_causal", "explain_causal_by_kind", "explain_causal_balanced"):
            assert f"below {least} documents" in captions[name]
            assert f"below {45 - least} documents" not in captions[name]
