"""k-sparse probing: batched logistic regression and KSparseProbe checked against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from tl_moe.analysis.probing import (
    PROBE_STATUS,
    STATUS_NOT_ENOUGH_SAMPLES,
    STATUS_OK,
    KSparseProbe,
    subsample_like_routing,
)
from tl_moe.analysis.probing_math import (
    balanced_split,
    fit_logistic_batched,
    padded_indices,
    split_in_sampling_order,
    stratified_split,
    stratified_test_sizes,
)


def sklearn_reference(X, y, weight=None, C=1.0, class_weight="balanced"):
    """scikit-learn's solution, converged tightly (float64, Newton-Cholesky, tol 1e-12)."""
    model = LogisticRegression(
        C=C, class_weight=class_weight, solver="newton-cholesky", tol=1e-12, max_iter=500
    )
    return model.fit(X, y, sample_weight=weight)


def random_problems(seed, batch=5, n=240, features=6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, features, generator=g, dtype=torch.float64)
    X = X * (torch.rand(features, generator=g, dtype=torch.float64) * 4 + 0.1) + 2.0  # unequal scales
    true_coef = torch.randn(batch, features, generator=g, dtype=torch.float64)
    prob = torch.sigmoid(torch.einsum("bnf,bf->bn", X - 2.0, true_coef) - 0.8)
    y = (torch.rand(batch, n, generator=g, dtype=torch.float64) < prob).double()
    return X, y, g


# --------------------------------------------------------------------------------------------------
# fit_logistic_batched
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [1.0, 0.05, 50.0])
def test_solver_matches_sklearn_on_random_data(C):
    X, y, _ = random_problems(seed=1)
    coef, intercept = fit_logistic_batched(X, y, C=C)
    for i in range(X.shape[0]):
        ref = sklearn_reference(X[i].numpy(), y[i].numpy(), C=C)
        np.testing.assert_allclose(coef[i].numpy(), ref.coef_[0], atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(intercept[i].item(), ref.intercept_[0], atol=1e-6, rtol=1e-6)
        ours = (X[i] @ coef[i] + intercept[i] > 0).numpy()
        np.testing.assert_array_equal(ours, ref.predict(X[i].numpy()) == 1)


def test_solver_matches_sklearn_with_sample_weights_and_ragged_padding():
    X, y, g = random_problems(seed=2)
    weight = torch.rand(y.shape, generator=g, dtype=torch.float64) * 3
    weight[1, 150:] = 0.0  # element 1 is a shorter problem padded to n
    X[1, 150:] = 1e6  # padding rows hold junk that must not matter
    coef, intercept = fit_logistic_batched(X, y, weight)
    for i in range(X.shape[0]):
        keep = weight[i] > 0
        ref = sklearn_reference(X[i][keep].numpy(), y[i][keep].numpy(), weight[i][keep].numpy())
        np.testing.assert_allclose(coef[i].numpy(), ref.coef_[0], atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(intercept[i].item(), ref.intercept_[0], atol=1e-6, rtol=1e-6)


def test_solver_without_class_weights_matches_sklearn():
    X, y, _ = random_problems(seed=3)
    coef, intercept = fit_logistic_batched(X, y, class_weight=None)
    for i in range(X.shape[0]):
        ref = sklearn_reference(X[i].numpy(), y[i].numpy(), class_weight=None)
        np.testing.assert_allclose(coef[i].numpy(), ref.coef_[0], atol=1e-6, rtol=1e-6)


def test_solver_on_separable_data_with_constant_feature_is_finite_and_matches_sklearn():
    X, _, _ = random_problems(seed=4, features=4)
    y = (X[:, :, 0] > 2.0).double()  # perfectly separable by feature 0
    X[:, :, 3] = 5.0  # constant feature
    for C in (1.0, 1e3):
        coef, intercept = fit_logistic_batched(X, y, C=C)
        assert torch.isfinite(coef).all() and torch.isfinite(intercept).all()
        assert (coef[:, 3] == 0).all()
        for i in range(X.shape[0]):
            ref = sklearn_reference(X[i].numpy(), y[i].numpy(), C=C)
            np.testing.assert_allclose(coef[i].numpy(), ref.coef_[0], atol=1e-4, rtol=1e-5)
            ours = (X[i] @ coef[i] + intercept[i] > 0).numpy()
            np.testing.assert_array_equal(ours, ref.predict(X[i].numpy()) == 1)


def test_solver_float32_is_close_to_sklearn():
    X, y, _ = random_problems(seed=5)
    coef, _ = fit_logistic_batched(X.float(), y.float(), dtype=torch.float32)
    for i in range(X.shape[0]):
        ref = sklearn_reference(X[i].numpy(), y[i].numpy())
        np.testing.assert_allclose(coef[i].numpy(), ref.coef_[0], atol=1e-3, rtol=1e-3)


def test_solver_rejects_bad_input():
    X, y, _ = random_problems(seed=6, batch=2)
    with pytest.raises(ValueError, match="both\\s+classes|only one"):
        fit_logistic_batched(X, torch.zeros_like(y))
    weight = torch.ones_like(y)
    weight[0, y[0] == 1] = 0.0
    with pytest.raises(ValueError, match="only one"):
        fit_logistic_batched(X, y, weight)
    with pytest.raises(ValueError, match="shape"):
        fit_logistic_batched(X, y[:, :-1])
    with pytest.raises(ValueError, match="0/1"):
        fit_logistic_batched(X, y * 2)
    with pytest.raises(ValueError, match="C must"):
        fit_logistic_batched(X, y, C=0.0)
    with pytest.raises(ValueError, match="3-D"):
        fit_logistic_batched(X[0], y[0])


# --------------------------------------------------------------------------------------------------
# sampling helpers
# --------------------------------------------------------------------------------------------------
def test_padded_indices_lists_true_positions():
    mask = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, False]])
    index, valid = padded_indices(mask)
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert index[valid].tolist() == [1, 3, 0, 1, 2]


