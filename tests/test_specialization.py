"""Jensen–Shannon specialization, its sampling baseline, and vocabulary clustering."""

import itertools
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import multinomial
from sklearn.metrics import adjusted_rand_score

from tl_moe.analysis.clustering import SphericalKMeans, cluster_vocabulary
from tl_moe.analysis.specialization import (
    SpecializationResult,
    _draw_multinomial_counts,
    _left_split_probabilities,
    js_divergence,
    sampling_baseline,
    specialization_scores,
)


def scipy_jsd_bits(p, q) -> float:
    """Reference JSD in bits: scipy returns the Jensen–Shannon *distance*, the square root of it."""
    return float(jensenshannon(np.asarray(p, dtype=float), np.asarray(q, dtype=float), base=2) ** 2)


# --- js_divergence -------------------------------------------------------------------------------


def test_disjoint_supports_give_one_bit():
    assert js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(1.0)


def test_half_half_against_point_mass_matches_closed_form():
    # m = [3/4, 1/4]; KL(p‖m) = ½log2(2/3) + ½log2(2) = 1 − ½log2 3; KL(q‖m) = log2(4/3) = 2 − log2 3.
    # JSD = ½(KL(p‖m) + KL(q‖m)) = 3/2 − (3/4)·log2 3.
    expected = 1.5 - 0.75 * math.log2(3)
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert js_divergence(p, q).item() == pytest.approx(expected, abs=1e-12)
    assert js_divergence(p.float(), q.float()).item() == pytest.approx(0.311278, abs=1e-6)


def test_symmetric_zero_on_identical_and_bounded():
    generator = torch.Generator().manual_seed(1)
    p = torch.rand(50, 7, generator=generator, dtype=torch.float64)
    q = torch.rand(50, 7, generator=generator, dtype=torch.float64) ** 4  # peaked rows
    q[::5, :3] = 0.0  # partly disjoint supports
    forward, backward = js_divergence(p, q), js_divergence(q, p)
    torch.testing.assert_close(forward, backward)
    assert (forward >= 0).all() and (forward <= 1.0 + 1e-12).all()
    torch.testing.assert_close(js_divergence(p, 3.0 * p), torch.zeros(50, dtype=torch.float64))


def test_matches_scipy_on_random_rows_including_unnormalized_and_zeros():
    rng = np.random.default_rng(0)
    p = rng.random((20, 11)) * (rng.random((20, 11)) > 0.3)
    q = rng.random((20, 11)) * 5.0
    p[:, 0] += 0.1  # no all-zero rows
    ours = js_divergence(torch.tensor(p), torch.tensor(q)).numpy()
    reference = [scipy_jsd_bits(row_p, row_q) for row_p, row_q in zip(p, q, strict=True)]
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_batch_of_rows_equals_each_row_alone_with_broadcasting():
    # The per-row reduction: each expert's JSD against its layer distribution must not depend on the
    # other experts in the batch (summing a KL term across rows would make it do so).
    generator = torch.Generator().manual_seed(2)
    experts = torch.rand(3, 5, 9, generator=generator, dtype=torch.float64)
    layer = torch.rand(3, 1, 9, generator=generator, dtype=torch.float64)
    batched = js_divergence(experts, layer)
    assert batched.shape == (3, 5)
    for layer_index, expert_index in itertools.product(range(3), range(5)):
        alone = js_divergence(experts[layer_index, expert_index], layer[layer_index, 0])
        assert batched[layer_index, expert_index].item() == pytest.approx(alone.item(), abs=1e-14)
        reference = scipy_jsd_bits(experts[layer_index, expert_index], layer[layer_index, 0])
        assert alone.item() == pytest.approx(reference, abs=1e-12)


def test_base_e_gives_nats_and_integer_counts_are_accepted():
    p, q = torch.tensor([3, 1, 0]), torch.tensor([1, 1, 2])
    bits = js_divergence(p, q).item()
    assert js_divergence(p, q, base=math.e).item() == pytest.approx(bits * math.log(2))
    assert bits == pytest.approx(scipy_jsd_bits([3, 1, 0], [1, 1, 2]), abs=1e-12)


