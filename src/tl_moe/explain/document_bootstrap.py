"""Intervals of the label scores over *documents*: the unit the scoring items share.

An expert's scoring items come from ``score``-split documents, and experts share documents (one
document holds contexts of many experts), so neither experts nor items are independent draws. Here
every document's items move together: per expert and arm (its own label, the shuffled-label control,
the token-set baseline) the items' confusion counts are summed per document (``[expert, document]``);
a resample weights the documents, each expert's resampled counts of each class are scaled back to the
class's size in the observed sample (the scorer draws a fixed number of positives and negatives per
expert: the design fixes the class sizes, the documents only decide which items they are), its metric
is recomputed from them, and the statistic is the mean over experts. An expert enters a resample's mean
where its metric is defined there (both classes present); a paired difference averages the same
experts in both arms (the arms score the same items, so they are defined together).

Why the class sizes are held: left free, a resample that draws fewer positives than negatives lowers
precision and F1 for no reason the design allows (balanced accuracy and recall are rates within a
class and do not move), which widens their intervals and, precision being concave in the share of
positives, pulls the resampled means below the estimate.

The means (own label, each control arm) get BCa intervals (:data:`MEAN_METHOD`), the paired
differences the project's :data:`~tl_moe.analysis.stats.PAIRED_METHOD`. Why: each expert's metric is
a ratio of counts whose items cluster in a few documents (an expert's positives come mostly from the
documents where it is strongly routed, and the label is right more often there). Resampling those
documents moves numerator and denominator together, and the ratio is concave in them, so the resampled
mean over experts sits below the estimate (the ``bootstrap bias`` column; the estimator itself has a
downward small-sample bias of the same origin). The percentile interval takes that shifted
distribution as it is and leaves the estimate near its top end; BCa corrects for the median shift
(the share of resamples below the estimate) and the skew (a jackknife over documents). Experts that
drop out of a resample (a class absent) are not the cause: keeping each at its observed value there
leaves the lean as it is. The planted study ``label_mean_interval_coverage`` of
benchmarks/planted_studies.py measures percentile, basic and BCa on planted label scores with this
structure and a known true mean, at the shape of the toy explain run too (where every method covers
below 95%: the estimator itself sits below the truth); tests/test_label_interval_coverage.py asserts
its ranges on fewer corpora.

Metrics from counts (as :func:`~tl_moe.explain.scorers.detection_metrics` computes them per expert):
balanced accuracy, F1, precision (0 when nothing is said yes to), recall. AUC from the graded answers:
per expert, the positives' and negatives' counts at each graded level per document
(:func:`_auc_levels`); a resample weights them by document and the AUC is the Mann–Whitney statistic
of the weighted counts (ties count 1/2; equal to ``sklearn.metrics.roc_auc_score`` with the items'
document weights as ``sample_weight``). A ratio of the two classes' totals, it needs no class scaling.

:func:`share_beating` is the share of experts whose own label's balanced accuracy is above the
shuffled-label control's on the same items, with its interval over the same documents: every expert's
two scores are recomputed from the items of each resample's documents, then the share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from jaxtyping import Float

from tl_moe.analysis.stats import MIN_DOCUMENTS, PAIRED_METHOD, Interval, cluster_bootstrap
from tl_moe.explain.scorers import Score

__all__ = [
    "DOCUMENT_METRICS",
    "MEAN_METHOD",
    "SHARE_METHOD",
    "CHANCE",
    "document_intervals",
    "expert_interval",
    "interval_position",
    "metric_from_counts",
    "share_beating",
    "weighted_auc",
]

DOCUMENT_METRICS = ("balanced_accuracy", "f1", "precision", "recall", "auc")
"""The metrics whose summary intervals resample documents (every metric a score's items give; the
intruder scorer's accuracy, whose rounds name no documents, keeps its interval over experts)."""

SHARE_METHOD = "percentile"
"""The interval of :func:`share_beating` (a share of experts: a step function of the resample, where
BCa's jackknife acceleration is ill-defined)."""

CHANCE = {"balanced_accuracy": 0.5, "auc": 0.5}
"""The metrics whose chance level is one number for every expert (a verdict independent of the truth),
and that number: their summary rows give own − chance beside own − shuffled."""

MEAN_METHOD = "BCa"
"""The interval of the means over experts (own label, each control arm): BCa, since the percentile
interval of a mean of per-expert ratios over clustered documents leans low (see the module docstring);
paired differences keep :data:`~tl_moe.analysis.stats.PAIRED_METHOD`."""

Key = tuple[int, int]


def _counts(
    scores: Sequence[Score | None], column: Mapping[int, int], n_documents: int
) -> Float[np.ndarray, "4 expert document"]:
    """Per expert and document: true positives, false negatives, false positives, true negatives of
    its items (all zero for an expert with no score)."""
    out = np.zeros((4, len(scores), n_documents))
    for e, score in enumerate(scores):
        if score is None:
            continue
        y, p = np.asarray(score.truth, bool), np.asarray(score.predicted, bool)
        d = np.asarray([column[x] for x in score.documents], int)
        for k, cell in enumerate((y & p, y & ~p, ~y & p, ~y & ~p)):
            np.add.at(out[k, e], d[cell], 1.0)
    return out


def _auc_levels(
    score: Score, column: Mapping[int, int], n_documents: int
) -> tuple[Float[np.ndarray, "document level"], Float[np.ndarray, "document level"]]:
    """An expert's positives and negatives per document (rows) and graded level (columns, ascending)."""
    y, graded = np.asarray(score.truth, bool), np.asarray(score.graded, float)
    levels, level = np.unique(graded, return_inverse=True)
    d = np.asarray([column[x] for x in score.documents], int)
    positives, negatives = np.zeros((n_documents, len(levels))), np.zeros((n_documents, len(levels)))
    np.add.at(positives, (d[y], level[y]), 1.0)
    np.add.at(negatives, (d[~y], level[~y]), 1.0)
    return positives, negatives


def weighted_auc(
    weights: Float[np.ndarray, "batch document"],
    positives: Float[np.ndarray, "document level"],
    negatives: Float[np.ndarray, "document level"],
) -> Float[np.ndarray, " batch"]:
    """AUC (Mann–Whitney, ties 1/2) of items whose counts per document and ascending graded level are
    ``positives`` / ``negatives``, each document counted ``weights`` times; NaN where a class is absent."""
    p, n = weights @ positives, weights @ negatives  # [batch, level]
    below = np.cumsum(n, -1) - n  # negatives strictly below each level
    with np.errstate(divide="ignore", invalid="ignore"):
        return (p * (below + n / 2)).sum(-1) / (p.sum(-1) * n.sum(-1))


def _resampled_metric(
    metric: str, scores: Sequence[Score | None], column: Mapping[int, int], n_documents: int
):
    """``weights [batch, document] -> [batch, expert]``: each expert's ``metric`` on the resampled
    documents (NaN for an expert without a score, or without graded answers for AUC)."""
    if metric != "auc":
        counts = _counts(scores, column, n_documents)
        return lambda weights: metric_from_counts(metric, *_at_class_sizes(weights, counts))
    levels = [
        _auc_levels(s, column, n_documents) if s is not None and len(s.graded) == len(s.truth) > 0 else None
        for s in scores
    ]

    def auc(weights: np.ndarray) -> np.ndarray:
        out = np.full((weights.shape[0], len(levels)), np.nan)
        for e, parts in enumerate(levels):
            if parts is not None:
                out[:, e] = weighted_auc(weights, *parts)
        return out

    return auc


def metric_from_counts(
    metric: str,
    tp: Float[np.ndarray, "*batch expert"],
    fn: Float[np.ndarray, "*batch expert"],
    fp: Float[np.ndarray, "*batch expert"],
    tn: Float[np.ndarray, "*batch expert"],
) -> Float[np.ndarray, "*batch expert"]:
    """``metric`` of each expert from its (resampled) confusion counts; NaN where a class is absent."""
    positives, negatives = tp + fn, fp + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / positives
        value = {
            "balanced_accuracy": lambda: (recall + tn / negatives) / 2,
            "recall": lambda: recall,
            "precision": lambda: np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0),
            "f1": lambda: 2 * tp / (2 * tp + fp + fn),
        }[metric]()
    return np.where((positives > 0) & (negatives > 0), value, np.nan)


