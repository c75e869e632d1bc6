"""Driver experts vs domain experts: overlap against its hypergeometric chance, rank correlation."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats
import torch

from tl_moe.analysis.domain_experts import domain_scores
from tl_moe.analysis.driver_domain import DomainRouting, ReportDocuments, compare_drivers_with_domain_experts
from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS

EFFECT = "remove: effect (report)"


def frames(n_layers: int = 2, n_experts: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    layers = np.repeat(np.arange(1, n_layers + 1), n_experts)
    experts = np.tile(np.arange(n_experts), n_layers)
    score = rng.uniform(size=layers.size)
    drivers = pd.DataFrame(
        {"layer": layers, "expert": experts, "driver": False, EFFECT: rng.normal(size=layers.size)}
    )
    domains = pd.DataFrame(
        {
            "layer": layers,
            "expert": experts,
            "score": score,
            "favoured_domain": "python",
            "domain_expert": False,
            "insufficient_tokens": False,
        }
    )
    return drivers, domains


def overlap_p_by_enumeration(n: int, n_domain: int, n_drivers: int, both: int) -> float:
    """P(overlap >= both) over every equally likely driver set of size n_drivers among n experts."""
    domain = set(range(n_domain))
    sets = list(combinations(range(n), n_drivers))
    return sum(len(domain & set(s)) >= both for s in sets) / len(sets)


def test_overlap_counts_and_p_value_match_enumeration():
    drivers, domains = frames()
    drivers.loc[[0, 1, 2, 9], "driver"] = True  # layer 1: experts 0, 1, 2; layer 2: expert 1
    domains.loc[[0, 1, 5, 9, 10], "domain_expert"] = True  # layer 1: 0, 1, 5; layer 2: 1, 2
    table = compare_drivers_with_domain_experts(drivers, domains).table.set_index("layer")
    layer1 = table.loc[1]
    assert (layer1["experts"], layer1["drivers"], layer1["domain experts"], layer1["both"]) == (8, 3, 3, 2)
    assert layer1["expected both"] == pytest.approx(3 * 3 / 8)
    assert layer1["overlap p"] == pytest.approx(overlap_p_by_enumeration(8, 3, 3, 2))
    total = table.loc["all"]
    assert (total["drivers"], total["domain experts"], total["both"]) == (4, 5, 3)
    assert total["overlap p"] == pytest.approx(overlap_p_by_enumeration(16, 5, 4, 3))


def planted_halves(
    seed: int,
    slope: float,
    n_docs: int = 90,
    n_layers: int = 2,
    n_experts: int = 16,
    n_domains: int = 3,
    sd: float = 1.0,
):
    """Frames, report documents and selection-half routing where each expert routes the documents of each
    domain at its own rate (Dirichlet profile) and its removal effect per position is ``slope`` × the
    domain score of its profile plus per-position noise of sd ``sd`` (summed per document): ``slope = 0``
    plants an effect unrelated to the domain score."""
    rng = np.random.default_rng(seed)
    drivers, domains = frames(n_layers, n_experts, seed)
    half = document_split(np.arange(n_docs), key=HALVES_KEY)
    domain = np.arange(n_docs) % n_domains
    tokens = rng.integers(20, 60, n_docs).astype(float)
    profile = rng.dirichlet(np.full(n_domains, 0.7), (n_layers, n_experts))  # [layer, expert, domain]
    routed = rng.poisson(0.3 * tokens * n_domains * profile[..., domain]).astype(float)
    true_score = domain_scores(torch.from_numpy(profile), torch.ones(n_domains)).numpy()
    report, selection = np.flatnonzero(half == 1), np.flatnonzero(half == 0)
    counts = tokens[report]
    sums = (slope * true_score)[..., None] * counts + rng.normal(
        0, sd, (n_layers, n_experts, len(report))
    ) * np.sqrt(counts)
    layers = tuple(range(1, n_layers + 1))
    documents = ReportDocuments(layers, sums, counts)
    routing = DomainRouting(
        layers,
        routed[..., selection],
        domain[selection],
        n_domains,
        (routed[..., report] > 0).sum(-1),
        routed[..., report],
    )
    drivers[EFFECT] = (sums.sum(-1) / counts.sum()).reshape(-1)  # the drivers frame's ratio
    return drivers, domains, documents, routing


def test_rho_is_scipys_on_the_selection_half_score_and_the_report_half_effect():
    drivers, domains, documents, routing = planted_halves(seed=3, slope=0.5)
    result = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, n_resamples=500
    )
    table = result.table.set_index("layer")
    effect = documents.sums.sum(-1) / documents.counts.sum()  # [layer, expert] on every report document
    by_domain = np.stack([routing.routed[..., routing.domain == d].sum(-1) for d in range(3)], -1)
    domain_tokens = np.array([routing.routed[0][:, routing.domain == d].sum() for d in range(3)])
    rates = by_domain / domain_tokens
    shares = rates / rates.sum(-1, keepdims=True)
    score = 1 + scipy.special.xlogy(shares, shares).sum(-1) / np.log(3)  # by hand, selection half only
    np.testing.assert_allclose(result.experts["domain score (selection half)"], score.reshape(-1), atol=1e-12)
    assert result.score == "domain score (selection half)"
    for layer in (1, 2):
        rho = scipy.stats.spearmanr(score[layer - 1], effect[layer - 1]).statistic
        assert table.loc[layer, "spearman"] == pytest.approx(rho, abs=1e-12)
        assert table.loc[layer, "spearman ci low"] <= rho <= table.loc[layer, "spearman ci high"]
    rho_all = scipy.stats.spearmanr(score.reshape(-1), effect.reshape(-1)).statistic
    assert table.loc["all", "spearman"] == pytest.approx(rho_all, abs=1e-12)
    assert (table["spearman interval unavailable"] == "").all()
    assert (table["spearman documents"] == 90).all()  # the documents of both halves


def test_an_effect_unrelated_to_the_domain_score_covers_zero_at_about_the_nominal_rate():
    # 150 seeds x 3 groups (two layers, all), both scores resampled: measured 0.944 (layer 1 0.933,
    # layer 2 0.953, all 0.947).
    covered = []
    for seed in range(150):
        drivers, domains, documents, routing = planted_halves(seed=seed, slope=0.0)
        table = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, routing=routing, n_resamples=200, seed=seed
        ).table
        covered.extend((table["spearman ci low"] <= 0) & (0 <= table["spearman ci high"]))
    assert 0.91 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_a_strong_planted_relation_gives_an_interval_above_zero():
    drivers, domains, documents, routing = planted_halves(seed=1, slope=2.0)
    table = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, n_resamples=500
    ).table.set_index("layer")
    assert (table["spearman ci low"] > 0).all()


def test_experts_routed_on_too_few_documents_are_left_out_of_rho_before_resampling():
    drivers, domains, documents, routing = planted_halves(seed=4, slope=0.5)
    routed = routing.routed.copy()
    routed[0, 2, 2:] = 0  # layer 1 expert 2: routed on 2 selection-half documents only
    gated = DomainRouting(routing.layers, routed, routing.domain, 3, routing.report_routing)
    result = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=gated, n_resamples=50
    )
    table = result.table.set_index("layer")
    assert not result.experts.loc[2, "in ρ"] and result.experts["in ρ"].sum() == 31
    assert table.loc[1, "spearman experts"] == 15 and table.loc[1, "experts"] == 16
    assert table.loc[1, "spearman experts left out (routed on too few documents)"] == 1
    keep = result.experts["in ρ"] & (result.experts["layer"] == 1)
    rho = scipy.stats.spearmanr(
        result.experts.loc[keep, "domain score (selection half)"], result.experts.loc[keep, EFFECT]
    ).statistic
    assert table.loc[1, "spearman"] == pytest.approx(rho, abs=1e-12)


def test_below_min_documents_the_interval_is_unavailable_with_the_reason():
    drivers, domains, documents, routing = planted_halves(seed=0, slope=2.0, n_docs=MIN_DOCUMENTS - 1)
    table = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, min_expert_documents=1
    ).table
    assert table["spearman"].notna().all()
    assert table["spearman ci low"].isna().all() and table["spearman ci high"].isna().all()
    assert table["spearman interval unavailable"].str.contains(f"at least {MIN_DOCUMENTS}").all()


def test_without_per_document_routing_there_is_no_interval_and_it_says_so():
    drivers, domains = frames(seed=3)
    table = compare_drivers_with_domain_experts(drivers, domains).table
    assert table["spearman ci low"].isna().all()
    assert (table["spearman interval unavailable"] == "no per-document routing and effects given").all()
    assert (table["spearman domain score"] == "domain score").all()


def test_report_documents_are_the_drivers_report_half():
    import torch

    from tl_moe.analysis.drivers import ExpertSaliencyResult, driver_report
    from tl_moe.collect.expert_effects import ExpertEffectsResult

    rng = np.random.default_rng(0)
    counts = rng.integers(5, 30, 90)
    sums = rng.normal(0, 1, (2, 2, 4, 90)) * counts
    effects = ExpertEffectsResult(
        ("remove", "zero"), (1, 3), torch.from_numpy(sums), torch.from_numpy(counts)
    )
    routed = torch.from_numpy(rng.integers(100, 200, (2, 2, 4)))
    saliency = ExpertSaliencyResult((1, 3), routed, routed.double() * 0.1, routed.double() * 5.0)
    experts, _ = driver_report(effects, saliency, n_drivers=2, n_resamples=50)
    documents = ReportDocuments.from_effects(effects, "remove")
    np.testing.assert_allclose(
        documents.effect(np.ones((1, len(documents.counts))))[0].reshape(-1), experts[EFFECT]
    )
    assert 0 < len(documents.counts) < 90


def test_a_monotone_planted_relation_gives_rho_one():
    drivers, domains = frames()
    drivers[EFFECT] = np.exp(3 * domains["score"])  # effect rises with the domain score
    table = compare_drivers_with_domain_experts(drivers, domains, n_resamples=200).table.set_index("layer")
    assert table.loc["all", "spearman"] == pytest.approx(1.0)


def test_experts_too_small_to_score_are_left_out():
    drivers, domains = frames()
    domains.loc[[3, 4], "insufficient_tokens"] = True
    drivers.loc[3, "driver"] = True
    result = compare_drivers_with_domain_experts(drivers, domains, n_resamples=200)
    table = result.table.set_index("layer")
    assert table.loc[1, "experts"] == 6 and table.loc[1, "drivers"] == 0
    assert len(result.experts) == 14
    assert result.figure().axes  # one panel per layer


def test_mismatched_frames_are_refused():
    drivers, domains = frames()
    with pytest.raises(ValueError, match="lacks column"):
        compare_drivers_with_domain_experts(drivers.drop(columns=EFFECT), domains)
    domains["layer"] += 10
    with pytest.raises(ValueError, match="share no"):
        compare_drivers_with_domain_experts(drivers, domains)


def test_constant_scores_give_no_correlation_rather_than_a_number():
    drivers, domains = frames()
    domains["score"] = 0.5
    table = compare_drivers_with_domain_experts(drivers, domains).table
    assert table["spearman"].map(math.isnan).all()


def test_an_undefined_rho_names_the_constant_quantity():
    """Each ρ that a constant quantity leaves undefined names that quantity (and only it)."""
    from types import SimpleNamespace

    from tl_moe.analysis.driver_domain import FREQUENCY, RHO_COLUMNS, _group_columns

    interval = SimpleNamespace(estimate=0.1, low=-0.1, high=0.3, bias=0.0, available=True, reason="")
    intervals = [interval] * len(RHO_COLUMNS)

    varied = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    flat = np.full(5, 0.2)
    cases = {
        "domain score": (flat, varied, varied[::-1]),
        "removal effect": (varied, flat, varied[::-1]),
        "routing frequency": (varied, varied[::-1], flat),
    }
    for constant, (score, effect, frequency) in cases.items():
        in_rho = pd.DataFrame({"score": score, "effect": effect, FREQUENCY: frequency})
        columns = _group_columns(in_rho, "score", "effect", intervals)
        why = {prefix: columns[f"{prefix} unavailable"] for prefix in RHO_COLUMNS}
        named = {
            "spearman": ("domain score", "removal effect"),
            "partial spearman": ("domain score", "removal effect", "routing frequency"),
            "score–frequency spearman": ("domain score", "routing frequency"),
            "effect–frequency spearman": ("removal effect", "routing frequency"),
        }
        for prefix, quantities in named.items():
            assert why[prefix] == (f"a constant {constant}" if constant in quantities else ""), (
                constant,
                why,
            )
    in_rho = pd.DataFrame({"score": flat, "effect": varied, FREQUENCY: flat})
    columns = _group_columns(in_rho, "score", "effect", intervals)
    assert (
        columns["partial spearman unavailable"] == "a constant domain score and a constant routing frequency"
    )


def test_the_planted_studys_population_domain_score_is_the_score_on_a_huge_corpus():
    """``benchmarks/planted_studies.py``'s domain-score case (study ``driver_domain_rho``): the
    population score computed by hand from the experts' routing shares is what ``DomainRouting`` measures
    from very many tokens per document."""
    from planted_script import planted_studies

    studies = planted_studies()
    *_, routing, population = studies.driver_domain_case(0, tokens=(50_000, 50_001))
    measured = routing.scores(np.ones((1, routing.routed.shape[-1])))[0]
    np.testing.assert_allclose(measured, population[0], atol=0.005)


def test_a_planted_non_null_rho_is_covered_when_its_scores_are_measured_precisely():
    """Away from 0 (expected effect following the population domain score), with 10× the tokens per
    document the interval covers the population ρ in most seeds; with the study's few tokens the mean
    estimate lies below the mean truth (attenuation by the measured scores' noise). The study measures
    the rates over more seeds."""
    from planted_script import planted_studies

    studies = planted_studies()
    covered, gap = {}, {}
    for kind in ("non-null", "non-null, 10× the tokens"):
        hits, gaps = [], []
        for seed in range(30):
            drivers, domains, documents, routing, population = studies.driver_domain_case(
                seed, **studies.DRIVER_DOMAIN_KINDS[kind]
            )
            comparison = compare_drivers_with_domain_experts(
                drivers, domains, documents=documents, routing=routing, n_resamples=200, seed=seed
            )
            for _, row in comparison.table.iterrows():
                truth = studies.domain_rho_truth(comparison, population, row["layer"])
                hits.append(row["spearman ci low"] <= truth <= row["spearman ci high"])
                gaps.append(row["spearman"] - truth)
        covered[kind], gap[kind] = np.mean(hits), np.mean(gaps)
    assert covered["non-null, 10× the tokens"] >= 0.85, covered
    assert gap["non-null"] < 0 and abs(gap["non-null, 10× the tokens"]) < abs(gap["non-null"]), gap


def test_each_rho_row_carries_its_bias_position_basic_interval_and_the_documents_length():
    from types import SimpleNamespace

    from tl_moe.pipeline.sections.drivers import DriversResult

    drivers, domains, documents, routing = planted_halves(seed=3, slope=0.5)
    comparison = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, n_resamples=300
    )
    table = comparison.table
    for _, row in table.iterrows():  # pooled and per layer
        rho, low, high = row["spearman"], row["spearman ci low"], row["spearman ci high"]
        assert row["spearman basic ci low"] == pytest.approx(np.clip(2 * rho - high, -1, 1), abs=1e-12)
        assert row["spearman basic ci high"] == pytest.approx(np.clip(2 * rho - low, -1, 1), abs=1e-12)
        assert row["spearman position in interval"] == pytest.approx((rho - low) / (high - low), abs=1e-12)
        # the mean resampled rho (rho + bias) lies between the 2.5% and 97.5% resampled quantiles
        assert low <= rho + row["spearman bootstrap bias"] <= high
    by_hand = documents.counts.sum() / len(documents.counts)
    np.testing.assert_allclose(table["report tokens per document (mean)"], by_hand, rtol=1e-12)
    text = DriversResult._domain_finding(SimpleNamespace(domain_overlap=comparison))
    total = table.set_index("layer").loc["all"]
    basic = f"[{total['spearman basic ci low']:+.2f}, {total['spearman basic ci high']:+.2f}]"
    assert f"basic interval (same resamples) {basic}" in text and "bootstrap bias" in text
    assert f"a mean {by_hand:.0f} scored tokens per report document" in text
    assert text.count("(basic [") == 2  # each of the two layers
    plain = compare_drivers_with_domain_experts(*frames()).table
    assert plain["spearman basic ci low"].isna().all() and plain["spearman bootstrap bias"].isna().all()
    assert plain["report tokens per document (mean)"].isna().all()


def rank_residual_partial(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """By hand: the ranks of x and y regressed on a line in the ranks of z (numpy least squares), then
    the Pearson correlation of the two residuals."""
    line = np.stack([np.ones(len(z)), scipy.stats.rankdata(z)], 1)
    residuals = []
    for values in (x, y):
        ranks = scipy.stats.rankdata(values)
        residuals.append(ranks - line @ np.linalg.lstsq(line, ranks, rcond=None)[0])
    return float(np.corrcoef(*residuals)[0, 1])


def study_kind(kind: str, seed: int, **changes):
    from planted_script import planted_studies

    studies = planted_studies()
    return studies, studies.driver_domain_case(seed, **{**studies.DRIVER_DOMAIN_KINDS[kind], **changes})


CONFOUND = "confounded by routing frequency, no direct link"
DIRECT = "confounded by routing frequency, with a direct link"


def test_routing_frequency_and_partial_rho_match_a_hand_computation():
    _, (drivers, domains, documents, routing, _) = study_kind(DIRECT, seed=5)
    result = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, n_resamples=200
    )
    slots = routing.routed.sum(-1) + routing.report_routed.sum(-1)  # [layer, expert], both halves
    frequency = slots / slots.sum(-1, keepdims=True)
    np.testing.assert_allclose(result.experts["routing frequency"], frequency.reshape(-1), rtol=1e-12)
    table, experts = result.table.set_index("layer"), result.experts
    for layer in (1, 2, "all"):
        rows = experts[experts["in ρ"] & ((experts["layer"] == layer) | (layer == "all"))]
        x, y = rows["domain score (selection half)"].to_numpy(), rows[EFFECT].to_numpy()
        z = rows["routing frequency"].to_numpy()
        assert table.loc[layer, "partial spearman"] == pytest.approx(
            rank_residual_partial(x, y, z), abs=1e-10
        )
        score_rho, effect_rho = scipy.stats.spearmanr(x, z).statistic, scipy.stats.spearmanr(y, z).statistic
        assert table.loc[layer, "score–frequency spearman"] == pytest.approx(score_rho, abs=1e-12)
        assert table.loc[layer, "effect–frequency spearman"] == pytest.approx(effect_rho, abs=1e-12)
        for prefix in ("partial spearman", "score–frequency spearman", "effect–frequency spearman"):
            row = table.loc[layer]
            estimate, low, high = row[prefix], row[f"{prefix} ci low"], row[f"{prefix} ci high"]
            assert low <= estimate + row[f"{prefix} bootstrap bias"] <= high
            assert row[f"{prefix} basic ci low"] == pytest.approx(
                np.clip(2 * estimate - high, -1, 1), abs=1e-12
            )
            assert row[f"{prefix} interval unavailable"] == ""


def test_the_studys_partial_truth_is_the_pairwise_formula_and_zero_for_a_confound_only():
    """The study's truth (rank residuals by least squares) against the textbook partial-correlation
    formula of the three Spearman ρ; with no direct link the effect is monotone in routing frequency and
    the truth is 0 while the raw ρ's truth is far from it."""
    studies, (drivers, domains, documents, routing, population) = study_kind(DIRECT, seed=2)
    comparison = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, n_resamples=20
    )
    score, effect, frequency = (values.reshape(-1) for values in population)
    r = {
        pair: scipy.stats.spearmanr(a, b).statistic
        for pair, (a, b) in {
            "se": (score, effect),
            "sf": (score, frequency),
            "ef": (effect, frequency),
        }.items()
    }
    formula = (r["se"] - r["sf"] * r["ef"]) / np.sqrt((1 - r["sf"] ** 2) * (1 - r["ef"] ** 2))
    assert comparison.experts["in ρ"].all()
    assert studies.domain_partial_truth(comparison, population, "all") == pytest.approx(formula, abs=1e-10)
    studies, (drivers, domains, documents, routing, population) = study_kind(CONFOUND, seed=2)
    comparison = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=routing, n_resamples=20
    )
    assert studies.domain_partial_truth(comparison, population, "all") == 0.0
    assert studies.domain_rho_truth(comparison, population, "all") < -0.5


