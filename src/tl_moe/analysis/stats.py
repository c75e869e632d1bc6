"""Statistics every analysis reports with: document-level intervals, paired differences, nulls, FDR.

Built on :mod:`scipy.stats` (``bootstrap``, ``permutation_test``, ``false_discovery_control``):

- :func:`cluster_bootstrap` — a bootstrap over *documents* (clusters), not tokens: tokens of one
  document are not independent draws, so resampling tokens gives intervals that are too narrow.
  The statistic is a function of per-document weights (how often each document is drawn), which
  keeps it vectorized: one matrix product per batch of resamples, whatever the statistic.
- :func:`paired_difference` — the same bootstrap of ``statistic_a - statistic_b`` with the SAME
  resampled documents on both sides (a paired comparison of two models / units on one corpus).
- :func:`paired_item_means` — inside such a statistic, the mean over items (e.g. concepts) of two
  arms' per-item scores, counting in each resample only the items defined in BOTH arms (so the two
  means average the same items, and the difference is the mean of per-item differences).

Every :class:`Interval` carries the bootstrap's ``bias`` (mean of the resampled statistics minus the
estimate). Paired differences use :data:`PAIRED_METHOD`; docs/METHODS.md says why.
- :func:`interval_position` and :func:`basic_interval` — the diagnostics a report prints beside a
  percentile interval: where the estimate sits in it, and the basic interval from the same resamples.
- :func:`draw_mean_interval` — the interval of a difference whose control is the mean of a few random
  draws (e.g. random neuron subsets): the documents' bootstrap variance of the draw mean plus the
  variance between the draws over their number, with a t distribution on Satterthwaite's degrees of
  freedom (:func:`draw_mean_t`).
- :func:`permutation_pvalues` — one-sided permutation p-values of many statistics at once, from
  permutations of a label vector (e.g. the domain of each document); exact when feasible.
- :func:`permutation_max_null` — from the same permutations, the null of the largest of the statistics
  (the control of a maximum chosen on the same data), and :func:`max_statistic_pvalue` against it.
- :func:`benjamini_hochberg` — BH-adjusted p-values (``scipy.stats.false_discovery_control``) and
  the discoveries at a false-discovery rate.

Bad input never becomes a silent number: too few documents raises :class:`~tl_moe.errors.InputError`
naming the minimum, or (``on_too_few="unavailable"``) returns an :class:`Interval` whose
``available`` is False and whose ``reason`` says why.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.stats
from jaxtyping import Bool, Float, Int

from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.errors import InputError

__all__ = [
    "MIN_DOCUMENTS",
    "DRAW_MEAN_METHOD",
    "PAIRED_METHOD",
    "RHO_METHOD",
    "RHO_MIN_EXPERT_DOCUMENTS",
    "Interval",
    "benjamini_hochberg",
    "basic_interval",
    "bootstrap_p_value",
    "cluster_bootstrap",
    "draw_mean_interval",
    "draw_mean_t",
    "draw_mean_t_from_variance",
    "holm",
    "interval_position",
    "max_statistic_pvalue",
    "paired_difference",
    "paired_item_means",
    "permutation_max_null",
    "permutation_pvalues",
    "resample_weights",
    "too_few_units",
]


def too_few_units(n: int, units: str = "experts", least: int = MIN_DOCUMENTS) -> str | None:
    """Why no interval is computed over ``n`` resampled units (e.g. experts), or None when there are
    enough: an interval over units needs at least ``least`` of them, like one over documents. The
    report prints it as ``mean (no interval: 4 experts, at least 30 needed)``."""
    if n >= least:
        return None
    return f"{n} {units}, at least {least} needed"


#: The interval of every paired difference. Percentile: once both arms average the same items in each
#: resample (:func:`paired_item_means`) its estimate sits mid-interval (tests/test_paired_concepts.py).
#: Weighed on two planted studies of the held-out comparison (benchmarks/planted_studies.py; their
#: measured coverage is generated into docs/METHODS.md): ``gated_interval_method_coverage``, the regime
#: the reported numbers live in (the toy run's 124 test documents, concepts that pass the per-concept
#: gate, balanced accuracy and F1, a planted difference and a planted null), and
#: ``interval_method_coverage``, rare concepts without the gate (40 documents, a few of them carrying most
#: positives). In each cell of both, no other method covered clearly more often than percentile.
PAIRED_METHOD = "percentile"

#: The interval of every Spearman ρ between an expert score and an exact effect, and of paired ρ
#: differences, over documents (drivers). Chosen by a planted coverage study
#: (benchmarks/planted_studies.py, study ``rho_interval_methods``; docs/METHODS.md, "Driver experts",
#: quotes it): percentile covers a planted null ρ = 0 at the nominal rate with its estimate
#: mid-interval, where basic and BCa cover less, and it is the best-covering of the three on the paired
#: ρ when a few rarely routed experts make the resampled ρ lean.
RHO_METHOD = "percentile"

#: The fewest documents that must route an expert for it to enter a Spearman ρ of the drivers (REAP
#: saliency, the first-order estimate or the domain score against an exact effect): at least this many
#: of the documents behind each of its scores. Decided before any resampling, on routing counts only,
#: and the experts it leaves out are listed with the reason. An expert routed on one to three documents
#: has a score that is a mean over a handful of tokens, and resamples that miss its documents move it to
#: the bottom of both rankings: the resampled ρ leans and no interval method covers at the nominal rate.
#: The planted coverage study (benchmarks/planted_studies.py, study ``rho_interval_methods``) chose it.
RHO_MIN_EXPERT_DOCUMENTS = 5


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval.

    Attributes:
        estimate: the statistic on the observed data (every document weighted once).
        low, high: the interval's bounds (NaN when not ``available``).
        n: documents (clusters) the interval resamples.
        confidence: e.g. 0.95.
        method: the scipy bootstrap method ("percentile", "BCa", "basic").
        available: False when no interval could be computed; ``reason`` says why.
        reason: why the interval is unavailable (None when available).
        bias: the bootstrap's bias, mean of the resampled statistics minus ``estimate`` (NaN when no
            resamples were drawn).
        p_value: two-sided percentile-bootstrap p-value of 0, ``min(1, 2 (1 + #{resamples on the far
            side of 0}) / (1 + B))`` (NaN when no resamples were drawn); for multiplicity corrections
            (:func:`holm`). Not part of :meth:`to_dict`: a caller that tests adds it.
        se: the standard deviation of the resampled statistics (the bootstrap standard error; NaN when
            no resamples were drawn), e.g. the documents' term of :func:`draw_mean_t_from_variance`. Not
            part of :meth:`to_dict`.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "percentile"
    available: bool = True
    reason: str | None = None
    bias: float = math.nan
    p_value: float = math.nan
    se: float = math.nan

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval (False when unavailable)."""
        return self.available and self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {
            "estimate": _json_float(self.estimate),
            "ci_low": _json_float(self.low),
            "ci_high": _json_float(self.high),
            "n_documents": self.n,
            "confidence": self.confidence,
            "interval_method": self.method,
            "interval_available": self.available,
            "interval_unavailable_reason": self.reason,
            "bootstrap_bias": _json_float(self.bias),
        }