def test_split_on_candidates_matches_the_splits_over_every_token():
    # The candidate-token split must pick exactly the tokens of the mask-based splits.
    g = torch.Generator().manual_seed(5)
    problems, n_tokens = 12, 400
    member = torch.rand(problems, n_tokens, generator=g) < 0.3
    positive = torch.rand(problems, n_tokens, generator=g) < torch.linspace(0.05, 0.5, problems)[:, None]
    order = torch.rand(problems, n_tokens, generator=g).argsort(dim=1)
    position = torch.empty_like(order).scatter_(1, order, torch.arange(n_tokens).expand(problems, -1))
    candidates, valid = padded_indices(member)
    cand_positive = positive.gather(1, candidates)
    cand_position = position.gather(1, candidates)

    def to_masks(flags):
        masks = torch.zeros(problems, n_tokens, dtype=torch.bool)
        rows = torch.arange(problems)[:, None].expand_as(candidates)
        masks[rows[flags], candidates[flags]] = True
        return masks

    n_pos = (cand_positive & valid).sum(1)
    n_neg = (~cand_positive & valid).sum(1)
    take = torch.minimum(n_pos, n_neg)
    tests = torch.ceil(take.double() * 0.25).long()
    flags = split_in_sampling_order(cand_position, cand_positive, valid, (tests, tests), (take, take))
    expected = balanced_split(member, positive, order, take, test_size=0.25)
    assert all(torch.equal(to_masks(f), e) for f, e in zip(flags, expected, strict=True))
    assert int(expected[0].sum()) > 0

    n_test = stratified_test_sizes(n_pos, valid.sum(1), 0.25)
    flags = split_in_sampling_order(cand_position, cand_positive, valid, n_test, (n_pos, n_neg))
    expected = stratified_split(member, positive, order, test_size=0.25)
    assert all(torch.equal(to_masks(f), e) for f, e in zip(flags, expected, strict=True))
    assert int(expected[1].sum()) > 0


def test_balanced_split_takes_first_tokens_in_order_per_class():
    # Tokens 0..9; positives at 1, 4, 5, 8; member excludes token 5.
    member = torch.ones(1, 10, dtype=torch.bool)
    member[0, 5] = False
    positive = torch.zeros(1, 10, dtype=torch.bool)
    positive[0, [1, 4, 5, 8]] = True
    order = torch.tensor([[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]])
    train, test = balanced_split(member, positive, order, torch.tensor([3]), test_size=0.25)
    # positives in order: 8, 4, 1 -> test {8} (ceil(0.75) = 1), train {4, 1}
    # negatives in order: 9, 7, 6 -> test {9}, train {7, 6}
    assert test[0].nonzero().flatten().tolist() == [8, 9]
    assert train[0].nonzero().flatten().tolist() == [1, 4, 6, 7]