@pytest.mark.parametrize(
    ("p", "q", "message"),
    [
        ([0.5, -0.1, 0.6], [0.3, 0.3, 0.4], "negative"),
        ([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5], "all-zero"),
        ([0.5, 0.5], [0.2, 0.3, 0.5], "last"),
        ([float("nan"), 1.0], [0.5, 0.5], "NaN"),
    ],
)
def test_invalid_distributions_raise_clear_errors(p, q, message):
    with pytest.raises(ValueError, match=message):
        js_divergence(torch.tensor(p), torch.tensor(q))


# --- sampling_baseline ---------------------------------------------------------------------------


def exact_expected_jsd(q: list[float], size: int) -> tuple[float, float]:
    """Mean and variance of JSD(counts/size, q) by enumerating every outcome of Multinomial(size, q)."""
    values, weights = [], []
    for counts in itertools.product(range(size + 1), repeat=len(q)):
        if sum(counts) != size:
            continue
        weights.append(multinomial.pmf(counts, size, q))
        values.append(scipy_jsd_bits(np.array(counts) / size, q))
    values, weights = np.array(values), np.array(weights)
    assert weights.sum() == pytest.approx(1.0)
    mean = float((weights * values).sum())
    return mean, float((weights * (values - mean) ** 2).sum())


def test_baseline_expectation_matches_exact_multinomial_enumeration():
    # Two "layers" × three "experts": a uniform and a skewed layer distribution, experts of
    # different sizes, all drawn in one call.
    layer_distributions = [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]]
    sizes = [[1, 4, 7], [2, 5, 3]]
    n_samples = 4000
    baseline = sampling_baseline(
        torch.tensor(layer_distributions, dtype=torch.float64)[:, None, :],
        torch.tensor(sizes),
        n_samples=n_samples,
        seed=0,
    )
    assert baseline.shape == (2, 3)
    for layer_index, expert_index in itertools.product(range(2), range(3)):
        mean, variance = exact_expected_jsd(
            layer_distributions[layer_index], sizes[layer_index][expert_index]
        )
        standard_error = math.sqrt(variance / n_samples)
        assert abs(baseline[layer_index, expert_index].item() - mean) < 4.5 * standard_error + 1e-12


def test_multinomial_draws_sum_to_size_and_have_the_right_mean():
    q = torch.tensor([0.1, 0.0, 0.4, 0.25, 0.25], dtype=torch.float64)  # 5 outcomes: padded tree
    sizes = torch.full((20000,), 12.0, dtype=torch.float64)
    counts = _draw_multinomial_counts(
        _left_split_probabilities(q), sizes, 5, torch.Generator().manual_seed(0)
    )
    assert counts.shape == (20000, 5)
    torch.testing.assert_close(counts.sum(dim=-1), sizes)
    assert (counts[:, 1] == 0).all()
    standard_error = (12 * q * (1 - q) / 20000).sqrt()
    assert ((counts.mean(dim=0) - 12 * q).abs() <= 4.5 * standard_error + 1e-12).all()
    # Multinomial covariance between outcomes: −n q_i q_j.
    covariance = torch.cov(counts[:, [0, 2]].T)[0, 1].item()
    assert covariance == pytest.approx(-12 * 0.1 * 0.4, abs=0.03)


