"""Batched math behind k-sparse probing: logistic regression, neuron ranking, balanced splits, F1.

Every function works on a leading *problem* axis: one problem is one (probe unit, concept) pair,
so thousands of small probes are solved together in a few batched tensor operations.

- :func:`fit_logistic_batched` — L2 logistic regression with balanced class weights by Newton's
  method; minimises exactly the objective of ``sklearn.linear_model.LogisticRegression``.
- :func:`fit_logistic_nested` — the same on nested feature blocks ``X[..., :k]``, warm-started.
- :func:`balanced_split` — seeded, class-balanced, stratified train/test token masks.
- :func:`stratified_split` — seeded train/test masks of every token, stratified at its class ratio.
- :func:`split_in_sampling_order` — either split computed on each problem's candidate tokens only.
- :func:`balance_per_document` — per document, every positive and as many random negatives.
- :func:`rank_neurons_by_mean_difference` — neurons ordered by ``|mean(pos) - mean(neg)|``.
- :func:`binary_f1` — F1 of the positive class, per problem.
- :func:`padded_indices` — ragged boolean masks to padded index lists.
- :func:`subsample_like_routing` — random token subsets of dense units, sized like routed token sets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int

__all__ = [
    "balance_per_document",
    "balanced_split",
    "binary_f1",
    "fit_logistic_batched",
    "fit_logistic_nested",
    "padded_indices",
    "rank_neurons_by_mean_difference",
    "split_in_sampling_order",
    "stratified_split",
    "stratified_test_sizes",
    "subsample_like_routing",
]

# Newton decrements above this take a backtracking line search; below it the full step is taken
# (the quadratically convergent region, where rounding would make a line search reject good steps).
_LINE_SEARCH_ABOVE = 1e-6
_MAX_HALVINGS = 30
_ARMIJO_SLOPE = 1e-4
# Added to the Hessian diagonal (of the objective normalised by the total sample weight) so that a
# saturated intercept never makes the linear system singular; it changes step lengths, not the optimum.
_HESSIAN_JITTER = 1e-10
# The Hessian factor is reused (chord steps) once every Newton decrement is below this and the last
# reused step shrank the decrement at least by _REUSE_RATIO; otherwise it is recomputed.
_REUSE_HESSIAN_BELOW = 1e-2
_REUSE_RATIO = 0.05


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
    iterations, each solving a ``(features + 1)``-sized linear system per batch element; near the
    optimum the Hessian's Cholesky factor is reused while the steps keep shrinking fast. Constant
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
            there is still taken, which shrinks the error further. Default 1e-12 in float64, 1e-7
            in lower precision. Problems that do not get there in ``max_iter`` raise a RuntimeWarning.
        dtype: floating dtype of the computation and of the outputs.

    Returns:
        coef: ``[batch, features]`` coefficients on the original feature scale.
        intercept: ``[batch]`` intercepts.

    Raises:
        ValueError: on malformed shapes, non-finite values, non-binary labels, negative weights, or a
            batch element without positive weight on both classes (its optimum would be infinite).
    """
    [(coef, intercept)] = fit_logistic_nested(
        X, y, weight, tuple(X.shape[-1:]), C, class_weight, max_iter, tol, dtype
    )
    return coef, intercept


