"""Domain experts: size-normalized routing rates, entropy score, favoured domain and lift."""

import itertools
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from tl_moe.analysis.domain_experts import DomainExperts

DOMAINS = ["code", "math", "prose"]


def fit_single_expert(counts_per_domain, domain_tokens, **kwargs) -> DomainExperts:
    counts = torch.tensor(counts_per_domain, dtype=torch.float64).reshape(1, 1, -1)
    return DomainExperts(**kwargs).fit(counts, torch.tensor(domain_tokens), DOMAINS[: counts.shape[-1]])


def test_expert_seeing_one_domain_only_scores_one():
    model = fit_single_expert([0, 500, 0], [1000, 2000, 4000], min_tokens=1)
    assert model.scores_[0, 0].item() == pytest.approx(1.0)
    assert model.favoured_domain_[0, 0].item() == 1
    assert model.lift_[0, 0].item() == pytest.approx(3.0)  # rates [0, .25, 0]: .25 / (.25/3)
    assert model.is_domain_expert_[0, 0]


def test_rate_uniform_across_unequal_domains_scores_zero():
    # Counts proportional to domain size: the same 10% of every domain, so no preference at all,
    # although the raw counts favour the largest domain 4:1.
    model = fit_single_expert([100, 200, 400], [1000, 2000, 4000], min_tokens=1)
    assert model.scores_[0, 0].item() == pytest.approx(0.0, abs=1e-12)
    assert model.lift_[0, 0].item() == pytest.approx(1.0)
    torch.testing.assert_close(model.shares_[0, 0], torch.full((3,), 1 / 3, dtype=torch.float64))
    assert not model.is_domain_expert_[0, 0]


def test_two_domain_case_by_hand():
    # rates: 300/1000 = 0.3 and 300/3000 = 0.1  ->  π = [0.75, 0.25].
    # H(π) = −(0.75 ln 0.75 + 0.25 ln 0.25) nats; score = 1 − H/ln 2 ≈ 0.18872; lift = 0.3 / 0.2 = 1.5.
    model = fit_single_expert([300, 300], [1000, 3000], min_tokens=1)
    entropy_nats = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert model.scores_[0, 0].item() == pytest.approx(1 - entropy_nats / math.log(2), abs=1e-12)
    assert model.scores_[0, 0].item() == pytest.approx(0.188722, abs=1e-6)
    assert model.favoured_domain_[0, 0].item() == 0
    assert model.lift_[0, 0].item() == pytest.approx(1.5)
    torch.testing.assert_close(model.rates_[0, 0], torch.tensor([0.3, 0.1], dtype=torch.float64))


def test_three_domain_case_by_hand():
    # rates [0.2, 0.1, 0.1]  ->  π = [1/2, 1/4, 1/4], H = 1.5 bits, score = 1 − 1.5 / log2 3.
    model = fit_single_expert([200, 200, 400], [1000, 2000, 4000], min_tokens=1)
    assert model.scores_[0, 0].item() == pytest.approx(1 - 1.5 / math.log2(3), abs=1e-12)
    assert model.lift_[0, 0].item() == pytest.approx(0.2 / (0.4 / 3))
    assert model.to_frame().loc[0, "favoured_domain"] == "code"


def test_all_experts_of_all_layers_match_a_per_expert_reference():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 300, size=(3, 7, 4)).astype(float)
    counts[1, 2] = [0, 0, 40, 0]  # single-domain expert
    domain_tokens = np.array([5000.0, 12000.0, 3000.0, 8000.0])
    model = DomainExperts(threshold=0.3, min_tokens=10).fit(torch.tensor(counts), torch.tensor(domain_tokens))
    assert model.scores_.shape == model.lift_.shape == model.favoured_domain_.shape == (3, 7)
    assert model.shares_.shape == (3, 7, 4)
    for layer, expert in itertools.product(range(3), range(7)):
        rates = counts[layer, expert] / domain_tokens
        shares = rates / rates.sum()
        assert model.scores_[layer, expert].item() == pytest.approx(1 - entropy(shares, base=4), abs=1e-12)
        assert model.favoured_domain_[layer, expert].item() == np.argmax(shares)
        assert model.lift_[layer, expert].item() == pytest.approx(rates.max() / rates.mean())
    assert model.scores_[1, 2].item() == pytest.approx(1.0)
    assert model.domain_names_ == ["domain_0", "domain_1", "domain_2", "domain_3"]
    expected_experts = (model.scores_ >= 0.3) & ~model.insufficient_tokens_
    assert torch.equal(model.is_domain_expert_, expected_experts)


