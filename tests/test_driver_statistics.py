"""Planted cases for the statistics of the driver-expert family: control matching that cannot run out,
document budgets checked before the pass, intervals unavailable below MIN_DOCUMENTS, Holm-adjusted
re-weighting, the paired estimate-vs-REAP comparison, Benjamini–Yekutieli, an untestable overlap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from tl_moe.analysis.driver_domain import compare_drivers_with_domain_experts
from tl_moe.analysis.drivers import (
    HALVES_KEY,
    ExpertSaliencyResult,
    driver_report,
    match_controls,
    max_drivers,
)
from tl_moe.analysis.effect_estimate import paired_rho_difference
from tl_moe.analysis.reweighting import holm_adjusted
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.analysis.token_association import benjamini_yekutieli
from tl_moe.collect.expert_effects import ExpertEffectsResult
from tl_moe.errors import InputError
from tl_moe.pipeline.validation import BudgetError, check_n_drivers, driver_documents


def test_min_documents_is_thirty():
    assert MIN_DOCUMENTS == 30


# ------------------------------------------------------------------------------ control matching


def test_controls_come_from_another_layer_when_the_drivers_fill_theirs():
    # 2 layers x 4 experts; every expert of layer 0 is a driver: layer 0 has no control left
    share = np.array([0.40, 0.30, 0.20, 0.10, 0.11, 0.29, 0.21, 0.39])
    controls, how = match_controls([0, 1, 2, 3], share, n_experts=4)
    # by hand: 0.40 -> 0.39 (7), 0.30 -> 0.29 (5), 0.20 -> 0.21 (6), 0.10 -> 0.11 (4)
    assert controls == [7, 5, 6, 4]
    assert how == ["other layer"] * 4


def test_controls_stay_in_the_layer_while_it_has_free_experts_and_are_distinct():
    share = np.array([0.40, 0.30, 0.20, 0.10, 0.11, 0.29, 0.21, 0.39])
    controls, how = match_controls([0, 1, 2], share, n_experts=4)
    assert controls[:2] == [3, 7] or controls[0] == 3  # 0.40's only same-layer candidate is expert 3
    assert how[0] == "same layer" and how[1:] == ["other layer", "other layer"]
    assert len(set(controls)) == 3 and not set(controls) & {0, 1, 2}


def test_more_drivers_than_half_the_experts_is_refused():
    assert max_drivers(2, 8) == 8
    with pytest.raises(InputError, match="at most 8"):
        match_controls(list(range(9)), np.linspace(0, 1, 16), n_experts=8)
    check_n_drivers(8, 2, 8)
    for n, layers, experts in ((17, 2, 8), (1000, 2, 16)):
        with pytest.raises(BudgetError, match=r"--n-drivers .*accepted: 1 to") as error:
            check_n_drivers(n, layers, experts)
        assert "\n" not in str(error.value)


def _synthetic_effects(
    n_docs: int, n_layers: int = 2, n_experts: int = 4, driver_layer: int = 0, seed: int = 0
):
    """Per-document removal / zeroing sums: the experts of ``driver_layer`` raise the loss by 0.5 per
    position, the others by 0 (noise of sd 0.2 per position)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 40, n_docs)
    mean = np.zeros((n_layers, n_experts))
    mean[driver_layer] = 0.5
    noise = rng.normal(0, 0.2, (2, n_layers, n_experts, n_docs)) * np.sqrt(counts)
    sums = mean[None, :, :, None] * counts + noise
    effects = ExpertEffectsResult(
        ("remove", "zero"), tuple(range(n_layers)), torch.from_numpy(sums), torch.from_numpy(counts)
    )
    routed = torch.from_numpy(rng.integers(100, 200, (2, n_layers, n_experts)))
    saliency = ExpertSaliencyResult(
        tuple(range(n_layers)), routed, routed.double() * 0.1, routed.double() * 5.0
    )
    return effects, saliency


def test_a_layer_full_of_drivers_reports_every_driver_with_a_control_from_another_layer():
    effects, saliency = _synthetic_effects(n_docs=120)
    experts, comparison = driver_report(effects, saliency, n_drivers=4, n_resamples=300)
    assert experts["driver"].sum() == 4 and (experts["control for"] != "").sum() == 4
    assert set(experts.loc[experts["driver"], "layer"]) == {0}
    assert set(experts.loc[experts["control for"] != "", "control match"]) == {"other layer"}
    assert (comparison["controls from another layer"] == 4).all()
    diff = comparison.set_index(["edit", "group"]).loc[("remove", "driver − control")]
    assert diff["ci low"] > 0.3 and diff["ci low"] <= 0.5 <= diff["ci high"]  # planted +0.5
    assert experts["remove: report ci low"].notna().all()
    assert (experts["remove: report interval unavailable"] == "").all()