def fit_logistic_nested(
    X: Float[torch.Tensor, "batch n features"],
    y: Float[torch.Tensor, "batch n"],
    weight: Float[torch.Tensor, "batch n"] | None,
    n_features: Sequence[int],
    C: float = 1.0,
    class_weight: Literal["balanced"] | None = "balanced",
    max_iter: int = 100,
    tol: float | None = None,
    dtype: torch.dtype = torch.float64,
    check_input: bool = True,
) -> list[tuple[Float[torch.Tensor, "batch k"], Float[torch.Tensor, "batch"]]]:  # noqa: F821 (jaxtyping shape)
    """:func:`fit_logistic_batched` on each leading block of features ``X[..., :k]``, k in ``n_features``.

    The result for each k is the same as ``fit_logistic_batched(X[..., :k], ...)``; doing them together
    standardises the features once and warm-starts each fit from the previous one (the k-sparse
    probes of ranked neurons are exactly such nested blocks). Arguments as in
    :func:`fit_logistic_batched`, plus ``check_input=False`` to skip the scans of the inputs for
    non-finite values and non-binary labels (for callers that guarantee them); returns one
    ``(coef [batch, k], intercept [batch])`` per k, in the order given.
    """
    if weight is None:
        weight = torch.ones(X.shape[:2], dtype=dtype, device=X.device)
    if check_input:
        _validate_logistic_inputs(X, y, weight, C, max_iter)
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None; got {class_weight!r}.")
    if any(not 0 <= k <= X.shape[2] for k in n_features):
        raise ValueError(f"n_features must lie in [0, {X.shape[2]}]; got {list(n_features)}.")
    if tol is None:
        tol = 1e-12 if dtype == torch.float64 else 1e-7

    x = X.to(dtype)
    target = y.to(dtype)
    s, sum_s = _sample_weights(target, weight.to(dtype=dtype, device=X.device), class_weight)
    mean = torch.einsum("bn,bnf->bf", s, x)
    # The standardised design matrix is built in place in one buffer; column 0: the intercept.
    z = x.new_empty(x.shape[0], x.shape[1], x.shape[2] + 1)
    z[..., 0] = 1.0
    centered = torch.sub(x, mean[:, None, :], out=z[..., 1:])
    std = torch.einsum("bn,bnf->bf", s, centered.square()).sqrt()
    # Rounding leaves a constant column a standard deviation of a few ulps of its magnitude.
    constant = std <= 1e3 * torch.finfo(dtype).eps * (1 + mean.abs())
    safe_std = torch.where(constant, torch.ones_like(std), std)
    centered.div_(safe_std[:, None, :])
    if bool(constant.any()):
        centered.masked_fill_(constant[:, None, :], 0.0)
    # 0.5 * ||coef||^2 / (C * S) with coef = theta / std  ->  per-parameter quadratic weight.
    l2 = torch.where(constant, torch.ones_like(std), 1.0 / (C * sum_s[:, None] * safe_std.square()))
    l2 = torch.cat([torch.zeros_like(l2[:, :1]), l2], dim=1)

    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    ks = sorted(set(n_features))
    thetas, theta = [], z.new_zeros(z.shape[0], 1)
    for k in ks:
        start = torch.cat([theta, theta.new_zeros(theta.shape[0], k + 1 - theta.shape[1])], dim=1)
        block = z[..., : k + 1].contiguous()  # contiguous operands keep bmm from copying every iteration
        theta = _newton(block, target, s, l2[:, : k + 1], start, max_iter=max_iter, tol=tol)
        thetas.append(theta)
    for k, theta in zip(ks, thetas, strict=True):
        coef = (theta[:, 1:] / safe_std[:, :k]).masked_fill(constant[:, :k], 0.0)
        results[k] = coef, theta[:, 0] - (coef * mean[:, :k]).sum(1)
    return [results[k] for k in n_features]


