"""Label and score hundreds of experts: bounded concurrency, recorded failures, controls, JSONL results.

:func:`label_experts` runs an explainer on every record (experts with too few contexts are reported,
never fatal), then each scorer on every labeled expert twice: with its own label and with the label
of another expert of the same layer (a seeded derangement: the shuffled-label control). Requests run
on a thread pool of ``concurrency`` workers; the client's own timeout and capped retries bound each,
and a :class:`~tl_moe.explain.clients.CachedChatClient` makes a rerun pay for nothing twice. Every
finished expert is appended to ``results_path`` (JSONL) as soon as it is done.

With a ``baseline`` explainer (offline: :class:`~tl_moe.explain.explainers.TokenSetBaseline`), each
labeled expert's baseline label is scored on the same items too. Per expert, own − shuffled balanced
accuracy on the same items gets a 95% bootstrap interval over the documents its items come from
(:func:`~tl_moe.explain.document_bootstrap.expert_interval`; unavailable below ``min_documents``
documents, the reason in ``{scorer}_own_minus_shuffled_interval``; ``{scorer}_beats_shuffled`` when it
is above 0).

:class:`LabelingResult` holds one row per expert and the per-layer summary, for each metric of
:data:`SUMMARY_METRICS` (balanced accuracy first, as delphi reports them): mean score over experts,
the same for the shuffled control and the baseline and for the paired differences own − shuffled and
own − baseline, each with a 95% bootstrap interval over the score *documents* for balanced accuracy,
F1, precision, recall and AUC (:mod:`tl_moe.explain.document_bootstrap`; unavailable below
``min_documents``; only the intruder scorer's accuracy, whose rounds name no documents, keeps an
interval over experts — ``interval over`` says which), the chance level, and the share of experts whose
own label's balanced accuracy is above the shuffled one's, with its interval over the same documents
(:func:`~tl_moe.explain.document_bootstrap.share_beating`: every expert's scores recomputed in each
resample).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tl_moe.analysis.stats import too_few_units
from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.explain.document_bootstrap import (
    DOCUMENT_METRICS,
    document_intervals,
    expert_interval,
    share_beating,
)
from tl_moe.explain.examples import ExpertRecord
from tl_moe.explain.explainers import Explainer, Explanation
from tl_moe.explain.scorers import Score, Scorer

__all__ = [
    "SUMMARY_METRICS",
    "LabelingResult",
    "bootstrap_mean",
    "label_experts",
    "shuffled_partners",
    "summarize",
]


def bootstrap_mean(
    values: Sequence[float], *, seed: int = 0, n_resamples: int = 2000, min_units: int = MIN_DOCUMENTS
) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval over units (experts); a NaN interval for fewer than
    ``min_units`` finite values (:func:`~tl_moe.analysis.stats.too_few_units` says why)."""
    x = finite_values(values)
    if len(x) == 0:
        return (float("nan"),) * 3
    if too_few_units(len(x), least=min_units):
        return float(x.mean()), float("nan"), float("nan")
    if np.ptp(x) == 0:
        return float(x.mean()), float(x.mean()), float(x.mean())
    from scipy.stats import bootstrap

    ci = bootstrap(
        (x,), np.mean, n_resamples=n_resamples, method="percentile", random_state=seed
    ).confidence_interval
    return float(x.mean()), float(ci.low), float(ci.high)


def finite_values(values: Sequence[float]) -> np.ndarray:
    """The finite values of ``values`` (None and NaN left out): the units a mean is taken over."""
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], float)


def shuffled_partners(
    keys: Sequence[tuple[int, int]], seed: int = 0
) -> dict[tuple[int, int], tuple[int, int]]:
    """For each (layer, expert), another expert of the same layer whose label it gets in the control
    (a seeded derangement within each layer; a layer with one labeled expert gets none)."""
    partners: dict[tuple[int, int], tuple[int, int]] = {}
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for key in keys:
        by_layer.setdefault(key[0], []).append(key)
    for layer, members in by_layer.items():
        if len(members) < 2:
            continue
        rng = np.random.default_rng([seed, layer])
        shift = int(rng.integers(1, len(members)))
        order = [members[i] for i in rng.permutation(len(members))]
        for i, key in enumerate(order):
            partners[key] = order[(i + shift) % len(order)]
    return partners