def test_a_confound_only_gives_a_raw_rho_away_from_zero_and_a_partial_rho_covering_zero():
    """Domain score and effect both follow routing frequency, no direct link: the raw ρ's interval
    excludes 0 while the partial ρ's covers 0 in most seeds (the study measures the rates over more)."""
    excluded, covered, partials = [], [], []
    for seed in range(25):
        _, (drivers, domains, documents, routing, _) = study_kind(CONFOUND, seed)
        table = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, routing=routing, n_resamples=200, seed=seed
        ).table
        excluded.extend(table["spearman ci high"] < 0)
        covered.extend((table["partial spearman ci low"] <= 0) & (0 <= table["partial spearman ci high"]))
        partials.extend(table["partial spearman"])
    assert np.mean(excluded) >= 0.9, np.mean(excluded)
    assert np.mean(covered) >= 0.85, np.mean(covered)
    assert abs(np.mean(partials)) < 0.15, np.mean(partials)


def test_a_direct_link_under_the_confound_is_found_by_the_partial_rho():
    """With a direct link on top of the confound (and 10× the tokens, so the scores are measured
    precisely), the partial ρ lies near its hand-computed truth, which is far from the raw ρ."""
    gaps, raw, partial = [], [], []
    for seed in range(15):
        studies, (drivers, domains, documents, routing, population) = study_kind(
            DIRECT, seed, tokens=(200, 600)
        )
        comparison = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, routing=routing, n_resamples=100, seed=seed
        )
        total = comparison.table.set_index("layer").loc["all"]
        gaps.append(total["partial spearman"] - studies.domain_partial_truth(comparison, population, "all"))
        raw.append(total["spearman"])
        partial.append(total["partial spearman"])
    assert abs(np.mean(gaps)) < 0.05 and np.std(gaps) < 0.15, gaps
    assert np.mean(partial) > 0.3 and abs(np.mean(raw)) < 0.15, (np.mean(partial), np.mean(raw))


