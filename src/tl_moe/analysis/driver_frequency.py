"""REAP saliency against its free control, routing frequency: both ranked against the exact removal effect.

REAP saliency (mean mixing weight × ‖expert output‖ over an expert's routed tokens) is measured on the
selection half of the documents, so is the routed share (how often the router picks the expert, over
its layer's routed slots). :func:`saliency_frequency_spearman` gives the Spearman ρ of each with the
exact effect on the report half, on the same experts, and their paired difference
ρ(REAP) − ρ(frequency), each with a document-bootstrap interval whose resamples recompute all three
(the same documents, strata and seed as :func:`~tl_moe.analysis.drivers.saliency_effect_spearman`, so
the REAP column is that function's interval). A difference whose interval lies above 0 says REAP ranks
experts better than routing frequency alone; one covering 0 says it is not shown to. The two are
marginal correlations: equal ρs do not say REAP carries nothing beyond frequency (that would be REAP's
partial ρ given frequency, not computed here).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from tl_moe.analysis.stats import MIN_DOCUMENTS, RHO_METHOD, RHO_MIN_EXPERT_DOCUMENTS

__all__ = ["FREQUENCY_SCORES", "saliency_frequency_spearman"]

FREQUENCY_SCORES = ("REAP saliency", "routed share (selection)", "REAP − frequency")
"""The three statistics of :func:`saliency_frequency_spearman`, in its order."""


def _layer_totals(
    routed: Float[np.ndarray, "expert document"], n_experts: int
) -> Float[np.ndarray, "expert document"]:
    """Per row (``layer * n_experts + expert``) and document, the routed slots of that row's whole layer."""
    per_layer = routed.reshape(-1, n_experts, routed.shape[-1]).sum(1)  # [layer, document]
    return np.repeat(per_layer, n_experts, axis=0)


def saliency_frequency_spearman(
    effect_sums: Float[np.ndarray, "expert document"],
    effect_counts: Float[np.ndarray, " document"],
    saliency_sums: Float[np.ndarray, "expert document"],
    saliency_routed: Float[np.ndarray, "expert document"],
    n_experts: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    method: str = RHO_METHOD,
    min_expert_documents: int = RHO_MIN_EXPERT_DOCUMENTS,
    min_documents: int = MIN_DOCUMENTS,
) -> dict[str, object]:
    """ρ(REAP saliency, effect), ρ(routed share, effect) and their difference, paired over documents.

    Args:
        effect_sums: Σ exact effect per expert row (``layer * n_experts + expert``) and corpus document.
        effect_counts: edited positions per document.
        saliency_sums: Σ weight × ‖output‖ per expert row and document.
        saliency_routed: routed slots per expert row and document (rows of every expert of each layer).
        n_experts: experts per layer (to sum a layer's routed slots for the routed share).

    Both scores on the selection half, the effect on the report half
    (:func:`~tl_moe.analysis._document_halves.split_documents`), the experts of
    :func:`~tl_moe.analysis.drivers.saliency_effect_spearman` (defined scores, :func:`split_gate`).

    Returns:
        One :class:`~tl_moe.analysis.stats.Interval` per name of :data:`FREQUENCY_SCORES`.
    """
    from tl_moe.analysis._document_halves import split_documents, split_gate
    from tl_moe.analysis.effect_estimate import _rows_spearman
    from tl_moe.analysis.stats import cluster_bootstrap

    effect_sums, effect_counts = np.asarray(effect_sums, np.float64), np.asarray(effect_counts, np.float64)
    saliency_sums = np.asarray(saliency_sums, np.float64)
    saliency_routed = np.asarray(saliency_routed, np.float64)
    totals = _layer_totals(saliency_routed, n_experts)
    selection, report = split_documents(effect_counts, saliency_routed)
    docs = np.nonzero(selection | report)[0]
    on_selection, on_report = selection[docs].astype(np.float64), report[docs].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed_saliency = saliency_sums[:, selection].sum(1) / saliency_routed[:, selection].sum(1)
    observed_effect = effect_sums[:, report].sum(1) / max(effect_counts[report].sum(), 1.0)
    keep = np.isfinite(observed_saliency) & np.isfinite(observed_effect)
    keep &= split_gate(effect_counts, saliency_routed, min_expert_documents)
    ss, sr, st = (a[keep][:, docs] for a in (saliency_sums, saliency_routed, totals))
    es, ec = effect_sums[keep][:, docs], effect_counts[docs]

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, 3]
        w_sel, w_rep = weights * on_selection, weights * on_report
        routed = w_sel @ sr.T
        reap = (w_sel @ ss.T) / np.maximum(routed, 1e-300)
        share = routed / np.maximum(w_sel @ st.T, 1e-300)
        effect = (w_rep @ es.T) / np.maximum(w_rep @ ec, 1.0)[:, None]
        rho_reap, rho_share = _rows_spearman(reap, effect), _rows_spearman(share, effect)
        return np.stack([rho_reap, rho_share, rho_reap - rho_share], axis=1)

    intervals = cluster_bootstrap(
        statistic,
        len(docs),
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what="the saliency and frequency Spearman ρ",
        method=method,
        min_clusters=min_documents,
        strata=report[docs].astype(int),  # drawn within each half, as saliency_effect_spearman does
    )
    intervals = intervals if isinstance(intervals, list) else [intervals]
    return {"experts": int(keep.sum()), **dict(zip(FREQUENCY_SCORES, intervals, strict=True))}
