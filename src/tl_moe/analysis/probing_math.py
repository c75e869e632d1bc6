"""Batched math behind k-sparse probing: logistic regression, neuron ranking, balanced splits, F1.

Every function works on a leading *problem* axis: one problem is one (probe unit, concept) pair,
so thousands of small probes are solved together in a few batched tensor operations.

- :func:`fit_logistic_batched` — L2 logistic regression with balanced class weights by Newton's
  method; minimises exactly the objective of ``sklearn.linear_model.LogisticRegression``.
- :func:`balanced_split` — seeded, class-balanced, stratified train/test token masks.
- :func:`rank_neurons_by_mean_difference` — neurons ordered by ``|mean(pos) - mean(neg)|``.
- :func:`binary_f1` — F1 of the positive class, per problem.
- :func:`padded_indices` — ragged boolean masks to padded index lists.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

__all__ = [
    "balanced_split",
    "binary_f1",
    "fit_logistic_batched",
    "padded_indices",
    "rank_neurons_by_mean_difference",
]

# Newton decrements above this take a backtracking line search; below it the full step is taken
# (the quadratically convergent region, where rounding would make a line search reject good steps).
_LINE_SEARCH_ABOVE = 1e-6
_MAX_HALVINGS = 30
_ARMIJO_SLOPE = 1e-4
# Added to the Hessian diagonal (of the objective normalised by the total sample weight) so that a
# saturated intercept never makes the linear system singular; it changes step lengths, not the optimum.
_HESSIAN_JITTER = 1e-10


def _validate_logistic_inputs(
    X: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, C: float, max_iter: int
) -> None:
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D [batch, n, features]; got shape {tuple(X.shape)}.")
    if y.shape != X.shape[:2]:
        raise ValueError(f"y must have shape [batch, n] = {tuple(X.shape[:2])}; got {tuple(y.shape)}.")
    if weight.shape != X.shape[:2]:
        raise ValueError(
            f"weight must have shape [batch, n] = {tuple(X.shape[:2])}; got {tuple(weight.shape)}."
        )
    if not (C > 0 and math.isfinite(C)):
        raise ValueError(f"C must be a finite positive number (inverse L2 strength); got {C}.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}.")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values (padded rows too must hold finite values).")
    if ((y != 0) & (y != 1)).any():
        raise ValueError("y must hold binary labels 0/1 (or False/True).")
    if not torch.isfinite(weight).all() or (weight < 0).any():
        raise ValueError("weight must be finite and >= 0 (0 marks padding rows).")


def fit_logistic_batched(
    X: Float[torch.Tensor, "batch n features"],
    y: Float[torch.Tensor, "batch n"],
    weight: Float[torch.Tensor, "batch n"] | None = None,
    C: float = 1.0,
    class_weight: Literal["balanced"] | None = "balanced",
    max_iter: int = 100,
    tol: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Float[torch.Tensor, "batch features"], Float[torch.Tensor, "batch"]]:  # noqa: F821 (jaxtyping shape)
    """Fit one L2-regularised logistic regression per batch element, all at once.

    Minimises, for each batch element independently,
    ``0.5 * ||coef||^2 + C * sum_i s_i * logloss(y_i, x_i @ coef + intercept)``,
    the objective of ``LogisticRegression(C=C, class_weight=class_weight, penalty='l2')`` given
    ``sample_weight=weight``: the intercept is not penalised, and ``s_i = weight_i * class_weight[y_i]``
    where ``'balanced'`` weights class c by ``sum(weight) / (2 * sum(weight[y == c]))`` (scikit-learn
    computes balanced weights from sample-weighted class totals; for 0/1 masks that is the class count
    among the unmasked rows).

    Features are standardised inside (weighted mean and standard deviation per batch element); the L2
    term is rescaled accordingly so the optimum is the same, and the returned coefficients are on the
    original feature scale. Newton's method with a backtracking line search then converges in a few
    iterations, each solving a ``(features + 1)``-sized linear system per batch element. Constant
    features get coefficient 0 (the free intercept absorbs them at no penalty cost, which is also the
    exact optimum). Separable data stays finite because the L2 term bounds the coefficients.

    Args:
        X: the features of each problem; rows are samples, padded to a common ``n``.
        y: binary label of each row (1 = positive class).
        weight: sample weight of each row; 0 marks a padding row of a ragged batch. Default: all 1.
        C: inverse L2 strength, as in scikit-learn.
        class_weight: ``'balanced'`` or ``None`` (every class weighs 1).
        max_iter: maximum Newton iterations.
        tol: a problem stops once the Newton decrement ``g^T H^-1 g`` of its objective divided by
            ``C * sum(s)`` (about twice the remaining sub-optimality) falls below it; the step computed
            there is still taken, which squares the remaining error. Default 1e-12 in float64, 1e-7
            in lower precision. Problems that do not get there in ``max_iter`` raise a RuntimeWarning.
        dtype: floating dtype of the computation and of the outputs.

    Returns:
        coef: ``[batch, features]`` coefficients on the original feature scale.
        intercept: ``[batch]`` intercepts.

    Raises:
        ValueError: on malformed shapes, non-finite values, non-binary labels, negative weights, or a
            batch element without positive weight on both classes (its optimum would be infinite).
    """
    if weight is None:
        weight = torch.ones(X.shape[:2], dtype=dtype, device=X.device)
    _validate_logistic_inputs(X, y, weight, C, max_iter)
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None; got {class_weight!r}.")
    if tol is None:
        tol = 1e-12 if dtype == torch.float64 else 1e-7

    x = X.to(dtype)
    target = y.to(dtype)
    w = weight.to(dtype=dtype, device=X.device)
    pos_total = (w * target).sum(1)
    neg_total = (w * (1 - target)).sum(1)
    one_class = (pos_total <= 0) | (neg_total <= 0)
    if one_class.any():
        bad = one_class.nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"{int(one_class.sum())} batch element(s) (first: {bad}) have positive weight on only one "
            "class; each problem needs weighted samples of both classes."
        )
    if class_weight == "balanced":
        total = pos_total + neg_total
        per_class = torch.stack([total / (2 * neg_total), total / (2 * pos_total)], dim=1)  # [batch, 2]
        raw_s = w * per_class.gather(1, target.long())
    else:
        raw_s = w
    sum_s = raw_s.sum(1)
    s = raw_s / sum_s[:, None]  # the objective divided by C * sum(s): its loss is a weighted mean

    mean = torch.einsum("bn,bnf->bf", s, x)
    centered = x - mean[:, None, :]
    std = torch.einsum("bn,bnf->bf", s, centered.square()).sqrt()
    # Rounding leaves a constant column a standard deviation of a few ulps of its magnitude.
    constant = std <= 1e3 * torch.finfo(dtype).eps * (1 + mean.abs())
    safe_std = torch.where(constant, torch.ones_like(std), std)
    z = (centered / safe_std[:, None, :]).masked_fill(constant[:, None, :], 0.0)
    z = torch.cat([z, torch.ones_like(z[..., :1])], dim=2)  # last column: intercept
    # 0.5 * ||coef||^2 / (C * S) with coef = theta / std  ->  per-parameter quadratic weight.
    l2 = torch.where(constant, torch.ones_like(std), 1.0 / (C * sum_s[:, None] * safe_std.square()))
    l2 = torch.cat([l2, torch.zeros_like(l2[:, :1])], dim=1)

    theta = _newton(z, target, s, l2, max_iter=max_iter, tol=tol)

    coef = (theta[:, :-1] / safe_std).masked_fill(constant, 0.0)
    intercept = theta[:, -1] - (coef * mean).sum(1)
    return coef, intercept


def _objective(
    z: torch.Tensor, target: torch.Tensor, s: torch.Tensor, l2: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """Normalised objective per problem: weighted mean log loss + 0.5 * sum(l2 * theta^2)."""
    logits = torch.bmm(z, theta[:, :, None])[..., 0]
    loss = F.softplus(logits) - target * logits
    return (s * loss).sum(1) + 0.5 * (l2 * theta.square()).sum(1)


def _newton(
    z: Float[torch.Tensor, "batch n params"],
    target: Float[torch.Tensor, "batch n"],
    s: Float[torch.Tensor, "batch n"],
    l2: Float[torch.Tensor, "batch params"],
    max_iter: int,
    tol: float,
) -> Float[torch.Tensor, "batch params"]:
    """Damped Newton iterations on the normalised objective; returns the parameters per problem."""
    batch, _, n_params = z.shape
    theta = z.new_zeros(batch, n_params)
    objective = _objective(z, target, s, l2, theta)
    jitter = torch.diag(z.new_full((n_params,), _HESSIAN_JITTER))
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    for _ in range(max_iter):
        prob = torch.sigmoid(torch.bmm(z, theta[:, :, None])[..., 0])
        grad = torch.bmm(z.transpose(1, 2), (s * (prob - target))[:, :, None])[..., 0] + l2 * theta
        curvature = s * prob * (1 - prob)
        hessian = torch.bmm(z.transpose(1, 2), z * curvature[:, :, None])
        hessian = hessian + torch.diag_embed(l2) + jitter
        step = torch.linalg.solve(hessian, grad).masked_fill(converged[:, None], 0.0)
        decrement = (grad * step).sum(1)
        theta, objective = _backtrack(z, target, s, l2, theta, objective, step, decrement, converged)
        # The step just taken from a point within tol is kept: it squares the remaining error.
        converged = converged | (decrement <= tol)
        if converged.all():
            break
    if not converged.all():
        warnings.warn(
            f"fit_logistic_batched: {int((~converged).sum())} of {batch} problems did not reach "
            f"tol={tol:g} in {max_iter} Newton iterations; increase max_iter.",
            RuntimeWarning,
            stacklevel=3,
        )
    return theta


def _backtrack(
    z: torch.Tensor,
    target: torch.Tensor,
    s: torch.Tensor,
    l2: torch.Tensor,
    theta: torch.Tensor,
    objective: torch.Tensor,
    step: torch.Tensor,
    decrement: torch.Tensor,
    converged: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Halve each problem's step until the Armijo condition holds (full step near the optimum)."""
    alpha = torch.ones_like(objective)
    exempt = converged | (decrement <= _LINE_SEARCH_ABOVE)
    for _ in range(_MAX_HALVINGS):
        candidate = theta - alpha[:, None] * step
        candidate_objective = _objective(z, target, s, l2, candidate)
        accepted = exempt | (candidate_objective <= objective - _ARMIJO_SLOPE * alpha * decrement)
        if accepted.all():
            break
        alpha = torch.where(accepted, alpha, alpha / 2)
    return candidate, candidate_objective