def test_the_finding_states_the_partial_rho_and_follows_it():
    from types import SimpleNamespace

    from tl_moe.pipeline.sections.drivers import DriversResult

    texts = {}
    for kind, seed in ((CONFOUND, 1), (DIRECT, 1)):
        _, (drivers, domains, documents, routing, _) = study_kind(kind, seed, tokens=(200, 600))
        comparison = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, routing=routing, n_resamples=200, seed=seed
        )
        total = comparison.table.set_index("layer").loc["all"]
        texts[kind] = DriversResult._domain_finding(SimpleNamespace(domain_overlap=comparison))
        within = total["within-layer partial spearman"]
        assert f"mean within-layer partial ρ = {within:+.2f} [" in texts[kind]
        assert f"pooled partial ρ {total['partial spearman']:+.2f} [" in texts[kind]
        assert f"with the removal effect {total['effect–frequency spearman']:+.2f} [" in texts[kind]
        covers = (
            total["within-layer partial spearman ci low"]
            <= 0
            <= total["within-layer partial spearman ci high"]
        )
        assert covers == (kind == CONFOUND)
    assert "the association is not established beyond routing frequency" in texts[CONFOUND]
    assert MORE_LARGER in texts[DIRECT] and "reverses" not in texts[DIRECT]
    assert "not established" not in texts[DIRECT]