def _at_class_sizes(
    weights: Float[np.ndarray, "batch document"], counts: Float[np.ndarray, "4 expert document"]
) -> tuple[Float[np.ndarray, "batch expert"], ...]:
    """Each expert's resampled true positives, false negatives, false positives, true negatives, the
    positives scaled to its observed number of positives and the negatives to its negatives (NaN where a
    resample holds none of a class)."""
    tp, fn, fp, tn = (weights @ c.T for c in counts)
    positives, negatives = counts[0].sum(-1) + counts[1].sum(-1), counts[2].sum(-1) + counts[3].sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        up, down = positives / (tp + fn), negatives / (fp + tn)
    return tp * up, fn * up, fp * down, tn * down


def _nanmean(values: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no expert is defined: NaN
        return np.nanmean(values, axis=-1)


def document_intervals(
    keys: Sequence[Key],
    own: Mapping[Key, Score],
    arms: Mapping[str, Mapping[Key, Score]],
    metric: str,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
    mean_method: Literal["percentile", "BCa", "basic"] = MEAN_METHOD,
) -> dict[str, float | int | str] | None:
    """Mean over the experts ``keys`` of ``metric`` for their own labels, for each control arm
    (``arms``: name -> scores, e.g. ``shuffled``, ``baseline``), and own − arm, each with a 95%
    bootstrap interval over the documents of the experts' scoring items: ``mean_method`` for the
    means, :data:`~tl_moe.analysis.stats.PAIRED_METHOD` for the differences (the same resamples).

    Returns the columns of a summary row — ``mean``, ``ci low``, ``ci high``; per arm ``{arm} mean``,
    ``{arm} ci low/high``, ``own - {arm}``, ``{arm} diff ci low/high``; ``bootstrap bias`` of the own mean
    (mean of the resamples − estimate: a per-expert ratio of counts over clustered documents is skewed
    low, which ``mean_method`` BCa corrects for); ``mean interval method`` and ``difference interval
    method``; ``documents`` and ``interval``
    (``available``, or ``unavailable: reason`` below ``min_documents`` documents); ``interval unavailable``
    and per arm ``{arm} interval unavailable`` (the reason, '' where the interval was computed) — or None when a
    score does not say which documents its items came from."""
    kept = [k for k in keys if k in own and own[k].ok and own[k].truth]
    if not kept or any(len(own[k].documents) != len(own[k].truth) for k in kept):
        return None
    documents = sorted({d for k in kept for d in own[k].documents})
    column = {d: i for i, d in enumerate(documents)}
    resampled = {"own": _resampled_metric(metric, [own[k] for k in kept], column, len(documents))}
    present = {}  # experts the arm scored (defined on the observed documents)
    for name, scores in arms.items():
        paired = _paired_scores(kept, own, scores)
        resampled[name] = _resampled_metric(metric, paired, column, len(documents))
        present[name] = np.isfinite(resampled[name](np.ones((1, len(documents))))[0])

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, D] -> [batch, 1 + 2 * arms]
        values = {name: f(weights) for name, f in resampled.items()}
        out = [_nanmean(values["own"])]
        for name in arms:
            mine = np.where(present[name], values["own"], np.nan)
            other = np.where(present[name], values[name], np.nan)
            out += [_nanmean(other), _nanmean(mine - other)]
        return np.stack(out, axis=-1)

    options = dict(n_resamples=n_resamples, seed=seed, min_clusters=min_documents, on_too_few="unavailable",
                   what="the label scores")  # fmt: skip
    means = cluster_bootstrap(statistic, len(documents), method=mean_method, **options)
    paired = cluster_bootstrap(statistic, len(documents), method=PAIRED_METHOD, **options)  # same resamples
    intervals = [means[0]] + [(means if i % 2 else paired)[i] for i in range(1, len(means))]
    row: dict[str, float | int | str] = {
        "mean": intervals[0].estimate, "ci low": intervals[0].low, "ci high": intervals[0].high,
    }  # fmt: skip
    for i, name in enumerate(arms):
        short = "diff" if name == "shuffled" else f"{name} diff"
        arm, diff = intervals[1 + 2 * i], intervals[2 + 2 * i]
        row.update({f"{name} mean": arm.estimate, f"{name} ci low": arm.low, f"{name} ci high": arm.high,
                    f"own - {name}": diff.estimate, f"{short} ci low": diff.low, f"{short} ci high": diff.high})  # fmt: skip
    row["bootstrap bias"] = intervals[0].bias  # mean of the resampled means − the estimate
    row["position in interval"] = interval_position(intervals[0])
    if metric in CHANCE:  # own − chance: the own mean's interval moved by the constant
        chance = CHANCE[metric]
        row.update({"own - chance": intervals[0].estimate - chance, "chance diff ci low": intervals[0].low - chance,
                    "chance diff ci high": intervals[0].high - chance})  # fmt: skip
    row["mean interval method"], row["difference interval method"] = mean_method, PAIRED_METHOD
    row["documents"] = len(documents)
    row["interval"] = "available" if intervals[0].available else f"unavailable: {intervals[0].reason}"
    row["interval unavailable"] = _why_not(intervals[0])
    for i, name in enumerate(arms):
        row[f"{name} interval unavailable"] = _why_not(intervals[2 + 2 * i])
    return row


