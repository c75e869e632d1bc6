"""The fast paths of k-sparse probing give the fits of a plain solver.

The Newton solver drops problems from its working set as they converge, multiplies vectors by the
design as row vectors, and the probe reuses its seeded token orders; each is checked here against an
independent reference: scikit-learn's fit of each problem on its own, the same problem solved alone,
and the orders recomputed from the seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tl_moe.analysis.probing import KSparseProbe, _token_orders
from tl_moe.analysis.probing_math import (
    balanced_split,
    fit_logistic_batched,
    fit_logistic_nested,
    stratified_split,
)


def mixed_problems(seed=0, n=300, features=8):
    """Problems that need very different numbers of Newton iterations, in one padded batch.

    Row 0: pure noise (the optimum is near the start); row 1: nearly separable (many damped steps);
    row 2: strong signal on badly scaled features; row 3: ragged (its last third is padding).
    """
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4, n, features, generator=g, dtype=torch.float64)
    y = (torch.rand(4, n, generator=g, dtype=torch.float64) < 0.3).double()
    X[1, :, 0] = 6.0 * (2 * y[1] - 1) + 0.3 * X[1, :, 0]
    X[2] = X[2] * torch.logspace(-2, 2, features, dtype=torch.float64) + 5.0
    X[2, :, 1] += 3.0 * y[2] * 10.0
    weight = torch.ones(4, n, dtype=torch.float64)
    weight[3, 2 * n // 3 :] = 0.0
    return X, y, weight


def sklearn_fit(X, y, C):
    model = LogisticRegression(
        C=C, class_weight="balanced", solver="newton-cholesky", tol=1e-12, max_iter=500
    )
    return model.fit(X, y)


@pytest.mark.parametrize("C", [1.0, 0.02])
def test_nested_fits_of_problems_converging_at_different_times_match_sklearn(C):
    X, y, weight = mixed_problems()
    ks = (1, 2, 4, 8)
    fits = fit_logistic_nested(X, y, weight, ks, C=C)
    for (coef, intercept), k in zip(fits, ks, strict=True):
        for b in range(X.shape[0]):
            keep = weight[b] > 0
            ref = sklearn_fit(X[b, keep, :k].numpy(), y[b, keep].numpy(), C)
            np.testing.assert_allclose(coef[b].numpy(), ref.coef_[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(float(intercept[b]), ref.intercept_[0], rtol=1e-6, atol=1e-6)


def test_a_problem_gets_the_same_fit_in_a_batch_and_alone():
    """Within the solver's accuracy: the batch shares its decisions to refresh the Hessian."""
    X, y, weight = mixed_problems(seed=1)
    coef, intercept = fit_logistic_batched(X, y, weight)
    for b in range(X.shape[0]):
        alone_coef, alone_intercept = fit_logistic_batched(X[b : b + 1], y[b : b + 1], weight[b : b + 1])
        np.testing.assert_allclose(coef[b].numpy(), alone_coef[0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(intercept[b]), float(alone_intercept[0]), rtol=1e-5, atol=1e-6)


def test_unconverged_problems_keep_their_last_iterate_and_warn():
    X, y, weight = mixed_problems(seed=2)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        coef, _ = fit_logistic_batched(X, y, weight, max_iter=1)
    assert torch.isfinite(coef).all()
    assert (coef.abs().sum(1) > 0).all()  # every problem took its first step


def fresh_orders(seed, n_concepts, n_tokens):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_concepts, n_tokens, generator=generator).argsort(dim=1)


def test_token_orders_are_the_seeded_permutations_whatever_was_asked_before():
    # Fewer concepts after more (served from the kept orders), more after fewer (drawn again),
    # other seeds and token counts in between (more keys than are kept).
    for seed, n_concepts, n_tokens in [(7, 5, 3001), (7, 2, 3001), (8, 2, 3001), (7, 9, 3001), (7, 3, 50)]:
        assert torch.equal(
            _token_orders(seed, n_concepts, n_tokens), fresh_orders(seed, n_concepts, n_tokens)
        )
    for seed in range(6):
        _token_orders(seed, 1, 40)
    assert torch.equal(_token_orders(7, 4, 3001), fresh_orders(7, 4, 3001))
    assert not torch.equal(_token_orders(8, 4, 3001), fresh_orders(7, 4, 3001))
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 400, 6, generator=g)
    labels = torch.rand(400, 3, generator=g) < 0.3
    acts[:, :, 0] += 2.0 * labels[:, 0].float()
    first = KSparseProbe(ks=(1, 2), min_examples=10, random_state=7).fit(acts, labels).f1_
    second = KSparseProbe(ks=(1, 2), min_examples=10, random_state=7).fit(acts, labels).f1_
    assert torch.equal(first, second)
    assert torch.equal(_token_orders(7, 3, 400), fresh_orders(7, 3, 400))  # not modified by the fits


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_activations_on_seen_tokens_are_rejected(bad):
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(2, 400, 6, generator=g)
    labels = torch.rand(400, 2, generator=g) < 0.3
    acts[1, 5, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        KSparseProbe(ks=(1, 2), min_examples=10).fit(acts, labels)
    unseen = torch.ones(2, 400, dtype=torch.bool)
    unseen[1, 5] = False  # the bad value sits on a token unit 1 never saw: it is never read
    KSparseProbe(ks=(1, 2), min_examples=10).fit(acts, labels, unseen)


@pytest.mark.parametrize("sampling", ["balanced", "all"])
def test_flat_split_of_each_unit_matches_the_splits_over_every_token(sampling):
    """The probe's split (each problem's candidates from its unit's token list, one flat sort) gives
    the masks of the reference splits computed over every token, token mask and empty units included."""
    g = torch.Generator().manual_seed(3)
    n_tokens, n_concepts = 2000, 5
    labels = torch.rand(n_tokens, n_concepts, generator=g) < torch.linspace(0.02, 0.45, n_concepts)
    unit_mask = torch.rand(6, n_tokens, generator=g) < torch.tensor([0.0, 0.05, 0.2, 0.5, 0.9, 1.0])[:, None]
    token_mask = torch.rand(n_tokens, n_concepts, generator=g) < 0.8
    probe = KSparseProbe(sampling=sampling, min_examples=8, random_state=5)
    train, test = probe.train_test_masks(labels, unit_mask, token_mask)
    orders = fresh_orders(5, n_concepts, n_tokens)
    for u in range(unit_mask.shape[0]):
        member = unit_mask[u][None] & token_mask.T
        positive = labels.T
        n_pos, n_neg = (member & positive).sum(1), (member & ~positive).sum(1)
        enough = (n_pos >= 8) & (n_neg >= 8)
        if sampling == "balanced":
            take = torch.minimum(n_pos, n_neg).masked_fill(~enough, 0)
            ref_train, ref_test = balanced_split(member, positive, orders, take, test_size=0.25)
        else:
            ref_train, ref_test = stratified_split(member & enough[:, None], positive, orders, test_size=0.25)
        assert torch.equal(train[u], ref_train) and torch.equal(test[u], ref_test)
    assert train.any() and test.any() and not (train | test)[0].any()