def test_without_the_report_halfs_routing_the_partial_rho_is_unavailable_and_the_finding_says_so():
    from dataclasses import replace
    from types import SimpleNamespace

    from tl_moe.analysis.driver_domain import NO_FREQUENCY
    from tl_moe.pipeline.sections.drivers import DriversResult

    drivers, domains, documents, routing = planted_halves(seed=3, slope=0.5)
    comparison = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, routing=replace(routing, report_routed=None), n_resamples=50
    )
    table = comparison.table
    assert table["spearman ci low"].notna().all() and table["partial spearman"].isna().all()
    assert (table["partial spearman unavailable"] == NO_FREQUENCY).all()
    text = DriversResult._domain_finding(SimpleNamespace(domain_overlap=comparison))
    assert "the association is not established beyond routing frequency" in text


NEGATIVE_RAW = ((-0.46, -0.53, -0.39), (-0.52, -0.39))
POSITIVE_RAW = ((+0.60, +0.30, +0.80), (+0.40, +0.90))
NULL_RAW = ((+0.05, -0.30, +0.40), (-0.30, +0.40))
MORE_SMALLER = "given it, the more domain-specific experts have the smaller removal effects"
MORE_LARGER = "given it, the more domain-specific experts have the larger removal effects"


@pytest.mark.parametrize(
    ("raw", "partial", "basic", "verdicts", "absent"),
    [
        (
            NEGATIVE_RAW,
            (-0.30, -0.45, -0.15),
            (-0.45, -0.15),
            ["the association holds beyond routing frequency: " + MORE_SMALLER],
            ["reverses"],
        ),
        (
            NEGATIVE_RAW,
            (-0.10, -0.29, -0.03),
            (-0.17, +0.09),
            ["percentile and basic intervals disagree about excluding 0"],
            ["holds", "reverses"],
        ),
        (
            NEGATIVE_RAW,
            (-0.05, -0.20, +0.10),
            (-0.20, +0.10),
            ["the association is not established beyond routing frequency", "may only restate"],
            ["holds", "reverses"],
        ),
        (
            NEGATIVE_RAW,
            (+0.30, +0.15, +0.45),
            (+0.15, +0.45),
            ["the sign reverses given routing frequency: the raw ρ is negative, but " + MORE_LARGER],
            ["holds"],
        ),
        (
            POSITIVE_RAW,
            (-0.40, -0.60, -0.20),
            (-0.60, -0.20),
            ["the sign reverses given routing frequency: the raw ρ is positive, but " + MORE_SMALLER],
            ["holds"],
        ),
        (
            POSITIVE_RAW,
            (+0.60, +0.30, +0.80),
            (+0.40, +0.90),
            ["the association holds beyond routing frequency: " + MORE_LARGER],
            ["reverses"],
        ),
        (
            NULL_RAW,
            (-0.40, -0.60, -0.20),
            (-0.60, -0.20),
            [
                "beyond routing frequency the association is negative: " + MORE_SMALLER,
                "raw ρ's sign is not established",
            ],
            ["holds", "reverses"],
        ),
        (
            NULL_RAW,
            (+0.05, -0.30, +0.40),
            (-0.30, +0.40),
            ["neither the association nor its part beyond routing frequency is established"],
            ["restate", "holds", "reverses"],
        ),
    ],
)
def test_the_frequency_verdict_follows_the_partial_and_raw_rhos_intervals(
    raw, partial, basic, verdicts, absent
):
    """The verdict compares the partial ρ's established sign with the raw ρ's: the same sign holds, a
    different one reverses (either way round), and with neither established neither is claimed."""
    from tl_moe.pipeline.results.drivers_findings import _frequency_control

    row = {}
    for prefix, (estimate, low, high), (basic_low, basic_high) in (
        ("spearman", *raw),
        ("partial spearman", partial, basic),
        ("score–frequency spearman", (-0.5, -0.6, -0.4), (-0.6, -0.4)),
        ("effect–frequency spearman", (0.7, 0.6, 0.8), (0.6, 0.8)),
    ):
        row.update(
            {
                prefix: estimate,
                f"{prefix} ci low": low,
                f"{prefix} ci high": high,
                f"{prefix} bootstrap bias": 0.0,
                f"{prefix} basic ci low": basic_low,
                f"{prefix} basic ci high": basic_high,
                f"{prefix} unavailable": "",
                f"{prefix} interval unavailable": "",
            }
        )
    text = _frequency_control(pd.Series(row))
    for verdict in verdicts:
        assert verdict in text
    for word in absent:
        assert word not in text
    assert f"partial ρ = {partial[0]:+.2f} [{partial[1]:+.2f}, {partial[2]:+.2f}]" in text


