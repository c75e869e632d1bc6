"""Driver experts vs domain experts: overlap against its hypergeometric chance, rank correlation."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from tl_moe.analysis.driver_domain import compare_drivers_with_domain_experts

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


def test_spearman_is_scipys_and_its_interval_covers_it():
    drivers, domains = frames(seed=3)
    result = compare_drivers_with_domain_experts(drivers, domains, n_resamples=500)
    table = result.table.set_index("layer")
    for layer in (1, 2):
        rows = slice((layer - 1) * 8, layer * 8)
        rho = scipy.stats.spearmanr(domains["score"][rows], drivers[EFFECT][rows]).statistic
        assert table.loc[layer, "spearman"] == pytest.approx(rho)
        assert table.loc[layer, "spearman ci low"] <= rho <= table.loc[layer, "spearman ci high"]


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