def test_experts_below_min_tokens_are_flagged_not_scored():
    counts = torch.tensor([[[0, 30, 0], [40, 40, 40], [0, 0, 0]]])
    model = DomainExperts(min_tokens=50).fit(counts, torch.tensor([100, 100, 100]), DOMAINS)
    assert model.insufficient_tokens_.tolist() == [[True, False, True]]
    assert math.isnan(model.scores_[0, 0]) and math.isnan(model.lift_[0, 0])
    assert model.favoured_domain_[0, 0].item() == -1 and not model.is_domain_expert_[0, 0]
    assert model.n_tokens_.tolist() == [[30, 120, 0]]
    assert model.scores_[0, 1].item() == pytest.approx(0.0, abs=1e-12)
    top = model.top(5)
    assert top["expert"].tolist() == [1]  # flagged experts never appear among the top experts


def test_frame_top_and_heatmap():
    counts = torch.tensor(
        [
            [[90, 5, 5], [10, 80, 10], [30, 30, 40], [0, 0, 100]],
            [[50, 50, 0], [5, 5, 5], [1, 1, 90], [33, 33, 34]],
        ]
    )
    model = DomainExperts(threshold=0.5, min_tokens=20).fit(counts, torch.tensor([1000, 1000, 1000]), DOMAINS)
    frame = model.to_frame()
    assert len(frame) == 8
    for column in ["layer", "expert", "n_tokens", "score", "favoured_domain", "lift", "share_math"]:
        assert column in frame.columns
    assert frame.loc[frame.insufficient_tokens, "favoured_domain"].isna().all()
    top = model.top(2)
    assert [(row.layer, row.expert) for row in top.itertuples()] == [(0, 3), (1, 2)]
    assert top["score"].is_monotonic_decreasing
    assert model.top(10, domain="math")[["layer", "expert"]].values.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="unknown domain"):
        model.top(3, domain="poetry")

    ax = model.heatmap(layer=1)
    image = ax.images[0].get_array()
    assert image.shape == (3, 4)  # domains × experts
    assert image.mask[:, 1].all()  # the flagged expert is left blank
    np.testing.assert_allclose(image[:, 0], [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="layer"):
        model.heatmap(layer=2)


@pytest.mark.parametrize(
    ("counts", "domain_tokens", "kwargs", "message"),
    [
        (torch.ones(2, 3), torch.ones(3), {}, "3-D"),
        (torch.ones(1, 2, 1), torch.ones(1), {}, "at least 2 domains"),
        (torch.ones(1, 2, 3), torch.ones(2), {}, "domain_tokens must have shape"),
        (torch.ones(1, 2, 3), torch.tensor([1.0, 0.0, 1.0]), {}, "positive"),
        (-torch.ones(1, 2, 3), torch.ones(3), {}, "non-negative"),
        (torch.ones(1, 2, 3), torch.ones(3), {"threshold": 1.5}, "threshold"),
    ],
)
def test_invalid_inputs_raise_clear_errors(counts, domain_tokens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DomainExperts(**kwargs).fit(counts, domain_tokens)


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        DomainExperts().to_frame()


def _documents(seed: int, domain_effect: float, n_docs: int = 120, n_layers: int = 2, n_experts: int = 8):
    """Per-document routed counts: each document prefers its own experts (tokens arrive in runs from one
    document); with ``domain_effect`` > 0 documents of domain 0 also prefer expert 0."""
    g = torch.Generator().manual_seed(seed)
    domain = torch.randint(0, 3, (n_docs,), generator=g)
    tokens = torch.randint(20, 200, (n_docs,), generator=g).double()
    logits = 2.0 * torch.randn(n_docs, n_layers, n_experts, generator=g)
    logits[:, :, 0] += domain_effect * (domain == 0).double()[:, None]
    probs = torch.softmax(logits, dim=-1)
    with torch.random.fork_rng():  # Multinomial samples from the global generator: seed it here
        torch.manual_seed(seed + 1)
        counts = torch.stack(
            [
                torch.distributions.Multinomial(int(t), probs=p.reshape(-1, n_experts)).sample()
                for t, p in zip(tokens, probs, strict=True)
            ]
        )
    return counts.reshape(n_docs, n_layers, n_experts), tokens, domain


def _fit_and_test(counts, tokens, domain, seed=0):
    per_domain = torch.stack([counts[domain == d].sum(0) for d in range(3)], dim=-1)
    domain_tokens = torch.stack([tokens[domain == d].sum() for d in range(3)])
    experts = DomainExperts(threshold=0.0, min_tokens=50).fit(per_domain, domain_tokens)
    return experts.permutation_test(counts, tokens, domain, n_permutations=499, alpha=0.05, seed=seed)


def test_with_domains_shuffled_across_documents_no_expert_survives_the_fdr():
    """Domain labels independent of routing (a shuffled-domain corpus), threshold 0 so only the test
    decides: over 10 seeds x 16 experts, false discoveries stay rare, though chance scores are high."""
    false_discoveries, high_scores = 0, 0
    for seed in range(10):
        experts = _fit_and_test(*_documents(seed, domain_effect=0.0), seed=seed)
        false_discoveries += int(experts.is_domain_expert_.sum())
        high_scores += int((experts.scores_ > 0.05).sum())
        assert experts.p_values_.min() > 0 and torch.isfinite(experts.q_values_).all()
    assert false_discoveries <= 2, false_discoveries
    assert high_scores >= 10  # without the test, chance scores would have been read as specialization


def test_a_real_domain_preference_is_found_and_the_frame_shows_p_and_q():
    experts = _fit_and_test(*_documents(0, domain_effect=3.0))
    assert experts.is_domain_expert_[:, 0].all()  # expert 0 of both layers
    assert int(experts.is_domain_expert_.sum()) <= 4
    frame = experts.to_frame()
    assert {"p_value", "q_value"} <= set(frame.columns)
    assert (frame["q_value"] >= frame["p_value"] - 1e-12).all()


def test_the_permutation_test_needs_enough_documents():
    from tl_moe.errors import InputError

    counts, tokens, domain = _documents(0, 0.0, n_docs=6)
    domain = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(InputError, match="at least 30"):
        _fit_and_test(counts, tokens, domain)


def test_the_permutation_count_for_a_lone_discovery_puts_the_floor_at_alpha_over_tested():
    from tl_moe.analysis.domain_experts import permutations_for_discovery

    for tested, alpha in ((50, 0.05), (64, 0.05), (16, 0.05), (45, 0.1)):
        p = permutations_for_discovery(tested, alpha)
        assert 1 / (1 + p) <= alpha / tested * (1 + 1e-12)  # floor at most the lone BH threshold
        assert 1 / p > alpha / tested  # and one fewer would not do
    assert permutations_for_discovery(50, 0.05) == 999 and permutations_for_discovery(64, 0.05) == 1279


def test_the_test_decides_not_the_score_threshold_and_a_floor_above_alpha_over_tested_is_flagged():
    """Planted: expert 0 of both layers prefers domain 0 (2 real of 16). With a descriptive threshold no
    expert reaches, the test still calls them; with too few permutations the floor (1/20 > 0.05/16) makes
    them undiscoverable and the fit says so; with the permutations the floor asks for, they are found."""
    from tl_moe.analysis.domain_experts import permutations_for_discovery

    counts, tokens, domain = _documents(0, domain_effect=3.0)
    per_domain = torch.stack([counts[domain == d].sum(0) for d in range(3)], dim=-1)
    domain_tokens = torch.stack([tokens[domain == d].sum() for d in range(3)])

    def tested(n_permutations):
        experts = DomainExperts(threshold=0.99, min_tokens=50).fit(per_domain, domain_tokens)
        return experts.permutation_test(counts, tokens, domain, n_permutations=n_permutations, alpha=0.05)

    coarse = tested(19)
    assert coarse.n_tested_ == 16 and coarse.p_floor_ == pytest.approx(1 / 20)
    assert coarse.floor_blocks_lone_discovery_ and not coarse.is_domain_expert_.any()
    fine = tested(permutations_for_discovery(16, 0.05))
    assert not fine.floor_blocks_lone_discovery_
    assert fine.n_above_threshold() == 0  # no score reaches the descriptive threshold ...
    assert fine.is_domain_expert_[:, 0].all()  # ... and the test calls the planted experts anyway
    assert int(fine.is_domain_expert_.sum()) <= 4
    np.testing.assert_array_equal(
        fine.is_domain_expert_.numpy(), (fine.q_values_ <= 0.05).numpy() & ~fine.insufficient_tokens_.numpy()
    )


def test_the_finding_states_the_test_the_floor_and_the_threshold_as_descriptive():
    import pandas as pd

    from tl_moe.pipeline.sections.domains import DomainExpertsResult

    counts, tokens, domain = _documents(0, domain_effect=3.0)
    per_domain = torch.stack([counts[domain == d].sum(0) for d in range(3)], dim=-1)
    domain_tokens = torch.stack([tokens[domain == d].sum() for d in range(3)])
    experts = DomainExperts(min_tokens=50).fit(per_domain, domain_tokens)
    experts.permutation_test(counts, tokens, domain, n_permutations=19, alpha=0.05)
    text = DomainExpertsResult(experts, pd.DataFrame(), (0,)).findings()[0]
    assert "0 of 16 scored experts are discoveries" in text and "19 permutations" in text
    assert "no expert can be discovered on its own" in text and "raise --permutations" in text
    verb = "has" if experts.n_above_threshold() == 1 else "have"
    assert f"{experts.n_above_threshold()} {verb} a domain score ≥ 0.5" in text and "descriptive" in text
    metrics = DomainExpertsResult(experts, pd.DataFrame(), (0,)).metrics()
    assert metrics["experts with score >= 0.5 (descriptive, no test)"] == experts.n_above_threshold()


# ------------------------------------------------------------------------------ the highest score's control


def test_the_null_of_the_highest_score_equals_a_hand_loop_over_every_permutation():
    """7 documents (5040 orderings ≤ 9999 permutations: exact), min_documents lowered to 2: the null of
    the highest score is, per ordering of the documents' domains, the largest score among the scored
    experts, recomputed by hand with scipy's entropy."""
    counts, tokens, _ = _documents(1, 0.0, n_docs=7)
    domain = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    per_domain = torch.stack([counts[domain == d].sum(0) for d in range(3)], dim=-1)
    domain_tokens = torch.stack([tokens[domain == d].sum() for d in range(3)])
    experts = DomainExperts(threshold=0.0, min_tokens=50).fit(per_domain, domain_tokens)
    experts.permutation_test(counts, tokens, domain, n_permutations=9999, alpha=0.05, min_documents=2)
    scored = ~experts.insufficient_tokens_.numpy()
    maxima = []
    for order in itertools.permutations(range(7)):
        labels = domain.numpy()[list(order)]
        rates = np.stack(
            [counts.numpy()[labels == d].sum(0) / tokens.numpy()[labels == d].sum() for d in range(3)], -1
        )
        scores = 1 - entropy(rates, axis=-1) / math.log(3)  # scipy normalizes the rates to shares
        maxima.append(scores[scored].max())
    np.testing.assert_allclose(np.sort(experts.max_null_), np.sort(maxima), atol=1e-10)
    observed = np.nanmax(experts.scores_.numpy())
    assert experts.max_p_value_ == pytest.approx(np.mean(np.asarray(maxima) >= observed - 1e-12))


def test_the_highest_score_is_judged_against_the_highest_of_each_permutation():
    """Planted none (domains independent of routing): over 10 seeds the max-statistic p of the highest
    score is below 0.05 at most twice, though that score is far above a single expert's chance level;
    planted domain preference: the highest score's max-statistic p is at the floor."""
    small = 0
    for seed in range(10):
        experts = _fit_and_test(*_documents(seed, domain_effect=0.0), seed=seed)
        small += experts.max_p_value_ < 0.05
        assert np.median(experts.max_null_) > np.nanmedian(
            experts.scores_.numpy()
        )  # a maximum's null is higher
    assert small <= 2, small
    planted = _fit_and_test(*_documents(0, domain_effect=3.0))
    assert planted.max_p_value_ == pytest.approx(1 / 500)


def test_the_finding_gives_the_highest_score_its_control_or_calls_it_descriptive():

    from tl_moe.pipeline.sections.domains import DomainExpertsResult

    experts = _fit_and_test(*_documents(0, domain_effect=0.0))
    result = DomainExpertsResult(experts, experts.top(15), (0,))
    text = result.findings()[0]
    median, upper = np.quantile(experts.max_null_, [0.5, 0.95])
    assert f"median {median:.2f}, 95th percentile {upper:.2f}" in text
    assert f"max-statistic p = {experts.max_p_value_:.3g}" in text and "499 permutations" in text
    assert result.metrics()["highest domain score | max-statistic p"] == experts.max_p_value_
    untested = DomainExperts(threshold=0.0, min_tokens=50).fit(
        experts.rates_ * 1000, torch.full((3,), 1000.0, dtype=torch.float64)
    )
    text = DomainExpertsResult(untested, untested.top(15), (0,)).findings()[0]
    assert "a descriptive maximum over the 16 scores on the same documents" in text and "no control" in text
    assert "highest domain score" not in DomainExpertsResult(untested, untested.top(15), (0,)).metrics()


def test_the_study_passes_its_min_documents_to_the_permutation_test():
    counts, tokens, domain = _documents(0, 0.0, n_docs=12)
    per_domain = torch.stack([counts[domain == d].sum(0) for d in range(3)], dim=-1)
    domain_tokens = torch.stack([tokens[domain == d].sum() for d in range(3)])
    experts = DomainExperts(threshold=0.0, min_tokens=50).fit(per_domain, domain_tokens)
    from tl_moe.errors import InputError

    with pytest.raises(InputError, match="at least 20"):
        experts.permutation_test(counts, tokens, domain, n_permutations=99, min_documents=20)
    experts.permutation_test(counts, tokens, domain, n_permutations=99, min_documents=10)
    assert experts.p_values_ is not None


def test_a_max_statistic_p_at_its_floor_is_called_so():
    """Planted domain preference: the max-statistic p is 1/500 with 499 permutations, and the finding says it
    is the floor; planted none: a p above the floor is not called so."""
    from tl_moe.pipeline.sections.domains import DomainExpertsResult

    planted = _fit_and_test(*_documents(0, domain_effect=3.0))
    text = DomainExpertsResult(planted, planted.top(15), (0,)).findings()[0]
    assert "max-statistic p = 0.002, at its floor 1/500" in text
    null = _fit_and_test(*_documents(0, domain_effect=0.0))
    assert null.max_p_value_ > 1 / 500
    assert "at its floor 1/500 (a maximum" not in DomainExpertsResult(null, null.top(15), (0,)).findings()[0]


def test_an_exact_test_whose_floor_blocks_discovery_asks_for_documents_not_permutations():
    """4 documents: the test enumerates all 24 orderings (p floor 1/24 < alpha, > alpha / tested), so more
    permutations cannot help and the finding says documents are the remedy; 3 documents: floor 1/6 > alpha,
    no expert can be discovered at all."""
    import pandas as pd

    from tl_moe.pipeline.sections.domains import DomainExpertsResult

    counts, tokens, domain = _documents(0, domain_effect=3.0, n_docs=40)
    for n_docs, orderings, reach in ((4, 24, "on its own"), (3, 6, "at all")):
        keep = torch.cat([torch.nonzero(domain == d)[:1, 0] for d in range(3)] + [torch.tensor([3])])[:n_docs]
        c, t, d = counts[keep], tokens[keep], domain[keep]
        per_domain = torch.stack([c[d == k].sum(0) for k in range(3)], dim=-1)
        domain_tokens = torch.stack([t[d == k].sum() for k in range(3)])
        experts = DomainExperts(min_tokens=1).fit(per_domain, domain_tokens)
        experts.permutation_test(c, t, d, n_permutations=999, alpha=0.05, min_documents=2)
        assert experts.n_permutations_ == orderings
        text = DomainExpertsResult(experts, pd.DataFrame(), (0,)).findings()[0]
        assert f"enumerates all {orderings} orderings" in text and "raise --permutations" not in text
        assert f"no expert can be discovered {reach}" in text