def interval_position(estimate: float, low: float, high: float) -> float:
    """Where ``estimate`` sits in ``[low, high]``: 0 at the lower end, 1 at the upper, 0.5 centred (NaN
    without an interval of positive width). A diagnostic of a leaning interval, never a switch of method."""
    if not all(math.isfinite(float(v)) for v in (estimate, low, high)) or not high > low:
        return math.nan
    return (estimate - low) / (high - low)


def basic_interval(
    estimate: float, low: float, high: float, bounds: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The basic bootstrap interval ``(2 θ̂ − high, 2 θ̂ − low)`` from the same resamples as the percentile
    interval ``[low, high]`` of the estimate ``θ̂`` (its bounds are the percentile bounds reflected about
    the estimate, so it moves against a lean of the resampled distribution); NaN without an interval.

    ``bounds``: the statistic's range (e.g. ``(-1, 1)`` for a correlation); the reflected bounds can leave
    it and are clipped into it."""
    if not all(math.isfinite(float(v)) for v in (estimate, low, high)):
        return math.nan, math.nan
    basic_low, basic_high = 2 * estimate - high, 2 * estimate - low
    if bounds is not None:
        basic_low, basic_high = (min(max(v, bounds[0]), bounds[1]) for v in (basic_low, basic_high))
    return basic_low, basic_high


#: The range of a Spearman or Pearson correlation, and of a difference of two.
RHO_RANGE = (-1.0, 1.0)
RHO_DIFFERENCE_RANGE = (-2.0, 2.0)


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def resample_weights(indices: np.ndarray, n_clusters: int) -> np.ndarray:
    """How often each cluster occurs in each resample: ``[..., n] indices -> [..., n_clusters]`` counts."""
    indices = np.asarray(indices).astype(np.int64)
    lead = indices.shape[:-1]
    flat = indices.reshape(-1, indices.shape[-1])
    offsets = np.arange(flat.shape[0])[:, None] * n_clusters
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * n_clusters)
    return counts.reshape(*lead, n_clusters).astype(np.float64)


def _stratum_members(strata: np.ndarray | None, n_clusters: int) -> list[np.ndarray]:
    """The cluster ids of each stratum (one stratum of every cluster when ``strata`` is None)."""
    if strata is None:
        return [np.arange(n_clusters)]
    strata = np.asarray(strata)
    if strata.shape != (n_clusters,):
        raise ValueError(
            f"strata has shape {strata.shape}; one stratum per cluster ({n_clusters}) is needed."
        )
    return [np.flatnonzero(strata == value) for value in np.unique(strata)]


def _too_few(n: int, min_clusters: int, what: str, on_too_few: str, estimate: float, confidence: float):
    reason = f"{n} document(s) behind {what}; a document-level interval needs at least {min_clusters}"
    if on_too_few == "error":
        raise InputError(reason + ": analyze more documents (raise --max-tokens).")
    return Interval(estimate, math.nan, math.nan, n, confidence, "none", False, reason)


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_clusters: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: Literal["percentile", "BCa", "basic"] = "percentile",
    seed: int = 0,
    min_clusters: int = MIN_DOCUMENTS,
    on_too_few: Literal["error", "unavailable"] = "error",
    what: str = "the statistic",
    strata: Int[np.ndarray, " cluster"] | None = None,
) -> Interval | list[Interval]:
    """Bootstrap interval of a statistic over clusters (documents), via ``scipy.stats.bootstrap``.

    Args:
        statistic: maps cluster weights ``[batch, n_clusters]`` (how many times each cluster is drawn;
            all ones for the observed data) to the statistic ``[batch]`` or ``[batch, m]`` for ``m``
            statistics at once (one interval each). Write it as weighted sums over clusters, e.g.
            ``lambda w: (w @ sums) / (w @ counts)`` for a token-level mean with documents as clusters.
        n_clusters: number of clusters.
        n_resamples, confidence, method, seed: as in ``scipy.stats.bootstrap``.
        min_clusters: fewer clusters than this -> error or unavailable interval (``on_too_few``).
        what: names the statistic in the too-few message.
        strata: the stratum of each cluster (e.g. the half of the document split it sits on; None: one
            stratum). Each resample draws every stratum's clusters with replacement within that stratum,
            as many as it has, so the design's fixed sizes (documents per half) are kept; every stratum
            needs ``min_clusters`` clusters (each half carries one side of the statistic) or the interval
            is unavailable, with the strata's sizes in the reason.

    Returns:
        one :class:`Interval`, or a list of ``m`` when the statistic returns ``[batch, m]``.
    """
    ones = np.ones((1, n_clusters))
    observed = np.asarray(statistic(ones), dtype=np.float64)[0]
    multi = observed.ndim == 1
    estimates = np.atleast_1d(observed)
    if n_clusters < min_clusters:
        out = [_too_few(n_clusters, min_clusters, what, on_too_few, float(e), confidence) for e in estimates]
        return out if multi else out[0]

    members = _stratum_members(strata, n_clusters)
    fewest = 2 if strata is None else max(2, min_clusters)
    if min(len(m) for m in members) < fewest:
        sizes = ", ".join(str(len(m)) for m in members)
        reason = (
            f"the strata of {what} hold {sizes} document(s); a stratified interval needs at least "
            f"{fewest} in each"
        )
        out = [
            Interval(float(e), math.nan, math.nan, n_clusters, confidence, method, False, reason)
            for e in estimates
        ]
        return out if multi else out[0]

    def resampled(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        parts = [np.moveaxis(part, axis, -1) for part in indices]  # one per stratum: drawn cluster ids
        single = parts[0].ndim == 1  # BCa evaluates the observed sample on its own
        weights = sum(resample_weights(part[None] if single else part, n_clusters) for part in parts)
        values = np.asarray(statistic(weights))
        if single:
            return values[0]
        return np.moveaxis(values, 0, -1) if multi else values  # scipy wants the outputs first

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) distributions: scipy warns, we report
        result = scipy.stats.bootstrap(
            tuple(members),
            resampled,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
            batch=max(1, min(n_resamples, int(2e7 // max(1, n_clusters * estimates.size)))),
        )
    lows = np.atleast_1d(result.confidence_interval.low)
    highs = np.atleast_1d(result.confidence_interval.high)
    distribution = np.atleast_2d(result.bootstrap_distribution)
    out = []
    for i, estimate in enumerate(estimates):

        def unavailable(reason: str, estimate: float = float(estimate)) -> Interval:
            return Interval(estimate, math.nan, math.nan, n_clusters, confidence, method, False, reason)

        low, high = float(lows[i]), float(highs[i])
        finite = distribution[i][np.isfinite(distribution[i])]
        bias = float(finite.mean() - estimate) if finite.size else math.nan
        p_value = bootstrap_p_value(finite) if finite.size else math.nan
        se = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        if not math.isfinite(estimate):
            out.append(unavailable(f"{what} is undefined on the observed data"))
        elif np.ptp(distribution[i]) == 0:  # every resample gives the same value: a zero-width interval
            value = float(distribution[i][0])
            out.append(
                Interval(
                    float(estimate),
                    value,
                    value,
                    n_clusters,
                    confidence,
                    method,
                    bias=bias,
                    p_value=p_value,
                    se=se,
                )
            )
        elif not (math.isfinite(low) and math.isfinite(high)):
            out.append(unavailable(f"the {method} interval of {what} is undefined (degenerate resamples)"))
        else:
            out.append(
                Interval(
                    float(estimate),
                    low,
                    high,
                    n_clusters,
                    confidence,
                    method,
                    bias=bias,
                    p_value=p_value,
                    se=se,
                )
            )
    return out if multi else out[0]


#: The interval of a difference whose control averages several random draws (:func:`draw_mean_interval`).
DRAW_MEAN_METHOD = "t (document bootstrap + between draws)"


def draw_mean_t(
    estimate: Float[np.ndarray, "..."],
    resampled: Float[np.ndarray, "... resample"],
    draws: Float[np.ndarray, "... draw"],
    n_clusters: int,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """The t interval and p-value of 0 of a draw mean, vectorized over leading axes.

    Args:
        estimate: the statistic on the observed data, the mean over the control's ``m`` draws of the
            per-draw statistic (``draws.mean(-1)``).
        resampled: the same statistic on document resamples with every draw kept once (the one-stage
            document bootstrap).
        draws: the per-draw statistic on the observed data (each draw alone as the control).
        n_clusters: documents resampled (the documents' term gets ``n_clusters - 1`` degrees of freedom).

    The statistic's variance has two parts: the documents' (``V``, the variance of ``resampled``) and
    the choice of the draws (the draws are a sample of ``m`` from their population, whose mean is the
    control's target; ``B / m`` with ``B`` the draws' sample variance, ``m - 1`` degrees of freedom).
    ``T = V + B / m``; the interval is ``estimate ± t_q(ν) √T`` and the p-value ``2 P(t_ν > |estimate| /
    √T)``, with Satterthwaite's ``ν = T² / (V² / (n - 1) + (B / m)² / (m - 1))``. ``V`` already holds each
    draw's own document noise over ``m``, which ``B`` counts again: on few draws whose variation is mostly
    document noise the interval is slightly conservative; where the draws differ in substance it is near
    nominal (docs/METHODS.md gives the planted rates).

    Returns:
        arrays ``low``, ``high``, ``p_value``, ``df``, ``documents_variance`` (V), ``draws_variance``
        (B / m), ``bias`` (mean of ``resampled`` minus ``estimate``).
    """
    resampled = np.asarray(resampled, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        documents = np.nanvar(resampled, axis=-1, ddof=1)
        bias = np.nanmean(resampled, axis=-1) - np.asarray(estimate, dtype=np.float64)
    out = draw_mean_t_from_variance(estimate, documents, draws, n_clusters, confidence)
    out["bias"] = bias
    return out


def draw_mean_t_from_variance(
    estimate: Float[np.ndarray, "..."],
    documents_variance: Float[np.ndarray, "..."],
    draws: Float[np.ndarray, "... draw"],
    n_clusters: int,
    confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """:func:`draw_mean_t` with the documents' variance ``V`` given rather than read from resamples
    (e.g. the bootstrap variance of one draw's statistic, when the other draws have point estimates
    only: the caller says which variance it passes). Returns ``low``, ``high``, ``p_value``, ``df``,
    ``documents_variance``, ``draws_variance`` (``B / m``); raises ``ValueError`` below 2 draws."""
    estimate = np.asarray(estimate, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.float64)
    m = draws.shape[-1]
    if m < 2:
        raise ValueError("a draw-mean interval needs at least 2 draws; one draw is the plain bootstrap.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        documents = np.asarray(documents_variance, dtype=np.float64)
        between = draws.var(-1, ddof=1) / m
        total = documents + between
        df = total**2 / (documents**2 / max(n_clusters - 1, 1) + between**2 / (m - 1))
        df = np.where(total > 0, df, max(n_clusters - 1, 1))  # no variance at all: a zero-width interval
        se = np.sqrt(total)
        quantile = np.where(total > 0, scipy.stats.t.ppf(0.5 + confidence / 2, df), 0.0)
        p_value = np.where(
            se > 0, 2 * scipy.stats.t.sf(np.abs(estimate) / se, df), np.where(estimate == 0, 1.0, 0.0)
        )
    return {
        "low": estimate - quantile * se,
        "high": estimate + quantile * se,
        "p_value": p_value,
        "df": df,
        "documents_variance": documents,
        "draws_variance": between,
    }


def draw_mean_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_clusters: int,
    n_draws: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    min_clusters: int = MIN_DOCUMENTS,
    on_too_few: Literal["error", "unavailable"] = "error",
    what: str = "the statistic",
    informative_clusters: int | None = None,
) -> tuple[Interval, float]:
    """Interval and p-value of 0 (:func:`draw_mean_t`) of a statistic whose control is the mean of
    ``n_draws`` random draws.

    Args:
        statistic: maps cluster weights ``[batch, n_clusters]`` to ``[batch, 1 + n_draws]``: the draw
            mean, then the statistic with each draw alone as the control (every draw weighted once).
        n_clusters, n_resamples, confidence, seed, min_clusters, on_too_few, what: as in
            :func:`cluster_bootstrap` (the documents are resampled as there, every draw kept once).
        informative_clusters: the documents that carry the statistic's information (e.g. those holding
            a positive of a probed concept), at most ``n_clusters``; the documents' variance gets
            ``informative_clusters - 1`` degrees of freedom (default ``n_clusters``), so documents that
            cannot move the statistic do not inflate them.

    Returns:
        the :class:`Interval` (``method`` :data:`DRAW_MEAN_METHOD`, ``p_value`` the t test's) and the
        degrees of freedom (NaN when unavailable).
    """
    observed = np.asarray(statistic(np.ones((1, n_clusters))), dtype=np.float64)[0]
    estimate = float(observed[0])
    if n_clusters < min_clusters:
        return _too_few(n_clusters, min_clusters, what, on_too_few, estimate, confidence), math.nan
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_resamples, int(2e7 // max(1, n_clusters * (1 + n_draws)))))
    resampled = np.concatenate(
        [
            np.asarray(
                statistic(resample_weights(rng.integers(0, n_clusters, (size, n_clusters)), n_clusters))
            )[:, 0]
            for size in np.diff(np.r_[0:n_resamples:batch, n_resamples])
        ]
    )

    def unavailable(reason: str) -> tuple[Interval, float]:
        return Interval(estimate, math.nan, math.nan, n_clusters, confidence, "none", False, reason), math.nan

    if not math.isfinite(estimate) or not np.isfinite(observed[1:]).all():
        return unavailable(f"{what} is undefined on the observed data")
    if not np.isfinite(resampled).any():
        return unavailable(f"{what} is undefined on every resample")
    informative = (
        n_clusters if informative_clusters is None else max(2, min(informative_clusters, n_clusters))
    )
    t = draw_mean_t(estimate, resampled, observed[1:], informative, confidence)
    low, high = float(t["low"]), float(t["high"])
    if not (math.isfinite(low) and math.isfinite(high)):
        return unavailable(f"the t interval of {what} is undefined")
    interval = Interval(
        estimate,
        low,
        high,
        n_clusters,
        confidence,
        DRAW_MEAN_METHOD,
        bias=float(t["bias"]),
        p_value=float(t["p_value"]),
    )
    return interval, float(t["df"])


def bootstrap_p_value(resampled: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value of 0: ``min(1, 2 (1 + min(#{<= 0}, #{>= 0})) / (1 + B))``
    over the ``B`` resampled statistics (the interval at level ``1 - p`` just reaches 0)."""
    resampled = np.asarray(resampled, dtype=np.float64)
    below, above = int((resampled <= 0).sum()), int((resampled >= 0).sum())
    return min(1.0, 2 * (1 + min(below, above)) / (1 + len(resampled)))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over the finite entries).

    The i-th smallest of ``m`` p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; NaN
    entries (untested) stay NaN and do not count in ``m``. Reject at family-wise level ``alpha`` where
    the adjusted p-value is at most ``alpha``.
    """
    pvalues = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(pvalues.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(pvalues))
    order = tested[np.argsort(pvalues[tested], kind="stable")]
    m, running = len(order), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_difference(
    statistic_a: Callable[[np.ndarray], np.ndarray],
    statistic_b: Callable[[np.ndarray], np.ndarray],
    n_clusters: int,
    **bootstrap_options,
) -> Interval | list[Interval]:
    """Interval of ``statistic_a - statistic_b``, both evaluated on the same resampled documents.

    Pairing is what makes the comparison tight: both sides see the same documents in every resample,
    so variation shared by the two (an easy document is easy for both) cancels. The interval is
    :data:`PAIRED_METHOD` unless ``method`` says otherwise. Where each side is a mean over items
    that may be undefined in a resample, write the statistic with :func:`paired_item_means` instead.
    """
    bootstrap_options.setdefault("method", PAIRED_METHOD)
    return cluster_bootstrap(
        lambda w: np.asarray(statistic_a(w)) - np.asarray(statistic_b(w)), n_clusters, **bootstrap_options
    )


def paired_item_means(
    scores_a: np.ndarray, scores_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means over the items defined in BOTH arms: ``[batch, item]`` scores -> three ``[batch]`` arrays.

    An item (e.g. a concept) is undefined in an arm where its score is NaN (no positives or no
    negatives in the resampled documents). It counts in a batch row only when both arms define it, so
    the two means average the same items and their difference is the mean per-item difference.

    Returns:
        ``(difference, mean_a, mean_b)``; NaN in a row where no item is defined in both arms.
    """
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    both = np.isfinite(scores_a) & np.isfinite(scores_b)
    n = both.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = np.where(both, scores_a, 0.0).sum(-1) / n
        mean_b = np.where(both, scores_b, 0.0).sum(-1) / n
    return mean_a - mean_b, mean_a, mean_b


def permutation_pvalues(
    statistic: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    *,
    n_resamples: int = 999,
    alternative: Literal["greater", "less"] = "greater",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided permutation p-values of ``m`` statistics under random relabelling of ``labels``.

    Args:
        statistic: maps label arrays ``[batch, n]`` (each row a permutation of ``labels``) to the
            statistics ``[batch, m]`` (or ``[batch]`` for one).
        labels: the observed label of each unit of permutation (e.g. the domain of each DOCUMENT, so
            tokens of a document move together).
        n_resamples: random permutations; when ``n!`` is at most this, every permutation is used
            (an exact test, like ``scipy.stats.permutation_test``).
        alternative: "greater": large statistics are evidence against the null.

    Returns:
        ``(observed [m], pvalues [m])``. Randomized: ``(1 + #{null >= observed}) / (1 + n_resamples)``
        (never 0); exact: the fraction of all permutations with ``null >= observed`` (the identity
        included). Ties within a relative 1e-12 count as ``>=``, as in scipy.
    """
    observed, pvalues, _ = _permutation_counts(statistic, labels, n_resamples, alternative, seed, None)
    return observed, pvalues


def permutation_max_null(
    statistic: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    among: Bool[np.ndarray, " m"],
    *,
    n_resamples: int = 999,
    seed: int = 0,
) -> tuple[Float[np.ndarray, " m"], Float[np.ndarray, " m"], Float[np.ndarray, " permutation"]]:
    """:func:`permutation_pvalues` ("greater") and, from the same permutations, the largest statistic
    among the ``among`` ones in each permutation: the null of a maximum chosen on the same data (a
    selected maximum is compared with it, not with one statistic's null).

    Returns:
        ``(observed [m], pvalues [m], null_max [permutations])`` (the identity among the permutations
        of an exact test).
    """
    among = np.asarray(among, dtype=bool)
    return _permutation_counts(statistic, labels, n_resamples, "greater", seed, among)


def max_statistic_pvalue(observed_max: float, null_max: np.ndarray, exact: bool) -> float:
    """The permutation p-value of a maximum against the maxima of the permutations (``null_max``):
    ``(1 + #{null_max >= observed_max}) / (1 + P)`` for ``P`` random permutations, the fraction of them
    for an exact test (ties within a relative 1e-12 count as ``>=``)."""
    tolerance = 1e-12 * max(1.0, abs(observed_max))
    count = int((np.asarray(null_max) - observed_max >= -tolerance).sum())
    return count / len(null_max) if exact else (count + 1) / (len(null_max) + 1)


def _permutation_counts(
    statistic: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    n_resamples: int,
    alternative: str,
    seed: int,
    among: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The permutations behind :func:`permutation_pvalues` and :func:`permutation_max_null`."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    observed = np.asarray(statistic(labels[None]), dtype=np.float64)[0]
    scalar = observed.ndim == 0
    observed = np.atleast_1d(observed)
    exact = math.factorial(n) <= n_resamples
    if exact:
        orders = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        orders = rng.permuted(np.tile(np.arange(n), (n_resamples, 1)), axis=1)
    count = np.zeros(observed.shape, dtype=np.int64)
    sign = 1.0 if alternative == "greater" else -1.0
    tolerance = 1e-12 * np.maximum(1.0, np.abs(observed))
    maxima = []
    for start in range(0, len(orders), 256):
        null = np.asarray(statistic(labels[orders[start : start + 256]]), dtype=np.float64)
        null = null.reshape(null.shape[0], -1)
        count += (sign * (null - observed) >= -tolerance).sum(0)
        if among is not None:
            picked = np.where(among[None], null, -np.inf)
            maxima.append(np.where(np.isnan(picked), -np.inf, picked).max(1))
    pvalues = count / len(orders) if exact else (count + 1) / (n_resamples + 1)
    pvalues = np.where(np.isfinite(observed), pvalues, np.nan)
    null_max = np.concatenate(maxima) if among is not None else None
    if scalar:
        return observed[0], pvalues[0], null_max
    return observed, pvalues, null_max


def benjamini_hochberg(pvalues: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg adjusted p-values and discoveries at false-discovery rate ``alpha``.

    NaN p-values (untested units) stay NaN and are not counted among the tests. Returns
    ``(adjusted, discovered)``; ``discovered`` is ``adjusted <= alpha``.
    """
    if not 0 < alpha < 1:
        raise InputError(f"the false-discovery rate must lie in (0, 1), got {alpha}.")
    pvalues = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(pvalues.shape, np.nan)
    tested = np.isfinite(pvalues)
    if tested.any():
        adjusted[tested] = scipy.stats.false_discovery_control(pvalues[tested], method="bh")
    return adjusted, np.where(tested, adjusted <= alpha, False)
