"""A controlled logit-lens finding: how many experts rank one token first, against the untrained model.

The report's logit-lens finding names the token that most experts' mean raw lens ranks first (the
*top-1* of an expert: the token its mean output, read through the final norm's gain and the
unembedding, promotes most). A count alone does not say whether training put that token there: an
untrained model of the same config can rank the same token first through its random weights, and the
token was chosen *because* it is the most common. So, per model:

- the **share** of an expert set's experts whose top-1 is the token ``t`` (the trained model's most
  common top-1), with a document-bootstrap interval: documents are resampled and each expert's mean
  output, hence its top-1, is recomputed from per-document output sums;
- the same share in the **untrained** model of the same config (the null), and trained − untrained
  paired over the same resampled documents when both models were fed the same documents;
- the untrained model's own most common top-1 share: what picking the most common token gives where
  training did nothing.

The mean raw lens is linear in the expert's outputs, so an expert's top-1 under document weights ``w``
is ``argmax_v Σ_d w_d · lens(out_sum[d, e])[v]`` (dividing by its routed count does not move it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.analysis.stats import Interval, cluster_bootstrap

__all__ = ["TopTokenShare", "top1_share_statistic", "top_token_share"]

# Largest (resample x expert x vocabulary) block of logits built at once.
_LOGITS_PER_CHUNK = 1 << 24

#: Maps ``[..., d_model]`` expert outputs to their ``[..., vocab]`` raw-lens logits (linear).
LensLogits = Callable[[Float[torch.Tensor, "... d_model"]], Float[torch.Tensor, "... vocab"]]


@dataclass(frozen=True)
class TopTokenShare:
    """The share of experts whose mean-lens top-1 is ``token``, trained against untrained.

    Attributes:
        token: the token id (the trained model's most common top-1).
        trained: share of the trained model's experts (with routed tokens) ranking ``token`` first.
        untrained: the same in the untrained model (None: its pass did not run).
        difference: trained − untrained, paired over documents (None without the untrained model).
        n_experts, n_experts_untrained: experts with routed tokens behind each share.
        untrained_own_top_share: share of the untrained model's experts ranking ITS most common
            top-1 first (chance level of "the most common token"), or None.
    """

    token: int
    trained: Interval
    untrained: Interval | None
    difference: Interval | None
    n_experts: int
    n_experts_untrained: int | None
    untrained_own_top_share: float | None


def top1_share_statistic(
    lens: ExpertLogitLensResult, logits: LensLogits, token: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``[batch, document]`` weights -> ``[batch]`` share of experts (routed on the observed corpus)
    whose top-1 under those document weights is ``token``; experts without a routed token in a
    resample are left out of that resample's share."""
    if lens.doc_out_sum is None:
        raise ValueError("the lens kept no per-document sums: its top-1 cannot be bootstrapped.")
    routed = (lens.n_routed > 0).reshape(-1)
    out = lens.doc_out_sum.double().reshape(lens.doc_out_sum.shape[0], -1, lens.doc_out_sum.shape[-1])
    out = out[:, routed]  # [document, expert, d_model]
    n = lens.doc_n_routed.double().reshape(lens.doc_n_routed.shape[0], -1)[:, routed]  # [document, expert]
    n_docs, n_experts = out.shape[:2]
    vocab = logits(out[:1, :1]).shape[-1]
    chunk = max(1, _LOGITS_PER_CHUNK // max(1, n_experts * vocab))

    def statistic(weights: np.ndarray) -> np.ndarray:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).reshape(-1, n_docs)
        shares = []
        for part in w.split(chunk):
            summed = torch.einsum("bd,dex->bex", part, out)  # the lens is linear: lens of the sum
            top = logits(summed).argmax(-1)  # [batch, expert]
            present = (part @ n) > 0
            hits = ((top == token) & present).sum(-1).double()
            shares.append(hits / present.sum(-1).clamp_min(1).double())
        return torch.cat(shares).numpy()

    return statistic


def _most_common_top1(lens: ExpertLogitLensResult) -> tuple[int, float]:
    """The most common top-1 token over experts with routed tokens, and its share."""
    first = lens.top_token_ids[..., 0][lens.n_routed > 0]
    values, counts = torch.unique(first, return_counts=True)
    best = int(counts.argmax())
    return int(values[best]), float(counts[best]) / max(1, len(first))


def top_token_share(
    trained: ExpertLogitLensResult,
    trained_logits: LensLogits,
    untrained: ExpertLogitLensResult | None = None,
    untrained_logits: LensLogits | None = None,
    *,
    n_resamples: int,
    confidence: float = 0.95,
    seed: int = 0,
) -> TopTokenShare:
    """The trained model's most common top-1 token, its share of experts and the untrained null's
    (see the module docstring). Intervals resample documents; fewer than
    :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents, or no per-document sums: unavailable with
    the reason."""
    token, _ = _most_common_top1(trained)

    def bootstrap(statistic, n_docs: int, what: str) -> Interval | list[Interval]:
        return cluster_bootstrap(
            statistic,
            n_docs,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            on_too_few="unavailable",
            what=what,
        )

    def observed(lens: ExpertLogitLensResult) -> float:
        first = lens.top_token_ids[..., 0][lens.n_routed > 0]
        return float((first == token).double().mean()) if len(first) else float("nan")

    def unavailable(estimate: float, reason: str, n: int = 0) -> Interval:
        nan = float("nan")
        return Interval(estimate, nan, nan, n, confidence, "none", False, reason)

    def statistic_of(lens, logits):
        if lens.doc_out_sum is None:
            return None
        return top1_share_statistic(lens, logits, token)

    trained_stat = statistic_of(trained, trained_logits)
    n_trained = int((trained.n_routed > 0).sum())
    what = "the share of experts ranking the token first"
    no_sums = "per-document output sums were not kept (over the memory bound)"
    if untrained is None:
        interval = (
            bootstrap(trained_stat, len(trained.doc_ids), what)
            if trained_stat is not None
            else unavailable(observed(trained), no_sums)
        )
        return TopTokenShare(token, interval, None, None, n_trained, None, None)
    untrained_stat = statistic_of(untrained, untrained_logits)
    n_untrained = int((untrained.n_routed > 0).sum())
    own = _most_common_top1(untrained)[1]
    paired = (
        trained_stat is not None
        and untrained_stat is not None
        and torch.equal(trained.doc_ids, untrained.doc_ids)
    )
    if paired:

        def joint(weights: np.ndarray) -> np.ndarray:
            a, b = trained_stat(weights), untrained_stat(weights)
            return np.stack([a, b, a - b], axis=1)

        a, b, d = bootstrap(joint, len(trained.doc_ids), what)
        return TopTokenShare(token, a, b, d, n_trained, n_untrained, own)
    a = (
        bootstrap(trained_stat, len(trained.doc_ids), what)
        if trained_stat is not None
        else unavailable(observed(trained), no_sums)
    )
    b = (
        bootstrap(untrained_stat, len(untrained.doc_ids), what)
        if untrained_stat is not None
        else unavailable(observed(untrained), no_sums)
    )
    reason = "the two models were not fed the same documents" if trained_stat and untrained_stat else no_sums
    d = unavailable(a.estimate - b.estimate, reason)
    return TopTokenShare(token, a, b, d, n_trained, n_untrained, own)