def test_below_min_documents_the_interval_is_unavailable_never_a_number():
    effects, saliency = _synthetic_effects(n_docs=40)  # about 20 report documents
    experts, comparison = driver_report(effects, saliency, n_drivers=2, n_resamples=200)
    assert comparison["report documents"].iloc[0] < MIN_DOCUMENTS
    assert comparison[["ci low", "ci high"]].isna().all().all()
    assert (comparison["interval unavailable"].str.contains(str(MIN_DOCUMENTS))).all()
    assert experts["remove: report ci low"].isna().all()
    assert (
        experts["remove: report interval unavailable"] == comparison["interval unavailable"].iloc[0]
    ).all()
    assert np.isfinite(comparison["mean effect (nats/token, report half)"]).all()


# ------------------------------------------------------------------------------ budgets before the pass


class _WordTokenizer:
    """One token per word, BOS 0 (enough for the stream planner)."""

    bos_token_id = 0

    def __call__(self, texts, **kwargs):
        return {"input_ids": [[1 + (hash(w) % 50) for w in t.split()] for t in texts]}


def _corpus(n_docs: int, words: int):
    import datasets

    return datasets.Dataset.from_dict({"text": [" ".join(["w"] * words)] * n_docs, "domain": ["a"] * n_docs})


def test_driver_documents_counts_the_edited_documents_and_names_the_flag_that_helps():
    corpus, tokenizer = _corpus(200, 30), _WordTokenizer()  # 31 tokens per document with BOS
    # batches of 4 windows of <= 31 tokens: 124 tokens a batch; 1000 edited tokens -> 9 batches (36 documents)
    budget = driver_documents(
        corpus, tokenizer, seq_len=64, batch_size=4, max_tokens=5000, driver_tokens=1000
    )
    assert budget.selection + budget.report == 36 and budget.flag == "--driver-tokens"
    halves = document_split(torch.arange(36), key=HALVES_KEY)
    assert (budget.selection, budget.report) == (int((halves == 0).sum()), int((halves == 1).sum()))
    capped = driver_documents(
        corpus, tokenizer, seq_len=64, batch_size=4, max_tokens=1000, driver_tokens=5000
    )
    assert capped.flag == "--max-tokens"  # the stream ends first: --driver-tokens would not help
    small = _corpus(10, 30)
    ended = driver_documents(small, tokenizer, seq_len=64, batch_size=4, max_tokens=5000, driver_tokens=5000)
    assert ended.flag is None and ended.selection + ended.report == 10  # only a larger corpus helps


def test_the_driver_budget_check_refuses_with_the_helpful_flag_and_warns_below_min_documents():
    from tl_moe.pipeline.validation import check_driver_budget

    corpus, tokenizer = _corpus(200, 30), _WordTokenizer()
    with pytest.raises(BudgetError, match="raise --max-tokens") as error:
        check_driver_budget(corpus, tokenizer, seq_len=64, batch_size=4, max_tokens=40, driver_tokens=5000)
    assert error.value.input == "--max-tokens"
    with pytest.warns(UserWarning, match="raise --driver-tokens"):
        check_driver_budget(corpus, tokenizer, seq_len=64, batch_size=4, max_tokens=5000, driver_tokens=600)


# ------------------------------------------------------------------------------ Holm over domains


def _null_family(rng, n_domains=5, n_docs=40):
    family = {}
    for d in range(n_domains):
        counts = rng.integers(20, 60, n_docs).astype(float)
        family[f"d{d}"] = (rng.normal(0.0, 0.3, n_docs) * np.sqrt(counts), counts)  # true ratio 0
    return family


def test_with_no_true_gain_no_domain_is_reported_improved_beyond_the_nominal_rate():
    rng = np.random.default_rng(0)
    runs, any_improved = 150, 0
    for seed in range(runs):
        frame = holm_adjusted(_null_family(rng), n_resamples=400, seed=seed)
        any_improved += bool((frame["rejected"] & (frame["estimate"] < 0)).any())
        # an interval excludes 0 exactly when Holm rejects
        excludes = (frame["ci low"] > 0) | (frame["ci high"] < 0)
        assert (excludes == frame["rejected"]).mean() >= 0.8
    # family-wise rate of a false "improved" (one-sided half of a 5% two-sided family): measured <= 5%
    assert any_improved / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)


def test_holm_finds_a_planted_gain_and_leaves_the_null_domains_alone():
    rng = np.random.default_rng(1)
    family = _null_family(rng, n_domains=4)
    counts = rng.integers(20, 60, 40).astype(float)
    family["gain"] = (-0.2 * counts + rng.normal(0, 0.3, 40) * np.sqrt(counts), counts)
    frame = holm_adjusted(family, n_resamples=2000, seed=0).set_index("name")
    assert frame.loc["gain", "rejected"] and frame.loc["gain", "ci high"] < 0
    assert frame.loc["gain", "level"] == pytest.approx(1 - 0.05 / 5)  # smallest p: Bonferroni level
    assert frame["p (Holm)"].min() == pytest.approx(min(1.0, 5 * frame["p"].min()))


