"""The probing section's findings: the held-out protocol's sentence per concept group (and pooled), led
by balanced accuracy with F1 beside it, and the paper protocol's, labelled as such; the interval texts
the metrics use."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tl_moe.analysis.paper_study import DENSE_CURVE, MATCHED_CURVE, MOE_CURVE
from tl_moe.report.numbers import format_number

__all__ = ["LEAD_METRIC", "METRIC_NAMES", "NO_UNIT", "held_out_findings", "interval_text", "paper_findings"]

#: The metric every held-out headline leads with: balanced accuracy, chance 0.5 for any probe (F1's
#: chance level moves with how often a probe says positive; docs/METHODS.md). F1 is shown beside it.
LEAD_METRIC = "balanced_accuracy"

#: Why a mean F1 is undefined: no (unit, concept) had enough positives and negatives.
NO_UNIT = "no unit had enough examples of a concept"
#: Said when the held-out protocol gave no comparison.
_UNAVAILABLE = "**Probing, held-out protocol**: not available in this run (see the probing notes)."


def held_out_findings(comparisons: pd.DataFrame, groups: pd.DataFrame) -> list[str]:
    """One finding per concept group (the lead group first), then the pooled comparison, each led by
    :data:`LEAD_METRIC` with F1 beside it."""
    if not len(comparisons):
        return [_UNAVAILABLE]
    findings = []
    group_records = groups.astype(object).where(groups.notna(), None).to_dict("records")
    for group in dict.fromkeys(r["group"] for r in group_records):
        rows = [r for r in group_records if r["group"] == group and r["k"] == 1]
        findings.append(_held_out_finding(rows, f"{group} concepts"))
    pooled = [
        r
        for r in comparisons.astype(object).where(comparisons.notna(), None).to_dict("records")
        if r["protocol"] == "held_out" and r["k"] == 1
    ]
    kept = sorted({r["group"] for r in group_records if r.get("n_concepts")})
    if len(kept) != 1:  # one group kept: the pooled comparison is that group's
        what = "all token-level concepts that pass the gate, pooled" + (
            f" ({', '.join(kept)})" if kept else ""
        )
        findings.append(_held_out_finding(pooled, what))
    findings = [f for f in findings if f]
    return findings or [_UNAVAILABLE]


def paper_findings(curves: pd.DataFrame) -> list[str]:
    """The paper protocol's finding at k = 1 (MoE, dense, routing-matched subsets), estimates only."""
    at_k1 = curves[curves["k"] == 1].set_index("model")["mean_best_f1"]
    if MOE_CURVE not in at_k1:
        return []
    text = (
        "**Probing, the paper's protocol** (as its reference code: per-document balanced sample, F1 at "
        "each unit's routed class ratio, best unit picked on the split it is scored on): at k = 1 the "
        f"MoE's best expert reaches mean F1 {format_number(at_k1[MOE_CURVE], '.3f', NO_UNIT)}"
    )
    if DENSE_CURVE in at_k1:
        text += f" vs {format_number(at_k1[DENSE_CURVE], '.3f', NO_UNIT)} for the dense model's best layer"
    if MATCHED_CURVE in at_k1:
        text += (
            f" and {format_number(at_k1[MATCHED_CURVE], '.3f', NO_UNIT)} for its neurons on routing-matched random "
            "token subsets"
        )
    concepts = int(curves["concepts"].max())
    return [
        text
        + f", over {concepts} concepts; single split, estimates only (no interval: the units are picked on the split they are scored on, and concepts share documents)."
    ]


#: How the held-out findings name each comparison (MoE first, the control second).
_FINDING_LABELS = {
    "moe_vs_dense_on_routed_tokens_matched_count": (
        "vs d_expert random dense neurons on each expert's routed tokens (matched neuron count, mean of the "
        "draws; count-matched, the fair comparison of neuron selection; all dense neurons on the routed tokens, "
        "listed after it, is the stricter control)"
    ),
    "matched_count_minus_its_null": (
        "that difference minus its own permuted-label null ((MoE − control) − the same with labels permuted, "
        "over the concepts all four arms keep; in balanced accuracy the null's expectation is 0, so there the "
        "subtraction is a check of the protocol, not a correction)"
    ),
    "moe_vs_dense_on_routed_tokens": "vs all dense neurons on each expert's routed tokens",
    "moe_vs_dense": "vs the dense model",
    "moe_vs_matched_subsets": (
        "vs dense neurons on routing-matched token subsets (one seeded draw of the subsets; the interval is "
        "conditional on it)"
    ),
    "moe_vs_untrained": "vs the untrained MoE (one random initialization; the interval is conditional on it)",
    "permuted_labels": (
        "MoE − dense with labels permuted (the protocol's own bias, ≈ 0 expected; one permutation, the "
        "interval conditional on it)"
    ),
    "permuted_labels_on_routed_tokens": "MoE − the matched-count control with labels permuted (≈ 0 expected)",
}
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "class-balanced F1"}