def balanced_split(
    member: Bool[torch.Tensor, "problem n_tokens"],
    positive: Bool[torch.Tensor, "problem n_tokens"],
    token_order: Int[torch.Tensor, "problem n_tokens"],
    n_per_class: Int[torch.Tensor, "problem"],  # noqa: F821 (jaxtyping shape)
    test_size: float,
) -> tuple[Bool[torch.Tensor, "problem n_tokens"], Bool[torch.Tensor, "problem n_tokens"]]:
    """Pick ``n_per_class`` positives and negatives per problem and split them stratified.

    Each problem takes, from the tokens it may use (``member``), the first ``n_per_class`` positive
    and the first ``n_per_class`` negative tokens in its ``token_order`` (a random permutation, so this
    is uniform sampling without replacement); of each class the first ``ceil(test_size *
    n_per_class)`` go to the test split and the rest to the train split. Both splits are therefore
    balanced and stratified.

    Args:
        member: tokens each problem may use (e.g. tokens routed to the expert).
        positive: the concept label of each token, for each problem.
        token_order: a permutation of ``range(n_tokens)`` per problem: the sampling order.
        n_per_class: examples per class to take (must not exceed what ``member`` offers).
        test_size: fraction of each class that goes to the test split, in (0, 1).

    Returns:
        train: tokens in each problem's train split.
        test: tokens in each problem's test split.
    """
    n_test = torch.ceil(n_per_class.to(torch.float64) * test_size).long()[:, None]
    n_take = n_per_class.long()[:, None]
    ordered_member = member.gather(1, token_order)
    ordered_positive = positive.gather(1, token_order)
    ordered_train = torch.zeros_like(ordered_member)
    ordered_test = torch.zeros_like(ordered_member)
    for in_class in (ordered_member & ordered_positive, ordered_member & ~ordered_positive):
        rank = in_class.cumsum(1) - 1  # rank among this class's tokens, in sampling order
        ordered_test |= in_class & (rank < n_test)
        ordered_train |= in_class & (rank >= n_test) & (rank < n_take)
    train = torch.zeros_like(member).scatter_(1, token_order, ordered_train)
    test = torch.zeros_like(member).scatter_(1, token_order, ordered_test)
    return train, test


