"""The statistical standards every analysis shares: the seed, the one document split, resamples, permutations."""

from __future__ import annotations

from dataclasses import dataclass

from tl_moe.analysis.stats import MIN_DOCUMENTS

__all__ = ["Statistics"]


@dataclass(frozen=True)
class Statistics:
    """One value per run of each statistical setting the analyses share (the run's
    :class:`~tl_moe.pipeline.options.RunOptions` takes its defaults from here; a notebook passes one to
    an analysis directly).

    Attributes:
        seed: seed of every random choice (document split, resamples, permutations, control draws).
        selection_fraction: fraction of documents on the selection side of the one document split
            (:func:`~tl_moe.analysis.splits.document_split`); the rest report.
        bootstrap_resamples: document-level bootstrap resamples behind every interval.
        min_documents: fewest documents on each side of the split and behind each interval.
        fdr: false-discovery rate of the Benjamini–Hochberg tests.
        permutations: document-level permutations behind each permutation p-value.
    """

    seed: int = 0
    selection_fraction: float = 0.5
    bootstrap_resamples: int = 2000
    min_documents: int = MIN_DOCUMENTS
    fdr: float = 0.05
    permutations: int = 999
