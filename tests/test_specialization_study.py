"""SpecializationStudy (the specialization method without the pipeline) on planted streams whose answer is
known: experts that each take exactly one vocabulary cluster (specialized), and experts drawn at random
whatever the content (no specialization)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import torch

from tl_moe.analysis import (
    DocumentRouting,
    SpecializationConfig,
    SpecializationCounts,
    SpecializationStudy,
    Statistics,
)
from tl_moe.analysis.specialization_study import FUNCTIONAL_NO_CONTROL, NO_ROUTING_NOTE

N_DOCS, N_TOKENS, N_GROUPS, N_DOMAINS = 40, 60, 4, 2
LAYERS = (3,)


def planted(specialized: bool, seed: int = 0) -> SpecializationCounts:
    """Documents clumped in content (Dirichlet 0.5 over 4 clusters), domain = document parity, one
    sparse layer of 4 experts, top-1: expert = the token's cluster (specialized) or uniform at random."""
    rng = np.random.default_rng(seed)
    doc = np.repeat(np.arange(N_DOCS), N_TOKENS)
    groups = np.concatenate(
        [rng.choice(N_GROUPS, N_TOKENS, p=rng.dirichlet([0.5] * N_GROUPS)) for _ in range(N_DOCS)]
    )
    domains = doc % N_DOMAINS
    experts = groups if specialized else rng.integers(0, N_GROUPS, len(doc))
    by_group = np.zeros((1, N_GROUPS, N_GROUPS), dtype=np.int64)
    by_domain = np.zeros((1, N_GROUPS, N_DOMAINS), dtype=np.int64)
    np.add.at(by_group[0], (experts, groups), 1)
    np.add.at(by_domain[0], (experts, domains), 1)
    routing = DocumentRouting(
        torch.from_numpy(experts)[:, None, None],
        torch.from_numpy(groups),
        torch.from_numpy(domains),
        torch.from_numpy(doc),
    )
    return SpecializationCounts(torch.from_numpy(by_group), torch.from_numpy(by_domain), routing)


STUDY = SpecializationStudy(
    LAYERS,
    num_experts=N_GROUPS,
    n_token_groups=N_GROUPS,
    n_domains=N_DOMAINS,
    config=SpecializationConfig(min_expert_tokens=10),
    statistics=Statistics(seed=0, bootstrap_resamples=300, permutations=49),
)
CLUSTERS = f"routing, {N_GROUPS} token clusters"


def test_experts_that_each_take_one_cluster_are_specialized_above_both_baselines():
    counts = planted(specialized=True)
    outcome = STUDY(counts)
    scores = outcome.measures[CLUSTERS]
    pooled = counts.by_token_group[0].sum(0).double() / counts.by_token_group.sum()
    for expert in range(N_GROUPS):  # one-hot against the pooled distribution, by scipy
        expected = scipy.spatial.distance.jensenshannon(np.eye(N_GROUPS)[expert], pooled.numpy(), base=2) ** 2
        assert scores.score[0, expert].item() == pytest.approx(expected, abs=1e-9)
    row = outcome.to_frame().set_index("measure").loc[CLUSTERS]
    assert row["layer"] == 3 and row["token_weighted_mean_excess"] > 0.5
    assert row["permutation_interval_available"] and row["permutation_ci_low"] > 0.3
    assert row["permutation_p_at_floor"] and row["permutation_p_value"] == pytest.approx(1 / 50)
    assert outcome.min_tokens == 10 and outcome.notes == ()


def test_experts_drawn_at_random_show_no_specialization_over_the_permutation_baseline():
    outcome = STUDY(planted(specialized=False))
    frame = outcome.to_frame().set_index("measure")
    for name in (CLUSTERS, "routing, domains"):
        row = frame.loc[name]
        assert row["permutation_interval_available"]
        assert row["permutation_ci_low"] <= 0 <= row["permutation_ci_high"]
        assert abs(row["permutation_excess"]) < 0.01
        assert row["permutation_p_value"] > 0.05


def test_trained_minus_untrained_is_paired_and_the_functional_measure_has_no_control():
    trained, untrained = planted(specialized=True), planted(specialized=False)
    lens = trained.by_token_group * 3  # three lens entries per routed token
    outcome = STUDY(trained, lens_counts=lens, untrained=untrained)
    functional = f"functional, {N_GROUPS} token clusters"
    assert list(outcome.measures) == [CLUSTERS, "routing, domains", functional]
    # The functional baseline draws the expert's tokens, not its lens entries.
    torch.testing.assert_close(outcome.measures[functional].n, trained.by_token_group.sum(-1).double())
    assert (
        functional not in outcome.permutation
        and outcome.no_control_reason(functional) == FUNCTIONAL_NO_CONTROL
    )
    difference = outcome.difference_frame().set_index("measure").loc[CLUSTERS]
    assert difference["interval_available"] and difference["ci_low"] > 0.3
    assert set(outcome.untrained) == {CLUSTERS, "routing, domains"} and len(outcome.untrained_frame()) == 2


def test_without_routing_per_token_there_is_no_permutation_baseline_and_a_note_says_why():
    counts = planted(specialized=True)
    outcome = STUDY(SpecializationCounts(counts.by_token_group, counts.by_domain))
    assert outcome.permutation == {} and outcome.intervals == {} and outcome.notes == (NO_ROUTING_NOTE,)
    assert outcome.to_frame()["permutation_excess"].isna().all()