# --------------------------------------------------------------------------------------------------
# KSparseProbe
# --------------------------------------------------------------------------------------------------
def toy_layer(seed=0, units=4, tokens=2400, neurons=24, concepts=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(tokens, concepts, generator=g) < torch.linspace(0.08, 0.3, concepts)
    unit_mask = torch.rand(units, tokens, generator=g) < 0.5
    acts = torch.randn(units, tokens, neurons, generator=g)
    strength = torch.rand(units, concepts, neurons, generator=g) * (
        torch.rand(units, concepts, neurons) < 0.2
    )
    acts += torch.einsum("tc,ucn->utn", labels.float(), strength)
    return acts, labels, unit_mask


def per_unit_sklearn_f1(acts, labels, train, test, u, c, ks):
    """The whole probe recomputed with numpy + scikit-learn on the given split."""
    X = acts[u].double().numpy()
    y = labels[:, c].numpy()
    tr, te = train[u, c].numpy(), test[u, c].numpy()
    separation = np.abs(X[tr & y].mean(0) - X[tr & ~y].mean(0))
    order = np.argsort(-separation, kind="stable")
    scores = []
    for k in ks:
        cols = order[:k]
        model = LogisticRegression(class_weight="balanced", tol=1e-8, max_iter=2000).fit(
            X[tr][:, cols], y[tr]
        )
        scores.append(f1_score(y[te], model.predict(X[te][:, cols])))
    return np.array(scores), order


def test_probe_f1_matches_per_unit_sklearn_pipeline():
    acts, labels, unit_mask = toy_layer()
    probe = KSparseProbe(ks=(1, 2, 4, 8, 16), min_examples=20).fit(acts, labels, unit_mask)
    train, test = probe.train_test_masks(labels, unit_mask)
    checked = 0
    for u in range(acts.shape[0]):
        for c in range(labels.shape[1]):
            if probe.status_[u, c] != STATUS_OK:
                continue
            expected, order = per_unit_sklearn_f1(acts, labels, train, test, u, c, probe.ks_)
            np.testing.assert_allclose(probe.f1_[u, c].numpy(), expected, atol=0.01)
            assert probe.top_neurons_[u, c].tolist() == order[:16].tolist()
            checked += 1
    assert checked >= 10


def test_split_is_balanced_stratified_within_unit_and_seeded():
    acts, labels, unit_mask = toy_layer(seed=1)
    probe = KSparseProbe(ks=(1,), min_examples=20, max_examples_per_class=60, random_state=3)
    train, test = probe.train_test_masks(labels, unit_mask)
    n_pos = (unit_mask[:, :, None] & labels[None]).sum(1)
    n_neg = (unit_mask[:, :, None] & ~labels[None]).sum(1)
    expected_per_class = torch.minimum(torch.minimum(n_pos, n_neg), torch.tensor(60))
    lab = labels.T[None]  # [1, concept, token]
    for split, fraction in ((test, 0.25), (train, None)):
        assert not (split & ~unit_mask[:, None, :]).any()
        pos, neg = (split & lab).sum(-1), (split & ~lab).sum(-1)
        assert torch.equal(pos, neg)
        n_test = torch.ceil(expected_per_class * 0.25).long()
        assert torch.equal(pos, n_test if fraction else expected_per_class - n_test)
    assert not (train & test).any()
    again, _ = KSparseProbe(
        ks=(1,), min_examples=20, max_examples_per_class=60, random_state=3
    ).train_test_masks(labels, unit_mask)
    other, _ = KSparseProbe(
        ks=(1,), min_examples=20, max_examples_per_class=60, random_state=4
    ).train_test_masks(labels, unit_mask)
    assert torch.equal(again, train) and not torch.equal(other, train)


def test_planted_neuron_is_ranked_first_and_gives_perfect_f1_at_k1():
    acts, labels, unit_mask = toy_layer(seed=2)
    acts[2, :, 11] = labels[:, 1].float() * 3.0  # fires (3.0) exactly on concept 1, else 0
    probe = KSparseProbe(ks=(1, 4), min_examples=20).fit(acts, labels, unit_mask)
    assert probe.status_[2, 1] == STATUS_OK
    assert probe.top_neurons_[2, 1, 0] == 11
    assert probe.f1_[2, 1, 0] == 1.0
    assert probe.best_unit()[1, 0] == 2 and probe.best_f1()[1, 0] == 1.0


def test_units_with_too_few_examples_are_reported_not_dropped():
    acts, labels, unit_mask = toy_layer(seed=3)
    unit_mask[1] = False
    unit_mask[1, :60] = True  # unit 1 saw only 60 tokens
    probe = KSparseProbe(ks=(1, 2), min_examples=30).fit(
        acts, labels, unit_mask, unit_names=["e0", "e1", "e2", "e3"], concept_names=["a", "b", "c"]
    )
    n_pos = (unit_mask[:, :, None] & labels[None]).sum(1)
    n_neg = unit_mask.sum(1, keepdim=True) - n_pos
    assert torch.equal(probe.n_pos_, n_pos) and torch.equal(probe.n_neg_, n_neg)
    expected_status = torch.where((n_pos >= 30) & (n_neg >= 30), STATUS_OK, STATUS_NOT_ENOUGH_SAMPLES)
    assert torch.equal(probe.status_.long(), expected_status)
    assert (probe.status_[1] == STATUS_NOT_ENOUGH_SAMPLES).all()
    assert probe.f1_[1].isnan().all() and (probe.top_neurons_[1] == -1).all()
    frame = probe.to_frame()
    assert len(frame) == 4 * 3 * 2
    assert list(frame.columns) == ["unit", "concept", "k", "f1", "status", "n_pos", "n_neg"]
    e1 = frame[frame.unit == "e1"]
    assert (e1.status == PROBE_STATUS[STATUS_NOT_ENOUGH_SAMPLES]).all() and e1.f1.isna().all()
    row = frame[(frame.unit == "e0") & (frame.concept == "c") & (frame.k == 2)].iloc[0]
    assert row.n_pos == n_pos[0, 2] and row.f1 == probe.f1_[0, 2, 1].item()


def test_best_helpers_agree_with_pandas_on_the_frame():
    acts, labels, unit_mask = toy_layer(seed=4)
    probe = KSparseProbe(ks=(1, 2, 4), min_examples=20).fit(acts, labels, unit_mask)
    frame = probe.to_frame()
    best = frame.groupby(["concept", "k"]).f1.max().unstack("k")
    np.testing.assert_allclose(probe.best_f1().numpy(), best.to_numpy())
    frame = frame.join(frame.groupby(["concept", "k"]).f1.max().rename("best"), on=["concept", "k"])
    near = (frame.f1 >= 0.95 * frame.best).groupby([frame.concept, frame.k]).sum().unstack("k")
    np.testing.assert_array_equal(probe.n_units_near_best(0.95).numpy(), near.to_numpy())
    np.testing.assert_allclose(probe.mean_best_f1().to_numpy(), best.mean(0).to_numpy())
    best_frame = probe.best_frame()
    assert list(best_frame.columns) == ["concept", "k", "best_f1", "best_unit", "n_units_near_best"]


def test_fit_is_deterministic():
    acts, labels, unit_mask = toy_layer(seed=5)
    first = KSparseProbe(ks=(1, 8), min_examples=20).fit(acts, labels, unit_mask).f1_
    second = KSparseProbe(ks=(1, 8), min_examples=20, max_batch_elements=1).fit(acts, labels, unit_mask).f1_
    assert torch.equal(first.isnan(), second.isnan())
    assert torch.equal(first.nan_to_num(), second.nan_to_num())


def test_bad_inputs_give_clear_errors():
    acts, labels, unit_mask = toy_layer(seed=6)
    probe = KSparseProbe(min_examples=20)
    no_pos = labels.clone()
    no_pos[:, 1] = False
    with pytest.raises(ValueError, match=r"concept\(s\) \[1\] have no positive"):
        probe.fit(acts, no_pos, unit_mask)
    with pytest.raises(ValueError, match="token axes disagree"):
        probe.fit(acts, labels[:-1], unit_mask[:, :-1])
    with pytest.raises(ValueError, match="unit_mask has 3 units but activations 4"):
        probe.fit(acts, labels, unit_mask[:3])
    with pytest.raises(ValueError, match="empty"):
        probe.fit(acts[:, :, :0], labels, unit_mask)
    with pytest.raises(ValueError, match="bool tensor"):
        probe.fit(acts, labels.float(), unit_mask)
    with pytest.raises(ValueError, match="concept_names has 2"):
        probe.fit(acts, labels, unit_mask, concept_names=["a", "b"])
    with pytest.raises(ValueError, match="min_examples"):
        KSparseProbe(min_examples=1).fit(acts, labels, unit_mask)
    with pytest.raises(ValueError, match="ks must"):
        KSparseProbe(ks=(0, 2)).fit(acts, labels, unit_mask)
    with pytest.raises(RuntimeError, match="not fitted"):
        KSparseProbe().to_frame()
    with pytest.warns(UserWarning, match=r"ks \[32, 64\] exceed the 24 neurons"):
        fitted = KSparseProbe(min_examples=20).fit(acts, labels, unit_mask)
    assert fitted.ks_ == (1, 2, 4, 8, 16) and fitted.f1_.shape[-1] == 5


# --------------------------------------------------------------------------------------------------
# subsample_like_routing
# --------------------------------------------------------------------------------------------------
def test_subsample_like_routing_draws_routed_sizes_from_each_dense_unit():
    dense_mask = torch.ones(2, 500, dtype=torch.bool)
    dense_mask[1, 400:] = False
    counts = torch.tensor([[50, 120, 7]])
    subsets, source = subsample_like_routing(dense_mask, counts, n_draws=4, seed=1)
    assert subsets.shape == (8, 500) and source.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert subsets.sum(1).tolist() == [50, 120, 7, 50] * 2
    assert not (subsets & ~dense_mask[source]).any()
    again, _ = subsample_like_routing(dense_mask, counts, n_draws=4, seed=1)
    other, _ = subsample_like_routing(dense_mask, counts, n_draws=4, seed=2)
    assert torch.equal(again, subsets) and not torch.equal(other, subsets)
    with pytest.raises(ValueError, match="exceeds"):
        subsample_like_routing(dense_mask, torch.tensor([450]))


def test_activation_index_lets_units_share_activations_without_copies():
    acts, labels, _ = toy_layer(seed=7, units=2)
    subsets, source = subsample_like_routing(
        torch.ones(2, acts.shape[1], dtype=torch.bool), [900, 1500], seed=0
    )
    shared = KSparseProbe(ks=(1, 4), min_examples=20).fit(acts, labels, subsets, activation_index=source)
    copied = KSparseProbe(ks=(1, 4), min_examples=20).fit(acts[source], labels, subsets)
    assert shared.f1_.shape == (4, labels.shape[1], 2)
    assert torch.equal(shared.f1_.nan_to_num(), copied.f1_.nan_to_num())
    assert torch.equal(shared.top_neurons_, copied.top_neurons_)
    assert not math.isnan(shared.f1_[0, 0, 0])


def test_chunks_group_small_problems_by_absolute_padding_and_large_ones_by_fill():
    # Sizes sorted by decreasing examples, as fit passes them. 6 * n_tokens keeps the memory bound loose.
    probe = KSparseProbe(max_batch_elements=1 << 30)
    sizes = torch.tensor([4000, 3500, 3300, 2000, 1900, 300, 200, 120, 60])
    chunks = probe._chunks(sizes, n_tokens=10, row_width=10)
    groups = [sizes[c].tolist() for c in chunks]
    # 3300 < 0.85 * 4000 and 700 examples short: a new chunk; 1900 within 256 of 2000; 300..60 within 256 of 300.
    assert groups == [[4000, 3500], [3300], [2000, 1900], [300, 200, 120, 60]]
    # The memory bound still caps a chunk: two problems of 300 examples x 10 wide per chunk.
    capped = KSparseProbe(max_batch_elements=2 * 300 * 10)._chunks(sizes[5:], n_tokens=10, row_width=10)
    assert [sizes[5:][c].tolist() for c in capped] == [[300, 200], [120, 60]]