@dataclass(frozen=True)
class LabelingResult:
    """One row per expert (``frame``) and the per-layer summary with controls (``summary``).

    ``frame`` columns: layer, expert, status, label, explainer, label error, n_positive, n_negative,
    and per scorer ``{scorer}_{metric}`` for the own label and ``{scorer}_shuffled_{metric}`` for the
    shuffled-label control, ``{scorer}_shuffled_label_of`` and ``{scorer}_error``.
    """

    frame: pd.DataFrame
    summary: pd.DataFrame
    explanations: dict[tuple[int, int], Explanation]
    scores: dict[tuple[int, int], dict[str, Score]]
    shuffled: dict[tuple[int, int], dict[str, Score]]
    failures: pd.DataFrame
    baseline: dict[tuple[int, int], dict[str, Score]] = field(default_factory=dict)


def _metric_columns(prefix: str, score: Score | None) -> dict[str, Any]:
    if score is None:
        return {}
    row = {f"{prefix}_{name}": value for name, value in score.metrics.items()}
    row[f"{prefix}_error"] = score.error
    return row


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


SUMMARY_METRICS = ("balanced_accuracy", "f1", "precision", "recall", "auc")
"""The metrics summarized per layer, the headline first (delphi's detection metrics)."""


def summarize(
    frame: pd.DataFrame, scorer: str, metric: str = "balanced_accuracy", seed: int = 0
) -> pd.DataFrame:
    """Per layer (and ``all``): mean own score, the shuffled-label control and the baseline label, and
    the paired differences, each with a bootstrap interval over experts."""
    own, control, baseline = (
        f"{scorer}_{metric}",
        f"{scorer}_shuffled_{metric}",
        f"{scorer}_baseline_{metric}",
    )
    chance = f"{scorer}_chance_{metric}"
    rows = []
    if own not in frame or not frame[own].notna().any():
        return pd.DataFrame()
    groups = [(layer, part) for layer, part in frame.groupby("layer")] + [("all", frame)]
    for layer, part in groups:
        scored = part[part[own].notna()]
        row = {
            "layer": layer,
            "scorer": scorer,
            "metric": metric,
            "experts scored": len(scored),
            "experts not scored": len(part) - len(scored),
        }
        row.update(
            dict(zip(("mean", "ci low", "ci high"), bootstrap_mean(scored[own], seed=seed), strict=True))
        )
        row["interval unavailable"] = too_few_units(len(finite_values(scored[own]))) or ""
        for name, column, short in (("shuffled", control, "diff"), ("baseline", baseline, "baseline diff")):
            paired = scored[scored[column].notna()] if column in scored else scored.iloc[:0]
            other = bootstrap_mean(paired[column], seed=seed) if len(paired) else (np.nan,) * 3
            diff = bootstrap_mean(paired[own] - paired[column], seed=seed) if len(paired) else (np.nan,) * 3
            row.update({f"{name} mean": other[0], f"{name} ci low": other[1], f"{name} ci high": other[2]})
            row.update({f"own - {name}": diff[0], f"{short} ci low": diff[1], f"{short} ci high": diff[2]})
            row[f"{name} interval unavailable"] = (
                too_few_units(len(finite_values(paired[own] - paired[column]) if len(paired) else [])) or ""
            )
            row[f"share own > {name}"] = (
                float((paired[own] > paired[column]).mean()) if len(paired) else np.nan
            )
        row["chance"] = float(scored[chance].mean()) if chance in scored and len(scored) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def label_experts(
    records: Sequence[ExpertRecord],
    explainer: Explainer,
    scorers: Sequence[Scorer],
    *,
    concurrency: int = 8,
    results_path: str | os.PathLike | None = None,
    shuffle_seed: int = 0,
    progress: bool = True,
    metrics: Sequence[str] = SUMMARY_METRICS,
    baseline: Explainer | None = None,
    n_resamples: int = 2000,
    min_documents: int = MIN_DOCUMENTS,
) -> LabelingResult:
    """Label every record with ``explainer`` and score each label with every scorer, with controls.

    Args:
        records: the experts' records (:meth:`ExpertExamples.records`); those whose status is not
            ``ok`` are reported with their status and not sent to the explainer.
        explainer: ``explainer(record) -> Explanation``.
        scorers: each ``scorer(record, explanation) -> Score``.
        concurrency: worker threads (requests in flight at once).
        results_path: JSONL file, one line per finished expert (appended as experts finish).
        shuffle_seed: seed of the shuffled-label derangement.
        progress: tqdm bars (experts and experts/s).
        metrics: the metrics of the summary, headline first (``accuracy`` for the intruder scorer).
        baseline: an explainer whose label of each labeled expert is scored beside the expert's own
            (``{scorer}_baseline_{metric}`` columns), e.g. :class:`~tl_moe.explain.explainers.TokenSetBaseline`.
        n_resamples, min_documents: the summary's document bootstrap (:data:`DOCUMENT_METRICS`): its
            resamples, and the fewest score documents behind an interval (fewer: unavailable).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be a positive number of workers, got {concurrency}.")
    by_key = {r.key: r for r in records}
    ready = [r for r in records if r.ok]
    out = None
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(results_path, "w")  # noqa: SIM115 (kept open while workers finish)

    def explain(record: ExpertRecord, labeler: Explainer | None = None) -> Explanation:
        try:
            return (labeler or explainer)(record)
        except Exception as error:  # an explainer bug on one expert is recorded, not fatal
            return Explanation(record.layer, record.expert, "", error=f"{type(error).__name__}: {error}")

    explanations: dict[tuple[int, int], Explanation] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        bar = tqdm(total=len(ready), desc="explain", unit="expert", disable=not progress)
        for explanation in pool.map(explain, ready):
            explanations[(explanation.layer, explanation.expert)] = explanation
            bar.update()
        bar.close()
        labeled = [key for key, e in explanations.items() if e.ok]
        partners = shuffled_partners(labeled, shuffle_seed)

        def score(
            key: tuple[int, int],
        ) -> tuple[tuple[int, int], dict[str, Score], dict[str, Score], dict[str, Score]]:
            record, own = by_key[key], explanations[key]
            mine, control, base = {}, {}, {}
            reference = explain(record, baseline) if baseline is not None else None
            for scorer in scorers:
                mine[scorer.name] = _safe(scorer, record, own)
                if key in partners and scorer.name != "intruder":
                    control[scorer.name] = _safe(scorer, record, explanations[partners[key]])
                if reference is not None and reference.ok and scorer.name != "intruder":
                    base[scorer.name] = _safe(scorer, record, reference)
            return key, mine, control, base

        scores: dict[tuple[int, int], dict[str, Score]] = {}
        shuffled: dict[tuple[int, int], dict[str, Score]] = {}
        baselines: dict[tuple[int, int], dict[str, Score]] = {}
        rows: dict[tuple[int, int], dict[str, Any]] = {}
        bar = tqdm(total=len(labeled), desc="score", unit="expert", disable=not progress)
        for key, mine, control, base in pool.map(score, labeled):
            scores[key], shuffled[key], baselines[key] = mine, control, base
            bar.update()
            rows[key] = _row(by_key[key], explanations[key], mine, control, partners.get(key), base,
                             n_resamples=n_resamples, min_documents=min_documents)  # fmt: skip
            if out is not None:
                out.write(json.dumps(rows[key], default=_json_default) + "\n")
                out.flush()
        bar.close()
    for record in records:
        if record.key not in rows:
            rows[record.key] = _row(record, explanations.get(record.key), {}, {}, None)
            if out is not None:
                out.write(json.dumps(rows[record.key], default=_json_default) + "\n")
    if out is not None:
        out.close()
    frame = pd.DataFrame([rows[r.key] for r in records])
    summaries = []
    for scorer in scorers:
        for metric in ("accuracy",) if scorer.name == "intruder" else metrics:
            part = summarize(frame, scorer.name, metric)
            if len(part):
                part["interval over"] = "experts"
            if metric in DOCUMENT_METRICS:
                part = with_document_intervals(
                    part, frame, scores, {"shuffled": shuffled, "baseline": baselines}, scorer.name, metric,
                    n_resamples=n_resamples, seed=shuffle_seed, min_documents=min_documents,
                )  # fmt: skip
            if metric == "balanced_accuracy":
                part = with_share_beating(part, frame, scores, shuffled, scorer.name, n_resamples=n_resamples,
                                          seed=shuffle_seed, min_documents=min_documents)  # fmt: skip
            summaries.append(part)
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    failed = frame[(frame["status"] != "ok") | frame["label_error"].notna()]
    failures = failed[["layer", "expert", "status", "label_error"]].reset_index(drop=True)
    return LabelingResult(frame, summary, explanations, scores, shuffled, failures, baselines)


def with_document_intervals(
    summary: pd.DataFrame,
    frame: pd.DataFrame,
    scores: dict[tuple[int, int], dict[str, Score]],
    arms: dict[str, dict[tuple[int, int], dict[str, Score]]],
    scorer: str,
    metric: str,
    **options: Any,
) -> pd.DataFrame:
    """``summary`` (one row per layer and ``all``) with its means and intervals recomputed over the
    score documents (:func:`~tl_moe.explain.document_bootstrap.document_intervals`) wherever the
    scores name their items' documents; ``interval over`` says which unit each row resamples."""
    if not len(summary):
        return summary
    summary = summary.copy()
    summary["interval over"] = "experts"
    own = {k: v[scorer] for k, v in scores.items() if scorer in v}
    controls = {name: {k: v[scorer] for k, v in arm.items() if scorer in v} for name, arm in arms.items()}
    for i, layer in enumerate(summary["layer"]):
        part = frame if layer == "all" else frame[frame["layer"] == layer]
        keys = [(int(a), int(b)) for a, b in zip(part["layer"], part["expert"], strict=True)]
        row = document_intervals(keys, own, controls, metric, **options)
        if row is None:
            continue
        for name, value in row.items():
            if name not in summary:
                summary[name] = np.nan if not isinstance(value, str) else None
            summary.at[summary.index[i], name] = value
        summary.at[summary.index[i], "interval over"] = "score documents"
    return summary


