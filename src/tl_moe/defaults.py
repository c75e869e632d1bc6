"""Defaults shared by the estimators and the run options, written once (light: no heavy imports).

- :data:`MIN_EXAMPLES` — positive and negative tokens a probe unit needs (the paper's "not enough
  samples" threshold): :class:`~tl_moe.analysis.probing.KSparseProbe`, the concept-probing helpers,
  the held-out protocol and both ``--min-examples`` options read it.
- :data:`MIN_DOCUMENTS` — units (documents, experts, ...) a bootstrap interval is computed from:
  :func:`~tl_moe.analysis.stats.cluster_bootstrap`, :func:`~tl_moe.analysis.stats.too_few_units` and
  ``--min-documents`` read it.
- :data:`MAX_DEFAULT_WORKERS` — the most worker processes a run forks by default (``--workers``).
"""

from __future__ import annotations

__all__ = ["MAX_DEFAULT_WORKERS", "MIN_DOCUMENTS", "MIN_EXAMPLES"]

#: Least positive and negative tokens a (unit, concept) needs to be probed.
MIN_EXAMPLES = 50

#: Fewest units (documents, or experts for an interval over experts) a bootstrap interval is computed from.
MIN_DOCUMENTS = 30

#: The most worker processes a run forks for an analysis's independent pieces unless ``--workers`` says
#: otherwise (each holds its own fitting buffers; the default is the thread budget up to this).
MAX_DEFAULT_WORKERS = 4
