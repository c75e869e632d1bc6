"""Driver experts vs domain experts: overlap against its hypergeometric chance, rank correlation."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from tl_moe.analysis.driver_domain import ReportDocuments, compare_drivers_with_domain_experts
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


def planted_documents(
    seed: int, slope: float, n_docs: int = 40, n_layers: int = 2, n_experts: int = 16, sd: float = 1.0
):
    """Frames and report documents where each expert's removal effect per position is
    ``slope · domain score`` plus per-position noise of sd ``sd`` (summed per document): ``slope = 0``
    plants an effect unrelated to the domain score (every expert's expected effect the same)."""
    rng = np.random.default_rng(seed)
    drivers, domains = frames(n_layers, n_experts, seed)
    counts = rng.integers(20, 60, n_docs).astype(float)
    mean = slope * domains["score"].to_numpy().reshape(n_layers, n_experts)
    sums = mean[..., None] * counts + rng.normal(0, sd, (n_layers, n_experts, n_docs)) * np.sqrt(counts)
    documents = ReportDocuments(tuple(range(1, n_layers + 1)), sums, counts)
    drivers[EFFECT] = (sums.sum(-1) / counts.sum()).reshape(-1)  # the drivers frame's ratio
    return drivers, domains, documents


def test_spearman_is_scipys_on_the_full_documents_and_its_interval_covers_it():
    drivers, domains, documents = planted_documents(seed=3, slope=0.5)
    result = compare_drivers_with_domain_experts(drivers, domains, documents=documents, n_resamples=500)
    table = result.table.set_index("layer")
    effect = documents.sums.sum(-1) / documents.counts.sum()  # [layer, expert] on every document
    score = domains["score"].to_numpy().reshape(effect.shape)
    for layer in (1, 2):
        rho = scipy.stats.spearmanr(score[layer - 1], effect[layer - 1]).statistic
        assert table.loc[layer, "spearman"] == pytest.approx(rho, abs=1e-12)
        assert table.loc[layer, "spearman ci low"] <= rho <= table.loc[layer, "spearman ci high"]
    rho_all = scipy.stats.spearmanr(score.reshape(-1), effect.reshape(-1)).statistic
    assert table.loc["all", "spearman"] == pytest.approx(rho_all, abs=1e-12)
    assert (table["spearman interval unavailable"] == "").all()
    assert (table["spearman documents"] == 40).all()


def test_an_effect_unrelated_to_the_domain_score_covers_zero_at_about_the_nominal_rate():
    # 200 seeds x 3 groups (two layers, all): measured 0.952 (layer 1 0.955, layer 2 0.935, all 0.965).
    covered = []
    for seed in range(200):
        drivers, domains, documents = planted_documents(seed=seed, slope=0.0)
        table = compare_drivers_with_domain_experts(
            drivers, domains, documents=documents, n_resamples=200, seed=seed
        ).table
        covered.extend((table["spearman ci low"] <= 0) & (0 <= table["spearman ci high"]))
    assert 0.90 <= np.mean(covered) <= 0.99


def test_a_strong_planted_relation_gives_an_interval_above_zero():
    drivers, domains, documents = planted_documents(seed=1, slope=2.0)
    table = compare_drivers_with_domain_experts(
        drivers, domains, documents=documents, n_resamples=500
    ).table.set_index("layer")
    assert (table["spearman ci low"] > 0).all()


def test_the_interval_resamples_documents_not_experts():
    # Noise that swamps the planted relation: ρ over experts looks moderate, but the documents cannot
    # pin down the ranking, so the document interval is wider than the (too narrow) expert bootstrap's.
    drivers, domains, documents = planted_documents(seed=2, slope=0.5, sd=4.0)
    row = compare_drivers_with_domain_experts(drivers, domains, documents=documents, n_resamples=500).table
    row = row.set_index("layer").loc["all"]
    effect = documents.sums.sum(-1).reshape(-1) / documents.counts.sum()
    by_experts = scipy.stats.bootstrap(
        (domains["score"].to_numpy(), effect),
        lambda a, b: scipy.stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert row["spearman ci high"] - row["spearman ci low"] > by_experts.high - by_experts.low


def test_below_min_documents_the_interval_is_unavailable_with_the_reason():
    drivers, domains, documents = planted_documents(seed=0, slope=2.0, n_docs=MIN_DOCUMENTS - 1)
    table = compare_drivers_with_domain_experts(drivers, domains, documents=documents).table
    assert table["spearman"].notna().all()
    assert table["spearman ci low"].isna().all() and table["spearman ci high"].isna().all()
    assert table["spearman interval unavailable"].str.contains(f"at least {MIN_DOCUMENTS}").all()


def test_without_per_document_effects_there_is_no_interval_and_it_says_so():
    drivers, domains = frames(seed=3)
    table = compare_drivers_with_domain_experts(drivers, domains).table
    assert table["spearman ci low"].isna().all()
    assert (table["spearman interval unavailable"] == "no per-document effects given").all()


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
