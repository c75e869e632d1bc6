"""A controlled logit-lens finding: how many experts rank one token first, against the untrained model.

The report's logit-lens finding names the token that most experts' mean raw lens ranks first (the
*top-1* of an expert: the token its mean output, read through the final norm's gain and the
unembedding, promotes most). A count alone does not say whether training put that token there: an
untrained model of the same config can rank the same token first through its random weights, and the
token is chosen *because* it is the most common. So:

- documents are split by the project's document split (:func:`~tl_moe.analysis.splits.document_split`,
  the held-out probing split); the token ``t`` is the trained model's most common top-1 on the
  **selection** documents, and every share below is measured on the **test** documents only (choosing
  and counting on the same documents would count the choice);
- the **share** of the experts routed on the test documents whose top-1 there is ``t``, with a
  document-bootstrap interval: test documents are resampled and each expert's mean output, hence its
  top-1, is recomputed from per-document output sums;
- the same share in the **untrained** model of the same config (the null), and trained − untrained
  paired over the same resampled test documents when both models were fed the same documents;
- the untrained model's own most common top-1 (chosen on its selection documents) and its share on
  its test documents, with its document interval: what picking the most common token gives where
  training did nothing; and trained share − that own-token share, paired over the same resampled
  test documents when both models were fed the same documents. Both sides pick their token the same
  way, so this difference, not trained − untrained on the trained model's token, says whether training
  concentrates the experts' top-1 more than the one random initialization does.

The mean raw lens is linear in the expert's outputs, so an expert's top-1 under document weights ``w``
is ``argmax_v Σ_d w_d · lens(out_sum[d, e])[v]`` (dividing by its routed count does not move it).
Every resample's top-1 is ranked by a float32 product verified exact (:class:`Top1`: near ties are
recomputed in float64), and the untrained model's top-1 once for both of its tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from tl_moe.analysis._vocab_top import vocab_topk
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS, Interval, cluster_bootstrap
from tl_moe.errors import InputError

__all__ = ["Top1", "TopTokenShare", "top1_share_statistic", "top1_shares_statistic", "top_token_share"]

# Largest (resample x expert x vocabulary) block of logits built at once.
_LOGITS_PER_CHUNK = 1 << 24

# Unit vectors pushed through the lens at once to read its matrix (bounds its float64 copy).
_UNIT_VECTORS_PER_BLOCK = 256

#: Maps ``[..., d_model]`` expert outputs to their ``[..., vocab]`` raw-lens logits (linear).
LensLogits = Callable[[Float[torch.Tensor, "... d_model"]], Float[torch.Tensor, "... vocab"]]


@dataclass(frozen=True)
class TopTokenShare:
    """The share of experts whose mean-lens top-1 is ``token`` on the test documents, trained against
    untrained.

    Attributes:
        token: the token id (the trained model's most common top-1 on the selection documents).
        trained: share of the trained model's experts (routed on the test documents) ranking ``token``
            first there.
        untrained: the same in the untrained model (None: its pass did not run).
        difference: trained − untrained, paired over test documents (None without the untrained model).
        n_experts, n_experts_untrained: experts routed on the test documents behind each share.
        untrained_own_top_share: share of the untrained model's experts ranking ITS most common top-1
            (chosen on its selection documents) first on its test documents, or None.
        selection_documents, test_documents: documents on each side of the split (0 when not split).
        held_out: False when the token could not be chosen on other documents than those counted (no
            per-document sums, or too few documents to split); ``reason`` says why.
        all_documents_share: the share on every document, the token chosen on the same ones
            (descriptive only: the choice inflates it).
        untrained_own: ``untrained_own_top_share`` with its document interval, or None.
        own_difference: trained share − ``untrained_own``, each model's token chosen on its own
            selection documents; paired over test documents when both models saw the same documents
            (unavailable otherwise), or None without the untrained model.
    """

    token: int
    trained: Interval
    untrained: Interval | None
    difference: Interval | None
    n_experts: int
    n_experts_untrained: int | None
    untrained_own_top_share: float | None
    selection_documents: int = 0
    test_documents: int = 0
    held_out: bool = True
    reason: str | None = None
    all_documents_share: float = float("nan")
    untrained_own: Interval | None = None
    own_difference: Interval | None = None


def _lens_arrays(lens: ExpertLogitLensResult) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [document, expert, d_model], routed [document, expert])`` in float64, every layer's
    experts on one axis."""
    if lens.doc_out_sum is None:
        raise ValueError("the lens kept no per-document sums: its top-1 cannot be bootstrapped.")
    out = lens.doc_out_sum.double().reshape(lens.doc_out_sum.shape[0], -1, lens.doc_out_sum.shape[-1])
    n = lens.doc_n_routed.double().reshape(lens.doc_n_routed.shape[0], -1)
    return out, n


def top1_share_statistic(
    lens: ExpertLogitLensResult, logits: LensLogits, token: int, documents: np.ndarray | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """``[batch, document]`` weights -> ``[batch]`` share of experts whose top-1 under those document
    weights is ``token``; experts without a routed token in a resample are left out of that resample's
    share. ``documents``: indices of the documents (axis 0 of the per-document sums) the weights are
    over (default: all)."""
    shares = top1_shares_statistic(lens, logits, (token,), documents)
    return lambda weights: shares(weights)[:, 0]


def top1_shares_statistic(
    lens: ExpertLogitLensResult,
    logits: LensLogits,
    tokens: Sequence[int],
    documents: np.ndarray | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """As :func:`top1_share_statistic` for several tokens at once: ``[batch, document]`` weights ->
    ``[batch, len(tokens)]`` shares. Each expert's top-1 is computed once per resample and compared
    with every token, so asking for two tokens costs what one does."""
    out, n = _lens_arrays(lens)
    if documents is not None:
        out, n = (
            out[torch.as_tensor(documents, dtype=torch.long)],
            n[torch.as_tensor(documents, dtype=torch.long)],
        )
    routed = n.sum(0) > 0
    out, n = out[:, routed], n[:, routed]  # [document, expert, d_model], [document, expert]
    n_docs, n_experts = out.shape[:2]
    vocab = logits(out[:1, :1]).shape[-1]
    chunk = max(1, _LOGITS_PER_CHUNK // max(1, n_experts * vocab))
    wanted = torch.as_tensor(list(tokens), dtype=torch.long)
    top1 = Top1(logits, out.shape[-1])

    def statistic(weights: np.ndarray) -> np.ndarray:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).reshape(-1, n_docs)
        shares = []
        for part in w.split(chunk):
            summed = torch.einsum("bd,dex->bex", part, out)  # the lens is linear: lens of the sum
            top = top1(summed)  # [batch, expert]
            present = (part @ n) > 0
            hits = ((top[:, None, :] == wanted[None, :, None]) & present[:, None, :]).sum(-1).double()
            shares.append(hits / present.sum(-1).clamp_min(1).double()[:, None])
        return torch.cat(shares).numpy()

    return statistic


class Top1:
    """The top-1 token of the lens logits of float64 rows, as ``logits(x).argmax(-1)`` gives it, found
    by a float32 screen that is verified exact.

    The lens is linear, so its matrix ``A`` (``[d_model, vocab]``) is ``logits`` of the unit vectors.
    A float32 product ``x A`` is within ``eps(x) = 2 (d_model + 3) 2^-24 |x| max_v |A_v|`` of the exact
    logits (float32 rounding of ``x`` and ``A`` and of a length-``d_model`` dot product, with a factor 2
    to spare; the float64 logits are as close at a far smaller scale). A row whose float32 best logit
    leads its second by more than ``2 eps`` has that token as its float64 argmax; the other rows (near
    ties) are recomputed through ``logits`` in float64 and ranked as before. The result is the float64
    argmax, at the cost of a float32 product.
    """

    def __init__(self, logits: LensLogits, d_model: int) -> None:
        self.logits = logits
        # The matrix a block of unit vectors at a time: float64 only one block at once.
        blocks, squares = [], 0.0
        for unit in torch.eye(d_model, dtype=torch.float64).split(_UNIT_VECTORS_PER_BLOCK):
            block = logits(unit).to(torch.float64)  # [block, vocab]
            squares = squares + block.pow(2).sum(0)
            blocks.append(block.to(torch.float32))
        self.matrix = torch.cat(blocks)  # [d_model, vocab]
        self.tolerance = 2.0 * (d_model + 3) * 2.0**-24 * float(squares.sqrt().max())

    def __call__(self, x: Float[torch.Tensor, "*lead d_model"]) -> torch.Tensor:
        """``[*lead]`` index of the largest float64 lens logit of every row of ``x``."""
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        values, indices = vocab_topk(rows.to(torch.float32) @ self.matrix, min(2, self.matrix.shape[-1]))
        top = indices[:, 0].clone()
        eps = self.tolerance * rows.norm(dim=-1)
        if values.shape[-1] > 1:
            close = (values[:, 0] - values[:, 1]).double() <= 2.0 * eps
            if bool(close.any()):
                top[close] = self.logits(rows[close]).argmax(-1)
        return top.reshape(lead)


def _top1_on(lens: ExpertLogitLensResult, logits: LensLogits, documents: np.ndarray) -> torch.Tensor:
    """The top-1 token of every expert routed on ``documents`` (indices of the per-document sums)."""
    out, n = _lens_arrays(lens)
    index = torch.as_tensor(documents, dtype=torch.long)
    summed, routed = out[index].sum(0), n[index].sum(0) > 0  # [expert, d_model], [expert]
    return logits(summed[routed]).argmax(-1)


def _most_common(first: torch.Tensor) -> tuple[int, float]:
    """The most common entry of ``first`` and its share (-1, NaN when empty)."""
    if not len(first):
        return -1, float("nan")
    values, counts = torch.unique(first, return_counts=True)
    best = int(counts.argmax())
    return int(values[best]), float(counts[best]) / len(first)


def _most_common_top1(lens: ExpertLogitLensResult) -> tuple[int, float]:
    """The most common top-1 token over experts with routed tokens (every document), and its share."""
    return _most_common(lens.top_token_ids[..., 0][lens.n_routed > 0])


def _split(
    lens: ExpertLogitLensResult, selection_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(selection, test)`` indices of the lens's documents under
    :func:`~tl_moe.analysis.splits.document_split` (InputError when a side is empty)."""
    fractions = (selection_fraction, 1 - selection_fraction)
    side = document_split(lens.doc_ids.numpy(), fractions, seed=seed, min_per_side=1) == 0
    return np.flatnonzero(side), np.flatnonzero(~side)


def top_token_share(
    trained: ExpertLogitLensResult,
    trained_logits: LensLogits,
    untrained: ExpertLogitLensResult | None = None,
    untrained_logits: LensLogits | None = None,
    *,
    n_resamples: int,
    confidence: float = 0.95,
    seed: int = 0,
    selection_fraction: float = 0.5,
    split_seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
) -> TopTokenShare:
    """The trained model's most common top-1 token on the selection documents, its share of experts on
    the test documents and the untrained null's (see the module docstring). Intervals resample test
    documents; fewer than ``min_documents`` of them: unavailable with the
    reason. Without per-document sums, or with a side of the split empty, nothing is held out: the
    shares are unavailable (NaN estimate, with the reason) and ``all_documents_share`` is descriptive."""
    nan = float("nan")
    all_token, all_share = _most_common_top1(trained)

    def unavailable(reason: str, estimate: float = nan, n: int = 0) -> Interval:
        return Interval(estimate, nan, nan, n, confidence, "none", False, reason)

    def not_held_out(reason: str) -> TopTokenShare:
        none = unavailable(reason)
        untrained_parts = (none, none, None, None) if untrained is not None else (None, None, None, None)
        return TopTokenShare(
            all_token,
            none,
            untrained_parts[0],
            untrained_parts[1],
            int((trained.n_routed > 0).sum()),
            *untrained_parts[2:],
            held_out=False,
            reason=reason,
            all_documents_share=all_share,
        )

    if trained.doc_out_sum is None:
        return not_held_out("per-document output sums were not kept (over the memory bound)")
    try:
        selection, test = _split(trained, selection_fraction, split_seed)
    except InputError:
        return not_held_out(
            f"{len(trained.doc_ids)} documents cannot be split into a selection and a test side"
        )
    token, _ = _most_common(_top1_on(trained, trained_logits, selection))
    what = "the share of experts ranking the token first on the test documents"

    def bootstrap(statistic, n_docs: int) -> Interval | list[Interval]:
        return cluster_bootstrap(
            statistic,
            n_docs,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            on_too_few="unavailable",
            what=what,
            min_clusters=min_documents,
        )

    def routed_on(lens: ExpertLogitLensResult, documents: np.ndarray) -> int:
        return int((_lens_arrays(lens)[1][torch.as_tensor(documents, dtype=torch.long)].sum(0) > 0).sum())

    trained_stat = top1_share_statistic(trained, trained_logits, token, test)
    sides = dict(selection_documents=len(selection), test_documents=len(test), all_documents_share=all_share)
    n_trained = routed_on(trained, test)
    if untrained is None:
        return TopTokenShare(
            token, bootstrap(trained_stat, len(test)), None, None, n_trained, None, None, **sides
        )
    if untrained.doc_out_sum is None:
        reason = "the untrained model kept no per-document output sums (over the memory bound)"
        a = bootstrap(trained_stat, len(test))
        return TopTokenShare(
            token, a, unavailable(reason), unavailable(reason), n_trained, None, None, **sides
        )
    u_selection, u_test = _split(untrained, selection_fraction, split_seed)
    own_token, _ = _most_common(_top1_on(untrained, untrained_logits, u_selection))
    # The untrained model's top-1 is computed once per resample for both of its tokens.
    untrained_stats = top1_shares_statistic(untrained, untrained_logits, (token, own_token), u_test)

    def untrained_stat(weights: np.ndarray) -> np.ndarray:
        return untrained_stats(weights)[:, 0]

    def own_stat(weights: np.ndarray) -> np.ndarray:
        return untrained_stats(weights)[:, 1]

    n_untrained = routed_on(untrained, u_test)
    if torch.equal(trained.doc_ids, untrained.doc_ids):

        def joint(weights: np.ndarray) -> np.ndarray:
            a = trained_stat(weights)
            both = untrained_stats(weights)
            b, c = both[:, 0], both[:, 1]
            return np.stack([a, b, a - b, c, a - c], axis=1)

        a, b, d, c, e = bootstrap(joint, len(test))
        own = dict(untrained_own=c, own_difference=e)
        return TopTokenShare(token, a, b, d, n_trained, n_untrained, c.estimate, **sides, **own)
    a, b = bootstrap(trained_stat, len(test)), bootstrap(untrained_stat, len(u_test))
    c = bootstrap(own_stat, len(u_test))
    why = "the two models were not fed the same documents"
    d = unavailable(why, a.estimate - b.estimate)
    own = dict(untrained_own=c, own_difference=unavailable(why, a.estimate - c.estimate))
    return TopTokenShare(token, a, b, d, n_trained, n_untrained, c.estimate, **sides, **own)
