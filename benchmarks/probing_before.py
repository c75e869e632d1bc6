"""The probing fit as it was before its speed-ups, for before/after timings in one run.

:func:`_newton` is the earlier Newton solver (every problem stays in the batch until all converge;
design-vector products as ``[n, k] @ [k, 1]`` batches); :func:`before` patches it in, together with
token orders drawn and sorted again for every fit, the splits computed over every token and the
chunks cut by fill alone (:func:`before_finalize`).
:func:`previous_split` patches in only the latter: train/test masks over every token of every
problem (gathers, cumsums and scatters of ``[problem, n_tokens]``), then their index lists.
:func:`before_finalize` patches in the fitting as it was before the probing analysis's finalize was
sped up: chunks of problems cut wherever a problem has less than 85% of the largest one's examples.
:func:`padded_candidate_split` patches in the split as it was before the flat one: each chunk's
candidates listed from a ``[problem, n_tokens]`` mask, padded, and ordered by a per-row argsort.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from jaxtyping import Float

from tl_moe.analysis import probing, probing_math


@contextlib.contextmanager
def before() -> Iterator[None]:
    """Within the block, KSparseProbe fits the way it did before the speed-ups."""
    saved = probing_math._newton, probing._token_orders
    probing_math._newton = _newton
    probing._token_orders = _token_orders_drawn_each_time
    try:
        with previous_split(), before_finalize():
            yield
    finally:
        probing_math._newton, probing._token_orders = saved


@contextlib.contextmanager
def previous_split() -> Iterator[None]:
    """Within the block, KSparseProbe splits over every token (masks), as before the index-list split."""
    saved = probing.KSparseProbe._split_indices
    probing.KSparseProbe._split_indices = _split_indices_over_every_token
    try:
        yield
    finally:
        probing.KSparseProbe._split_indices = saved


@contextlib.contextmanager
def before_finalize() -> Iterator[None]:
    """Within the block, KSparseProbe fits the way it did before the probing finalize's speed-ups."""
    saved = probing.KSparseProbe._chunks
    probing.KSparseProbe._chunks = _chunks_by_fill
    try:
        yield
    finally:
        probing.KSparseProbe._chunks = saved


@contextlib.contextmanager
def padded_candidate_split() -> Iterator[None]:
    """Within the block, KSparseProbe splits each chunk's padded candidates (before the flat split)."""
    saved = probing.KSparseProbe._split_indices
    probing.KSparseProbe._split_indices = _split_indices_on_padded_candidates
    try:
        yield
    finally:
        probing.KSparseProbe._split_indices = saved


def _split_indices_on_padded_candidates(
    self, labels, unit_mask, token_mask, positions, n_per_class, status, unit, concept, unit_tokens=None
):
    member = unit_mask[unit]
    if token_mask is not None:
        member = member & token_mask.T[concept]
    if self.sampling != "balanced":
        member = member & (status[unit, concept] == probing.STATUS_OK)[:, None]
    candidates, valid = probing_math.padded_indices(member)
    positive = labels[candidates, concept[:, None]]
    position = positions[concept[:, None], candidates]
    if self.sampling == "balanced":
        take = n_per_class[unit, concept]
        tests = torch.ceil(take.to(torch.float64) * self.test_size).long()
        n_test, n_take = (tests, tests), (take, take)
    else:
        n_test = probing_math.stratified_test_sizes((positive & valid).sum(1), valid.sum(1), self.test_size)
        n_take = ((positive & valid).sum(1), (~positive & valid).sum(1))
    flags = probing_math.split_in_sampling_order(position, positive, valid, n_test, n_take)
    lists = []
    for flag in flags:
        where, flag_valid = probing_math.padded_indices(flag)
        lists.append((candidates.gather(1, where), flag_valid))
    return lists[0], lists[1]


