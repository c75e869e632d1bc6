"""The selection and report halves of the documents that drivers, associations and re-weighting share,
and the document gate of a ρ between a selection-half score and a report-half effect."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import RHO_MIN_EXPERT_DOCUMENTS

__all__ = ["HALVES_KEY", "split_documents", "split_gate"]

HALVES_KEY = "knuth"
"""The :func:`~tl_moe.analysis.splits.document_split` key of the selection (0) and report (1) halves that
drivers, associations and re-weighting share (even fractions, no seed)."""


def split_documents(
    effect_counts: Float[np.ndarray, " document"], routed: Float[np.ndarray, "expert document"]
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks over corpus rows: the selection-half documents with a routed slot, and the
    report-half documents with an edited position — the documents of a score measured on the selection
    half against an exact effect measured on the report half."""
    half = document_split(np.arange(len(effect_counts)), key=HALVES_KEY)
    return (half == 0) & (np.asarray(routed).sum(0) > 0), (half == 1) & (np.asarray(effect_counts) > 0)


def split_gate(
    effect_counts: Float[np.ndarray, " document"],
    routed: Float[np.ndarray, "expert document"],
    minimum: int = RHO_MIN_EXPERT_DOCUMENTS,
) -> np.ndarray:
    """Which experts are routed on at least ``minimum`` selection-half documents (where their score is
    measured) and on at least ``minimum`` report-half documents with edited positions (where their effect
    is): the document gate of a selection-vs-report ρ, decided on routing counts before resampling."""
    from tl_moe.analysis.effect_estimate import routed_on_enough_documents

    selection, report = split_documents(effect_counts, routed)
    return routed_on_enough_documents(routed, selection, minimum) & routed_on_enough_documents(
        routed, report, minimum
    )