def _with_positives(record: dict) -> str:
    """`` (positives in n of them)``: the test documents holding a positive of a kept concept, which bound
    how many independent units carry the positive class."""
    n = record.get("n_documents_with_positives")
    return f" (a kept concept's positives in {_count(n)} of them)" if n is not None else ""


def _held_out_finding(records: list[dict], what: str) -> str:
    """The k = 1 held-out finding over ``records`` (one concept group's, or the pooled ones): every
    comparison in :data:`LEAD_METRIC` with F1 beside it, the concepts kept and dropped by the gate."""
    by = {(r["comparison"], r.get("metric") or "f1"): r for r in records}
    lead = by.get(("moe_vs_dense", LEAD_METRIC)) or next(
        (r for r in records if (r.get("metric") or "f1") == LEAD_METRIC), None
    )
    if lead is None:
        return ""
    head = (
        f"**Probing, held-out protocol, {what}** (unit chosen on selection documents, expert minus control "
        f"at k = 1 on {_count(lead.get('n_documents'))} test documents{_with_positives(lead)}, "
        f"{METRIC_NAMES[LEAD_METRIC]} first, class-balanced F1 in brackets, nominal 95% document intervals: "
        "percentile bootstraps, except the count-matched control's and its null-corrected difference's, t "
        "intervals over the control's random draws and the documents; docs/METHODS.md, held-out protocol, "
        "gives their planted coverage with the per-concept gate, the regime of these numbers, and without it, "
        "where concepts whose positives sit in few documents make them under-cover)"
    )
    counts = f"{_count(lead.get('n_concepts'))} concepts kept" + (
        f", {_count(lead['n_concepts_dropped'])} dropped by the gate"
        if lead.get("n_concepts_dropped")
        else ""
    )
    if lead.get("estimate") is None:
        reason = lead.get("interval_unavailable_reason") or "not computed"
        return f"{head}: no estimate ({reason}; {counts}){_dropped_example(lead)}."
    parts = []
    for name, label in _FINDING_LABELS.items():
        first, f1 = by.get((name, LEAD_METRIC)), by.get((name, "f1"))
        if first is None or first.get("estimate") is None:
            continue
        text = f"{label} {_short_interval(first)}"
        if f1 is not None and f1.get("estimate") is not None:
            text += f" (F1 {_short_interval(f1)})"
        parts.append(text)
    return f"{head}, {counts}{_dropped_example(lead)}: " + "; ".join(parts) + "."


def _count(value) -> int:
    """A count read back from a table (a float where the column holds a missing value), as an integer."""
    return int(value or 0)


def _dropped_example(record: dict) -> str:
    """The first concept the gate dropped, with its reason (the record lists them all)."""
    dropped = record.get("dropped_concepts")
    if not dropped:
        return ""
    first = dropped.split("; ")[0]
    return f" (e.g. {first})"


def _short_interval(record: dict) -> str:
    text = f"{record['estimate']:+.4f}"
    if record.get("interval_available"):
        return text + f" [{record['ci_low']:+.4f}, {record['ci_high']:+.4f}]"
    return text + f" (no interval: {record.get('interval_unavailable_reason')})"


def interval_text(record: dict) -> str:
    if record.get("estimate") is None or (
        isinstance(record["estimate"], float) and np.isnan(record["estimate"])
    ):
        return f"unavailable ({record.get('interval_unavailable_reason')})"
    text = f"{record['estimate']:+.4f}"
    if record.get("interval_available"):
        text += f" [{record['ci_low']:+.4f}, {record['ci_high']:+.4f}]"
    else:
        text += f" (no interval: {record.get('interval_unavailable_reason')})"
    return text + f"; {record['a_mean']:.4f} vs {record['b_mean']:.4f}, {record['n_concepts']} concepts"