def test_baseline_is_deterministic_given_a_seed_and_nan_for_empty_experts():
    q = torch.rand(4, 1, 30, generator=torch.Generator().manual_seed(3))
    sizes = torch.tensor([[0, 5, 50], [10, 100, 1000], [3, 0, 7], [20, 20, 20]])
    first = sampling_baseline(q, sizes, n_samples=8, seed=11)
    again = sampling_baseline(q, sizes, n_samples=8, seed=11)
    other = sampling_baseline(q, sizes, n_samples=8, seed=12)
    torch.testing.assert_close(first, again, equal_nan=True)
    assert not torch.allclose(first.nan_to_num(), other.nan_to_num())
    assert first.isnan().tolist() == (sizes == 0).tolist()
    with_generator = sampling_baseline(q, sizes, n_samples=8, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(first, with_generator, equal_nan=True)
    # More draws, less sampling noise: the baseline falls with expert size.
    assert first[1, 0] > first[1, 1] > first[1, 2]


def test_baseline_rejects_non_integer_sizes():
    with pytest.raises(ValueError, match="integers"):
        sampling_baseline(torch.tensor([0.5, 0.5]), torch.tensor([2.5]))


# --- specialization_scores -----------------------------------------------------------------------


def test_scores_on_hand_made_counts():
    counts = torch.tensor(
        [
            [[8, 2, 0], [1, 1, 8], [0, 0, 0]],  # layer 0: expert 2 received nothing
            [[5, 5, 5], [5, 5, 5], [2, 2, 2]],  # layer 1: every expert matches the pooled distribution
        ]
    )
    result = specialization_scores(counts, n_samples=64, seed=0)
    pooled_layer_0 = [9 / 20, 3 / 20, 8 / 20]
    assert result.score[0, 0].item() == pytest.approx(
        scipy_jsd_bits([0.8, 0.2, 0.0], pooled_layer_0), abs=1e-12
    )
    assert result.score[0, 1].item() == pytest.approx(
        scipy_jsd_bits([0.1, 0.1, 0.8], pooled_layer_0), abs=1e-12
    )
    assert result.empty.tolist() == [[False, False, True], [False, False, False]]
    assert math.isnan(result.score[0, 2]) and math.isnan(result.baseline[0, 2])
    torch.testing.assert_close(result.score[1], torch.zeros(3, dtype=torch.float64))
    assert result.n.tolist() == [[10, 10, 0], [15, 15, 6]]
    assert (result.baseline[~result.empty] > 0).all()
    torch.testing.assert_close(result.excess, result.score - result.baseline, equal_nan=True)


def test_excess_is_near_zero_for_experts_sampled_from_the_layer_and_large_for_specialists():
    rng = np.random.default_rng(0)
    n_layers, n_experts, n_groups = 3, 16, 40
    layer_distribution = rng.dirichlet(np.ones(n_groups))
    sizes = rng.integers(100, 2000, size=(n_layers, n_experts))
    counts = np.array([[rng.multinomial(size, layer_distribution) for size in row] for row in sizes])
    counts[1:, 0] = 0
    counts[1:, 0, :4] = 300  # expert 0 of layers 1 and 2 only sees four groups; layer 0 is all noise
    result = specialization_scores(torch.tensor(counts), n_samples=32, seed=0)
    assert result.score.shape == result.baseline.shape == (n_layers, n_experts)
    assert (result.excess[1:, 0] > 0.3).all()
    assert result.excess[0].mean().abs() < 0.003
    assert result.excess[0].abs().max() < 0.02


def test_sample_sizes_override_the_baseline_draws():
    counts = torch.tensor([[[30, 0, 0], [0, 30, 30], [10, 10, 10]]])
    by_counts = specialization_scores(counts, n_samples=64, seed=0)
    per_token = specialization_scores(counts, sample_sizes=counts.sum(-1) // 3, n_samples=64, seed=0)
    torch.testing.assert_close(by_counts.score, per_token.score)
    assert (per_token.baseline > by_counts.baseline).all()  # fewer draws, more sampling noise
    with pytest.raises(ValueError, match="sample_sizes"):
        specialization_scores(counts, sample_sizes=torch.ones(2, 3))


def test_result_frame_plot_and_save_round_trip(tmp_path):
    counts = torch.randint(0, 20, (4, 6, 10), generator=torch.Generator().manual_seed(0))
    counts[2, 3] = 0
    result = specialization_scores(counts, n_samples=4, kind="functional")
    frame = result.to_frame()
    assert list(frame.columns[:6]) == ["layer", "expert", "score", "baseline", "excess", "n"]
    assert len(frame) == 24
    row = frame[(frame.layer == 1) & (frame.expert == 4)].iloc[0]
    assert row.score == pytest.approx(result.score[1, 4].item())
    assert row.excess == pytest.approx(row.score - row.baseline)
    assert frame[(frame.layer == 2) & (frame.expert == 3)].iloc[0]["empty_expert"]
    assert frame["empty_expert"].sum() == 1

    summary = result.layer_summary()
    valid = result.excess[2][~result.empty[2]]
    assert summary.loc[2, "mean_excess"] == pytest.approx(valid.mean().item())
    assert summary.loc[2, "std_excess"] == pytest.approx(valid.std().item())
    assert summary.loc[2, "n_experts"] == 5

    ax = result.plot()
    assert len(ax.lines) >= 1 and "functional" in ax.get_title()

    path = tmp_path / "specialization.pt"
    result.save(path)
    loaded = SpecializationResult.load(path)
    torch.testing.assert_close(loaded.score, result.score, equal_nan=True)
    assert loaded.kind == "functional" and loaded.n_samples == 4


def test_scores_reject_wrong_shapes_and_negative_counts():
    with pytest.raises(ValueError, match="3-D"):
        specialization_scores(torch.ones(4, 5))
    with pytest.raises(ValueError, match="non-negative"):
        specialization_scores(-torch.ones(1, 2, 3))


# --- spherical k-means ---------------------------------------------------------------------------


def planted_clusters(n_clusters=6, n_per_cluster=60, dim=24, noise=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(n_clusters, dim, generator=generator), dim=1)
    labels = torch.arange(n_clusters).repeat_interleave(n_per_cluster)
    scales = torch.rand(len(labels), 1, generator=generator) * 5 + 0.5  # norms must not matter
    points = (centers[labels] + noise * torch.randn(len(labels), dim, generator=generator)) * scales
    return points, labels


def test_spherical_kmeans_recovers_planted_clusters():
    points, labels = planted_clusters()
    model = SphericalKMeans(n_clusters=6, n_init=2, random_state=0).fit(points)
    assert adjusted_rand_score(labels.numpy(), model.labels_.numpy()) == pytest.approx(1.0)
    assert model.cluster_centers_.shape == (6, 24)
    torch.testing.assert_close(model.cluster_centers_.norm(dim=1), torch.ones(6))


def test_labels_and_centers_match_a_brute_force_recomputation():
    points, _ = planted_clusters(n_clusters=5, noise=0.6, seed=1)  # overlapping clusters
    model = SphericalKMeans(n_clusters=5, random_state=3, chunk_rows=7).fit(points)
    unit = points.numpy() / np.linalg.norm(points.numpy(), axis=1, keepdims=True)
    centers = model.cluster_centers_.numpy()
    similarity = unit @ centers.T
    brute_force = similarity.argmax(axis=1)
    clear = np.sort(similarity, axis=1)[:, -1] - np.sort(similarity, axis=1)[:, -2] > 1e-5
    np.testing.assert_array_equal(model.labels_.numpy()[clear], brute_force[clear])
    np.testing.assert_allclose(
        similarity[np.arange(len(unit)), model.labels_.numpy()], similarity.max(1), atol=1e-6
    )
    np.testing.assert_array_equal(model.predict(points).numpy()[clear], brute_force[clear])
    for k in range(5):  # converged: each center is the normalized mean of its members
        mean = unit[model.labels_.numpy() == k].mean(axis=0)
        np.testing.assert_allclose(centers[k], mean / np.linalg.norm(mean), atol=1e-4)
    assert model.inertia_ == pytest.approx(float((1 - similarity.max(1)).sum()), rel=1e-5)


def test_chunking_and_seed_do_not_change_the_result():
    points, _ = planted_clusters(n_clusters=4, noise=0.4, seed=2)
    chunked = SphericalKMeans(n_clusters=4, random_state=5, chunk_rows=3).fit(points)
    whole = SphericalKMeans(n_clusters=4, random_state=5).fit(points)
    torch.testing.assert_close(chunked.cluster_centers_, whole.cluster_centers_)
    assert torch.equal(chunked.labels_, whole.labels_)


def test_more_clusters_than_distinct_directions_still_fit():
    directions = torch.eye(3).repeat(10, 1)
    model = SphericalKMeans(n_clusters=4, random_state=0).fit(directions)
    assert model.inertia_ == pytest.approx(0.0, abs=1e-6)


def test_kmeans_rejects_bad_inputs():
    with pytest.raises(ValueError, match="exceeds"):
        SphericalKMeans(n_clusters=10).fit(torch.randn(5, 3))
    with pytest.raises(ValueError, match="zero row"):
        SphericalKMeans(n_clusters=2).fit(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        SphericalKMeans().predict(torch.randn(3, 2))


def test_cluster_vocabulary_centres_away_a_shared_direction():
    # Token directions = a large component shared by the whole vocabulary + a planted group direction.
    # Without mean-centring every pair of tokens would be nearly parallel.
    points, labels = planted_clusters(n_clusters=8, n_per_cluster=40, dim=32, noise=0.05, seed=4)
    points = points / points.norm(dim=1, keepdim=True) + 20.0 * torch.ones(32)
    W_U = points.T  # [d_model, d_vocab]
    groups = cluster_vocabulary(W_U, n_clusters=8, seed=0, n_init=2)
    assert groups.shape == (320,) and groups.dtype == torch.long
    assert adjusted_rand_score(labels.numpy(), groups.numpy()) == pytest.approx(1.0)


def test_cluster_vocabulary_ignores_an_offset_shared_by_every_token():
    # Mean-centring makes the groups invariant to adding one vector to every token's unembedding;
    # clustering the raw directions is not (checked below, so this test can tell the two apart).
    points, _ = planted_clusters(n_clusters=8, n_per_cluster=40, dim=32, noise=0.3, seed=4)
    points = points.double()
    offset = 3.0 * torch.randn(32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    groups = cluster_vocabulary(points.T, n_clusters=8, seed=0)
    shifted_groups = cluster_vocabulary((points + offset).T, n_clusters=8, seed=0)
    assert torch.equal(groups, shifted_groups)
    raw = SphericalKMeans(n_clusters=8, random_state=0).fit(points).labels_
    raw_shifted = SphericalKMeans(n_clusters=8, random_state=0).fit(points + offset).labels_
    assert adjusted_rand_score(raw.numpy(), raw_shifted.numpy()) < 0.9


def test_layer_means_are_token_weighted_and_small_experts_are_listed_not_averaged():
    import torch

    from tl_moe.analysis.specialization import SpecializationResult

    result = SpecializationResult(
        score=torch.tensor([[0.5, 0.2, 0.9, float("nan")]], dtype=torch.float64),
        baseline=torch.tensor([[0.1, 0.1, 0.1, float("nan")]], dtype=torch.float64),
        n=torch.tensor([[300.0, 100.0, 10.0, 0.0]], dtype=torch.float64),
        empty=torch.tensor([[False, False, False, True]]),
        n_groups=5,
        n_samples=4,
    )
    row = result.layer_summary(min_n=50).iloc[0]
    assert row["mean_excess"] == pytest.approx((0.4 + 0.1 + 0.8) / 3)  # unweighted, every expert
    assert row["token_weighted_mean_excess"] == pytest.approx((0.4 * 300 + 0.1 * 100) / 400)
    assert (row["n_experts_min_size"], row["n_small_experts"]) == (2, 1)
    small = result.small_experts(50)
    assert small["expert"].tolist() == [2] and small["n"].tolist() == [10.0]


def test_the_functional_baseline_draws_tokens_not_top_k_entries():
    """Three top-3 entries per token are not three independent draws: with the token count as the
    sample size the baseline is larger (fewer draws, more noise) than with the entry count."""
    import torch

    counts = torch.tensor([[[30.0, 10.0, 20.0, 0.0], [5.0, 25.0, 10.0, 20.0]]])
    entries = specialization_scores(counts, seed=0)
    tokens = specialization_scores(counts, counts.sum(-1) / 3, seed=0)
    assert (tokens.baseline > entries.baseline).all()
    assert torch.equal(tokens.n, counts.sum(-1) / 3)