def _sample_weights(
    target: Float[torch.Tensor, "batch n"], weight: Float[torch.Tensor, "batch n"], class_weight: str | None
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch"]]:  # noqa: F821 (jaxtyping shape)
    """Per-row weights ``s`` (sample weight x class weight) normalised to sum 1, and their raw sum."""
    pos_total = (weight * target).sum(1)
    neg_total = (weight * (1 - target)).sum(1)
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
        raw = weight * per_class.gather(1, target.long())
    else:
        raw = weight
    sum_s = raw.sum(1)
    return raw / sum_s[:, None], sum_s


def _objective(
    logits: torch.Tensor, target: torch.Tensor, s: torch.Tensor, l2: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """Normalised objective per problem: weighted mean log loss + 0.5 * sum(l2 * theta^2)."""
    loss = F.softplus(logits) - target * logits
    return (s * loss).sum(1) + 0.5 * (l2 * theta.square()).sum(1)


def _rows_times(
    vectors: Float[torch.Tensor, "batch m"], matrices: Float[torch.Tensor, "batch m q"]
) -> Float[torch.Tensor, "batch q"]:
    """``vectors[b] @ matrices[b]`` per batch element.

    Written as a batch of ``[1, m] @ [m, q]`` products: on CPU that is several times faster than the
    equivalent ``[q, m] @ [m, 1]`` products (which take a slow path for a trailing dimension of 1).
    """
    return torch.bmm(vectors[:, None, :], matrices)[:, 0]


def _newton(
    z: Float[torch.Tensor, "batch n params"],
    target: Float[torch.Tensor, "batch n"],
    s: Float[torch.Tensor, "batch n"],
    l2: Float[torch.Tensor, "batch params"],
    theta: Float[torch.Tensor, "batch params"],
    max_iter: int,
    tol: float,
) -> Float[torch.Tensor, "batch params"]:
    """Damped Newton iterations on the normalised objective from ``theta``; returns the optimum.

    Problems leave the working set as soon as they converge (their ``theta`` is final), so the later
    iterations cost only what the problems still moving need. The decisions shared by the batch
    (whether to refresh the Hessian factor) look at the problems still moving only.
    """
    batch, _, n_params = z.shape
    theta = theta.clone()
    done = torch.zeros(batch, dtype=torch.bool, device=z.device)
    # Working set: index into the batch, and the problems' data restricted to it.
    index = torch.arange(batch, device=z.device)
    w_z, w_target, w_s, w_l2, w_theta = z, target, s, l2, theta
    logits = _rows_times(w_theta, w_z.transpose(1, 2))
    objective = None  # computed only when a line search needs it
    jitter = z.new_full((n_params,), _HESSIAN_JITTER)
    factor, refresh, previous = None, True, None
    buffer = torch.empty_like(z)
    for _ in range(max_iter):
        prob = torch.sigmoid(logits)
        grad = _rows_times(w_s * (prob - w_target), w_z) + w_l2 * w_theta
        if refresh:
            curvature = w_s * prob * (1 - prob)
            # Into a buffer allocated once per call: a fresh [batch, n, params] temporary per refresh
            # costs as much in page faults as the multiplication itself.
            weighted = torch.mul(w_z, curvature[:, :, None], out=buffer[: w_z.shape[0]])
            hessian = torch.bmm(w_z.transpose(1, 2), weighted)
            # (H + diag(l2)) + jitter on the diagonal, in place; the off-diagonal entries stay H's.
            hessian.diagonal(dim1=1, dim2=2).add_(w_l2).add_(jitter)
            factor = _cholesky(hessian)
        step = torch.cholesky_solve(grad[:, :, None], factor)[..., 0]
        decrement = (grad * step).sum(1)
        logit_step = _rows_times(step, w_z.transpose(1, 2))
        alpha = torch.ones_like(decrement)
        exempt = decrement <= _LINE_SEARCH_ABOVE
        # The step just taken from a point within tol is kept: it shrinks the remaining error further.
        converged = decrement <= tol
        all_exempt, any_converged, all_converged = torch.stack(
            [exempt.all(), converged.any(), converged.all()]
        ).tolist()  # one read of the three decisions
        if not all_exempt:
            # Backtracking (Armijo) line search; full Newton steps near the optimum, where rounding
            # would make the test reject good steps.
            if objective is None:
                objective = _objective(logits, w_target, w_s, w_l2, w_theta)
            for _ in range(_MAX_HALVINGS):
                candidate = _objective(
                    logits - alpha[:, None] * logit_step, w_target, w_s, w_l2, w_theta - alpha[:, None] * step
                )
                accepted = exempt | (candidate <= objective - _ARMIJO_SLOPE * alpha * decrement)
                if bool(accepted.all()):
                    break
                alpha = torch.where(accepted, alpha, alpha / 2)
            objective = candidate if bool(accepted.all()) else None  # else alpha moved past `candidate`
        else:
            objective = None
        w_theta = w_theta - alpha[:, None] * step
        logits = logits - alpha[:, None] * logit_step
        if any_converged:
            theta[index[converged]] = w_theta[converged]
            done[index[converged]] = True
            if all_converged:
                break
            keep = (~converged).nonzero().flatten()  # listed once, not by each boolean index below
            index, w_z, w_target, w_s, w_l2, w_theta, logits, decrement, factor = (
                t.index_select(0, keep)
                for t in (index, w_z, w_target, w_s, w_l2, w_theta, logits, decrement, factor)
            )
            objective = None if objective is None else objective.index_select(0, keep)
            previous = None if previous is None else previous.index_select(0, keep)
        # Near the optimum the Hessian barely moves: keep its factor while the steps keep shrinking fast.
        large = (decrement > _REUSE_HESSIAN_BELOW).any()
        if previous is None:
            refresh = bool(large)
        else:
            refresh = torch.stack([(decrement > _REUSE_RATIO * previous).any(), large]).any().item()
        previous = decrement
    if not bool(done.all()):
        theta[index] = w_theta
        warnings.warn(
            f"fit_logistic_batched: {int((~done).sum())} of {batch} problems did not reach "
            f"tol={tol:g} in {max_iter} Newton iterations; increase max_iter.",
            RuntimeWarning,
            stacklevel=4,
        )
    return theta


def _cholesky(hessian: Float[torch.Tensor, "batch p p"]) -> Float[torch.Tensor, "batch p p"]:
    """Lower Cholesky factors; a matrix that rounding left indefinite gets a larger diagonal shift."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    if bool((info > 0).any()):
        scale = hessian.diagonal(dim1=1, dim2=2).abs().amax(1)[:, None, None].clamp(min=1.0)
        shift = 1e-9 * scale * torch.eye(hessian.shape[1], dtype=hessian.dtype, device=hessian.device)
        factor, info = torch.linalg.cholesky_ex(hessian + shift)
        if bool((info > 0).any()):
            raise RuntimeError("logistic regression Hessian is not positive definite; are the inputs finite?")
    return factor


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


def stratified_split(
    member: Bool[torch.Tensor, "problem n_tokens"],
    positive: Bool[torch.Tensor, "problem n_tokens"],
    token_order: Int[torch.Tensor, "problem n_tokens"],
    test_size: float,
) -> tuple[Bool[torch.Tensor, "problem n_tokens"], Bool[torch.Tensor, "problem n_tokens"]]:
    """Split every token a problem may use in train and test, stratified at its class ratio.

    The split sizes are scikit-learn's ``train_test_split(test_size=test_size, stratify=y)``: of
    ``n`` tokens, ``ceil(test_size * n)`` go to test; the train split takes ``floor(n_train * n_c / n)``
    tokens of class c, and the one token rounding leaves goes to the class with the larger
    remainder (on a tie, where scikit-learn draws at random, to the negative class). The test split
    takes the first tokens of each class in ``token_order`` (a random permutation, so the split is
    uniform), the train split all the others.

    Args:
        member: tokens each problem may use (e.g. tokens routed to the expert).
        positive: the concept label of each token, for each problem.
        token_order: a permutation of ``range(n_tokens)`` per problem: the sampling order.
        test_size: fraction of the tokens that goes to the test split, in (0, 1).

    Returns:
        train: tokens in each problem's train split.
        test: tokens in each problem's test split.
    """
    test_by_class = stratified_test_sizes((member & positive).sum(1), member.sum(1), test_size)
    ordered_member = member.gather(1, token_order)
    ordered_positive = positive.gather(1, token_order)
    ordered_test = torch.zeros_like(ordered_member)
    for in_class, n_class_test in zip(
        (ordered_member & ordered_positive, ordered_member & ~ordered_positive), test_by_class, strict=True
    ):
        rank = in_class.cumsum(1) - 1  # rank among this class's tokens, in sampling order
        ordered_test |= in_class & (rank < n_class_test[:, None])
    test = torch.zeros_like(member).scatter_(1, token_order, ordered_test)
    return member & ~test, test


def stratified_test_sizes(
    n_pos: Int[torch.Tensor, " problem"], n_all: Int[torch.Tensor, " problem"], test_size: float
) -> tuple[Int[torch.Tensor, " problem"], Int[torch.Tensor, " problem"]]:
    """Test tokens per class, positive and negative, of :func:`stratified_split` (its docstring says how)."""
    n_test = torch.ceil(n_all.to(torch.float64) * test_size).long()
    n_train = n_all - n_test
    exact_pos = (n_pos * n_train).to(torch.float64) / n_all.clamp(min=1).to(torch.float64)
    exact_neg = ((n_all - n_pos) * n_train).to(torch.float64) / n_all.clamp(min=1).to(torch.float64)
    train_pos = exact_pos.floor()
    train_neg = exact_neg.floor()
    short = (n_train - train_pos.long() - train_neg.long()) > 0
    to_pos = short & (exact_pos - train_pos > exact_neg - train_neg)
    train_pos = train_pos.long() + to_pos.long()
    return n_pos - train_pos, n_all - n_pos - (n_train - train_pos)


def split_in_sampling_order(
    position: Int[torch.Tensor, "problem m"],
    positive: Bool[torch.Tensor, "problem m"],
    valid: Bool[torch.Tensor, "problem m"],
    n_test: tuple[Int[torch.Tensor, " problem"], Int[torch.Tensor, " problem"]],
    n_take: tuple[Int[torch.Tensor, " problem"], Int[torch.Tensor, " problem"]],
) -> tuple[Bool[torch.Tensor, "problem m"], Bool[torch.Tensor, "problem m"]]:
    """Train and test flags of a problem's candidate tokens, taken per class in sampling order.

    The same selection as :func:`balanced_split` and :func:`stratified_split`, computed on each
    problem's candidate tokens only (``m`` of them, e.g. the tokens routed to an expert) instead of
    on every token: of each class (positive, then negative), the first ``n_test`` candidates in
    sampling order go to test and the next ``n_take - n_test`` to train.

    Args:
        position: each candidate's place in the problem's sampling order (a token's index in its
            ``token_order``); distinct among the valid candidates of a row.
        positive: the concept label of each candidate.
        valid: False on padding entries.
        n_test: test tokens per problem of the positive and of the negative class.
        n_take: tokens taken per problem of each class, test included.

    Returns:
        train, test: flags on the candidates, in their given order.
    """
    key = torch.where(valid, position, position.new_full((), torch.iinfo(position.dtype).max))
    order = key.argsort(dim=1, stable=True)  # candidates in sampling order, padding last
    ordered_positive = positive.gather(1, order)
    ordered_valid = valid.gather(1, order)
    ordered_train = torch.zeros_like(ordered_valid)
    ordered_test = torch.zeros_like(ordered_valid)
    classes = (ordered_valid & ordered_positive, ordered_valid & ~ordered_positive)
    for in_class, tests, takes in zip(classes, n_test, n_take, strict=True):
        rank = in_class.cumsum(1) - 1  # rank among this class's candidates, in sampling order
        ordered_test |= in_class & (rank < tests[:, None])
        ordered_train |= in_class & (rank >= tests[:, None]) & (rank < takes[:, None])
    train = torch.zeros_like(valid).scatter_(1, order, ordered_train)
    test = torch.zeros_like(valid).scatter_(1, order, ordered_test)
    return train, test


def balance_per_document(
    positive: Bool[torch.Tensor, "n_tokens concept"],
    document: Int[torch.Tensor, " n_tokens"],
    allowed: Bool[torch.Tensor, " n_tokens"],
    seed: int = 0,
) -> Bool[torch.Tensor, "n_tokens concept"]:
    """Per concept and document: every allowed positive token, and as many allowed negatives.

    Within each document, ``min(#positives, #negatives)`` of its allowed negative tokens are drawn
    uniformly without replacement (seeded); a document without a positive contributes nothing. This
    is the sample a probing data set draws before any token is routed, so an expert later sees the
    class ratio routing leaves it, not a balanced one.

    Args:
        positive: the concept labels of every token.
        document: the document (any integer id) of every token.
        allowed: tokens that may be sampled (e.g. the concept's population).
        seed: seed of the negative draws.

    Returns:
        ``[n_tokens, concept]``: True where the token is in the concept's sample.
    """
    n_tokens, n_concepts = positive.shape
    code = torch.unique(document.cpu(), return_inverse=True)[1]
    n_docs = int(code.max()) + 1 if n_tokens else 0
    pos = (positive.cpu() & allowed.cpu()[:, None]).T  # [concept, token]
    neg = (~positive.cpu() & allowed.cpu()[:, None]).T
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(n_concepts, n_tokens, generator=generator, dtype=torch.float64)
    # Sorted by document, then by the random key: each document's negatives in a random order.
    order = (code[None, :].to(torch.float64) + keys).argsort(dim=1)
    doc_sorted = code[order]
    neg_sorted = neg.gather(1, order)
    zeros = torch.zeros(n_concepts, n_docs, dtype=torch.long)
    pos_per_doc = zeros.scatter_add(1, code.expand(n_concepts, -1), pos.long())
    neg_per_doc = zeros.scatter_add(1, code.expand(n_concepts, -1), neg.long())
    quota = torch.minimum(pos_per_doc, neg_per_doc)
    before_doc = neg_per_doc.cumsum(1) - neg_per_doc
    rank = neg_sorted.long().cumsum(1) - 1 - before_doc.gather(1, doc_sorted)
    keep_sorted = neg_sorted & (rank < quota.gather(1, doc_sorted))
    keep_neg = torch.zeros_like(neg).scatter_(1, order, keep_sorted)
    return (pos | keep_neg).T.contiguous().to(positive.device)


def padded_indices(
    mask: Bool[torch.Tensor, "problem n_tokens"],
) -> tuple[Int[torch.Tensor, "problem n_max"], Bool[torch.Tensor, "problem n_max"]]:
    """The positions of each row's True entries, in increasing order, padded to the longest row.

    Returns:
        index: token index of each selected entry; padding entries repeat the row's first entry (a
            token the row selected, so gathering there reads only values the caller vouched for).
        valid: False on padding entries.
    """
    counts = mask.sum(1)
    n_max = int(counts.max()) if mask.numel() else 0
    row, column = mask.nonzero(as_tuple=True)  # row-major, so columns increase within a row
    row_start = counts.cumsum(0) - counts
    position = torch.arange(len(row), device=mask.device) - row_start[row]
    index = torch.zeros(mask.shape[0], n_max, dtype=torch.long, device=mask.device)
    index[row, position] = column
    valid = torch.arange(n_max, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, index, index[:, :1]), valid


def rank_neurons_by_mean_difference(
    activations: Float[torch.Tensor, "problem n neurons"],
    positive: Bool[torch.Tensor, "problem n"],
    valid: Bool[torch.Tensor, "problem n"],
) -> Int[torch.Tensor, "problem neurons"]:
    """Neurons ordered by decreasing ``|mean over positives - mean over negatives|``.

    Means are taken over the ``valid`` rows of each class, accumulated in the activations' precision
    (at least float32). Ties keep the lower neuron index first, so the ranking is deterministic.
    """
    dtype = torch.promote_types(activations.dtype, torch.float32)
    pos = (positive & valid).to(dtype)
    neg = (~positive & valid).to(dtype)
    contrast = pos / pos.sum(1, keepdim=True).clamp(min=1) - neg / neg.sum(1, keepdim=True).clamp(min=1)
    separation = torch.bmm(contrast[:, None, :], activations.to(dtype))[:, 0].abs()
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


def subsample_like_routing(
    unit_mask_dense: Bool[torch.Tensor, "unit n_tokens"],
    routed_counts: Int[torch.Tensor, "..."],
    n_draws: int | None = None,
    seed: int = 0,
) -> tuple[Bool[torch.Tensor, "unit_draw n_tokens"], Int[torch.Tensor, "unit_draw"]]:  # noqa: F821 (jaxtyping shape)
    """Random token subsets of a dense model's units, sized like an MoE's routed token sets.

    Why: an MoE's reported F1 per concept is a maximum over layers x experts, a dense model's a
    maximum over layers only. A maximum over more candidates is higher by chance alone, and each
    expert is probed on fewer tokens, which changes the variance of its F1. Probing each dense layer
    on ``n_draws`` random subsets whose sizes are the experts' routed counts gives the dense model as
    many candidates, of the same sizes, as the MoE: with L layers in both models, pass one MoE
    layer's E routed counts and ``n_draws=E``. What remains is the effect of *which* tokens routing
    picks, which is the selectivity the comparison is meant to measure.

    Args:
        unit_mask_dense: tokens each dense unit saw (usually all True).
        routed_counts: token counts of the MoE units to imitate (any shape; flattened).
        n_draws: subsets per dense unit; draw j has ``routed_counts.flatten()[j % len]`` tokens.
            Default: one draw per routed count.
        seed: seed of the random subsets.

    Returns:
        subset_mask: ``[unit * n_draws, n_tokens]``; row ``u * n_draws + j`` is draw j of dense unit u,
            a uniformly random subset of that unit's tokens.
        source_unit: ``[unit * n_draws]``, the dense unit of each row; pass it to
            :meth:`tl_moe.analysis.probing.KSparseProbe.fit` as ``activation_index``.
    """
    if unit_mask_dense.dtype != torch.bool or unit_mask_dense.ndim != 2 or unit_mask_dense.shape[0] == 0:
        raise ValueError("unit_mask_dense must be a non-empty bool tensor [unit, n_tokens].")
    sizes = torch.as_tensor(routed_counts).flatten().long().cpu()
    if sizes.numel() == 0 or (sizes < 0).any():
        raise ValueError("routed_counts must hold at least one non-negative token count.")
    n_draws = sizes.numel() if n_draws is None else n_draws
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1; got {n_draws}.")
    draw_sizes = sizes[torch.arange(n_draws) % sizes.numel()]
    available = unit_mask_dense.sum(1).cpu()
    if (draw_sizes.max() > available).any():
        raise ValueError(
            f"a routed count ({int(draw_sizes.max())}) exceeds the tokens of a dense unit "
            f"({int(available.min())}); the dense units must see at least as many tokens."
        )
    n_units, n_tokens = unit_mask_dense.shape
    generator = torch.Generator().manual_seed(seed)
    subsets = []
    for unit in range(n_units):  # one [draw, token] sort per dense layer bounds the memory
        keys = torch.rand(n_draws, n_tokens, generator=generator)
        keys = keys.masked_fill(~unit_mask_dense[unit].cpu()[None], math.inf)
        rank = keys.argsort(dim=1).argsort(dim=1)
        subsets.append(rank < draw_sizes[:, None])
    subset_mask = torch.cat(subsets).to(unit_mask_dense.device)
    return subset_mask, torch.arange(n_units).repeat_interleave(n_draws)