def with_share_beating(
    summary: pd.DataFrame,
    frame: pd.DataFrame,
    scores: dict[tuple[int, int], dict[str, Score]],
    shuffled: dict[tuple[int, int], dict[str, Score]],
    scorer: str,
    **options: Any,
) -> pd.DataFrame:
    """``summary`` with, per layer and ``all``, the share of experts whose own label beats its shuffled
    control and that share's interval over the score documents
    (:func:`~tl_moe.explain.document_bootstrap.share_beating`)."""
    if not len(summary):
        return summary
    summary = summary.copy()
    own = {k: v[scorer] for k, v in scores.items() if scorer in v}
    control = {k: v[scorer] for k, v in shuffled.items() if scorer in v}
    for i, layer in enumerate(summary["layer"]):
        part = frame if layer == "all" else frame[frame["layer"] == layer]
        keys = [(int(a), int(b)) for a, b in zip(part["layer"], part["expert"], strict=True)]
        row = share_beating(keys, own, control, **options)
        for name, value in (row or {}).items():
            if name not in summary:
                summary[name] = np.nan if not isinstance(value, str) else None
            summary.at[summary.index[i], name] = value
    return summary


def _safe(scorer: Scorer, record: ExpertRecord, explanation: Explanation) -> Score:
    try:
        return scorer(record, explanation)
    except Exception as error:
        return Score(record.layer, record.expert, scorer.name, explanation.label,
                     (explanation.layer, explanation.expert), error=f"{type(error).__name__}: {error}")  # fmt: skip