def _chunks_by_fill(self, sizes, n_tokens: int, row_width: int) -> list[slice]:
    chunks, start = [], 0
    while start < len(sizes):
        largest = int(sizes[start])
        per_problem = max(6 * n_tokens, largest * row_width)
        stop = min(len(sizes), start + max(1, self.max_batch_elements // per_problem))
        small = (sizes[start:stop] < 0.85 * largest).nonzero()
        if len(small):
            stop = start + max(1, int(small[0]))
        chunks.append(slice(start, stop))
        start = stop
    return chunks


def _split_indices_over_every_token(
    self, labels, unit_mask, token_mask, positions, n_per_class, status, unit, concept, unit_tokens=None
):
    orders = probing._token_orders(self.random_state, labels.shape[1], labels.shape[0])[concept]
    member = unit_mask[unit]
    if token_mask is not None:
        member = member & token_mask.T[concept]
    positive = labels.T[concept]
    if self.sampling == "balanced":
        train, test = probing_math.balanced_split(
            member, positive, orders, n_per_class[unit, concept], self.test_size
        )
    else:
        member = member & (status[unit, concept] == probing.STATUS_OK)[:, None]
        train, test = probing_math.stratified_split(member, positive, orders, self.test_size)
    return probing_math.padded_indices(train), probing_math.padded_indices(test)


def _token_orders_drawn_each_time(seed: int, n_concepts: int, n_tokens: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_concepts, n_tokens, generator=generator).argsort(dim=1)


def _newton(
    z: Float[torch.Tensor, "batch n params"],
    target: Float[torch.Tensor, "batch n"],
    s: Float[torch.Tensor, "batch n"],
    l2: Float[torch.Tensor, "batch params"],
    theta: Float[torch.Tensor, "batch params"],
    max_iter: int,
    tol: float,
) -> Float[torch.Tensor, "batch params"]:
    """Damped Newton iterations on the normalised objective from ``theta``; returns the optimum."""
    batch, _, n_params = z.shape
    logits = torch.bmm(z, theta[:, :, None])[..., 0]
    objective = None  # computed only when a line search needs it
    jitter = torch.diag(z.new_full((n_params,), probing_math._HESSIAN_JITTER))
    converged = torch.zeros(batch, dtype=torch.bool, device=z.device)
    factor, refresh, previous = None, True, None
    for _ in range(max_iter):
        prob = torch.sigmoid(logits)
        grad = torch.bmm(z.transpose(1, 2), (s * (prob - target))[:, :, None])[..., 0] + l2 * theta
        if refresh:
            curvature = s * prob * (1 - prob)
            hessian = torch.bmm(z.transpose(1, 2), z * curvature[:, :, None])
            factor = probing_math._cholesky(hessian + torch.diag_embed(l2) + jitter)
        step = torch.cholesky_solve(grad[:, :, None], factor)[..., 0].masked_fill(converged[:, None], 0.0)
        decrement = (grad * step).sum(1)
        logit_step = torch.bmm(z, step[:, :, None])[..., 0]
        exempt = converged | (decrement <= probing_math._LINE_SEARCH_ABOVE)
        alpha = torch.ones_like(decrement)
        if not exempt.all():
            # Backtracking (Armijo) line search; full Newton steps near the optimum, where rounding
            # would make the test reject good steps.
            if objective is None:
                objective = probing_math._objective(logits, target, s, l2, theta)
            for _ in range(probing_math._MAX_HALVINGS):
                candidate = probing_math._objective(
                    logits - alpha[:, None] * logit_step, target, s, l2, theta - alpha[:, None] * step
                )
                accepted = exempt | (candidate <= objective - probing_math._ARMIJO_SLOPE * alpha * decrement)
                if accepted.all():
                    break
                alpha = torch.where(accepted, alpha, alpha / 2)
            objective = candidate if accepted.all() else None  # else alpha moved past `candidate`
        else:
            objective = None
        theta = theta - alpha[:, None] * step
        logits = logits - alpha[:, None] * logit_step
        # The step just taken from a point within tol is kept: it shrinks the remaining error further.
        converged = converged | (decrement <= tol)
        if converged.all():
            break
        # Near the optimum the Hessian barely moves: keep its factor while the steps keep shrinking fast.
        slow = previous is not None and bool(
            (decrement > probing_math._REUSE_RATIO * previous)[~converged].any()
        )
        refresh = slow or bool((decrement[~converged] > probing_math._REUSE_HESSIAN_BELOW).any())
        previous = decrement
    if not converged.all():
        warnings.warn(
            f"fit_logistic_batched: {int((~converged).sum())} of {batch} problems did not reach "
            f"tol={tol:g} in {max_iter} Newton iterations; increase max_iter.",
            RuntimeWarning,
            stacklevel=4,
        )
    return theta