def padded_indices(
    mask: Bool[torch.Tensor, "problem n_tokens"],
) -> tuple[Int[torch.Tensor, "problem n_max"], Bool[torch.Tensor, "problem n_max"]]:
    """The positions of each row's True entries, in increasing order, padded to the longest row.

    Returns:
        index: token index of each selected entry; padding entries point at token 0.
        valid: False on padding entries.
    """
    counts = mask.sum(1)
    n_max = int(counts.max()) if mask.numel() else 0
    order = torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :n_max]
    valid = torch.arange(n_max, device=mask.device)[None, :] < counts[:, None]
    return order.masked_fill(~valid, 0), valid


def rank_neurons_by_mean_difference(
    activations: Float[torch.Tensor, "problem n neurons"],
    positive: Bool[torch.Tensor, "problem n"],
    valid: Bool[torch.Tensor, "problem n"],
) -> Int[torch.Tensor, "problem neurons"]:
    """Neurons ordered by decreasing ``|mean over positives - mean over negatives|``.

    Means are taken over the ``valid`` rows of each class (in float64). Ties keep the lower neuron
    index first, so the ranking is deterministic.
    """
    acts = activations.to(torch.float64)
    pos = (positive & valid).to(torch.float64)
    neg = (~positive & valid).to(torch.float64)
    pos_mean = torch.einsum("bn,bnf->bf", pos, acts) / pos.sum(1, keepdim=True).clamp(min=1)
    neg_mean = torch.einsum("bn,bnf->bf", neg, acts) / neg.sum(1, keepdim=True).clamp(min=1)
    separation = (pos_mean - neg_mean).abs()
    return torch.sort(separation, dim=1, descending=True, stable=True).indices


def binary_f1(
    predicted: Bool[torch.Tensor, "problem n"],
    target: Bool[torch.Tensor, "problem n"],
    valid: Bool[torch.Tensor, "problem n"],
) -> Float[torch.Tensor, "problem"]:  # noqa: F821 (jaxtyping shape)
    """F1 score of the positive class per problem over the ``valid`` rows (0 when undefined)."""
    true_pos = (predicted & target & valid).sum(1)
    false_pos = (predicted & ~target & valid).sum(1)
    false_neg = (~predicted & target & valid).sum(1)
    denominator = 2 * true_pos + false_pos + false_neg
    return torch.where(denominator > 0, 2 * true_pos / denominator.clamp(min=1), 0.0).to(torch.float64)