LAYERED = (
    "4 layers differing in mean effect and specificity, confounded by routing frequency, no direct link, "
    "10× the tokens"
)


def _layered_comparisons(seeds: range, **changes):
    """The planted layered kind (layers differing in mean effect and domain specificity; within each
    layer the effect follows routing frequency only unless ``changes`` add a link), compared per seed."""
    from types import SimpleNamespace

    from tl_moe.pipeline.sections.drivers import DriversResult

    for seed in seeds:
        _, (drivers, domains, documents, routing, _) = study_kind(LAYERED, seed, **changes)
        comparison = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, routing=routing, n_resamples=100, seed=seed
        )
        text = DriversResult._domain_finding(SimpleNamespace(domain_overlap=comparison))
        yield comparison.table.set_index("layer"), text


def test_the_all_rows_layer_controlled_partial_is_the_mean_of_the_layers_partials():
    """The ``all`` row's mean within-layer partial ρ is the plain mean of the layer rows' own partial ρs
    (each checked against a hand computation elsewhere); a layer row's is its own partial ρ."""
    for table, _ in _layered_comparisons(range(2)):
        layers = table.drop(index="all")
        defined = layers[layers["partial spearman unavailable"] == ""]
        assert table.loc["all", "within-layer partial spearman"] == pytest.approx(
            defined["partial spearman"].mean(), abs=1e-12
        )
        pd.testing.assert_series_equal(
            layers["within-layer partial spearman"], layers["partial spearman"], check_names=False
        )