def interval_position(interval: Interval) -> float:
    """Where the estimate sits in its interval: (estimate − low) / (high − low), 0 at the lower end, 1 at
    the upper (NaN without an interval)."""
    width = interval.high - interval.low
    return (
        float((interval.estimate - interval.low) / width)
        if np.isfinite(width) and width > 0
        else float("nan")
    )


def _why_not(interval: Interval) -> str:
    """Why a document interval is missing ('' when it was computed): the summary's reason column."""
    return "" if interval.available else str(interval.reason or "")


def _paired_scores(
    kept: Sequence[Key], own: Mapping[Key, Score], scores: Mapping[Key, Score]
) -> list[Score | None]:
    """The arm's score of each expert of ``kept`` where it scored the same items as the own label."""
    paired = [scores.get(k) for k in kept]
    return [s if s is not None and s.ok and s.documents == own[k].documents else None
            for s, k in zip(paired, kept, strict=True)]  # fmt: skip


def share_beating(
    keys: Sequence[Key],
    own: Mapping[Key, Score],
    shuffled: Mapping[Key, Score],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
) -> dict[str, float | int | str] | None:
    """The share of the experts ``keys`` whose own label's balanced accuracy is above the
    shuffled-label control's on the same items (a tie does not count), with a 95%
    :data:`SHARE_METHOD` bootstrap interval over the documents of the scoring items: each resample
    recomputes every expert's two balanced accuracies from its items in the resampled documents
    (classes held at their observed sizes, as :func:`document_intervals` does), then the share over the
    experts defined in it.

    Returns ``share beating shuffled``, ``share ci low``, ``share ci high``, ``share experts``,
    ``share documents`` and ``share interval`` (``available`` or ``unavailable: reason``, below
    ``min_documents`` documents) — or None when no expert has both scores with their documents."""
    kept = [
        k
        for k in keys
        if k in own and own[k].ok and own[k].truth and len(own[k].documents) == len(own[k].truth)
    ]
    paired = _paired_scores(kept, own, shuffled)
    kept = [k for k, s in zip(kept, paired, strict=True) if s is not None]
    if not kept:
        return None
    documents = sorted({d for k in kept for d in own[k].documents})
    column = {d: i for i, d in enumerate(documents)}
    mine = _resampled_metric("balanced_accuracy", [own[k] for k in kept], column, len(documents))
    other = _resampled_metric("balanced_accuracy", [shuffled[k] for k in kept], column, len(documents))

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, D] -> [batch]
        a, b = mine(weights), other(weights)
        defined = np.isfinite(a) & np.isfinite(b)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(defined, a > b, False).sum(-1) / defined.sum(-1)

    interval = cluster_bootstrap(
        statistic, len(documents), n_resamples=n_resamples, seed=seed, min_clusters=min_documents,
        on_too_few="unavailable", method=SHARE_METHOD, what="the share of experts beating their shuffled control",
    )  # fmt: skip
    return {
        "share beating shuffled": interval.estimate, "share ci low": interval.low,
        "share ci high": interval.high, "share experts": len(kept), "share documents": len(documents),
        "share interval": "available" if interval.available else f"unavailable: {interval.reason}",
    }  # fmt: skip