def test_holm_marks_short_domains_untested():
    rng = np.random.default_rng(2)
    family = _null_family(rng, n_domains=2)
    family["short"] = (rng.normal(0, 1, 10), np.ones(10))
    frame = holm_adjusted(family, n_resamples=200).set_index("name")
    assert "10 documents" in frame.loc["short", "unavailable"] and np.isnan(frame.loc["short", "ci low"])
    assert not frame.loc["short", "rejected"]


# ------------------------------------------------------------------------------ estimate vs REAP


def _paired_case(seed: int, estimate_noise: float, reap_noise: float, n_experts=40, n_docs=60):
    """Per-document sums of the exact effect, the estimate and REAP saliency (per routed slot) of
    experts whose true effect is ``truth``; each score sees it through its own noise."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, n_experts)
    counts = rng.integers(10, 30, n_docs).astype(float)
    exact = truth[:, None] * counts + rng.normal(0, 2, (n_experts, n_docs)) * np.sqrt(counts)
    estimate = (truth + rng.normal(0, estimate_noise, n_experts))[:, None] * counts
    routed = rng.integers(5, 15, (n_experts, n_docs)).astype(float)
    reap = (truth + rng.normal(0, reap_noise, n_experts))[:, None] * routed
    reap = reap + rng.normal(0, 1, (n_experts, n_docs)) * np.sqrt(routed)  # per-document variation
    return exact, counts, estimate, counts, reap, routed


def test_the_paired_rho_difference_matches_scipy_and_finds_the_better_score():
    exact, c, estimate, ec, reap, routed = _paired_case(0, estimate_noise=0.05, reap_noise=3.0)
    table = paired_rho_difference(exact, c, estimate, ec, reap, routed, n_resamples=500).set_index("score")
    exact_effect = exact.sum(1) / c.sum()
    rho_est = scipy.stats.spearmanr(estimate.sum(1) / ec.sum(), exact_effect).statistic
    rho_reap = scipy.stats.spearmanr(reap.sum(1) / routed.sum(1), exact_effect).statistic
    column = "spearman with exact zeroing effect"
    assert table.loc["first-order estimate", column] == pytest.approx(rho_est)
    assert table.loc["REAP saliency", column] == pytest.approx(rho_reap)
    assert table.loc["estimate − REAP", column] == pytest.approx(rho_est - rho_reap)
    assert table.loc["estimate − REAP", "ci low"] > 0  # planted: the estimate is the better score


def test_the_paired_rho_difference_covers_zero_when_both_scores_are_equally_good():
    covered = 0
    for seed in range(20):
        exact, c, estimate, ec, _, _ = _paired_case(seed, estimate_noise=0.5, reap_noise=0.5)
        rng = np.random.default_rng(seed)
        reap = estimate + rng.normal(0, 0.5, estimate.shape) * np.sqrt(ec)  # an equally good view
        estimate = estimate + rng.normal(0, 0.5, estimate.shape) * np.sqrt(ec)  # of the same effect
        row = paired_rho_difference(
            exact, c, estimate, ec, reap, np.broadcast_to(ec, reap.shape), n_resamples=200, seed=seed
        )
        diff = row.set_index("score").loc["estimate − REAP"]
        covered += diff["ci low"] <= 0 <= diff["ci high"]
    assert covered >= 18  # 95% nominal over 20 seeds


def test_reap_saliency_is_recomputed_on_every_resample():
    """Planted: REAP saliency per document equals the estimate per document (the same score twice). If
    each resample recomputes both, their ρ agree in every resample: the difference's interval is
    exactly [0, 0]. Holding REAP at its all-document value instead would give a nonzero spread."""
    exact, c, estimate, ec, _, _ = _paired_case(3, estimate_noise=0.5, reap_noise=0.5)
    estimate = estimate + np.random.default_rng(3).normal(0, 3, estimate.shape) * np.sqrt(ec)
    table = paired_rho_difference(
        exact, c, estimate, ec, estimate, np.broadcast_to(ec, estimate.shape), n_resamples=300
    ).set_index("score")
    diff = table.loc["estimate − REAP"]
    assert diff["ci low"] == pytest.approx(0.0, abs=1e-12) and diff["ci high"] == pytest.approx(
        0.0, abs=1e-12
    )
    reap_row = table.loc["REAP saliency"]
    assert reap_row["ci high"] - reap_row["ci low"] > 0.01  # REAP's own ρ does vary over resamples


def test_the_paired_rho_leaves_out_experts_routed_on_too_few_documents_and_names_them():
    exact, c, estimate, ec, reap, routed = _paired_case(0, estimate_noise=0.05, reap_noise=3.0)
    routed, reap = routed.copy(), reap.copy()
    routed[[2, 5], 4:] = 0  # routed on 4 documents only
    reap[[2, 5], 4:] = 0
    table = paired_rho_difference(exact, c, estimate, ec, reap, routed, n_resamples=50)
    assert (
        table.attrs["left out"] == [2, 5]
        and (table["experts left out (routed on too few documents)"] == 2).all()
    )
    keep = np.ones(len(exact), dtype=bool)
    keep[[2, 5]] = False
    rho = scipy.stats.spearmanr(
        reap[keep].sum(1) / routed[keep].sum(1), exact[keep].sum(1) / c.sum()
    ).statistic  # scipy's on the gated experts
    row = table.set_index("score").loc["REAP saliency"]
    assert row["spearman with exact zeroing effect"] == pytest.approx(rho) and row["experts"] == keep.sum()
    everyone = paired_rho_difference(
        exact, c, estimate, ec, reap, routed, n_resamples=50, min_expert_documents=1
    )
    assert everyone.attrs["left out"] == [] and everyone["experts"].iloc[0] == len(exact)


def test_the_paired_rho_difference_is_unavailable_on_few_documents():
    exact, c, estimate, ec, reap, routed = _paired_case(0, 0.1, 0.1, n_docs=12)
    table = paired_rho_difference(exact, c, estimate, ec, reap, routed, n_resamples=100)
    assert table[["ci low", "ci high"]].isna().all().all() and (table["interval unavailable"] != "").all()


def _saliency_case(seed: int, related: bool, n_docs: int = 120, n_experts: int = 24):
    """Effects per document (report half) and REAP sums per document (selection half): REAP saliency
    tracks the true effect when ``related``; otherwise every expert has the same true saliency, so its
    ranking is document noise (the interval is over documents, for these experts: a true saliency that
    differs between experts by chance is a real, if accidental, relation for them)."""

    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 1, n_experts)
    half = document_split(np.arange(n_docs), key=HALVES_KEY)
    counts = np.where(half == 1, rng.integers(20, 40, n_docs), 0).astype(float)
    effect = truth[:, None] * counts + rng.normal(0, 3, (n_experts, n_docs)) * np.sqrt(counts)
    routed = rng.integers(5, 15, (n_experts, n_docs)).astype(float)  # recorded on every document
    level = truth if related else np.zeros(n_experts)
    saliency = (2 + level)[:, None] * routed + rng.normal(0, 3, (n_experts, n_docs)) * np.sqrt(routed)
    return effect, counts, saliency, routed


def test_the_saliency_effect_spearman_has_a_document_interval_that_finds_a_planted_relation():
    from tl_moe.analysis.drivers import saliency_effect_spearman

    effect, counts, saliency, routed = _saliency_case(0, related=True)
    interval = saliency_effect_spearman(effect, counts, saliency, routed, n_resamples=400)
    selection = document_split(np.arange(120), key=HALVES_KEY) == 0  # saliency from the selection half only
    reap = saliency[:, selection].sum(1) / routed[:, selection].sum(1)
    rho = scipy.stats.spearmanr(reap, effect.sum(1) / counts.sum()).statistic
    assert interval.estimate == pytest.approx(rho) and interval.n == 120
    assert interval.low > 0.2  # planted relation
    covered = 0
    for seed in range(10):  # planted none
        effect, counts, saliency, routed = _saliency_case(seed, related=False)
        interval = saliency_effect_spearman(effect, counts, saliency, routed, n_resamples=200, seed=seed)
        covered += interval.low <= 0 <= interval.high
    assert covered >= 9
    few = saliency_effect_spearman(*_saliency_case(0, True, n_docs=20), n_resamples=100)
    assert not few.available and np.isnan(few.low) and str(MIN_DOCUMENTS) in few.reason


def test_the_split_rho_leaves_out_experts_routed_on_too_few_documents_of_a_half():
    from tl_moe.analysis.drivers import saliency_effect_spearman, split_gate

    effect, counts, saliency, routed = _saliency_case(0, related=True)
    half = document_split(np.arange(120), key=HALVES_KEY)
    routed[3, np.flatnonzero(half == 0)[4:]] = 0  # expert 3: 4 selection-half documents
    routed[7, np.flatnonzero(half == 1)[2:]] = 0  # expert 7: 2 report-half documents
    saliency[[3, 7]] *= routed[[3, 7]] > 0
    gate = split_gate(counts, routed, 5)
    assert gate.sum() == 22 and not gate[3] and not gate[7]
    selection = half == 0
    reap = saliency[:, selection].sum(1) / routed[:, selection].sum(1)
    rho = scipy.stats.spearmanr(reap[gate], effect[gate].sum(1) / counts.sum()).statistic
    assert saliency_effect_spearman(
        effect, counts, saliency, routed, n_resamples=50
    ).estimate == pytest.approx(rho)
    everyone = saliency_effect_spearman(
        effect, counts, saliency, routed, n_resamples=50, min_expert_documents=0
    )
    full = scipy.stats.spearmanr(reap, effect.sum(1) / counts.sum()).statistic
    assert everyone.estimate == pytest.approx(full) and full != pytest.approx(rho)


def test_driver_report_gives_the_saliency_spearman_its_interval():
    effects, saliency = _synthetic_effects(n_docs=120)
    rng = np.random.default_rng(0)
    size = len(effects.counts)
    doc_routed = torch.from_numpy(rng.integers(1, 5, (2, 4, size)).astype(float))
    per_doc = ExpertSaliencyResult(
        saliency.layers,
        saliency.routed,
        saliency.saliency,
        saliency.position,
        doc_routed,
        doc_routed * torch.from_numpy(rng.normal(1, 0.3, (2, 4, size))),
    )
    half = document_split(torch.arange(size), key=HALVES_KEY) == 0
    routed0 = (doc_routed * half).sum(-1)
    sums0 = (per_doc.doc_saliency * half).sum(-1)
    per_doc = dataclasses.replace(  # the half totals consistent with the per-document sums
        per_doc,
        routed=torch.stack([routed0, (doc_routed * ~half).sum(-1)]).long(),
        saliency=torch.stack([sums0, (per_doc.doc_saliency * ~half).sum(-1)]),
    )
    _, comparison = driver_report(effects, per_doc, n_drivers=2, n_resamples=200)
    interval = comparison.attrs["saliency_spearman_interval"]
    assert interval["unavailable"] == "" and interval["documents"] == 120
    assert interval["low"] <= comparison.attrs["saliency_spearman"] <= interval["high"]


# ------------------------------------------------------------------------------ BY, untestable overlap


def test_benjamini_yekutieli_is_bh_scaled_by_the_harmonic_sum():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan])
    by = benjamini_yekutieli(p)
    m = 8
    bh = scipy.stats.false_discovery_control(p[:m], method="bh")
    harmonic = (1 / np.arange(1, m + 1)).sum()
    np.testing.assert_allclose(by[:m], np.minimum(1, bh * harmonic))
    assert np.isnan(by[-1])


def test_the_overlap_with_no_domain_experts_is_not_testable_rather_than_p_one():
    rows = [{"layer": 0, "expert": e} for e in range(8)]
    drivers = pd.DataFrame(rows).assign(
        driver=[True, True] + [False] * 6, **{"remove: effect (report)": np.arange(8.0)}
    )
    domains = pd.DataFrame(rows).assign(
        score=np.linspace(0, 0.4, 8), domain_expert=False, insufficient_tokens=False, favoured_domain="a"
    )
    table = compare_drivers_with_domain_experts(drivers, domains, n_resamples=100).table.set_index("layer")
    assert table.loc["all", "overlap not testable"] == "no domain experts"
    assert np.isnan(table.loc["all", "overlap p"])


def test_the_reweighting_finding_lists_every_domain_with_its_holm_interval_and_no_best():
    from tl_moe.analysis.reweighting import ReweightingStudy, _with_holm
    from tl_moe.pipeline.sections.reweighting import ReweightingResult

    rng = np.random.default_rng(3)
    family = _null_family(rng, n_domains=3)
    family["d3"] = (rng.normal(0, 1, 12), np.ones(12))  # too few held-out documents
    gains = pd.DataFrame(
        [
            {
                "domain": name,
                "expert set": "domain experts",
                "factor": 1.25,
                "loss change (selection)": -0.01,
                "chosen − control": float(sums.sum() / counts.sum()),
                "loss change": 0.01,
                "loss change ci low": 0.005 if len(counts) >= MIN_DOCUMENTS else np.nan,
                "loss change ci high": 0.015 if len(counts) >= MIN_DOCUMENTS else np.nan,
                "documents": len(counts),
            }
            for name, (sums, counts) in family.items()
        ]
    )
    gains = _with_holm(gains, family, n_resamples=300, seed=0)
    study = ReweightingStudy(pd.DataFrame(), gains, pd.DataFrame(), {}, frozenset(), frozenset())
    (finding,) = ReweightingResult(study, None, pd.DataFrame()).findings()
    assert "Best" not in finding and "Holm" in finding
    for name in family:
        assert f"{name} " in finding or f"{name} (" in finding
    assert "not tested: 12 documents" in finding


def _interval_row(**values):
    row = {}
    for prefix, value in values.items():
        name = prefix.replace("_", " ")
        row.update({name: value, f"{name} ci low": value - 0.1, f"{name} ci high": value + 0.1})
    return row


def test_the_steering_finding_reports_switching_on_and_off():
    from types import SimpleNamespace

    from tl_moe.pipeline.results.reweighting_findings import steering_finding

    rows = [
        {
            "experts of": g,
            "switch": s,
            "evaluated on": e,
            **_interval_row(loss_change=v, random_sets=0.01),
            "detected − random": v - 0.01,
            "detected − random ci low": v - 0.11,
            "detected − random ci high": v + 0.09,
            "documents": 40,
        }
        for g, s, e, v in (
            ("math", "off", "math", 1.3),
            ("math", "on", "math", 0.8),
            ("math", "off", "prose", 0.2),
            ("prose", "on", "prose", 0.5),
            ("prose", "off", "prose", 0.4),
        )
    ]
    steering = SimpleNamespace(switches=pd.DataFrame(rows), contrast=("math", "prose"))
    finding = steering_finding(steering)
    for text in ("math-experts off on math: +1.3000", "math-experts on on math: +0.8000", "prose-experts on"):
        assert text in finding
    assert "on prose: +0.2000" not in finding  # only each group's own text


def test_the_position_finding_states_the_drivers_own_within_token_effect():
    from types import SimpleNamespace

    from tl_moe.analysis.positions import EFFECTS
    from tl_moe.pipeline.sections.associations import AssociationsResult

    effects = pd.DataFrame(
        [
            {"effect": name, "estimate": 0.01 * (i + 1), "ci low": 0.0, "ci high": 0.1}
            for i, name in enumerate(EFFECTS)
        ]
    )
    positions = SimpleNamespace(effects=effects, early=3, n_documents=40)
    associations = SimpleNamespace(summary={"discoveries": 7, "discoveries (Benjamini–Yekutieli)": 4})
    position, association = AssociationsResult(associations, positions, pd.DataFrame()).findings()
    own = effects.set_index("effect").loc["drivers: early − late, within token id", "estimate"]
    assert f"drivers {own:+.3f}" in position
    assert "7 of" in association and "4 by Benjamini–Yekutieli" in association


def test_the_estimate_finding_prints_the_chance_overlap_with_two_decimals():
    from tl_moe.pipeline.sections.drivers import DriversResult

    agreement = pd.DataFrame(
        [
            {
                "score": score,
                "exact effect": "zero",
                "layer": "all",
                "top n": 8,
                "top-n overlap": 4,
                "chance overlap": 1.049,
            }
            for score in ("first-order estimate", "REAP saliency")
        ]
    )
    result = DriversResult(pd.DataFrame(), pd.DataFrame(), 0.5, agreement=agreement)
    assert "(chance 1.05; REAP saliency: 4)" in result._estimate_finding()


# ------------------------------------------------------------------------------ estimate ρ per layer


def _layered_case(seed: int, within: bool, n_layers: int = 4, per_layer: int = 16, n_docs: int = 80):
    """Exact effects of 4 layers × 16 experts: a layer level (0, 1, 2, 3) plus a within-layer spread.
    The estimate sees the layer level always, and the within-layer spread only when ``within``
    (otherwise every expert of a layer has the same true estimate, so its order inside a layer is
    document noise: the planted "no effect" inside layers; the interval is over documents, for these
    experts)."""
    rng = np.random.default_rng(seed)
    layer = np.repeat(np.arange(n_layers), per_layer)
    spread = rng.normal(0, 1, layer.size)
    truth = 2.0 * layer + spread
    counts = rng.integers(10, 30, n_docs).astype(float)
    exact = truth[:, None] * counts + rng.normal(0, 1, (layer.size, n_docs)) * np.sqrt(counts)
    seen = 2.0 * layer + (spread if within else 0.0)  # not within: the order in a layer is document noise
    estimate = seen[:, None] * counts + rng.normal(0, 1, (layer.size, n_docs)) * np.sqrt(counts)
    routed = rng.integers(5, 15, (layer.size, n_docs)).astype(float)
    reap = (truth + rng.normal(0, 0.3, layer.size))[:, None] * routed
    return exact, counts, estimate, counts, reap, routed, layer


def test_the_paired_rho_is_given_per_layer_and_a_between_layer_rho_is_told_apart():
    *scores, layer = _layered_case(0, within=False)
    table = paired_rho_difference(*scores, layers=layer, n_resamples=300)
    first = table[table["score"] == "first-order estimate"].set_index("layer")
    exact, counts, estimate, ec, _, _ = scores
    for value in range(4):  # each layer's ρ is scipy's on its 16 experts
        rows = layer == value
        expected = scipy.stats.spearmanr(estimate[rows].sum(1) / ec.sum(), exact[rows].sum(1) / counts.sum())
        assert first.loc[str(value), "spearman with exact zeroing effect"] == pytest.approx(
            expected.statistic
        )
        assert first.loc[str(value), "experts"] == 16
    within = first.loc["within layers (mean)"]
    assert within["spearman with exact zeroing effect"] == pytest.approx(
        first.loc[["0", "1", "2", "3"], "spearman with exact zeroing effect"].mean()
    )
    assert first.loc["all", "ci low"] > 0.5  # the layer levels alone make a high pooled ρ ...
    assert within["ci low"] <= 0 <= within["ci high"]  # ... with nothing inside the layers
    covered = 0
    for seed in range(1, 16):
        table = paired_rho_difference(*_layered_case(seed, within=False)[:-1], layers=layer, n_resamples=200)
        row = table[(table["score"] == "first-order estimate") & (table["layer"] == "within layers (mean)")]
        covered += bool((row["ci low"] <= 0).iloc[0] and (row["ci high"] >= 0).iloc[0])
    assert covered >= 13  # 95% nominal over 15 seeds


def test_pooled_minus_within_layers_has_its_own_paired_interval():
    from tl_moe.analysis.effect_estimate import POOLED_MINUS_WITHIN, WITHIN_LAYERS

    *scores, layer = _layered_case(0, within=False)
    first = paired_rho_difference(*scores, layers=layer, n_resamples=300)
    first = first[first["score"] == "first-order estimate"].set_index("layer")
    column = "spearman with exact zeroing effect"
    gap = first.loc[POOLED_MINUS_WITHIN]
    assert gap[column] == pytest.approx(first.loc["all", column] - first.loc[WITHIN_LAYERS, column])
    assert (
        gap["ci low"] > 0
    )  # planted: the estimate orders layers only, so the pooled ρ exceeds the within mean
    covered = 0
    for seed in range(15):  # planted none: no layer levels and an estimate unrelated to the effect
        exact, counts, estimate, ec, reap, routed, layer = _layered_case(seed, within=False)
        flat = np.repeat(np.arange(4), 16)  # strip the layer levels from effect and estimate
        exact = exact - (2.0 * flat)[:, None] * counts
        estimate = estimate - (2.0 * flat)[:, None] * ec
        table = paired_rho_difference(
            exact, counts, estimate, ec, reap, routed, layers=layer, n_resamples=200
        )
        row = table[
            (table["score"] == "first-order estimate") & (table["layer"] == POOLED_MINUS_WITHIN)
        ].iloc[0]
        covered += bool(row["ci low"] <= 0 <= row["ci high"])
    assert covered >= 13  # 95% nominal over 15 seeds


def test_a_within_layer_ranking_is_found_within_layers():
    *scores, layer = _layered_case(1, within=True)
    first = paired_rho_difference(*scores, layers=layer, n_resamples=300)
    first = first[first["score"] == "first-order estimate"].set_index("layer")
    assert first.loc["within layers (mean)", "ci low"] > 0.3
    assert (first.loc[["0", "1", "2", "3"], "ci low"] > 0).all()


def test_the_estimate_finding_words_a_between_layer_rho_from_the_per_layer_values():
    from tl_moe.pipeline.sections.drivers import DriversResult

    *scores, layer = _layered_case(0, within=False)
    paired = paired_rho_difference(*scores, layers=layer, n_resamples=300)
    agreement = pd.DataFrame(
        [
            {
                "score": s,
                "exact effect": "zero",
                "layer": "all",
                "top n": 8,
                "top-n overlap": 4,
                "chance overlap": 1.0,
            }
            for s in ("first-order estimate", "REAP saliency")
        ]
    )
    text = DriversResult(
        pd.DataFrame(), pd.DataFrame(), 0.5, agreement=agreement, paired=paired
    )._estimate_finding()
    assert "layer 0 " in text and "layer 3 " in text and "mean over layers" in text
    assert "pooled minus mean within-layer ρ" in text and "driven by" not in text
    assert "same 64 experts" in text and "bootstrap bias" in text
    beside_mean = text.split("mean over layers", 1)[1].split("REAP saliency", 1)[0]
    assert "basic interval (same resamples)" in beside_mean and "of its interval" in beside_mean
    metrics = DriversResult(pd.DataFrame(), pd.DataFrame(), 0.5, paired=paired)
    assert metrics.paired is paired


def _verdict_rows(values: dict[str, tuple[float, float]]) -> pd.DataFrame:
    from tl_moe.pipeline.sections.drivers import DriversResult

    return DriversResult(
        pd.DataFrame(),
        pd.DataFrame(),
        0.5,
        paired=pd.DataFrame(
            [
                {
                    "score": "first-order estimate",
                    "layer": layer,
                    "spearman with exact zeroing effect": (low + high) / 2,
                    "ci low": low,
                    "ci high": high,
                    "bootstrap bias": 0.3,  # a diagnostic: it never changes the verdict
                    "interval unavailable": "",
                }
                for layer, (low, high) in values.items()
            ]
        ),
    )


def test_the_layer_verdict_words_the_pooled_rho_from_its_own_paired_difference():
    from tl_moe.analysis.effect_estimate import POOLED_MINUS_WITHIN
    from tl_moe.pipeline.sections.drivers import WITHIN

    rows = {"all": (0.05, 0.5), "0": (0.1, 0.8), "1": (-0.5, 0.4), WITHIN: (-0.01, 0.4)}
    verdict = _verdict_rows({**rows, POOLED_MINUS_WITHIN: (-0.1, 0.3)})._layer_verdict(["0", "1"])
    assert "1 of 2 layers have an interval above 0" in verdict and "mean within-layer ρ covers 0" in verdict
    assert (
        "cannot tell the pooled ρ from the within-layer mean" in verdict
    )  # absence of evidence, no mechanism
    assert (
        "driven by" not in verdict and "comes from differences between layers" not in verdict.split("nor")[0]
    )
    verdict = _verdict_rows({**rows, POOLED_MINUS_WITHIN: (0.05, 0.3)})._layer_verdict(["0", "1"])
    assert "part of it comes from differences between layers" in verdict and "[+0.05, +0.30]" in verdict
    verdict = _verdict_rows({**rows, WITHIN: (0.05, 0.4), POOLED_MINUS_WITHIN: (-0.4, -0.1)})._layer_verdict(
        ["0", "1"]
    )
    assert "mean within-layer ρ is above 0" in verdict and "lower than the within-layer mean" in verdict


def test_a_layer_counts_above_zero_exactly_when_its_interval_does_whatever_its_bias():
    from tl_moe.analysis.effect_estimate import POOLED_MINUS_WITHIN
    from tl_moe.pipeline.sections.drivers import WITHIN

    rows = {"all": (0.2, 0.6), "0": (0.1, 0.8), "1": (0.0035, 0.92), WITHIN: (-0.01, 0.4)}
    verdict = _verdict_rows({**rows, POOLED_MINUS_WITHIN: (-0.2, 0.3)})._layer_verdict(["0", "1"])
    assert "2 of 2 layers have an interval above 0" in verdict
    rows["1"] = (-0.1, 0.92)
    verdict = _verdict_rows({**rows, POOLED_MINUS_WITHIN: (-0.2, 0.3)})._layer_verdict(["0", "1"])
    assert "1 of 2 layers" in verdict


def _rows_with_estimates(values: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    """Paired rows of the estimate, each ``(rho, percentile low, percentile high)``."""
    from tl_moe.pipeline.sections.drivers import DriversResult

    rows = [
        {
            "score": "first-order estimate",
            "layer": layer,
            "spearman with exact zeroing effect": rho,
            "ci low": low,
            "ci high": high,
            "bootstrap bias": 0.03,
            "interval unavailable": "",
        }
        for layer, (rho, low, high) in values.items()
    ]
    return DriversResult(pd.DataFrame(), pd.DataFrame(), 0.5, paired=pd.DataFrame(rows))


def test_a_mean_within_layer_rho_whose_basic_interval_covers_zero_is_not_established():
    from tl_moe.analysis.effect_estimate import POOLED_MINUS_WITHIN
    from tl_moe.pipeline.results.drivers_text import Signed
    from tl_moe.pipeline.sections.drivers import WITHIN

    rows = {"all": (0.23, 0.04, 0.44), "0": (0.45, 0.2, 0.7), "1": (0.17, -0.4, 0.5)}
    gap = {POOLED_MINUS_WITHIN: (0.08, -0.07, 0.17)}
    # percentile [0.0126, 0.3772] excludes 0; reflected about 0.1551 the basic one is [-0.067, 0.298]
    leaning = _rows_with_estimates({**rows, WITHIN: (0.1551, 0.0126, 0.3772), **gap})
    verdict = leaning._layer_verdict(["0", "1"])
    assert "mean within-layer ρ is not established" in verdict and "is above 0" not in verdict
    within = Signed(leaning._paired_rows(WITHIN).iloc[0])
    assert within.disputed() and not within.above_zero() and not within.below_zero()
    assert "[-0.07, +0.30]" in within.diagnostics() and "bootstrap bias +0.03" in within.diagnostics()
    # both exclude 0: percentile [0.10, 0.40] about 0.25 reflects onto itself
    agreeing = _rows_with_estimates({**rows, WITHIN: (0.25, 0.10, 0.40), **gap})
    assert "mean within-layer ρ is above 0" in agreeing._layer_verdict(["0", "1"])
    # a layer whose percentile interval covers 0 and whose basic one does not: counted as disputed
    disputed = _rows_with_estimates({**rows, "1": (0.3, -0.05, 0.4), WITHIN: (0.25, 0.10, 0.40), **gap})
    verdict = disputed._layer_verdict(["0", "1"])
    assert "1 of 2 layers have an interval above 0" in verdict
    assert "in 1 the two intervals disagree about excluding 0" in verdict
    # the same rule for the pooled − within difference
    leaning_gap = _rows_with_estimates(
        {**rows, WITHIN: (0.25, 0.10, 0.40), POOLED_MINUS_WITHIN: (0.05, 0.01, 0.2)}
    )
    verdict = leaning_gap._layer_verdict(["0", "1"])
    assert "whether the pooled ρ differs from the within-layer mean is not established" in verdict
    assert "part of it comes from differences between layers" not in verdict