def test_layers_differing_in_mean_effect_without_a_within_layer_link_give_no_claim():
    """Layer means differ (the first layer the most specific and most removal-sensitive), no link within
    any layer beyond routing frequency: the pooled partial ρ ranks the layers and lies far from 0, the
    layer-controlled one lies near 0 and covers it in most seeds, and no finding says the association
    holds or reverses beyond routing frequency."""
    pooled, within, covered, texts = [], [], [], []
    for table, text in _layered_comparisons(range(12)):
        total = table.loc["all"]
        pooled.append(total["partial spearman"])
        within.append(total["within-layer partial spearman"])
        covered.append(
            total["within-layer partial spearman ci low"]
            <= 0
            <= total["within-layer partial spearman ci high"]
        )
        texts.append(text)
    assert np.mean(pooled) > 0.4, pooled
    assert abs(np.mean(within)) < 0.1, within
    assert np.mean(covered) >= 0.75, covered
    for text in texts:
        assert "the association holds beyond routing frequency" not in text
        assert "reverses" not in text
        assert "pooled partial ρ" in text and "(it also ranks the layers against each other)" in text


def test_a_direct_within_layer_link_under_layer_differences_holds():
    """The same layered case with a direct link within each layer (effect rising with the domain score):
    the layer-controlled partial ρ is above 0 and the finding says the association holds."""
    held = 0
    for table, text in _layered_comparisons(range(4), link=0.4, spread=0.02):
        assert table.loc["all", "within-layer partial spearman ci low"] > 0
        held += ("the association holds beyond routing frequency: " + MORE_LARGER) in text
    assert held >= 3