def expert_interval(
    own: Score,
    other: Score | None = None,
    metric: str = "balanced_accuracy",
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
) -> tuple[float, float, float, str]:
    """One expert's ``metric`` of ``own`` (minus that of ``other`` on the same items, when given), with a
    95% percentile bootstrap interval over the documents its items come from (classes held at their
    observed sizes). Returns (estimate, low, high, why): below ``min_documents`` documents, or where the
    resamples leave the metric undefined, low and high are NaN and ``why`` says why ('' otherwise); all
    NaN when the two were not scored on the same items or a class is absent."""
    y = np.asarray(own.truth, bool)
    nan = float("nan")
    if not len(y) or y.all() or not y.any() or len(own.documents) != len(y):
        return nan, nan, nan, "no item of one class"
    if other is not None and (own.truth != other.truth or own.documents != other.documents):
        return nan, nan, nan, "not scored on the same items"
    documents = sorted(set(own.documents))
    column = {d: i for i, d in enumerate(documents)}
    mine = _resampled_metric(metric, [own], column, len(documents))
    theirs = _resampled_metric(metric, [other], column, len(documents)) if other is not None else None

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, D] -> [batch]
        value = mine(weights)[:, 0]
        return value - theirs(weights)[:, 0] if theirs is not None else value

    interval = cluster_bootstrap(
        statistic, len(documents), n_resamples=n_resamples, seed=seed, min_clusters=min_documents,
        on_too_few="unavailable", method=PAIRED_METHOD, what="this expert's scoring items",
    )  # fmt: skip
    return interval.estimate, interval.low, interval.high, _why_not(interval)