def _row(
    record: ExpertRecord,
    explanation: Explanation | None,
    mine: dict[str, Score],
    control: dict[str, Score],
    partner: tuple[int, int] | None,
    base: dict[str, Score] | None = None,
    **interval: Any,
) -> dict[str, Any]:
    """One expert's row of the frame; ``interval``: ``n_resamples`` and ``min_documents`` of its F1's
    and its own − shuffled intervals over documents (:func:`~tl_moe.explain.document_bootstrap.expert_interval`)."""
    row: dict[str, Any] = {
        "layer": record.layer,
        "expert": record.expert,
        "status": record.status,
        "label": explanation.label if explanation is not None else "",
        "label_error": explanation.error if explanation is not None else None,
        "concept": explanation.concept if explanation is not None else None,
        "domain": explanation.domain if explanation is not None else None,
        "kind": explanation.rule.kind if explanation is not None and explanation.rule is not None else None,
        "n_routed_explain": record.n_routed[0],
        "n_positive": len(record.positives),
        "n_negative": len(record.negatives),
    }
    if explanation is not None and explanation.details:
        row["details"] = json.loads(json.dumps(explanation.details, default=_json_default))
    for name, score in mine.items():
        row.update(_metric_columns(name, score))
        if score.ok and name != "intruder":  # F1's interval over the documents of the expert's items
            f1 = expert_interval(score, metric="f1", **interval)
            row[f"{name}_f1_ci_low"], row[f"{name}_f1_ci_high"] = f1[1:3]
            row[f"{name}_f1_interval"] = f1[3] or "available"
    for name, score in control.items():
        row.update(_metric_columns(f"{name}_shuffled", score))
        row[f"{name}_shuffled_label_of"] = list(partner) if partner else None
        if name in mine and mine[name].ok and score.ok:
            diff = expert_interval(mine[name], score, **interval)
            row[f"{name}_own_minus_shuffled_balanced_accuracy"] = diff[0]
            row[f"{name}_own_minus_shuffled_ci_low"], row[f"{name}_own_minus_shuffled_ci_high"] = diff[1:3]
            row[f"{name}_own_minus_shuffled_interval"] = diff[3] or "available"
            row[f"{name}_beats_shuffled"] = bool(diff[1] > 0) if np.isfinite(diff[1]) else None
    for name, score in (base or {}).items():
        row.update(_metric_columns(f"{name}_baseline", score))
        row[f"{name}_baseline_label"] = score.label
    return row


def result_rows(result: LabelingResult) -> list[dict[str, Any]]:
    """The frame as JSON-able dicts."""
    return json.loads(result.frame.to_json(orient="records"))


def explanation_dict(explanation: Explanation) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(explanation), default=_json_default))