def _rho_row(values: dict[str, tuple]) -> dict[str, object]:
    """A domain-table row with each ρ (prefix → (estimate, low, high, basic low, basic high))."""
    row: dict[str, object] = {}
    for prefix, (estimate, low, high, basic_low, basic_high) in values.items():
        row.update(
            {
                prefix: estimate,
                f"{prefix} ci low": low,
                f"{prefix} ci high": high,
                f"{prefix} bootstrap bias": 0.0,
                f"{prefix} basic ci low": basic_low,
                f"{prefix} basic ci high": basic_high,
                f"{prefix} unavailable": "",
                f"{prefix} interval unavailable": "",
            }
        )
    return row


NEGATIVE_PARTIAL = (-0.30, -0.45, -0.15, -0.45, -0.15)


@pytest.mark.parametrize(
    ("within", "layer_two", "verdict", "absent"),
    [
        (
            NEGATIVE_PARTIAL,
            (+0.69, +0.12, +0.77, +0.61, +1.00),
            "not established beyond routing frequency (the mean within-layer partial ρ is below 0, but "
            "layer 2's partial ρ is above 0)",
            "holds",
        ),
        (
            NEGATIVE_PARTIAL,
            (+0.30, -0.20, +0.60, -0.10, +0.70),
            "the association holds beyond routing frequency",
            "layer 2's",
        ),
        (
            (+0.12, -0.05, +0.25, -0.01, +0.29),
            (+0.69, +0.12, +0.77, +0.61, +1.00),
            "not established beyond routing frequency (the mean within-layer partial ρ's interval covers 0; "
            "of the layers' own partial ρs (each unadjusted for the 2 layers), layer 1's is below 0, layer 2's is above 0), so "
            "the raw ρ may "
            "only restate how often the experts are routed or how the layers differ",
            "holds",
        ),
    ],
)
def test_the_verdict_needs_every_layers_partial_to_agree(within, layer_two, verdict, absent):
    """The verdict comes from the mean within-layer partial ρ and only when no layer's own partial ρ is
    established (percentile and basic intervals both excluding 0) with the opposite sign; where the mean
    covers 0, the layers' established partials are named."""
    from tl_moe.pipeline.results.drivers_findings import _frequency_control

    common = {
        "spearman": NEGATIVE_PARTIAL,
        "score–frequency spearman": (-0.5, -0.6, -0.4, -0.6, -0.4),
        "effect–frequency spearman": (0.7, 0.6, 0.8, 0.6, 0.8),
    }
    layers = [
        {"layer": 1, **_rho_row({**common, "partial spearman": NEGATIVE_PARTIAL})},
        {"layer": 2, **_rho_row({**common, "partial spearman": layer_two})},
    ]
    total = {
        "layer": "all",
        **_rho_row({**common, "partial spearman": NEGATIVE_PARTIAL, "within-layer partial spearman": within}),
    }
    table = pd.DataFrame([*layers, total])
    text = _frequency_control(pd.Series(total), table)
    assert verdict in text and absent not in text
    assert f"mean within-layer partial ρ = {within[0]:+.2f} [{within[1]:+.2f}, {within[2]:+.2f}]" in text
    assert "averaged over the 2 layers" in text
