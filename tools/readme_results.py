"""The README's results sections, generated from runs' ``results.json`` files (never typed by hand).

    python tools/readme_results.py docs/results/toy_default.json   # prints the Markdown
    python tools/readme_results.py --write README.md               # rewrites every block

Each block of :data:`BLOCKS` has its committed results file and its markers in the README:
``<!-- results:start -->`` / ``<!-- results:end -->`` for the default run, and
``<!-- results:NAME:start -->`` / ``<!-- results:NAME:end -->`` for the others. ``--write`` replaces
the text between each pair; ``tests/test_readme.py`` checks that the README equals what the committed
results files generate.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scipy.stats

from tl_moe.analysis.specialization_permutation import BOOTSTRAP_PERMUTATIONS
from tl_moe.defaults import MIN_DOCUMENTS
from tl_moe.report.numbers import format_interval, is_defined

START, END = "<!-- results:start -->", "<!-- results:end -->"

_COMPARISONS = {
    "moe_vs_dense": "MoE expert − dense layer",
    "moe_vs_dense_on_routed_tokens_matched_count": (
        "MoE expert − d_expert random dense neurons on the expert's routed tokens (matched count, mean of draws)"
    ),
    "matched_count_minus_its_null": (
        "(MoE expert − matched-count control) − the same with labels permuted (that difference over its own null)"
    ),
    "moe_vs_dense_on_routed_tokens": "MoE expert − all dense neurons on the expert's routed tokens",
    "moe_vs_matched_subsets": (
        "MoE expert − dense neurons on routing-matched token subsets (one random draw of the subsets: the "
        "interval is conditional on it)"
    ),
    "moe_vs_untrained": (
        "MoE expert − untrained MoE expert (one random initialization of the untrained model: the interval "
        "is conditional on it and leaves out the variance between initializations)"
    ),
    "permuted_labels": "MoE − dense, both probed with permuted labels (the protocol's own bias)",
    "permuted_labels_on_routed_tokens": (
        "MoE − the matched-count routed-token control, both with permuted labels (that control's null)"
    ),
}
#: The metric the held-out tables and the reading lead with (the probing section's ``LEAD_METRIC``), then F1.
LEAD_METRIC = "balanced_accuracy"
_METRICS = {"balanced_accuracy": "balanced accuracy", "f1": "class-balanced F1"}


def _interval(record: dict[str, Any]) -> str:
    """``estimate [low, high]``, ``estimate (no interval: why)`` or ``unavailable (why)`` of a record."""
    why = record.get("interval_unavailable_reason") or "not computed"
    available = record.get("interval_available")
    low, high = (record.get("ci_low"), record.get("ci_high")) if available else (None, None)
    return format_interval(record.get("estimate"), low, high, "+.3f", why)


def _method_words(record: dict[str, Any]) -> str:
    """How a record's interval was computed, in words: a t interval over the documents and the control's
    random draws, or a document bootstrap."""
    if str(record.get("interval_method") or "").startswith("t"):
        return "t interval over the documents and the control's random draws"
    return "document bootstrap"


def _concepts(record: dict[str, Any] | None) -> str:
    """`` (n)``: the concepts a record's estimate averages over (empty when not recorded)."""
    n = (record or {}).get("n_concepts")
    return f" ({int(n)})" if n is not None and record.get("estimate") is not None else ""


def _held_out_cell(record: dict[str, Any]) -> str:
    """A held-out table cell: the interval and, in brackets, the concepts it averages over."""
    return _interval(record) + _concepts(record)


def _held_out_table(records: list[dict[str, Any]], ks: list[int]) -> list[str]:
    """The pooled held-out comparisons at ``ks``: balanced accuracy first, class-balanced F1 beside; each
    cell names the concepts it averages over (the per-concept gate keeps different concepts in different
    comparisons, ks and metrics, so rows and columns may average different concept sets)."""
    metrics = [m for m in (LEAD_METRIC, "f1") if any(r.get("metric", "f1") == m for r in records)]
    heads = [f"{_METRICS[m]}, k = {k}" for m in metrics for k in ks]
    lines = [
        "| held-out comparison (gated concepts pooled; (n): concepts in that cell) | "
        + " | ".join(heads)
        + " |"
    ]
    lines.append("|---|" + "---|" * len(heads))
    for name, label in _COMPARISONS.items():
        row = [r for r in records if r["protocol"] == "held_out" and r["comparison"] == name]
        if not row:
            continue
        by = {(r.get("metric", "f1"), r["k"]): r for r in row}
        cells = [_held_out_cell(by[(m, k)]) if (m, k) in by else "–" for m in metrics for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


#: The comparisons shown per concept group (the README's group table), in order.
_GROUP_COLUMNS = {
    "moe_vs_dense": "MoE − dense layer",
    "moe_vs_dense_on_routed_tokens_matched_count": "MoE − d_expert dense neurons on routed tokens",
    "matched_count_minus_its_null": "that − its permuted-label null",
    "moe_vs_dense_on_routed_tokens": "MoE − all dense neurons on routed tokens",
    "moe_vs_untrained": "MoE − untrained MoE",
}


def _group_cell(record: dict[str, Any] | None) -> str:
    if record is None or record.get("estimate") is None:
        return "–"
    if not record.get("interval_available"):
        return f"{record['estimate']:+.3f} (no interval)" + _concepts(record)
    return f"{record['estimate']:+.3f} [{record['ci_low']:+.3f}, {record['ci_high']:+.3f}]" + _concepts(
        record
    )


def _group_table(
    groups: list[dict[str, Any]], metric: str = LEAD_METRIC, least: int = MIN_DOCUMENTS
) -> list[str]:
    """k = 1 held-out differences per concept group in ``metric`` (groups in the records' order, the lead
    group first), with the concepts each group keeps and drops at the per-concept gate (``least`` test
    documents: the run's --min-documents)."""
    rows = [r for r in groups if r.get("metric", "f1") == metric and r["comparison"] in _GROUP_COLUMNS]
    if not rows:
        return []
    by = {(r["group"], r["comparison"]): r for r in rows}
    names = [c for c in _GROUP_COLUMNS if any(r["comparison"] == c for r in rows)]
    lines = [
        f"Per concept group at k = 1 ({_METRICS[metric]}; a concept enters only if its positives and its "
        f"negatives each sit in at least {least} test documents in every arm, decided before resampling; kept, "
        "dropped and the test documents holding the kept concepts' positives are those of MoE − dense layer; "
        "(n) after a cell: the concepts that cell averages over; each record of the results lists the dropped concepts with the reason):",
        "",
        "| group | concepts kept | concepts dropped | test documents | "
        + " | ".join(_GROUP_COLUMNS[c] for c in names)
        + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        count = by.get((group, "moe_vs_dense")) or next(by[(group, c)] for c in names if (group, c) in by)
        cells = [_group_cell(by.get((group, c))) for c in names]
        lines.append(
            f"| {group} | {count.get('n_concepts') or 0} | {count.get('n_concepts_dropped') or 0} | "
            f"{int(count.get('n_documents_with_positives') or 0)} | " + " | ".join(cells) + " |"
        )
    return lines


def _reading(
    records: list[dict[str, Any]],
    groups: list[dict[str, Any]] | None = None,
    holm_tests: list[dict[str, Any]] | None = None,
    model: str | None = None,
) -> str:
    """One paragraph saying what the controls show, whichever way they come out, in :data:`LEAD_METRIC`
    (named), with F1 beside each number. It leads with the controlled verdict: the sparsity family's
    Holm-adjusted tests of ``model`` at k = 1 against both routed-token controls (``holm_tests``, the
    sparsity section's ``headline_tests``), then the uncontrolled gap, then the permuted-label check on
    its own concept set (MoE − control and its null beside the null-corrected value); with ``groups``,
    whether each concept group's own difference agrees with the pooled one, and on how many documents."""

    def at_k1(name: str, metric: str = LEAD_METRIC) -> dict[str, Any] | None:
        rows = [
            r
            for r in records
            if r["protocol"] == "held_out"
            and r["comparison"] == name
            and r["k"] == 1
            and r.get("metric", "f1") == metric
        ]
        return rows[0] if rows and rows[0].get("estimate") is not None else None

    metric = LEAD_METRIC if at_k1("moe_vs_dense") is not None else "f1"

    def both(name: str) -> str:
        lead, f1 = at_k1(name, metric), at_k1(name, "f1")
        return _counted(lead) + (f" (F1 {_counted(f1)})" if f1 is not None and metric != "f1" else "")

    matched_name = "moe_vs_dense_on_routed_tokens_matched_count"
    matched = at_k1(matched_name, metric)
    routed_name = matched_name if matched else "moe_vs_dense_on_routed_tokens"
    dense, routed = at_k1("moe_vs_dense", metric), at_k1(routed_name, metric)
    if dense is None or routed is None:
        return "The routed-token control was not available in this run, so the source of the gap is not separated."
    which = "d_expert random dense neurons (as many as an expert offers)" if matched else "the dense neurons"
    head = (
        f"Reading ({_METRICS[metric]}, gated token-level concepts pooled, the number of concepts behind each "
        "number beside it; F1 in brackets): "
    )
    verdict = _holm_lead(holm_tests or [], model, metric)
    uncontrolled = (
        f"the held-out expert advantage over the dense model is {both('moe_vs_dense')}; when {which} are "
        f"probed on exactly each expert's routed tokens it is {both(routed_name)}"
        + _different_sets(dense, routed)
    )
    if verdict:
        text = (
            head
            + verdict
            + " Without that control, at k = 1 "
            + uncontrolled
            + "; the gap over the dense model does not hold routing's choice of tokens fixed, so the "
            "controlled verdict above is the result."
        )
    else:
        text = (
            head
            + "at k = 1 "
            + uncontrolled
            + " (this run has no Holm-adjusted test of these differences: no sparsity family; every interval "
            "here is unadjusted)."
        )
    corrected = at_k1("matched_count_minus_its_null", metric)
    if matched is not None and corrected is not None:
        text += " " + _null_check(corrected, at_k1("matched_count_minus_its_null", "f1"), metric)
        text += _groups_clause(groups or [], metric)
    null = at_k1("permuted_labels", metric)
    if null is not None:
        text += f" MoE − dense with permuted labels (the protocol's own bias) is {both('permuted_labels')}."
    if metric != "f1":
        text += (
            " Balanced accuracy leads because its chance level is 0.5 for any probe; F1's chance level, "
            "2q / (1 + 2q) for a probe that says positive on a fraction q of a balanced test set, moves with "
            "how often the chosen probes say positive (docs/METHODS.md)."
        )
    return text


#: The routed-token controls of the sparsity family's Holm verdicts, in the order the reading gives them.
_HOLM_CONTROLS = {
    "moe_vs_dense_on_routed_tokens_matched_count": "d_expert random dense neurons (count-matched)",
    "moe_vs_dense_on_routed_tokens": "all dense neurons",
}


def _holm_lead(tests: list[dict[str, Any]], model: str | None, metric: str) -> str:
    """The reading's lead: ``model``'s Holm-adjusted tests at k = 1 against both routed-token controls in
    ``metric`` (F1 beside), each with its unadjusted interval and verdict; empty when the run has none."""

    def test(comparison: str, which: str) -> dict[str, Any] | None:
        rows = [
            t
            for t in tests
            if t.get("model") == model and t.get("k") == 1 and t.get("comparison") == comparison
            and t.get("metric") == which and t.get("p_holm") is not None
        ]  # fmt: skip
        return rows[0] if rows else None

    def said(t: dict[str, Any]) -> str:
        return f"{_counted(t)}, Holm p = {t['p_holm']:.4g}: {t['verdict']}"

    parts = []
    for comparison, label in _HOLM_CONTROLS.items():
        lead, f1 = test(comparison, metric), test(comparison, "f1")
        if lead is None:
            continue
        parts.append(
            f"vs {label} {said(lead)}" + (f" (F1 {said(f1)})" if f1 is not None and metric != "f1" else "")
        )
    if not parts:
        return ""
    family = next(t for t in tests if t.get("model") == model and t.get("p_holm") is not None)
    return (
        f"at k = 1, against dense neurons probed on exactly each expert's routed tokens, the sparsity "
        f"family's Holm-adjusted tests of this model ({model}; Holm over its "
        f"{family.get('tests_in_family')} tests, {family.get('family')}) find: "
        + "; ".join(parts)
        + ". The verdict follows the Holm-adjusted p-value; the intervals beside it are unadjusted."
    )


def _part(record: dict[str, Any], key: str) -> str:
    """A part of a null-corrected record (``uncorrected`` or ``null``): its interval, or its point value
    (from ``a_mean``/``b_mean``) when the results file predates the parts."""
    value = record.get(f"{key}_estimate")
    if value is not None:
        low, high = record.get(f"{key}_ci_low"), record.get(f"{key}_ci_high")
        return format_interval(value, low, high, "+.3f", "no interval")
    a, b = record.get("a_mean"), record.get("b_mean")
    if a is None or b is None:
        return "not recorded"
    uncorrected = a - b
    value = uncorrected if key == "uncorrected" else uncorrected - record["estimate"]
    return f"{value:+.3f} (no interval in this results file)"


def _null_check(corrected: dict[str, Any], f1: dict[str, Any] | None, metric: str) -> str:
    """The permuted-label check on its own concept set (those gated in all four arms): MoE − the
    count-matched control and the same with permuted labels, beside the difference of the two. In
    balanced accuracy the null's expectation is 0, so the subtraction is a check that adds the null's
    noise, not a correction; in F1 the null is not 0 and the subtraction corrects it."""
    n = corrected.get("n_concepts")
    over = f" over the {int(n)} concepts gated in all four arms" if n is not None else ""
    text = (
        f"On that control's permuted-label check{over} (its own, smaller set; a "
        f"{_method_words(corrected)} each, unadjusted, outside the Holm family): MoE − control "
        f"{_part(corrected, 'uncorrected')}, the same with labels permuted {_part(corrected, 'null')}, "
        f"the first minus the second {_interval(corrected)}"
    )
    if metric == "balanced_accuracy":
        text += (
            ". In balanced accuracy the null's expectation is 0 (chance is 0.5 for any probe), so the "
            "subtraction is a check, not a correction: MoE − control on this set is the comparison, and the "
            "difference minus the null adds the null's own noise"
        )
        low, high = corrected.get("null_ci_low"), corrected.get("null_ci_high")
        if low is not None and high is not None:
            text += (
                " (here the null's interval covers 0: no bias of the protocol shows)"
                if low <= 0 <= high
                else " (here the null's interval excludes 0: the protocol shows a bias the subtraction removes)"
            )
    if f1 is not None and metric != "f1":
        text += (
            f" (F1, whose null is not 0, so the subtraction corrects, with this one permutation of the labels: "
            f"MoE − control {_part(f1, 'uncorrected')}, its null {_part(f1, 'null')}, corrected {_interval(f1)})"
        )
    return text + "."


def _counted(record: dict[str, Any] | None) -> str:
    """A quoted number in the reading: the interval and the concepts it averages over."""
    if record is None:
        return "unavailable"
    n = record.get("n_concepts")
    return _interval(record) + (f" over {int(n)} concepts" if n is not None else "")


def _different_sets(first: dict[str, Any], second: dict[str, Any]) -> str:
    """Why no "share that remains" is given: the per-concept gate decides each comparison's concepts on its
    own arms, and the records do not list the concepts kept, so two rows cannot be put over one set."""
    n1, n2 = first.get("n_concepts"), second.get("n_concepts")
    if n1 is not None and n1 == n2:
        return (
            f". Both average {n1} concepts, but the records do not list which, and the per-concept gate keeps "
            "each comparison's own, so no share of the one that remains in the other is given"
        )
    counts = f" ({n1} and {n2} concepts)" if n1 is not None and n2 is not None else ""
    return (
        f". The two average different concept sets{counts}: the per-concept gate keeps each comparison's "
        "own, so no share of the one that remains in the other is given"
    )


def _groups_clause(groups: list[dict[str, Any]], metric: str) -> str:
    """Each concept group's permuted-label check at k = 1 (its MoE − matched-count control and, beside it,
    that minus its null, when the record carries the parts), said as covering 0 or not, with the test
    documents its kept concepts' positives sit in, so the pooled reading is not taken for every group's.
    In balanced accuracy the side is read on MoE − control (its null's expectation is 0) where recorded."""
    parts, sides, documents = [], {}, {}
    for r in groups:
        if r.get("comparison") != "matched_count_minus_its_null" or r.get("metric", "f1") != metric:
            continue
        if r.get("estimate") is None or not r.get("interval_available"):
            parts.append(f"{r['group']}: no interval")
            continue
        plain = metric == "balanced_accuracy" and r.get("uncorrected_ci_low") is not None
        low, high = (
            (r["uncorrected_ci_low"], r["uncorrected_ci_high"]) if plain else (r["ci_low"], r["ci_high"])
        )
        side = "covers 0" if low <= 0 <= high else ("above 0" if low > 0 else "below 0")
        sides[r["group"]] = side
        informative = r.get("n_documents_with_positives")
        documents[r["group"]] = (r.get("n_concepts"), informative)
        where = f", {int(informative)} informative test documents" if informative is not None else ""
        value = (
            f"MoE − control {_part(r, 'uncorrected')}, minus its null {_group_cell(r)}"
            if r.get("uncorrected_estimate") is not None
            else _group_cell(r)
        )
        parts.append(f"{r['group']} {value} ({side}{where})")
    if not parts:
        return ""
    said = (
        "MoE − control and that minus its null"
        if any("MoE − control" in p for p in parts)
        else ("the same null-corrected difference")
    )
    text = (
        f" By concept group (tables below), {said} at k = 1: "
        + "; ".join(parts)
        + " (each interval unadjusted for the groups; informative: the test documents holding a positive of "
        "a kept concept)"
    )
    shown = [group for group, side in sides.items() if side != "covers 0"]
    not_shown = [group for group, side in sides.items() if side == "covers 0"]
    if shown and not_shown:
        rests = ", ".join(
            f"{g}, whose {documents[g][0]} concepts rest on {int(documents[g][1])} informative test documents"
            if documents[g][1] is not None and documents[g][0] is not None
            else g
            for g in shown
        )
        text += (
            f": the pooled, unadjusted result is carried by {rests}; for {', '.join(not_shown)} it is not shown, "
            "so it does not speak for every kind of concept"
        )
    return text + "."


#: What each interval of the main run's findings resamples (the results block's header says it).
INTERVALS_NOTE = (
    "Intervals are 95% percentile bootstraps, and they resample different units: the held-out probing "
    "differences resample test documents (both arms on the same documents), except the matched-count control's, "
    "a t interval over its random neuron draws and the documents (docs/METHODS.md); the paper-protocol "
    "comparison is an estimate with no interval (its units are picked on the split it is scored on, and its "
    "concepts share documents); the specialization excess over the document-permutation baseline, and its trained − "
    "untrained difference, resample documents; the excess prints both the basic and the percentile interval of the "
    "same resamples (the planted stream behind the choice of basic, docs/METHODS.md, does not reproduce the run's "
    "bootstrap bias, so neither is preferred), and trained − untrained is taken against the mean of several random "
    "initializations of the untrained model with a t interval adding the variance between them to the "
    "documents' bootstrap variance (score and null mean recomputed on each resample from the "
    f"same first {BOOTSTRAP_PERMUTATIONS} document permutations, so the null mean's Monte Carlo error over permutations is not in "
    "the interval; both models on the same documents); the logit-lens share of experts resamples the test documents of the "
    "document split (its token is chosen on the selection documents). Domain experts "
    "carry document-permutation p-values, not intervals; a p-value at its floor, 1/(1 + permutations), "
    "only says that no permutation reached the score; a mean ± sd over experts is a spread, not an interval. "
    "The sparsity family's verdicts (above 0, below 0, not separated) follow each named test's p-value "
    "Holm-adjusted once over every test the verdict sentence reads (members × ks × both metrics × both "
    "routed-token controls), not the unadjusted interval printed beside it: the count-matched control's "
    "interval is a t interval over its random neuron draws, the other controls' are percentile bootstraps "
    "beside a document swap test (conditional on the draw where the control is one random draw, as the "
    "routing-matched token subsets are), and a test whose interval and p-value fall on different sides of "
    "0 is marked and counted."
)


def results_markdown(results: dict[str, Any], source: str, planted: dict[str, Any] | None = None) -> str:
    """The results section for ``results`` (a parsed ``results.json``) written at ``source``; ``planted``
    (the planted studies' results, when given) supplies the measured coverage of the held-out intervals."""
    meta = results["metadata"]
    options = meta["options"]
    sections = results["sections"]
    lines = [
        f"Generated from [`{source}`]({source}) by `python tools/readme_results.py`: "
        f"`{command_line(options)}` on `{options['model']}` vs `{options['dense_baseline']}`, "
        f"{options['max_tokens']:,} tokens of the `{options['split']}` split per model, seed {options['seed']}. "
        f"{INTERVALS_NOTE} Numbers are the toys' own.",
        "",
        "**What the run found** (the report's findings box):",
        "",
    ]
    lines += [f"- {finding}" for finding in results.get("findings", [])]
    probing = sections.get("probing", {})
    records = probing.get("records", {}).get("comparisons") or probing.get("comparisons") or []
    if records:
        ks = sorted({r["k"] for r in records if r["protocol"] == "held_out"})
        ks = [k for k in ks if k in (1, max(ks))] if ks else []
        if ks:
            groups = probing.get("records", {}).get("groups") or probing.get("groups") or []
            holm = sections.get("sparsity", {}).get("headline_tests") or []
            reading = _reading(records, groups, holm, options.get("model"))
            lines += ["", *_held_out_table(records, ks), "", reading]
            for metric in (LEAD_METRIC, "f1"):
                table = _group_table(groups, metric, _least_documents(options))
                if table:
                    lines += ["", *table]
            lean = _interval_lean(held_out_intervals(sections, options.get("model")), planted=planted)
            if lean:
                lines += ["", lean]
        paper = [
            r
            for r in records
            if r["protocol"] == "paper" and r["comparison"] == "moe_vs_dense" and r["k"] == 1
        ]
        if paper:
            lines += [
                "",
                "For comparison with the published numbers, the paper's protocol as its reference code "
                "samples and scores (per-document balanced sample, F1 at each unit's routed class ratio, best "
                f"unit picked on the split it is scored on) gives MoE − dense {paper[0]['estimate']:+.3f} at k = 1 on "
                "the same run (an estimate with no interval: its units are picked on the split they are scored "
                "on, and its concepts share documents, so neither concepts nor documents resample it honestly): "
                "the held-out protocol and its controls above are what to quote.",
            ]
    return "\n".join(lines)


def held_out_intervals(sections: dict[str, Any], analyzed: str | None = None) -> list[dict[str, Any]]:
    """Every held-out interval of a run: the probing section's comparisons and per-group records, and the
    sparsity family's members (``analyzed``: the run's model, whose family rows copy probing's and are
    counted once)."""
    probing = sections.get("probing", {})
    found = probing.get("records", {}) or probing
    rows = [r for r in found.get("comparisons") or [] if r.get("protocol") == "held_out"]
    rows += [r for r in found.get("groups") or [] if r.get("protocol") == "held_out"]
    sparsity = sections.get("sparsity", {})
    family = (sparsity.get("records", {}) or sparsity).get("comparisons") or []
    rows += [r for r in family if r.get("protocol", "held_out") == "held_out" and r.get("model") != analyzed]
    return rows


def interval_lean(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """Where estimates sit in their intervals: ``n``, ``median`` relative position (0 = low end, 1 = high
    end), ``below`` 0.25 and ``above`` 0.75 counts, ``median_bias`` (None without an interval)."""
    import statistics

    rows = [
        r
        for r in records
        if r.get("interval_available") and r.get("ci_low") is not None and r["ci_high"] > r["ci_low"]
    ]
    if not rows:
        return None
    position = [(r["estimate"] - r["ci_low"]) / (r["ci_high"] - r["ci_low"]) for r in rows]
    bias = [r["bootstrap_bias"] for r in rows if r.get("bootstrap_bias") is not None]
    return {
        "n": len(rows),
        "median": statistics.median(position),
        "below": sum(p < 0.25 for p in position),
        "above": sum(p > 0.75 for p in position),
        "median_bias": statistics.median(bias) if bias else None,
    }


def _lean_text(lean: dict[str, float]) -> str:
    text = (
        f"a median {lean['median']:.2f} of the way from the low to the high end ({lean['below']} below 0.25, "
        f"{lean['above']} above 0.75 of {lean['n']})"
    )
    if lean["median_bias"] is not None:
        text += f", median bootstrap bias {lean['median_bias']:+.4f}"
    return text


def _interval_lean(
    records: list[dict[str, Any]],
    k1: list[dict[str, Any]] | None = None,
    planted: dict[str, Any] | None = None,
) -> str:
    """Where the held-out estimates sit inside their intervals (0.5: centred): over every held-out interval
    of the run (probing, per group, sparsity members) and separately at k = 1; then the interval method
    and, from ``planted`` when given, its coverage on the planted case of the gated regime."""
    documents = {r.get("n_documents") for r in records if r.get("n_documents") is not None}
    records = [r for r in records if not str(r.get("interval_method") or "").startswith("t")]
    methods = {r.get("interval_method") for r in records if r.get("interval_method")}
    if k1 is not None:
        k1 = [r for r in k1 if not str(r.get("interval_method") or "").startswith("t")]
    every = interval_lean(records)
    if every is None:
        return ""
    at_k1 = interval_lean([r for r in records if r.get("k") == 1] if k1 is None else k1)
    text = (
        f"How the held-out percentile intervals sit (all {every['n']} of the run: every comparison, k and "
        "metric, the per-group table and every sparsity member, leaving out the matched-count control's t "
        f"intervals, symmetric by construction): the estimate lies at {_lean_text(every)}"
    )
    if at_k1 is not None:
        text += f"; at k = 1 alone, at {_lean_text(at_k1)}"
    per = []
    for name, label in _LEAN_COMPARISONS.items():
        lean = interval_lean([r for r in records if r.get("comparison") == name])
        if lean is not None:
            per.append(f"{label}: {_lean_text(lean)}")
    if per:
        text += "; per comparison (every k, metric, group and member), " + "; ".join(per)
    study = (planted or {}).get("studies", {}).get("gated_interval_method_coverage")
    method = study["pipeline method"] if study else "percentile"
    coverage = _gated_coverage(study, documents) if study and methods <= {method} else ""
    return (
        text
        + f". 0.5 is centred. The intervals are {method} bootstraps{coverage}, reported as computed; each "
        "record carries its bias."
    )


def _gated_coverage(study: dict[str, Any], documents: set[int]) -> str:
    """`` (on a planted case of this run's shape ...)``: the pipeline's interval's coverage in the cells
    of the gated held-out study that match the run (its run-shaped cells with noise of each arm's own;
    the older independent-subset cells when the record has none), judged against the nominal level."""
    if study.get("run-shaped cells"):
        return _run_shaped_coverage(study, documents)
    settings, method = study["settings"], study["pipeline method"]
    shape = (
        "this run's shape"
        if documents == {settings["documents"]}
        else f"{settings['documents']} test documents (this run: {', '.join(map(str, sorted(documents)))})"
    )
    keys = [(cell, m) for cell in settings["cells"] for m in GATED_METRIC_NAMES]
    rates = {key: study["rates"][f"{key[0]}, {method}, {key[1]}"] for key in keys}
    judged = {against_nominal(r) for r in rates.values()}
    cells = "; ".join(
        f"a {cell} in {GATED_METRIC_NAMES[m]} {planted_rate(rates[cell, m])}"
        + ("" if len(judged) == 1 else f", {against_nominal(rates[cell, m])}")
        for cell, m in keys
    )
    return (
        f" (on a planted case of {shape} with the per-concept gate applied, `gated_interval_method_coverage` in "
        f"docs/METHODS.md, the {method} interval covered {cells}"
        + (f"; each {judged.pop()}" if len(judged) == 1 else "")
        + ")"
    )


def _run_shaped_coverage(study: dict[str, Any], documents: set[int]) -> str:
    """The README's words on the run-shaped cells that match the run: the case, each rate, and whether the
    intervals are somewhat narrow there."""
    run, method = study["run-shaped cells"], study["pipeline method"]
    s = run["settings"]
    shape = (
        "this run's shape"
        if documents == {s["documents"]}
        else f"{s['documents']} test documents (this run: {', '.join(map(str, sorted(documents)))})"
    )
    matching = _run_shaped_matching(run)
    rates = [run["cells"][c][m]["rate"] for c in matching for m in GATED_METRIC_NAMES]
    noise = " and ".join(f"{sd:g}" for sd in s["arm noise sd"] if sd > 0)
    hits = [r["hits"] for r in rates]
    worst = min(
        ((c, m) for c in matching for m in GATED_METRIC_NAMES),
        key=lambda cm: run["cells"][cm[0]][cm[1]]["rate"]["rate"],
    )
    lowest = f"lowest: {worst[0].split(',')[0]}, {GATED_METRIC_NAMES[worst[1]]}, arm noise sd {worst[0].rsplit(' ', 1)[-1]}"
    return (
        f" (on a planted case of {shape} with the per-concept gate applied: {s['common concepts']} concepts "
        f"with positives in every test document and {s['subset concepts']} whose positives share one subset of "
        f"{s['shared subset documents']} documents, as the run's latex concepts do, and per-document noise of "
        f"each arm's own, logit sd {noise}, whose size the run does not measure; `gated_interval_method_coverage` "
        f"in docs/METHODS.md: the {method} interval covered the truth in {min(hits)}–{max(hits)} of "
        f"{rates[0]['n']} seeds in each of the {len(rates)} cells and metrics (planted difference and null, "
        f"balanced accuracy and class-balanced F1, each sd; binomial se about {max(r['se'] for r in rates):.3f}; "
        f"{lowest}): {_narrow(rates)})"
    )


#: The comparisons whose intervals' lean is also given one by one.
_LEAN_COMPARISONS = {
    "moe_vs_dense": "MoE − dense",
    "moe_vs_untrained": "MoE − untrained",
    "moe_vs_dense_on_routed_tokens_matched_count": "MoE − matched-count routed-token control",
}


_NOT_A_SETTING = {"out", "progress", "fresh", "keep_checkpoints", "threads", "checkpoint_every"}
#: Options read by one analysis only (name prefixes): left out of the command of a run without it.
_READ_ONLY_BY = {"explain": ("explainer", "explain_")}


def _unused(name: str, options: dict[str, Any]) -> bool:
    """Whether option ``name`` is read by no analysis of the run (so its value changes nothing)."""
    from tl_moe.pipeline import default_analyses

    ran = options.get("analyses") or default_analyses()
    return any(name.startswith(prefixes) and owner not in ran for owner, prefixes in _READ_ONLY_BY.items())


def _least_documents(options: dict[str, Any]) -> int:
    """The run's fewest documents behind an interval (its --min-documents; the default when a results
    file does not record it)."""
    return int(options.get("min_documents", MIN_DOCUMENTS))


def command_line(options: dict[str, Any]) -> str:
    """The ``tl-moe analyze`` command that reproduces a run's ``options`` (its ``--out`` left out); an
    analysis's setting is given by its flat flag (``--probe-ks``), in the order of ``options``."""
    from tl_moe.pipeline.options import option_specs, run_wide_fields

    specs = {spec.name: spec for spec in run_wide_fields()}
    specs |= {key: spec for key, (_, spec) in option_specs().items()}
    words = ["tl-moe", "analyze"]
    for name, value in options.items():
        spec = specs.get(name)
        if spec is None or name in _NOT_A_SETTING or _unused(name, options):
            continue
        default = spec.default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if value == default or (isinstance(default, Path) and value == str(default)):
            continue
        if spec.metadata.get("positional"):
            words.insert(2, str(value))
        elif isinstance(default, bool):
            words.append("--" + name.replace("_", "-"))
        else:
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            words += ["--" + name.replace("_", "-"), "none" if value is None else shown]
    return " ".join(words)


def findings_markdown(results: dict[str, Any], source: str) -> str:
    """A results block that quotes a run's findings (each with its control and interval) and its command."""
    options = results["metadata"]["options"]
    lines = [
        f"Generated from [`{source}`]({source}) by `python tools/readme_results.py`; the run: "
        f"`{command_line(options)}` ({options['split']} split, seed {options['seed']}). Numbers are the "
        "toys' own; each interval is a 95% bootstrap over what its line names (documents or experts).",
        "",
    ]
    lines += [f"- {finding}" for finding in results.get("findings", [])]
    return "\n".join(lines)


LABELS_FINDING = "**Automatic labels**"
"""How the explain finding that quotes the mean label scores begins."""
LABEL_STUDY, LABEL_CELL = "label_mean_interval_coverage", "run shaped"
"""The planted study of the mean label scores' intervals, and its first cell shaped like the toy explain run."""
LABEL_RUN_CELLS = (LABEL_CELL, "run shaped, recall lower in large documents")
"""The study's cells shaped like the toy explain run: every one is quoted, none singled out."""
LABEL_METRICS = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "recall": "recall"}
LABEL_METHODS = ("percentile", "basic", "BCa")


def explain_markdown(results: dict[str, Any], source: str, planted: dict[str, Any] | None = None) -> str:
    """The explain block: the run's findings, the labels' headline with the coverage its interval method
    reached on the planted cases of the run's shape (``planted``, by default the committed planted studies
    where present) beside its interval and, after the finding, each mean's coverage by method there."""
    planted = planted if planted is not None else _planted_if_any(Path("."))
    study = (planted or {}).get("studies", {}).get(LABEL_STUDY)
    text = findings_markdown(results, source)
    if study is None:
        return text
    metrics = results.get("sections", {}).get("explain", {}).get("metrics", {})
    lines = [
        _with_label_coverage(line, study, metrics) if line.startswith(f"- {LABELS_FINDING}") else line
        for line in text.split("\n")
    ]
    return "\n".join(lines)


def _label_key(study: dict[str, Any], method: str, metric: str, cell: str = LABEL_CELL) -> str:
    return f"{cell}, {method}, {metric}"


def _run_cells(study: dict[str, Any]) -> list[str]:
    """The run-shaped cells this study record holds (an older record has only the first)."""
    method = study["pipeline method"]
    return [c for c in LABEL_RUN_CELLS if _label_key(study, method, "balanced_accuracy", c) in study["rates"]]


def _with_label_coverage(line: str, study: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The labels' finding with the planted coverage of its headline interval in every run-shaped cell
    after that interval, and a sentence of every mean's coverage by method there after the line."""
    method = study["pipeline method"]
    cells = []
    for cell in _run_cells(study):
        headline = study["rates"][_label_key(study, method, "balanced_accuracy", cell)]
        cells.append(f'in cell "{cell}" {planted_rate(headline)}, {against_nominal(headline)}')
    beside = (
        f" (nominal 95%; on the planted cases of this run's shape the {method} interval covered the true mean "
        + "; ".join(cells)
    )
    at = line.find(" (chance ")
    line = line[:at] + beside + "; " + line[at + len(" (") :] if at >= 0 else line
    return line + _label_coverage_sentence(study, metrics)


def _metric_value(metrics: dict[str, Any], key: str) -> float | None:
    """The estimate of a ``"0.761 [0.744, 0.790]"`` metric (or a plain number), None where absent."""
    value = metrics.get(key)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).split()[0])
    except (ValueError, IndexError):
        return None


def _run_rates(metrics: dict[str, Any]) -> str:
    """This run's mean recall and mean specificity from its results (specificity as twice the mean balanced
    accuracy less the mean recall, both over the same experts), or ``""`` where they are absent."""
    recall = _metric_value(metrics, "all layers: mean recall [95% CI]")
    balanced = _metric_value(metrics, "all layers: mean balanced accuracy [95% CI]")
    if recall is None or balanced is None:
        return ""
    return (
        f"; this run's mean recall {recall:.2f} and mean specificity {2 * balanced - recall:.2f} "
        "(twice its mean balanced accuracy less its mean recall), from its results"
    )


def _better_methods(study: dict[str, Any], metric: str, cell: str) -> list[str]:
    """The methods that cover more often than the pipeline's by over two standard errors of the difference."""
    method = study["pipeline method"]
    mine = study["rates"][_label_key(study, method, metric, cell)]
    return [
        m
        for m in LABEL_METHODS
        if m != method and rejects_more(study["rates"][_label_key(study, m, metric, cell)], mine)
    ]


def _better_note(study: dict[str, Any], metric: str, cells: list[str]) -> str:
    """Which methods cover more often than the pipeline's, said once where every cell agrees and cell by
    cell where they differ."""
    method = study["pipeline method"]
    better = {cell: _better_methods(study, metric, cell) for cell in cells}
    named = {cell: " and ".join(ms) if ms else "none" for cell, ms in better.items()}
    if len(set(named.values())) == 1:
        which = next(iter(named.values()))
        if which == "none":
            return (
                f"no method covers more often than {method} by over two standard errors in any of these cells"
            )
        verb = "covers" if len(next(iter(better.values()))) == 1 else "cover"
        return (
            f"{which} {verb} more often than {method} by over two standard errors in every one of these cells"
        )
    per_cell = ", ".join(f'cell "{cell}" {which}' for cell, which in named.items())
    return f"what covers more often than {method} by over two standard errors differs between the cells: {per_cell}"


def _cell_coverage(study: dict[str, Any], metrics: dict[str, Any], cell: str) -> str:
    """One run-shaped cell: each mean's coverage by method, the misses' side, the estimate's median position,
    the mean estimate − truth (the estimator's own bias) beside the bootstrap's bias estimate, and this
    run's estimate position."""
    method = study["pipeline method"]
    means = study.get("means", {})
    parts = []
    for metric, name in LABEL_METRICS.items():
        rates = []
        for m in LABEL_METHODS:
            key = _label_key(study, m, metric, cell)
            r, misses = study["rates"][key], study["misses, truth above / below the interval"][key]
            rates.append(
                f"{m} {r['rate']:.3f} (se {r['se']:.3f}; misses {misses['above']} with the truth above, "
                f"{misses['below']} below; the estimate at a median {study['median position of the estimate'][key]:.2f})"
            )
        mean = means.get(_label_key(study, method, metric, cell))
        bias = (
            f", the mean estimate − truth {mean['estimate'] - mean['truth']:+.3f} (the bootstrap's bias "
            f"estimate {mean['bootstrap bias']:+.4f})"
            if mean
            else ""
        )
        here = metrics.get(f"all layers: mean {name} | position in interval")
        run_position = f", this run's {method} estimate at {here:.2f}" if is_defined(here) else ""
        parts.append(f"{name}: " + ", ".join(rates) + bias + run_position)
    return f'cell "{cell}": ' + "; ".join(parts)


def _label_coverage_sentence(study: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Each mean's coverage by percentile, basic and BCa on every planted case of the run's shape, the
    misses' side, the estimate's median position and bias there beside this run's position, and where
    another method covers more often (said per cell where the cells differ)."""
    method, cells = study["pipeline method"], _run_cells(study)
    shapes = [study["shape"][cell] for cell in cells]
    r = study["rates"][_label_key(study, method, "balanced_accuracy")]

    def joined(key: str, digits: int) -> str:
        return " / ".join(f"{shape[key]:.{digits}f}" for shape in shapes)

    notes = "; ".join(
        f"{name}: {_better_note(study, metric, cells)}" for metric, name in LABEL_METRICS.items()
    )
    return (
        f" Coverage of these nominal 95% intervals of the means on the planted cases of this run's shape "
        f"(`{PLANTED}`, `{LABEL_STUDY}`, cells " + ", ".join(f'"{c}"' for c in cells) + f", {r['n']} seeds, "
        f"{study['replicates']} resamples each; their corpora: {joined('items per document, max', 0)} items "
        f"in the largest of {study['settings']['documents']} score documents, a median "
        f"{joined('items per document, median', 0)}, recall {joined('mean recall', 2)}, specificity "
        f"{joined('mean specificity', 2)}; the planted shape was set by hand from the "
        "run (`LABEL_RUN_SHAPE` in `benchmarks/planted_studies.py`)"
        + _run_rates(metrics)
        + ") — "
        + "; ".join(_cell_coverage(study, metrics, cell) for cell in cells)
        + f". {notes}. That is the coverage of cases shaped like the run, not the run's own (docs/METHODS.md "
        "says how close the planted cases come)."
    )


def drivers_markdown(results: dict[str, Any], source: str, planted: dict[str, Any] | None = None) -> str:
    """The drivers block: the run's findings, under a header that says which intervals are not plain 95%
    document intervals (re-weighting's Holm intervals, intervals over experts) and when one is missing;
    REAP saliency's split-halves ρ followed by its planted study's coverage (``planted``, by default the
    committed planted studies where present) and the run's basic interval."""
    options = results["metadata"]["options"]
    lines = [
        f"Generated from [`{source}`]({source}) by `python tools/readme_results.py`; the run: "
        f"`{command_line(options)}` ({options['split']} split, seed {options['seed']}). Numbers are the "
        "toys' own. Each interval is a 95% bootstrap over what its line names (documents or experts), except "
        "re-weighting's: every domain is shown with its Holm-adjusted interval (the level is given; "
        "family-wise 5% over the domains) and none is singled out. Where a control is the mean of random "
        "draws (re-weighting's and steering's random experts, the held-out probing's matched-count random "
        "neurons), the interval is a t interval, its variance the documents' bootstrap variance of the draw "
        "mean plus the variance between the draws over their number (Satterthwaite's degrees of freedom); "
        "Holm's intervals use the t quantile at Holm's level. Report-half association lifts are confirmed after Benjamini–Hochberg over the measured "
        f"discoveries (Benjamini–Yekutieli beside it). An interval behind fewer than {_least_documents(options)} "
        "documents is reported unavailable, never as a number.",
        "",
    ]
    planted = planted if planted is not None else _planted_if_any(Path("."))
    after = {
        SALIENCY_FINDING: _saliency_caveat(results, planted),
        ESTIMATE_FINDING: _paired_caveat(results, planted),
        DOMAIN_FINDING: _domain_regimes(results, planted),
    }
    lines += [
        f"- {finding}" + "".join(text for start, text in after.items() if finding.startswith(start))
        for finding in results.get("findings", [])
    ]
    return "\n".join(lines)


SALIENCY_FINDING = "**Driver experts**"
"""How the drivers finding that quotes REAP saliency's split-halves ρ begins."""
SALIENCY_STATISTIC = "REAP, split halves"
"""That ρ's name in the planted study ``rho_interval_methods``."""
SALIENCY_METRIC = "Spearman(REAP saliency, removal effect)"
ESTIMATE_FINDING = "**First-order estimate**"
"""How the drivers finding that quotes the estimate's and REAP's paired ρ begins."""
PAIRED_STATISTICS = ("estimate, paired", "REAP, paired", "estimate − REAP, paired")
"""The paired ρ's (and their difference) of that finding, by their names in ``rho_interval_methods``."""
DOMAIN_FINDING = "**Drivers vs domain experts**"
"""How the drivers finding that quotes the domain-score ρ begins."""


def _domain_regimes(results: dict[str, Any], planted: dict[str, Any] | None) -> str:
    """The document lengths of the planted study of the domain-score ρ (the finding itself names the run's
    mean tokens per report document) and, where the study has it, its confounded case's raw and partial
    intervals."""
    study = (planted or {}).get("studies", {}).get("driver_domain_rho")
    if study is None:
        return ""
    regimes: dict[tuple[int, int], list[str]] = {}
    for kind, planted_kind in study["settings"]["kinds"].items():
        regimes.setdefault(tuple(planted_kind["tokens"]), []).append(kind)
    shown = " vs ".join(f"{low}–{high - 1} ({'; '.join(kinds)})" for (low, high), kinds in regimes.items())
    return (
        f" The planted study of this ρ (`driver_domain_rho`, docs/METHODS.md) measured its coverage at "
        f"{shown} tokens per document.{_confound_summary(study)}{_planted_shape(study)}"
    )


def _confound_summary(study: dict[str, Any]) -> str:
    """The planted confound without a direct link, pooled over layers: how often the raw ρ's interval
    excludes 0 and the headline partial ρ's (the mean within-layer one where the study has it) covers its
    truth 0; and the kind whose layers differ, where the study has it (empty for results without them)."""
    kinds = study["settings"]["kinds"]
    kind = next(
        (
            kind
            for kind, planted in kinds.items()
            if planted.get("weight sd")
            and not planted["link"]
            and not planted["spread"]
            and not planted.get("layer effect step")
        ),
        None,
    )
    if kind is None or "partial given routing frequency" not in study:
        return ""
    key = f"{kind}, over all layers"
    name = "mean within-layer partial ρ"
    partial = study.get("mean within-layer partial given routing frequency")
    if partial is None:
        name, partial = "partial ρ", study["partial given routing frequency"]
    excludes = study["rho's interval excludes 0"][key]
    text = (
        " Where domain score and effect both follow routing frequency with no direct link (planted), the "
        f"pooled raw ρ's interval excludes 0 in {planted_rate(excludes)} and the {name}'s covers its "
        f"truth 0 in {planted_rate(partial['rates'][key])}, {against_nominal(partial['rates'][key])}"
        f"{_miss_direction(partial, key)}{_residual_confound(partial, key)}."
    )
    layered = next((kind for kind, planted in kinds.items() if planted.get("layer effect step")), None)
    if layered is None or name == "partial ρ":
        return text
    key = f"{layered}, over all layers"
    low, high = kinds[layered]["tokens"]
    both = study["partial rho's interval excludes 0, over all layers"]
    return (
        text
        + (
            f" Where in addition {kinds[layered]['layers']} layers differ in mean effect and domain specificity "
            f"({low}–{high - 1} tokens per document, planted), the pooled partial ρ's interval excludes 0 in "
            f"{planted_rate(both[f'{layered}, pooled'])} (it ranks the layers), while the mean within-layer "
            f"partial ρ's covers its truth 0 in {planted_rate(partial['rates'][key])}, "
            f"{against_nominal(partial['rates'][key])}{_miss_direction(partial, key)}"
            f"{_availability(partial, key, study['seeds'])}."
        )
        + _linked_summary(study, partial, both)
    )


def _availability(record: dict[str, Any], key: str, seeds: int) -> str:
    """How often the interval exists and its coverage counting a seed without one as a miss (empty when
    every seed has one)."""
    missing = record["misses, truth above / below the interval"][key].get("no interval", 0)
    if not missing:
        return ""
    found = record["rates"][key]
    return (
        f"; it has an interval in {found['n']} of {seeds} seeds, and counting a seed without one as a miss it "
        f"covers in {found['hits']} of {seeds} ({found['hits'] / seeds:.3f})"
    )


def _linked_summary(study: dict[str, Any], partial: dict[str, Any], excludes: dict[str, Any]) -> str:
    """The planted confounds *with* a direct link: the mean within-layer partial ρ's coverage of its truth
    and how often its interval excludes 0 (its power), per token range (empty where the study lacks them)."""
    kinds = study["settings"]["kinds"]
    linked = [k for k, planted in kinds.items() if planted.get("weight sd") and planted["link"]]
    parts = []
    for kind in linked:
        key, power_key = f"{kind}, over all layers", f"{kind}, mean within-layer"
        if key not in partial["rates"] or power_key not in excludes:
            return ""
        low, high = kinds[kind]["tokens"]
        parts.append(
            f"at {low}–{high - 1} tokens per document{_mean_truth(partial, key)}, its interval excludes 0 in "
            f"{planted_rate(excludes[power_key])} and covers its truth in {_judged_rate(partial['rates'][key])}"
            f"{_miss_direction(partial, key)}"
        )
    if not parts:
        return ""
    return (
        " Where domain score and effect follow routing frequency and also have a direct link (planted), the mean "
        "within-layer partial ρ: " + "; ".join(parts) + "."
    )


def _planted_shape(study: dict[str, Any]) -> str:
    """The planted cases' shape (domains, experts per layer, documents), to set beside the run's (empty
    where the study lacks it)."""
    settings = study["settings"]
    if not all(k in settings for k in ("domains", "experts per layer", "documents")):
        return ""
    return (
        f" These planted cases have {settings['domains']} domains, {settings['experts per layer']} experts "
        f"per layer and {settings['documents']} documents, not this run's shape (above): their rates say how "
        "the method behaves on a known answer, not this run's own coverage."
    )


def _residual_confound(partial: dict[str, Any], key: str) -> str:
    """The planted confound's mean partial ρ where its truth is 0, when it is not 0 to two decimals: what a
    rank control of a measured frequency leaves of the confound (empty where the study lacks it)."""
    mean = partial.get("mean estimate", {}).get(key)
    if mean is None or round(mean, 2) == 0:
        return ""
    return (
        f"; there the partial ρ averaged {mean:+.2f} over the seeds, not 0: the control removes most of the "
        f"confound, not all of it, so a partial ρ of about that size {'below' if mean < 0 else 'above'} 0 can "
        "be what is left of it"
    )


def _planted_if_any(root: Path) -> dict[str, Any] | None:
    """The planted studies' results under ``root``, or None where the file is absent."""
    path = root / PLANTED
    return json.loads(path.read_text()) if path.exists() else None


#: How the README names each score of a planted difference's statistic (``estimate − REAP`` → the estimate).
SCORE_WORDS = {"estimate": "the estimate", "frequency": "routing frequency"}


def _difference_scores(statistic: str) -> tuple[str, str]:
    """The two scores of a difference statistic, in order, as the README names them."""
    first, second = (part.strip() for part in statistic.split(",")[0].split("−"))
    return SCORE_WORDS.get(first, first), SCORE_WORDS.get(second, second)


def _miss_direction(
    study: dict[str, Any], key: str, value: str = "ρ", scores: tuple[str, str] | None = None
) -> str:
    """How many misses have the truth above / below the interval, from the study's miss counts, and where
    the interval covers below its nominal rate and the misses fall on one side more often than a fair coin
    would put them (two-sided binomial test at 5%), which way it errs (empty where the study's results do
    not record the counts)."""
    misses = study.get("misses, truth above / below the interval", {}).get(key)
    if not misses:
        return ""
    missing = misses.get("no interval", 0)
    unavailable = (
        f"; {missing} seeds without an interval (a resample's statistic undefined), left out of the rate"
        if missing
        else ""
    )
    if not misses["above"] + misses["below"]:
        return f" ({unavailable.removeprefix('; ')})" if missing else ""
    above, below = misses["above"], misses["below"]
    text = f" ({above} of its {above + below} misses with the truth above the interval, {below} below"
    r = study["rates"][key]
    one_sided = scipy.stats.binomtest(above, above + below, 0.5).pvalue < 0.05
    if r["nominal"] - r["rate"] > 2 * r["nominal_se"] and one_sided:
        if value == "the difference":  # signed: say which way it leans, not "over/understates"
            first, second = scores or ("the first-named score", "the second-named score")
            side, toward = ("below", second) if above > below else ("above", first)
            text += f", so the interval lies {side} the true difference there (it leans toward {toward})"
        else:
            text += f", so the interval {'understates' if above > below else 'overstates'} {value} there"
    return text + unavailable + ")"


def _saliency_caveat(results: dict[str, Any], planted: dict[str, Any] | None) -> str:
    """REAP saliency's split-halves ρ against the planted study of its interval: the chosen method's
    coverage at the default gate in each planted case, the direction of the misses, and the run's basic
    interval of the same resamples (each part left out where its results file lacks it)."""
    metrics = results.get("sections", {}).get("drivers", {}).get("metrics", {})
    study = (planted or {}).get("studies", {}).get("rho_interval_methods")
    if study is None or f"{SALIENCY_METRIC} | 95% CI" not in metrics:
        return ""
    settings = study["settings"]
    method, gate = (
        metrics.get(f"{SALIENCY_METRIC} | interval method", settings["chosen method"]),
        settings["default gate"],
    )
    cases = next(cell["cases"] for cell in settings["cells"] if cell["gate"] == gate)
    parts, understated = [], False
    for case in cases:
        key = f"{case}, gate {gate}, {method}, {SALIENCY_STATISTIC}"
        direction = _miss_direction(study, key)
        understated |= "understates" in direction
        parts.append(f"{case}{_mean_truth(study, key)}: {_judged_rate(study['rates'][key])}{direction}")
    text = (
        f" The planted study of REAP's ρ interval (`{PLANTED}`, `rho_interval_methods`, {method}, document gate "
        f"{gate}) — how often it covered the true ρ in each planted case: " + "; ".join(parts) + "."
    )
    if understated:
        text += (
            " The true ρ there is that of the experts' expected scores; the interval is one for the ρ of scores "
            "measured on a corpus of this size, whose noise pulls ρ toward 0, so where the true ρ is far from "
            "0 it lies below it more often than 5% of the time: read this run's interval as a lower range for "
            "the expected-score ρ, not a 95% interval for it."
        )
    text += _frequency_caveat(study, cases, gate, method)
    basic = metrics.get(f"{SALIENCY_METRIC} | basic 95% CI")
    if basic and all(is_defined(bound) for bound in basic):
        text += (
            f" This run's basic interval of REAP's ρ (same resamples): [{basic[0]:+.2f}, {basic[1]:+.2f}]."
        )
    return text


def _mean_truth(study: dict[str, Any], key: str) -> str:
    """`` (true value +0.58 on average over the seeds)`` where the study records it (empty otherwise)."""
    truth = study.get("mean truth", {}).get(key)
    return "" if truth is None else f" (true value {truth:+.2f} on average over the seeds)"


def _judged_rate(record: dict[str, Any]) -> str:
    """A planted coverage rate with, where it is off its nominal level by more than two binomial
    standard errors, which side it is on."""
    nominal, tolerance = record["nominal"], 2 * record["nominal_se"]
    if not is_defined(record["rate"]) or abs(record["rate"] - nominal) <= tolerance:
        return planted_rate(record)
    side = "below" if record["rate"] < nominal else "above"
    return f"{planted_rate(record)}, {side} the nominal {nominal:g} by more than two binomial standard errors"


#: The routing-frequency control's statistics in ``rho_interval_methods`` (its "REAP vs routing frequency"
#: part), with the word for each in the README.
FREQUENCY_STUDY = {
    "routed share, split halves": "the routed share's ρ",
    "REAP − frequency, split halves": "REAP − frequency",
}


def _frequency_caveat(study: dict[str, Any], cases: list[str], gate: int, method: str) -> str:
    """The routing-frequency control's planted coverage (the routed share's ρ and REAP − frequency) in
    each planted case, with the misses' direction (empty where the study lacks it)."""
    frequency = study.get("REAP vs routing frequency")
    if not frequency:
        return ""
    parts = []
    for statistic, word in FREQUENCY_STUDY.items():
        keys = [(case, f"{case}, gate {gate}, {method}, {statistic}") for case in cases]
        if not all(key in frequency["rates"] for _, key in keys):
            return ""
        value = "the difference" if "−" in statistic else "ρ"
        shown = "; ".join(
            f"{case}{_mean_truth(frequency, key)} {_judged_rate(frequency['rates'][key])}"
            f"{_miss_direction(frequency, key, value, _difference_scores(statistic) if '−' in statistic else None)}"
            for case, key in keys
        )
        parts.append(f"{word}: {shown}")
    below_nominal = any(
        _below_nominal(frequency["rates"][f"{case}, gate {gate}, {method}, {statistic}"])
        for statistic in FREQUENCY_STUDY
        for case in cases
    )
    caution = (
        " So, on these planted cases, the routed share's interval and that of REAP − frequency are not 95% "
        "intervals for their expected-score values: this run's interval of the difference does not bound it, "
        "and only its side of 0 is read (docs/METHODS.md, REAP against routing frequency)."
        if below_nominal
        else ""
    )
    return (
        " The same study of the routing-frequency control (its truth: Spearman ρ of the expected routing rate, "
        "or of the expected REAP score, with the expected effect, on the same experts; the estimate ranks "
        "scores measured on a finite corpus) — how often each covered its truth: "
        + " — ".join(parts)
        + "."
        + caution
    )


def _below_nominal(record: dict[str, Any]) -> bool:
    """A planted coverage rate below its nominal level by more than two binomial standard errors."""
    return record["rate"] < record["nominal"] - 2 * record["nominal_se"]


def _paired_caveat(results: dict[str, Any], planted: dict[str, Any] | None) -> str:
    """The paired ρ's of the estimate and REAP (pooled) and their difference against the planted study of
    their intervals: the chosen method's coverage at the default gate in each planted case, with the
    misses' direction (empty where the results or the study lack them)."""
    metrics = results.get("sections", {}).get("drivers", {}).get("metrics", {})
    study = (planted or {}).get("studies", {}).get("rho_interval_methods")
    if study is None or f"{SALIENCY_METRIC} | 95% CI" not in metrics:
        return ""
    settings = study["settings"]
    method = metrics.get(f"{SALIENCY_METRIC} | interval method", settings["chosen method"])
    gate = settings["default gate"]
    cases = next(cell["cases"] for cell in settings["cells"] if cell["gate"] == gate)
    parts = []
    for statistic in PAIRED_STATISTICS:
        keys = [(case, f"{case}, gate {gate}, {method}, {statistic}") for case in cases]
        value = "the difference" if "−" in statistic else "ρ"
        if not all(key in study["rates"] for _, key in keys):
            return ""
        shown = "; ".join(
            f"{case}{_mean_truth(study, key)} {_judged_rate(study['rates'][key])}"
            f"{_miss_direction(study, key, value, _difference_scores(statistic) if '−' in statistic else None)}"
            for case, key in keys
        )
        parts.append(f"{statistic.removesuffix(', paired')}: {shown}")
    return (
        f" The planted study of these pooled paired intervals (`{PLANTED}`, `rho_interval_methods`, {method}, "
        f"document gate {gate}) — how often each covered the true value: " + " — ".join(parts) + "."
    )


def _cell(record: dict[str, Any]) -> str:
    if not is_defined(record.get("estimate")):
        return "–"
    return _interval(record)


def zoo_markdown(results: dict[str, Any], source: str) -> str:
    """The README's toy-zoo block from ``python -m tl_moe.zoo.evaluate``'s results (losses, MoE − dense)."""
    models, meta = results["models"], results["metadata"]
    names = list(models)
    short = {name: f"`{name}`" for name in names}
    unigram = results["unigram_validation_loss"]
    domains = sorted(unigram)
    n_docs = sum(meta["documents_by_domain"].values())
    lines = [
        f"Generated from [`{source}`]({source}) by `python tools/readme_results.py`; the evaluation: "
        f"`{meta['command']}` (the saved float16 weights; {meta['split']} split of corpus `{meta['corpus']}`, "
        f"{n_docs:,} documents, none seen in training).",
        "",
        "Validation loss (nats/token) per domain:",
        "",
        "| domain | " + " | ".join(short[n] for n in names) + " | unigram baseline |",
        "|:--|" + "--:|" * (len(names) + 1),
    ]
    for domain in domains:
        cells = [f"{models[n]['validation_loss'][domain]:.3f}" for n in names]
        lines.append(f"| {domain} | " + " | ".join(cells) + f" | {unigram[domain]:.3f} |")
    overall = [f"**{models[n]['validation_loss']['all domains']:.3f}**" for n in names]
    lines.append("| all domains | " + " | ".join(overall) + " | – |")

    comparisons = results["moe_minus_dense"]
    moes = [n for n in names if models[n]["experts"]]
    if comparisons:
        by = {(r["model"], r["domain"]): r for r in comparisons}
        lines += [
            "",
            "Each MoE minus the dense twin with the same active neurons (nats/token; below 0: the MoE predicts "
            "better), paired over documents, 95% bootstrap interval over documents:",
            "",
            "| domain | " + " | ".join(short[n] for n in moes) + " |",
            "|:--|" + "--:|" * len(moes),
        ]
        for domain in [*domains, "all domains"]:
            lines.append(f"| {domain} | " + " | ".join(_cell(by[(n, domain)]) for n in moes) + " |")
        per_domain = [r for r in comparisons if r["domain"] != "all domains"]
        better = sum(r["estimate"] < 0 for r in per_domain)
        excluded = sum(r.get("interval_available") and r["ci_high"] < 0 for r in per_domain)
        worse = sum(r.get("interval_available") and r["ci_low"] > 0 for r in per_domain)
        margins = [unigram[d] - models[n]["validation_loss"][d] for n in names for d in domains]
        lines += [
            "",
            f"Reading: across the {len(moes)} MoEs and {len(domains)} domains, the MoE has the lower loss in "
            f"{better} of {len(per_domain)} cases, with an interval below 0 in {excluded}"
            + (f" and above 0 in {worse}" if worse else "")
            + f"; every model is {min(margins):.2f}–{max(margins):.2f} nats/token below the unigram baseline.",
        ]

    bound = results["held_out_bound"]
    texts = results["held_out_texts"]["names"]
    lines += [
        "",
        "Loss (nats/token) on short texts written for this project and in no corpus "
        "([`src/tl_moe/zoo/held_out_texts.py`](src/tl_moe/zoo/held_out_texts.py)), against the bound "
        f"{bound['fraction_of_uniform']} · ln {bound['vocab_size']:,} = {bound['nats']:.2f} "
        f"(uniform guessing: {math.log(bound['vocab_size']):.2f}):",
        "",
        "| text | characters | " + " | ".join(short[n] for n in names) + " |",
        "|:--|--:|" + "--:|" * len(names),
    ]
    for text in texts:
        cells = [f"{models[n]['held_out_text_loss'][text]:.2f}" for n in names]
        lines.append(
            f"| {text} | {results['held_out_texts']['characters'][text]} | " + " | ".join(cells) + " |"
        )
    worst = max(models[n]["held_out_text_loss"][t] for n in names for t in texts)
    verdict = "within" if worst <= bound["nats"] else "**above**"
    lines += ["", f"The worst model on the worst text scores {worst:.2f}: {verdict} the bound.", ""]

    lines += [
        "| model | experts | top-k | d_expert / d_mlp | parameters | fp16 size |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        m = models[name]
        lines.append(
            f"| `{name}` | {m['experts'] or '–'} | {m['top_k'] or '–'} | {m['d_expert'] or m['d_mlp']} | "
            f"{m['parameters'] / 1e6:.2f} M | {m['fp16_bytes'] / 1e6:.1f} MB |"
        )
    train = meta["train"]
    minutes = [models[n]["train_seconds"] / 60 for n in names]
    total_mb = sum(models[n]["fp16_bytes"] for n in names) / 1e6
    lines += [
        "",
        f"Training: {train['steps']:,} AdamW steps of {train['batch_size']} × {train['seq_len']} tokens "
        f"({models[names[0]]['train_tokens'] / 1e6:.2f} M tokens per model) on the train split of corpus "
        f"`{train.get('corpus') or 'embedded'}`, lr {train['lr']:g} (warm-up {train['warmup']}, cosine to a "
        f"tenth), aux load-balancing loss {train['aux_loss_coef']:g}, seed {train['seed']}; "
        f"{min(minutes):.0f}–{max(minutes):.0f} minutes per model on {models[names[0]]['train_device']} "
        f"(see the text for the cores). The family ships in {total_mb:.1f} MB.",
    ]
    return "\n".join(lines)


def jsd_error_markdown(results: dict[str, Any], source: str) -> str:
    """docs/METHODS.md's table of the reference code's JSD error, from ``benchmarks/jsd_reference_error.py``."""
    lines = [
        f"Generated from `{source}` (`{results['command']}`, {results['model']}, "
        f"{results['max_tokens']:,} tokens); per-layer means over the non-empty experts, in bits:",
        "",
        "| measure | correct JSD | inflation of the JSD | inflation of score − baseline |",
        "|---|---|---|---|",
    ]

    def span(rows: list[dict[str, Any]], key: str, sign: str = "") -> str:
        values = [row[key] for row in rows]
        return f"{min(values):{sign}.2f} to {max(values):{sign}.2f}"

    for name, measure in results["measures"].items():
        rows = measure["per_layer"]
        lines.append(
            f"| {name} | {span(rows, 'mean_jsd_bits')} | {span(rows, 'mean_jsd_inflation_bits', '+')} "
            f"| {span(rows, 'mean_excess_inflation_bits', '+')} |"
        )
    return "\n".join(lines)


def labeling_cost_markdown(results: dict[str, Any], source: str) -> str:
    """The labeling-cost benchmark (``benchmarks/bench_labeling.py``): offline labels of every expert
    relative to the collection pass of the same run, in process CPU seconds and wall seconds."""
    machine = results["machine"]
    parts = ", ".join(f"{name} {value:.2f} s" for name, value in results["labeling parts (s)"].items())
    verdict = "within" if results["labeling / pass"] <= results["target labeling / pass"] else "above"
    text = (
        f"Generated from `{source}` (`{results['command']}`; {machine['cpus']} CPUs shared, load average "
        f"{machine['load average (1 min) at the end']} at the end). On `{results['model']}`, "
        f"{results['tokens']:,} tokens, one run: the collection pass took {results['pass, CPU (s)']:.2f} s of CPU "
        f"({results['pass (s)']:.2f} s wall) and the offline labels of all {results['experts']} experts "
        f"({results['experts labeled']} labeled; records, candidate labels, concept scoring with the "
        f"shuffled-label control and the token-set baseline, the summary intervals, the cards) "
        f"{results['labeling, CPU (s)']:.2f} s of CPU ({results['labeling (s)']:.2f} s wall): "
        f"**labeling / pass = {results['labeling / pass']:.3f}** in CPU time "
        f"({results['labeling / pass, wall']:.3f} in wall time), {verdict} the target of "
        f"{results['target labeling / pass']:.2f}. Wall seconds of the parts: {parts}."
    )
    if "causal checks (s)" in results:
        text += (
            f" The causal checks of the labels ({results['causal windows']} windows), not part of the ratio: "
            f"{results['causal checks (s)']:.2f} s ({results['causal checks / pass']:.2f} × the pass)."
        )
    return text


PLANTED = "docs/results/planted_studies.json"


def planted_rate(record: dict[str, Any], unit: str = "seeds") -> str:
    """A measured rate of a planted study: ``177 of 200 seeds (0.885, binomial se 0.023)``."""
    return f"{record['hits']} of {record['n']} {unit} ({record['rate']:.3f}, binomial se {record['se']:.3f})"


def against_nominal(record: dict[str, Any]) -> str:
    """Where a planted rate sits against its nominal level, judged by two binomial standard errors of a
    rate at the nominal level over the same number of seeds."""
    nominal, tolerance = record["nominal"], 2 * record["nominal_se"]
    gap = record["rate"] - nominal
    if abs(gap) <= tolerance:
        return f"within two binomial standard errors (±{tolerance:.3f}) of the nominal {nominal:g}"
    side = "above" if gap > 0 else "below"
    return f"{side} the nominal {nominal:g} by more than two binomial standard errors (±{tolerance:.3f})"


def over_rejection(record: dict[str, Any], what: str) -> str:
    """A plain sentence when a null's rejection rate is above its nominal level by more than two
    binomial standard errors (empty otherwise)."""
    if record["rate"] - record["nominal"] <= 2 * record["nominal_se"]:
        return ""
    return (
        f" {what} rejects a true null more often than its nominal {record['nominal']:g}: "
        f"{record['rate']:.3f} ± {record['se']:.3f} (binomial se)."
    )


def rejects_more(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether rate ``first`` exceeds ``second`` by more than two standard errors of their difference."""
    return first["rate"] - second["rate"] > 2 * math.hypot(first["se"], second["se"])


def _planted_source(study: dict[str, Any], source: str) -> str:
    """Where a planted study's numbers come from: the results file, the script, its seeds, replicates
    and the test that asserts its range."""
    return (
        f"Generated from `{source}` (`benchmarks/planted_studies.py`; seeds 0–{study['seeds'] - 1}, "
        f"{study['replicates']} resamples each; the range is asserted by `{study['test']}`)"
    )


def planted_labels_markdown(results: dict[str, Any], source: str) -> str:
    """The label scores' document intervals on planted nulls: the share beating shuffled, the mean AUC."""
    share, auc = results["studies"]["explain_share_null"], results["studies"]["explain_auc_null"]
    covers_share, covers_auc = share["rates"]["covers the expected share"], auc["rates"]["covers 0.5"]
    truth = share["truth"]
    conservative = covers_share["rate"] - covers_share["nominal"] > 2 * covers_share["nominal_se"]
    return (
        f"{_planted_source(share, source)}: on a planted null where each expert's own and shuffled labels "
        f"are exchangeable (40 experts, 40 documents with a shared per-document effect), the share's "
        f"percentile interval covers the expected share in {planted_rate(covers_share)}, "
        f"{against_nominal(covers_share)}" + (" (conservative)" if conservative else "") + ". The expected "
        f"share is not 1/2: a tie does not beat, and with 20 items per class the balanced accuracy moves in "
        f"steps of 1/40, so own and shuffled tie with probability {truth['P(tie)']:.3f} and the expected "
        f"share is (1 − P(tie))/2 = {truth['expected share']:.4f} (se {truth['se']:.4f}; "
        f"{truth['pairs']:,} simulated pairs drawn as the study draws them). On labels that "
        f"carry no information the BCa document interval of the mean AUC covers the planted AUC of 0.5 in "
        f"{planted_rate(covers_auc)}, {against_nominal(covers_auc)}."
    )


def planted_label_means_markdown(results: dict[str, Any], source: str) -> str:
    """The mean label scores' document intervals on planted scores with a known true mean: per cell, statistic
    and method the coverage against 95%, the misses' side, the estimate's median position, the estimate's
    and the resamples' mean offsets; how close the run-shaped cell comes to the run."""
    study = results["studies"][LABEL_STUDY]
    settings, run = study["settings"], study["settings"]["run shape"]
    cells = []
    for cell, planted in settings["cells"].items():
        shape = study["shape"][cell]
        parts = []
        for metric, name in LABEL_METRICS.items():
            key = f"{cell}, {study['pipeline method']}, {metric}"
            means = study["means"][key]
            rows = []
            for method in settings["methods"]:
                k = f"{cell}, {method}, {metric}"
                r, misses = study["rates"][k], study["misses, truth above / below the interval"][k]
                rows.append(
                    f"{method} {planted_rate(r)}, {against_nominal(r)} (misses: {misses['above']} truth above, "
                    f"{misses['below']} below; estimate at a median {study['median position of the estimate'][k]:.2f})"
                )
            parts.append(
                f"{name} (truth {study['truth'][cell][metric]:.3f}; mean estimate − truth "
                f"{means['estimate'] - means['truth']:+.4f}, bootstrap bias {means['bootstrap bias']:+.4f}): "
                + "; ".join(rows)
            )
        cells.append(
            f"**{cell}** (log document size sd {planted['size sd']:g}, recall logit shift {planted['recall shift']:+g}, "
            f"routing sd {planted['routing sd']:g}, slope × {planted['slope scale']:g}, size slope {planted['size slope']:g}; "
            f"median corpus: largest document {shape['items per document, max']:.0f} items, median "
            f"{shape['items per document, median']:.0f}, {shape['share of items in the 6 largest documents']:.2f} of "
            f"the items in the 6 largest, recall {shape['mean recall']:.2f}, specificity {shape['mean specificity']:.2f}) — "
            + " — ".join(parts)
            + "."
        )
    positions = {
        name: run[f"position of the estimate, percentile / basic / BCa, {name}"]
        for name in LABEL_METRICS.values()
    }
    biases = dict(
        zip(LABEL_METRICS.values(), run["bootstrap bias, balanced accuracy / F1 / recall"], strict=True)
    )
    shaped = []
    for metric, name in LABEL_METRICS.items():
        planted_positions = [
            study["median position of the estimate"][f"{LABEL_CELL}, {m}, {metric}"]
            for m in settings["methods"]
        ]
        shaped.append(
            f"{name}: estimate position percentile / basic / BCa {' / '.join(f'{p:.2f}' for p in planted_positions)} "
            f"planted vs {' / '.join(f'{p:.2f}' for p in positions[name])} in the run, bootstrap bias "
            f"{study['means'][f'{LABEL_CELL}, BCa, {metric}']['bootstrap bias']:+.4f} vs {biases[name]:+.4f}"
        )
    return (
        f"{_planted_source(study, source)}: {settings['experts']} experts, {settings['documents']} score documents "
        f"of {settings['domains']} domains, {settings['positives']} positives and {settings['negatives']} negatives "
        f"per expert; each statistic's truth is the document population's (quadrature), the limit of the "
        f"estimate over ever more documents. The pipeline's method for the means is {study['pipeline method']}. "
        + " ".join(cells)
        + f' How close the "{LABEL_CELL}" cell comes to the toy explain run (run: {run["score documents"]} '
        f"score documents, the largest holding {run['items per document, max']} items, a median "
        f"{run['items per document, median']}, {run['share of items in the 6 largest documents']:.2f} of the "
        f"items in the 6 largest, recall {run['mean recall']:.2f}, specificity {run['mean specificity']:.2f}): "
        + "; ".join(shaped)
        + "."
    )


def planted_held_out_draws_markdown(results: dict[str, Any], source: str) -> str:
    """The random-draw null of the held-out comparison: rejections at 5% of the fixed-draw swap test and
    of the draw-mean t test, with the default number of draws and with 20, each judged against 5%."""
    study = results["studies"]["held_out_control_draws"]
    rates, default = study["rates"], study["settings"]["default draws"]
    draws = sorted({default, 20})
    swap = {n: rates[f"swap test, {n} draws"] for n in draws}
    boot = {n: rates[f"draw-mean t test, {n} draws"] for n in draws}
    text = (
        f"{_planted_source(study, source)}: on a planted null whose control draws scatter around the "
        "expert's true rates (sd 0.05 per concept, true difference 0 from the draws' population; "
        "`compare` in balanced accuracy, as many swaps as resamples), the seeds rejected at 5% are, "
        + "; and ".join(
            f"with {n} draws{' (the default `ROUTED_COUNT_DRAWS`)' if n == default else ''}, for the "
            f"fixed-draw swap test {planted_rate(swap[n])}, {against_nominal(swap[n])}, and for the "
            f"draw-mean t test {planted_rate(boot[n])}, {against_nominal(boot[n])}"
            for n in draws
        )
        + "."
    )
    if rejects_more(swap[default], boot[default]):
        text += (
            f" With {default} draws the swap test rejects more often than the draw-mean t test by more "
            "than two standard errors of the difference: holding the draws fixed leaves their variance out."
        )
    if boot[default]["rate"] - boot[default]["nominal"] > 2 * boot[default]["nominal_se"]:
        text += (
            f" The draw-mean t test's excess over 5% with {default} draws is what a Satterthwaite "
            "approximation with so few draws' degrees of freedom leaves: slightly liberal."
        )
    return text


def planted_reweighting_markdown(results: dict[str, Any], source: str) -> str:
    """The re-weighting control's draws: coverage of the draw-mean t interval (and, with 5 draws, of the
    documents-only interval that holds the draws fixed), and the Holm family-wise rate over domains,
    each judged against its nominal level."""
    cover, holm = results["studies"]["reweighting_control_draws"], results["studies"]["reweighting_holm"]
    rates = cover["rates"]
    cells = []
    for n in (5, 20):
        parts = []
        for sd in ("0.2", "0.05", "0"):
            t = rates[f"draw-mean t, {n} draws, draw sd {sd}"]
            part = f"at a draw sd of {sd} nats/token in {planted_rate(t)}, {against_nominal(t)}"
            documents = rates.get(f"documents only, {n} draws, draw sd {sd}")
            if documents is not None:
                part += (
                    f" (the documents-only interval, draws held fixed, in {planted_rate(documents)}, "
                    f"{against_nominal(documents)})"
                )
            parts.append(part)
        cells.append(f"with {n} draws, " + "; ".join(parts))
    family = [
        f"{label}: {planted_rate(r, 'runs')}, {against_nominal(r)}" for label, r in holm["rates"].items()
    ]
    return (
        f"{_planted_source(cover, source)}: 40 documents, control draws whose own effects vary around a "
        "true chosen − control of 0; the draw-mean t interval covers 0 "
        + "; ".join(cells)
        + f". Holm over 4 such domains with no true gain ({holm['seeds']} seeds, {holm['replicates']} "
        "resamples, draw-mean t tests; family-wise rate of rejecting any domain, nominal 0.05): "
        + "; ".join(family)
        + "."
        + "".join(over_rejection(r, f"Holm over domains with {label}") for label, r in holm["rates"].items())
    )


def planted_driver_holm_markdown(results: dict[str, Any], source: str) -> str:
    """The drivers' Holm over domains on a planted null: family-wise rates against 5%."""
    study = results["studies"]["driver_holm_null"]
    improved, rejected = study["rates"]["some domain improved"], study["rates"]["some domain rejected"]
    return (
        f"{_planted_source(study, source)}: 5 domains × 40 documents with no true gain, on "
        "`holm_adjusted`'s one-draw path (each domain's per-document sums as one 1-D array: the "
        "documents-only percentile bootstrap; the drivers' default control draws take the draw-mean t "
        "path, measured by the re-weighting study); some domain is "
        f"called improved in {planted_rate(improved, 'runs')}, {against_nominal(improved)} (one side of a "
        f"two-sided 5% family), and some domain is rejected either way in {planted_rate(rejected, 'runs')}, "
        f"{against_nominal(rejected)}." + over_rejection(rejected, "On this path Holm")
    )


def _seed_clustered(record: dict[str, Any]) -> str:
    """A share of several intervals per seed covered, with its standard error over seeds."""
    return (
        f"{record['hits']} of {record['n']} intervals ({record['rate']:.3f}, se over seeds "
        f"{record['se over seeds']:.3f})"
    )


def _domain_kind_what(planted: dict[str, Any]) -> str:
    """What one planted kind of the domain-score study plants, in words."""
    direct = f"{planted['link']:g} × the population domain score + a normal draw per expert of sd {planted['spread']:g}"
    if not planted.get("weight sd"):
        if planted["link"] == 0 and planted["spread"] == 0:
            return "every expert's expected effect the same, ρ's truth 0"
        return f"expected effect per token {direct}"
    return _layers_what(planted) + (
        f"routing weights exp({planted['weight sd']:g} × a normal draw), each expert's domain profile the "
        f"flatter the more often it is routed (Dirichlet concentration 0.7 × (weight / the layer's geometric "
        f"mean) ^ {planted['flattening']:g}), expected effect per token {planted['frequency link']:g} × the "
        "routing frequency × the layer's experts"
        + (
            ", no direct link (the partial ρ's truth 0)"
            if planted["link"] == 0 and planted["spread"] == 0
            else f" + {direct}"
        )
    )


def _layers_what(planted: dict[str, Any]) -> str:
    """A planted kind's differences between layers, in words (empty for exchangeable layers)."""
    if not planted.get("layer effect step"):
        return ""
    n = planted["layers"]
    return (
        f"{n} layers, the i-th (from 0) adding {planted['layer effect step']:g} × ({n - 1} − i) to every "
        "expert's expected effect and multiplying its Dirichlet concentrations by "
        f"exp({planted['layer concentration step']:g} × i) (the first layer the most domain-specific and the "
        "most removal-sensitive, so a pooled ρ ranks the layers; within each layer no direct link, the mean "
        "within-layer partial ρ's truth 0); "
    )


def _coverage_parts(record: dict[str, Any], kind: str, labels: list[str], with_truth: bool) -> list[str]:
    """Each interval of one kind against its truth: the rate, against the nominal, the misses' direction,
    the estimate's median position and (``with_truth``) the mean truth and estimate."""
    parts = []
    for label in labels:
        key = f"{kind}, {label}"
        r = record["rates"][key]
        part = (
            f"{label} {planted_rate(r)}, {against_nominal(r)}{_miss_direction(record, key)}, the estimate at "
        )
        part += f"a median {record['median position of the estimate'][key]:.2f} of its interval"
        if with_truth:
            part += f" (mean truth {record['mean truth'][key]:+.3f}, mean estimate {record['mean estimate'][key]:+.3f})"
        parts.append(part)
    return parts


def _domain_kind_text(kind: str, study: dict[str, Any]) -> str:
    """One planted kind of the domain-score study: each interval's coverage of its truth, the pooled
    share with its se over seeds, and (away from 0) the mean truth, estimate and estimate's position; the
    same for the partial ρ given routing frequency, and for a confounded kind how often ρ's interval
    excludes 0 (each where the study's results have it)."""
    labels = [label[len(kind) + 2 :] for label in study["rates"] if label.rsplit(", ", 1)[0] == kind]
    planted = study["settings"]["kinds"][kind]
    low, high = planted["tokens"]
    varied = bool(planted["link"] or planted["spread"] or planted.get("frequency link"))
    text = (
        f"**{kind}** ({_domain_kind_what(planted)}; {low}–{high - 1} tokens per document): ρ "
        + "; ".join(_coverage_parts(study, kind, labels, varied))
        + f"; all its intervals together {_seed_clustered(study['every interval of a kind'][kind])}"
    )
    partial = study.get("partial given routing frequency")
    if partial is None:
        return text
    text += (
        "; partial ρ given routing frequency "
        + "; ".join(_coverage_parts(partial, kind, labels, varied))
        + f"; all its intervals together {_seed_clustered(partial['every interval of a kind'][kind])}"
        + _partial_lean(study, kind, labels, planted)
    )
    within = study.get("mean within-layer partial given routing frequency")
    if within is not None:
        text += "; mean within-layer partial ρ (the headline control) " + "; ".join(
            _coverage_parts(within, kind, ["over all layers"], varied)
        )
        excludes = study["partial rho's interval excludes 0, over all layers"]
        text += (
            f"; over all layers the pooled partial ρ's interval excludes 0 in "
            f"{planted_rate(excludes[f'{kind}, pooled'])}, the mean within-layer one's in "
            f"{planted_rate(excludes[f'{kind}, mean within-layer'])}"
        )
    if planted.get("weight sd"):
        excludes = study["rho's interval excludes 0"]
        text += "; ρ's interval excludes 0 in " + ", ".join(
            f"{label} {planted_rate(excludes[f'{kind}, {label}'])}" for label in labels
        )
    return text


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def _partial_lean(study: dict[str, Any], kind: str, labels: list[str], planted: dict[str, Any]) -> str:
    """For a confound with no direct link (the partial ρ's truth 0): the side every mean partial estimate
    lies on, against the raw ρ's, where they all lie on one (empty otherwise)."""
    if not planted.get("weight sd") or planted["link"] or planted["spread"]:
        return ""
    keys = [f"{kind}, {label}" for label in labels]
    sides = {_sign(study["partial given routing frequency"]["mean estimate"][key]) for key in keys}
    raw = {_sign(study["mean estimate"][key]) for key in keys}
    if len(sides) != 1 or 0 in sides:
        return ""
    side = sides.pop()
    text = f" (every mean partial estimate lies {'below' if side < 0 else 'above'} its truth 0"
    if raw == {side}:
        return (
            f"{text}, on the raw ρ's side: a rank-linear control of a measured routing frequency removes "
            "most, not all, of the confound)"
        )
    return f"{text})"


def _attenuated(record: dict[str, Any], kinds: list[str]) -> list[str]:
    """The kinds, other than the planted null, with an interval below the nominal rate and every mean
    estimate nearer 0 than its mean truth, on the same side (attenuation)."""
    found = []
    for kind in kinds:
        labels = [label for label in record["rates"] if label.rsplit(", ", 1)[0] == kind]
        below = any(
            record["rates"][k]["nominal"] - record["rates"][k]["rate"] > 2 * record["rates"][k]["nominal_se"]
            for k in labels
        )
        nearer = all(
            0 < record["mean estimate"][k] / record["mean truth"][k] < 1 if record["mean truth"][k] else False
            for k in labels
        )
        if below and nearer and kind != "null":
            found.append(kind)
    return found


def _partial_truth_text(study: dict[str, Any]) -> str:
    """How the partial ρ's truth is computed (empty for results without the partial ρ)."""
    if "partial given routing frequency" not in study:
        return ""
    return (
        " Each expert's routing frequency is its share of its layer's routed slots on both halves' "
        "documents (population: its mean share over the domains); the partial ρ given it is the Pearson "
        "partial correlation of the ranks. The truth of each partial ρ is computed by hand from the "
        "population values over the same experts: the domain scores' and expected effects' ranks regressed "
        "on a line in the routing frequencies' ranks (least squares), the Pearson correlation of the two "
        "residuals; 0 where the expected effect is constant or a monotone function of routing frequency "
        "(no link beyond it)."
    )


def planted_driver_domain_markdown(results: dict[str, Any], source: str) -> str:
    """Spearman's rho of domain score vs removal effect at a planted null and away from it: coverage of
    the truth per interval (binomial se over independent seeds) and per kind (se over seeds)."""
    study = results["studies"]["driver_domain_rho"]
    settings = study["settings"]
    kinds = list(settings["kinds"])
    text = (
        f"{_planted_source(study, source)}: {settings['documents']} documents of {settings['domains']} "
        f"domains, {settings['layers']} layers (unless a kind says otherwise) × {settings['experts per layer']} "
        "experts; each domain's "
        "top-2 slots are shared over a layer's experts in proportion to their profiles (Dirichlet over the "
        "domains), so each expert's population domain score is computed by hand from its shares; the "
        "domain score on the selection half, the "
        "effect on the report half, each half resampled within itself. The truth of each interval is "
        "Spearman's ρ of the experts' population domain scores and expected effects over the experts in "
        "that ρ. The binomial se of each interval's rate is over independent seeds; the pooled share of a "
        "kind has a se over seeds (each seed's share of its intervals, one per layer and one over all "
        f"layers, which share its documents, is one value).{_partial_truth_text(study)} "
        + ". ".join(_domain_kind_text(kind, study) for kind in kinds)
        + "."
    )
    attenuated = _attenuated(study, kinds)
    if attenuated:
        text += (
            " Where a non-null ρ's interval covers below the nominal rate ("
            + "; ".join(attenuated)
            + "), every "
            "mean estimate lies nearer 0 than its mean truth: the noise of the measured domain scores and "
            "effects attenuates ρ, and the resampled ρ, noisier still, lies nearer 0 again, so the interval "
            "understates the size of ρ; an interval that excludes 0 remains evidence of a ρ of its sign."
        )
    partial = study.get("partial given routing frequency")
    if partial is not None and _attenuated(partial, kinds):
        text += (
            " The partial ρ's intervals are attenuated the same way ("
            + "; ".join(_attenuated(partial, kinds))
            + ")."
        )
    return text


def planted_within_layer_markdown(results: dict[str, Any], source: str) -> str:
    """The mean within-layer rho of an estimate that ranks layers only: coverage of 0."""
    study = results["studies"]["within_layer_rho_null"]
    within, pooled = (
        study["rates"]["within layers (mean) covers 0"],
        study["rates"]["pooled interval above 0.5"],
    )
    return (
        f"{_planted_source(study, source)}: for an estimate that ranks the layers and nothing inside them "
        f"(4 layers × 16 experts, 80 documents), the mean within-layer interval covers 0 in "
        f"{planted_rate(within)}, {against_nominal(within)}, while the pooled ρ's interval lies above 0.5 "
        f"in {pooled['hits']} of {pooled['n']} seeds (a power, not a coverage: the pooled ρ's truth is far "
        "above 0.5, so this share has no nominal level)."
    )


def planted_interval_methods_markdown(results: dict[str, Any], source: str) -> str:
    """Percentile, BCa and basic coverage of the paired held-out difference with rare concepts."""
    study = results["studies"]["interval_method_coverage"]
    rates, positions = study["rates"], study["median position of the estimate"]
    best = max(rates, key=lambda method: rates[method]["rate"])
    parts = "; ".join(
        f"{method} covers it in {planted_rate(r)}, {against_nominal(r)}, the estimate at a median "
        f"{positions[method]:.2f} of its interval"
        for method, r in rates.items()
    )
    return (
        f"{_planted_source(study, source)}: true difference {study['truth']:+.3f} from 200,000 documents; "
        f"{parts}. The best-covering method here is {best}."
    )


#: The gated held-out study's metrics, in the order the README reads them, with their names.
GATED_METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "class-balanced F1"}


def _gated_cell(study: dict[str, Any], key: str) -> str:
    """A table cell of the gated held-out study: coverage ± binomial se (the estimate's median position;
    misses with the truth above / below the interval)."""
    r, misses = study["rates"][key], study["misses, truth above / below the interval"][key]
    position = study["median position of the estimate"][key]
    return f"{r['rate']:.3f} ± {r['se']:.3f} ({position:.2f}; {misses['above']} / {misses['below']})"


def _gated_verdict(study: dict[str, Any], cell: str, metric: str) -> str:
    """One (cell, metric) of the gated study in words: the pipeline's method against the nominal level,
    and whether another method covers more often by more than two standard errors of the difference."""
    pipeline = study["pipeline method"]
    rates = {m: study["rates"][f"{cell}, {m}, {metric}"] for m in ("percentile", "basic", "BCa")}
    own = rates[pipeline]
    text = f"{cell}, {GATED_METRIC_NAMES[metric]}: {pipeline} {planted_rate(own)}, {against_nominal(own)}"
    better = [m for m, r in rates.items() if m != pipeline and rejects_more(r, own)]
    worse = [m for m, r in rates.items() if m != pipeline and rejects_more(own, r)]
    if better:
        text += (
            f"; {' and '.join(better)} cover more often (by more than two standard errors of the difference)"
        )
    if worse:
        text += (
            f"; {' and '.join(worse)} cover less often (by more than two standard errors of the difference)"
        )
    if not better and not worse:
        text += "; no other method differs from it by more than two standard errors of the difference"
    return text


def _run_shaped_matching(run: dict[str, Any]) -> list[str]:
    """The run-shaped cells that match the run: its near-gate concepts in one shared subset and noise each
    arm draws on its own (the run's arms are different probes; the run does not measure the noise's size,
    so every non-zero sd studied is quoted)."""
    return [cell for cell in run["cells"] if not cell.endswith("arm noise sd 0")]


def _run_shaped_words(run: dict[str, Any]) -> str:
    """The run-shaped case in words, from its settings."""
    s = run["settings"]
    noise = ", ".join(f"{sd:g}" for sd in s["arm noise sd"])
    return (
        f"{s['documents']} test documents; {s['common concepts']} concepts with Poisson(15) positives in "
        f"every document (the run's kept text concepts) and {s['subset concepts']} whose positives sit in ONE "
        f"random subset of {s['shared subset documents']} documents shared by all of them (each present in a "
        f"subset document with chance {s['presence in a subset document']:g}; the run's kept latex concepts "
        f"hold their positives in {s['shared subset documents']} test documents, docs/results/toy_default.json), "
        "Pareto-skewed counts, difficulty and false-alarm shift shared by the arms as above, plus noise each "
        f"arm draws on its own per concept and document (normal on both logits, sd {noise}: the run's arms are "
        "different probes, and its records do not measure the size of that noise)"
    )


def _run_shaped_cell(cell: dict[str, Any], metric: str) -> str:
    """A table cell of a run-shaped cell: coverage ± binomial se (position; misses above / below)."""
    m = cell[metric]
    misses = m["misses, truth above / below the interval"]
    return (
        f"{m['rate']['rate']:.3f} ± {m['rate']['se']:.3f} ({m['median position of the estimate']:.2f}; "
        f"{misses['above']} / {misses['below']})"
    )


def _narrow(rates: list[dict[str, Any]]) -> str:
    """What the quoted run-matching rates say: somewhat narrow when any covers below the nominal level by
    more than two binomial standard errors (the lowest rate named), else within it."""
    low = [r for r in rates if r["nominal"] - r["rate"] > 2 * r["nominal_se"]]
    if low:
        worst = min(low, key=lambda r: r["rate"])
        return (
            f"the intervals are somewhat narrow there: below the nominal {worst['nominal']:g} by more than two "
            f"binomial standard errors (±{2 * worst['nominal_se']:.3f}) in {len(low)} of {len(rates)}, down "
            f"to {worst['rate']:.3f}"
        )
    return (
        f"each {against_nominal(rates[0])}"
        if len({against_nominal(r) for r in rates}) == 1
        else ("none below the nominal level by more than two binomial standard errors")
    )


def run_shaped_markdown(study: dict[str, Any]) -> list[str]:
    """The run-shaped cells of the gated study: the case, a table of the pipeline's coverage per cell and
    metric, and what the cells that match the run say."""
    run = study.get("run-shaped cells")
    if not run:
        return []
    lines = [
        "",
        f"*At the run's own structure* (the study's run-shaped cells, {run.get('seconds', '?')} s of its "
        f"{study.get('seconds', '?')} s): {_run_shaped_words(run)}. The pipeline's {study['pipeline method']} "
        "interval from `compare` only; a seed's truth is the mean, over the concepts its gate keeps, of each "
        "concept's difference by Gauss–Hermite quadrature (0 on the planted null).",
        "",
        "| cell | subset concepts kept per seed | " + " | ".join(GATED_METRIC_NAMES.values()) + " |",
        "|---|---|" + "---|" * len(GATED_METRIC_NAMES),
    ]
    for name, cell in run["cells"].items():
        kept = cell["subset concepts kept per seed"]
        cells = " | ".join(_run_shaped_cell(cell, m) for m in GATED_METRIC_NAMES)
        lines.append(f"| {name} | {kept['min']}–{kept['max']} (median {kept['median']:g}) | {cells} |")
    matching = _run_shaped_matching(run)
    rates = [run["cells"][c][m]["rate"] for c in matching for m in GATED_METRIC_NAMES]
    said = "; ".join(
        f"{c}, {GATED_METRIC_NAMES[m]}: {planted_rate(run['cells'][c][m]['rate'])}"
        for c in matching
        for m in GATED_METRIC_NAMES
    )
    lines += [
        "",
        f"The cells that match the run (one shared subset and noise of each arm's own): {said}; "
        f"{_narrow(rates)}.",
    ]
    return lines


def planted_gated_interval_methods_markdown(results: dict[str, Any], source: str) -> str:
    """The paired held-out difference at the run's shape with the pipeline's per-concept gate: the planted
    case, what the gate kept, the truths, a table of coverage per cell, method and metric, and per cell
    and metric the pipeline's method against the nominal level and the others."""
    study = results["studies"]["gated_interval_method_coverage"]
    settings, pipeline = study["settings"], study["pipeline method"]
    concepts = settings["concepts"]
    near = {n: c for n, c in concepts.items() if c["share of documents with positives"] < 1}
    gate = study["gate"]["planted difference"]
    kept = "; ".join(
        f"in a share {c['share of documents with positives']:g}: kept in {gate['seeds keeping each concept'][n]} of "
        f"{study['seeds']} seeds, its positives in {gate['documents with positives per concept'][n]['min']}–"
        f"{gate['documents with positives per concept'][n]['max']} documents over the seeds (median "
        f"{gate['documents with positives per concept'][n]['median']:g})"
        for n, c in near.items()
    )
    difference, null = study["truth"]["planted difference"], study["truth"]["planted null"]
    truths = "; ".join(
        f"{GATED_METRIC_NAMES[m]} {difference[m]['every concept kept']:+.4f} (se {difference[m]['se']:.4f}; "
        f"by quadrature {difference[m]['by hand']:+.4f})"
        for m in GATED_METRIC_NAMES
    )
    null_check = ", ".join(
        f"{GATED_METRIC_NAMES[m]} {null[m]['every concept kept']:+.5f} (se {null[m]['se']:.5f})"
        for m in GATED_METRIC_NAMES
    )
    truth_documents, (first, last) = settings["truth documents"], settings["truth seeds"]
    chunks = last - first + 1
    lines = [
        f"{_planted_source(study, source)}: {settings['documents']} test documents (the toy default run's), "
        f"two arms scoring the same tokens, {len(concepts)} concepts: {len(concepts) - len(near)} with "
        f"Poisson(15) positives in every document and {len(near)} near the gate, positives in a share of the "
        "documents only, 1 + Poisson(20 · Pareto(1.5)) of them (a few documents carry most); Poisson(50) "
        "negatives per document; per concept and document a difficulty (normal on the logit of the hit rate, "
        f"sd {settings['difficulty sd (common, near the gate)'][0]:g} for the common concepts and "
        f"{settings['difficulty sd (common, near the gate)'][1]:g} near the gate) and a false-alarm shift "
        f"(sd {settings['false-alarm shift sd']:g}), both shared by the arms. The gate is the pipeline's: "
        f"`compare` runs on the planted counts (at least {settings['min documents (the gate)']} test documents "
        f"with positives and {settings['min documents (the gate)']} with negatives in each arm, "
        f"`concept_gate`) and gives the {pipeline} interval, and the other methods bootstrap the same statistic "
        "(`_difference_statistic` over the kept concepts, the same seed and resamples). The concepts near the "
        f"gate, on the planted difference, by the share of documents holding their positives: {kept}. Truth: each concept's difference of the scores of its "
        f"counts summed over {truth_documents:,} documents of the same generator ({chunks} chunks of "
        f"{truth_documents // chunks:,}, seeds {first}–{last}; se from the spread of the chunks' own "
        "differences), a seed's truth the mean over the concepts its gate keeps; with every "
        f"concept kept: {truths}. The planted null scores arm b with arm a's rates, so its truth is 0 by "
        f"construction (the large sample: {null_check}).",
        "",
        "Coverage ± binomial se (the estimate's median position in its interval, 0 its low end, 1 its high "
        "end; misses with the truth above / below the interval). Binomial se of a rate at the nominal 0.95 "
        f"over {study['seeds']} seeds: {math.sqrt(0.95 * 0.05 / study['seeds']):.3f}.",
        "",
        "| cell | method | " + " | ".join(GATED_METRIC_NAMES.values()) + " |",
        "|---|---|" + "---|" * len(GATED_METRIC_NAMES),
    ]
    for cell in settings["cells"]:
        for method in ("percentile", "basic", "BCa"):
            label = f"{method} (the pipeline's)" if method == pipeline else method
            cells = " | ".join(_gated_cell(study, f"{cell}, {method}, {m}") for m in GATED_METRIC_NAMES)
            lines.append(f"| {cell} | {label} | {cells} |")
    verdicts = [_gated_verdict(study, cell, m) for cell in settings["cells"] for m in GATED_METRIC_NAMES]
    lines += ["", "; ".join(verdicts) + ".", *run_shaped_markdown(study)]
    return "\n".join(lines)


def _rho_cell(study: dict[str, Any], key: str) -> str:
    """A table cell of the drivers' rho study: coverage (the estimate's median position)."""
    return f"{study['rates'][key]['rate']:.3f} ({study['median position of the estimate'][key]:.2f})"


def planted_rho_methods_markdown(results: dict[str, Any], source: str) -> str:
    """The drivers' rho (REAP split halves, paired estimate / REAP / difference): coverage and the
    estimate's median position of percentile, basic and BCa, per document gate and planted case, as a
    table, then which method covers best at the default gate."""
    study = results["studies"]["rho_interval_methods"]
    settings = study["settings"]
    statistics, chosen, gate = settings["statistics"], settings["chosen method"], settings["default gate"]
    methods = ("percentile", "basic", "BCa")
    lines = [
        f"{_planted_source(study, source)}: {settings['experts']} experts, {settings['documents']} documents; "
        "coverage of the true ρ (Spearman's ρ of the expected scores over the experts each statistic keeps) "
        "and, in brackets, the estimate's median position in its interval (0 its low end, 1 its high end). "
        f"A gate of 0 keeps every routed expert. Binomial se of a rate at the nominal 0.95 over "
        f"{study['seeds']} seeds: {math.sqrt(0.95 * 0.05 / study['seeds']):.3f}.",
        "",
        "| case | gate | method | " + " | ".join(statistics) + " |",
        "|" + "---|" * (3 + len(statistics)),
    ]
    for cell in settings["cells"]:
        for case in cell["cases"]:
            for method in methods:
                keys = [f"{case}, gate {cell['gate']}, {method}, {statistic}" for statistic in statistics]
                lines.append(
                    f"| {case} | {cell['gate']} | {method} | "
                    + " | ".join(_rho_cell(study, k) for k in keys)
                    + " |"
                )
    default_cases = next(cell["cases"] for cell in settings["cells"] if cell["gate"] == gate)
    worse = []
    for case in default_cases:
        for statistic in statistics:
            rates = {m: study["rates"][f"{case}, gate {gate}, {m}, {statistic}"]["rate"] for m in methods}
            if rates[chosen] < max(rates.values()):
                others = ", ".join(f"{m} {rates[m]:.3f}" for m in methods if m != chosen)
                worse.append(f"{case}, {statistic}: {chosen} {rates[chosen]:.3f}, {others}")
    cells = len(default_cases) * len(statistics)
    summary = (
        f"At the default gate ({gate}) the chosen method ({chosen}) covers at least as often as the others in "
        f"{cells - len(worse)} of the {cells} (case, statistic) cells"
    )
    lines += ["", summary + ("; not in " + "; ".join(worse) if worse else "") + "."]
    return "\n".join(lines)


def planted_excess_markdown(results: dict[str, Any], source: str) -> str:
    """The specialization excess away from zero, per regime (the run's shape first): coverage of the
    true excess by the pipeline's interval and by the other methods, with the estimate's position, the
    estimator's bias, the side of the misses and the verdict."""
    study = results["studies"]["excess_interval_coverage"]
    source_line = _planted_source(study, source).replace(
        f"seeds 0–{study['seeds'] - 1}", "each regime's seeds below"
    )
    paragraphs = [
        f"{source_line}. Each regime is a planted stream of documents of 60–199 tokens, "
        "each document's content and routing preference clumped (Dirichlet "
        f"{next(iter(study['regimes'].values()))['settings']['clumping (Dirichlet concentration)']:g}); in "
        "each layer a share (the planted strength) of the tokens' first slot goes to the expert of its own "
        "group (group g → expert g mod experts), the rest by the document's preference; a second slot is "
        "the first shifted by an offset drawn from a second clumped preference. The true excess is computed "
        "by hand from those routing rates (the permutation null is 0 on infinitely many documents) and "
        "checked on one large stream."
    ]
    paragraphs += [_excess_regime_markdown(name, regime) for name, regime in study["regimes"].items()]
    return "\n\n".join(paragraphs)


def _excess_regime_markdown(name: str, study: dict[str, Any]) -> str:
    """One regime of the excess study: its shape, truths, each method's coverage and the verdict."""
    settings, rates = study["settings"], study["rates"]
    labels = list(study["truth"])
    (pipeline,) = study["pipeline method"]
    methods = [pipeline] + [m for m in ("percentile", "basic", "BCa") if m != pipeline]
    large = settings["large simulation"]
    truths = ", ".join(
        f"{label.removeprefix('planted strength ')}: {study['truth'][label]:.4f} bits (large stream "
        f"{study['large simulation'][label]:.4f}; seeds' mean estimate {study['mean estimate'][label]:.4f}, "
        f"sd {study['sd of the estimate'][label]:.4f}, mean bootstrap bias {study['mean bootstrap bias'][label]:+.4f})"
        for label in labels
    )

    def misses(key: str) -> tuple[int, int]:
        return rates[key]["n"] - rates[key]["hits"], study["misses with the truth below the interval"][key]

    def cell(method: str, label: str) -> str:
        key = f"{method}, {label}"
        missed, below = misses(key)
        middle = study["median position of the estimate"][key]
        where = (
            f"the estimate at a median {middle:.2f} of its interval"
            if math.isfinite(middle)
            else "the estimate's median position undefined (a degenerate interval in some seeds)"
        )
        return (
            f"at strength {label.removeprefix('planted strength ')} {planted_rate(rates[key])}, "
            f"{against_nominal(rates[key])}, {where}, the truth below the interval in {below} of its "
            f"{missed} misses"
        )

    parts = []
    for method in methods:
        cells = "; ".join(cell(method, label) for label in labels)
        title = f"{method} (the pipeline's, `excess_intervals`)" if method == pipeline else method
        parts.append(f"{title}: {cells}")
    slots = "one slot" if settings["slots"] == 1 else f"top-{settings['slots']}"
    text = (
        f"**{name.capitalize()}** (seeds 0–{study['seeds'] - 1}): {settings['documents']} documents, "
        f"{settings['groups']} token groups, {settings['experts']} experts, {slots}; true excess, by hand, "
        f"checked on one stream of {large['documents']:,} documents ({large['permutations']} permutations): "
        f"{truths}. Coverage of the truth by the {settings['permutations behind the null mean']}-permutation "
        "excess's document-bootstrap intervals (the same resamples for each method): "
        + ". ".join(parts)
        + "."
    )
    under = [
        label
        for label in labels
        if rates[f"{pipeline}, {label}"]["nominal"] - rates[f"{pipeline}, {label}"]["rate"]
        > 2 * rates[f"{pipeline}, {label}"]["nominal_se"]
    ]
    if under:
        below = sum(misses(f"{pipeline}, {label}")[1] for label in under)
        missed = sum(misses(f"{pipeline}, {label}")[0] for label in under)
        best = {
            label: max(methods, key=lambda m, label=label: rates[f"{m}, {label}"]["rate"]) for label in labels
        }
        text += (
            f" In this regime the pipeline's {pipeline} interval covers below the nominal rate by more than two "
            f"binomial standard errors at strength "
            + ", ".join(label.removeprefix("planted strength ") for label in under)
            + f"; in {below} of those {missed} misses the truth lies below the interval (an interval that "
            "overstates the excess)"
            + (f", in the other {missed - below} above it" if missed > below else "")
            + ". The best-covering method per strength: "
            + ", ".join(f"{label.removeprefix('planted strength ')} {m}" for label, m in best.items())
            + ". The findings give every interval's bootstrap bias and position beside it."
        )
    else:
        text += (
            f" In this regime the pipeline's {pipeline} interval covers within two binomial standard errors of "
            "the nominal rate or above at every strength."
        )
    return text


#: The benchmark results files the README's Performance block quotes, in order (``benchmarks/bench_*.py
#: --out``; each holds its table, command and machine, see ``benchmarks/bench_results.py``).
PERFORMANCE_FILES = (
    "docs/results/bench_hooks.json",
    "docs/results/bench_hooks_olmoe_layer.json",
    "docs/results/bench_probing_collection.json",
    "docs/results/bench_collect.json",
    "docs/results/bench_bounded_store.json",
    "docs/results/bench_probing.json",
    "docs/results/bench_logit_lens.json",
    "docs/results/bench_interventional.json",
)
#: Target of the main job's cost: total wall time over the sum of its collection passes.
TOTAL_OVER_PASSES_TARGET = 2.5


def _formatted(value: Any, spec: str) -> str:
    """``value`` with the format ``spec`` of a benchmark table (a trailing ``×`` is appended after)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    suffix = "×" if spec.endswith("×") else ""
    return format(value, spec.removesuffix("×")) + suffix if spec.removesuffix("×") or suffix else str(value)


def _machine_text(machine: dict[str, Any]) -> str:
    """The machine a benchmark ran on, as recorded in its results file."""
    start, end = (
        machine.get("load average (1 min) at the start"),
        machine.get("load average (1 min) at the end"),
    )
    return (
        f"{machine.get('cpus')} CPUs (shared), {machine.get('threads')} thread(s), load average {start} at the start "
        f"and {end} at the end, torch {machine.get('torch')}, {machine.get('device')}"
    )


def benchmark_markdown(results: dict[str, Any], source: str) -> str:
    """One benchmark's paragraph and table, from its results file (``benchmarks/bench_results.py``)."""
    table = results["table"]
    columns = table["columns"]
    lines = [
        f"`{results['command']}` ([`{source}`]({source}); {_machine_text(results['machine'])}): "
        f"{results['title']}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in table["rows"]:
        lines.append(
            "| " + " | ".join(_formatted(row.get(name), spec) for name, spec in columns.items()) + " |"
        )
    if results.get("notes"):
        lines += ["", " ".join(results["notes"])]
    return "\n".join(lines)


def main_job_cost_markdown(results: dict[str, Any], source: str) -> str:
    """The main job's total wall time relative to the sum of its collection passes (``results.json``
    metadata timings), with the machine the run recorded."""
    meta = results["metadata"]
    timings = meta["timings"]
    passes = {
        key[len("pass ") : -len(" (s)")]: value for key, value in timings.items() if key.startswith("pass ")
    }
    total, collection = timings["total (s)"], sum(passes.values())
    ratio = total / collection
    verdict = "Meets" if ratio <= TOTAL_OVER_PASSES_TARGET else "Misses"
    machine = meta.get("machine")
    runtime = meta.get("runtime", {})
    where = (
        _machine_text(machine)
        if machine
        else f"device {runtime.get('device', 'cpu')}, torch {meta.get('versions', {}).get('torch')}; the run did not "
        "record its CPUs or load"
    )
    threads = meta["options"].get("threads")
    return (
        f"The committed default results, `{command_line(meta['options'])}` ([`{source}`]({source}); {where}; threads "
        f"{threads if threads is not None else 'left to the default'}"
        f"{'' if 'workers' in meta['options'] else '; one process: the run predates --workers'}): "
        f"total {total:.1f} s = **{ratio:.2f}×** the "
        f"sum of its collection passes ({collection:.1f} s: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in passes.items())
        + f"); finalize {timings.get('finalize (s)', float('nan')):.1f} s{_finalize_parts(timings)}. {verdict} the "
        f"target (total ≤ {TOTAL_OVER_PASSES_TARGET}× its passes, same run)."
        + (
            " This is another job than the benchmark above (it adds `--sparsity-family`, which the benchmark "
            "does not run): compare it with neither of its rows."
            if "--sparsity-family" in command_line(meta["options"])
            else ""
        )
    )


def _finalize_parts(timings: dict[str, float]) -> str:
    """Each analysis's finalize seconds, largest first, where the run recorded them (else nothing)."""
    parts = {
        key[len("finalize ") : -len(" (s)")]: value
        for key, value in timings.items()
        if key.startswith("finalize ") and key != "finalize (s)"
    }
    if not parts:
        return ""
    ranked = sorted(parts.items(), key=lambda item: -item[1])
    return " (" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ranked) + ")"


#: The benchmark of the README's main job (`tl-moe analyze`) in one process and with its default workers.
MAIN_JOB_BENCHMARK = "docs/results/bench_main_job.json"


def _table_differences_text(details: list[list[dict[str, Any]]]) -> str:
    """What differs between two variants' tables over the repeats: each table, its differing columns with
    their cells and, for numbers, the largest relative difference (from the benchmark's records)."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for repeat in details:
        for table in repeat:
            columns = tables.setdefault(table["table"].removesuffix(".parquet"), {})
            if "shape" in table:
                columns["(shape)"] = {}
            for name, entry in table["columns"].items():
                seen = columns.setdefault(name, {"cells": 0, "rows": table["rows"]})
                seen["cells"] = max(seen["cells"], entry["cells"])
                if "largest relative" in entry:
                    seen["relative"] = max(seen.get("relative", 0.0), entry["largest relative"])
    parts = []
    for table, columns in tables.items():
        described = [
            (
                f"{name} in up to {entry['cells']} of {entry['rows']} rows"
                + (
                    f", by at most {entry['relative']:.1e} relative"
                    if "relative" in entry
                    else " (not numbers)"
                )
            )
            if entry
            else "its shape"
            for name, entry in columns.items()
        ]
        parts.append(f"`{table}` ({'; '.join(described)})")
    return ", ".join(parts)


def main_job_benchmark_markdown(results: dict[str, Any], source: str) -> str:
    """The main-job benchmark's table (:func:`benchmark_markdown` without its notes), what the workers and
    a second thread changed against the spread of the runs, whether the variants wrote the same results,
    the worker runs' verdict against the target, and what the target would need of the finalize work."""
    rows = results["table"]["rows"]
    one, default, single = (
        next(row for row in rows if row["run"].startswith(prefix))
        for prefix in ("one process", "default workers", "one thread")
    )
    runs = results["runs"]

    def of(row: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted((run for run in runs if run["run"] == row["run"]), key=lambda run: run["repeat"])

    def spread(row: dict[str, Any], key: str, unit: str = " s") -> str:
        values = [run[key] for run in of(row)]
        return f"{min(values):.1f}–{max(values):.1f}{unit}"

    n_runs = len(of(default))
    loads_start = [run["load at start"] for run in runs if run.get("load at start") is not None]
    loads_end = [run["load at end"] for run in runs if run.get("load at end") is not None]
    ratio = default["total / passes"]
    verdict = "meets" if ratio <= TOTAL_OVER_PASSES_TARGET else "misses"
    one_totals, totals = [run["total s"] for run in of(one)], [run["total s"] for run in of(default)]
    apart = max(totals) < min(one_totals) or max(one_totals) < min(totals)
    chance = 2 / math.comb(len(totals) + len(one_totals), len(totals))
    overlap = (
        f"do not overlap (with {len(totals)} and {len(one_totals)} runs, ranges this far apart arise by chance "
        f"alone {chance:.0%} of the time)"
        if apart
        else "overlap"
    )
    compared = results["workers vs one process"]
    same = (
        f"In each of the {n_runs} repeats the two runs' results files (metadata left out) and all "
        f"{compared['tables']} tables were identical."
        if results.get("identical")
        else "The worker and one-process runs' results differ (see the results file)."
    )
    threads = results["one thread vs one process"]
    if not any(threads["differing values"]) and not any(threads["differing tables"]):
        thread_text = "The one-thread runs' results were identical to them too. "
    else:
        thread_text = (
            "The one-thread runs' results differ from the one-process runs': "
            + (
                f"up to {max(threads['differing values'])} results values; "
                if any(threads["differing values"])
                else ""
            )
            + _table_differences_text(threads.get("details", []))
            + ". "
        )
    per_repeat_thread = [b["finalize s"] / a["finalize s"] for a, b in zip(of(one), of(single), strict=True)]
    bound = results["bound"]
    cpus, target = bound["cpus"], bound["target total / passes"]
    quiet = bound["least contended worker run"]
    threshold = f"{100 * results['contended above']:.0f}%"

    def cut(value: float) -> str:
        return f"{100 * value:.0f}%"

    if quiet["cut after the passes"] > 0:
        after_verdict = "the target is out of reach on this machine, with finalize after the passes, unless the finalize work is cut"
    else:
        after_verdict = "the work would fit: what is missing is in how it is scheduled"
    overlap_verdict = (
        "even a perfect overlap would not reach the target"
        if quiet["cut overlapped"] > 0
        else "a perfect overlap would reach it"
    )
    shares = {
        name: statistics.median(run["finalize by analysis s"][name] / run["finalize s"] for run in of(single))
        for name in of(single)[0]["finalize by analysis s"]
    }
    shares_text = ", ".join(
        f"{name} {100 * share:.0f}%"
        for name, share in sorted(shares.items(), key=lambda item: -item[1])
        if share >= 0.005
    )
    work_runs = ", ".join(f"{value:.1f}" for value in bound["finalize work cpu s, every run"])
    why = (
        f"What the target would need on this machine ({cpus} CPUs). The finalize *work* is the CPU time of a "
        "one-thread run's finalize (no thread of the run spins while it waits, no process of the run contends), "
        f"the least of the runs since outside contention inflates CPU time: {bound['finalize work cpu s']:.1f} CPU s "
        f"(the runs: {work_runs}). It is set against the least contended worker run (repeat {quiet['repeat']}, the "
        "least passes CPU time), so that neither side comes from a slowed run. Assuming the work does not shrink "
        "when split (no superlinear cache effects), with that run's passes P and the rest of its total outside "
        "passes and finalize O (the target is relative to the run's own passes): with finalize after the passes, "
        f"as the pipeline runs it, the target leaves {cpus} × ({target} P − P − O) = "
        f"{quiet['cpu s after the passes']:.1f} CPU seconds, a cut of {cut(quiet['cut after the passes'])}: "
        f"{after_verdict}. With the passes and finalize overlapped perfectly and O kept serial, a schedule the "
        f"pipeline does not have (finalize's inputs exist only after their passes), it leaves {cpus} × ({target} P − O) "
        f"CPU seconds less the passes' own work ({bound['passes work cpu s']:.1f} CPU s, the least one-thread run's "
        f"passes) = {quiet['cpu s overlapped']:.1f}, a cut of {cut(quiet['cut overlapped'])}: {overlap_verdict}. "
        "Against every worker run, contended ones included (their slowed passes enlarge what the target leaves "
        f"them): after the passes {cut(bound['least cut after the passes'])} to {cut(bound['most cut after the passes'])}, "
        f"overlapped {cut(bound['least cut overlapped'])} to {cut(bound['most cut overlapped'])} (negative: the work fits)."
        + (
            f" Of the finalize work, in the one-thread runs (median shares): {shares_text}."
            if shares_text
            else ""
        )
    )
    contended = [run for run in runs if run.get("contended")]
    contended_text = (
        f"Runs whose passes took more than {threshold} more CPU time than the least of their variant's (the same work: "
        "something else shared the machine), kept in the medians and ranges: "
        + ", ".join(
            f"{run['run']} #{run['repeat']} (+{100 * run['passes cpu over least']:.0f}%)" for run in contended
        )
        + ". "
        if contended
        else f"No run's passes took more than {threshold} more CPU time than the least of its variant's. "
    )
    return (
        benchmark_markdown({**results, "notes": []}, source)
        + f"\n\nEach row gives every column's own median over the {n_runs} runs of that variant (a row is not "
        "one run; every run is in the results file)"
        + (
            f"; the runs' own 1-minute load averages were {min(loads_start)}–{max(loads_start)} at their starts "
            f"and {min(loads_end)}–{max(loads_end)} at their ends"
            if loads_start and loads_end
            else ""
        )
        + f". The `default workers` row used {default['workers']} workers because its runs were given "
        f"`--threads {one['threads']}`; a plain `tl-moe analyze` on a busy machine gets a one-thread budget and "
        "then no worker. What the workers change is finalize: "
        f"{one['finalize s']:.1f} s in one process ({spread(one, 'finalize s')}), {default['finalize s']:.1f} s "
        f"with workers ({spread(default, 'finalize s')}), {one['finalize s'] / default['finalize s']:.2f}× as fast; "
        f"in one process with one thread instead of {one['threads']}, finalize took {single['finalize s']:.1f} s "
        f"({spread(single, 'finalize s')}), {min(per_repeat_thread):.2f}–{max(per_repeat_thread):.2f}× the "
        f"{one['threads']}-thread run's time of the same repeat. "
        f"The collection passes, which no worker runs, took {spread(one, 'passes s')} in one process and "
        f"{spread(default, 'passes s')} with workers; the totals' ranges, {min(one_totals):.1f}–{max(one_totals):.1f} "
        f"s in one process and {min(totals):.1f}–{max(totals):.1f} s with workers, {overlap}. {same} "
        + thread_text
        + contended_text
        + f"With workers the main job {verdict} the target (total ≤ {target}× its passes, same "
        f"run): a median {ratio:.2f}× (range {default['total / passes, range']}).\n\n{why}"
    )


def performance_markdown(root: Path = Path(".")) -> str:
    """The README's Performance block: the main job's cost (its benchmark, when present, then the committed
    default-results run), then every benchmark results file present."""
    parts = []
    if (root / MAIN_JOB_BENCHMARK).exists():
        parts.append(
            main_job_benchmark_markdown(
                json.loads((root / MAIN_JOB_BENCHMARK).read_text()), MAIN_JOB_BENCHMARK
            )
        )
    default = "docs/results/toy_default.json"
    parts.append(main_job_cost_markdown(json.loads((root / default).read_text()), default))
    for source in PERFORMANCE_FILES:
        if (root / source).exists():
            parts.append(benchmark_markdown(json.loads((root / source).read_text()), source))
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Block:
    """A generated block of the README or a doc: the committed results file it is made from, how it is
    written, and the Markdown file that holds its markers."""

    name: str
    source: str
    render: Callable[[dict[str, Any], str], str]
    document: str = "README.md"

    @property
    def markers(self) -> tuple[str, str]:
        if self.name == "default":
            return START, END
        return f"<!-- results:{self.name}:start -->", f"<!-- results:{self.name}:end -->"

    def markdown(self, root: Path = Path(".")) -> str:
        return self.render(json.loads((root / self.source).read_text()), self.source)


@dataclass(frozen=True)
class PerformanceBlock(Block):
    """The README's Performance block: made from the main run's results and every benchmark file."""

    def markdown(self, root: Path = Path(".")) -> str:
        return performance_markdown(root)


@dataclass(frozen=True)
class DriversBlock(Block):
    """The README's drivers block: the drivers run's findings with the planted studies beside them."""

    def markdown(self, root: Path = Path(".")) -> str:
        results = json.loads((root / self.source).read_text())
        return drivers_markdown(results, self.source, _planted_if_any(root) or {})


@dataclass(frozen=True)
class ExplainBlock(Block):
    """The README's explain block: the explain run's findings with the planted coverage of the labels'
    intervals beside the headline."""

    def markdown(self, root: Path = Path(".")) -> str:
        results = json.loads((root / self.source).read_text())
        return explain_markdown(results, self.source, _planted_if_any(root) or {})


@dataclass(frozen=True)
class DefaultBlock(Block):
    """The README's main results block: the default run's findings, with the planted coverage of its
    held-out intervals."""

    def markdown(self, root: Path = Path(".")) -> str:
        results = json.loads((root / self.source).read_text())
        return results_markdown(results, self.source, _planted_if_any(root))


BLOCKS = (
    DefaultBlock("default", "docs/results/toy_default.json", results_markdown),
    DriversBlock("drivers", "docs/results/toy_drivers.json", drivers_markdown),
    ExplainBlock("explain", "docs/results/toy_explain.json", explain_markdown),
    Block("jsd_error", "docs/results/jsd_reference_error.json", jsd_error_markdown, "docs/METHODS.md"),
    Block("zoo", "docs/results/toy_zoo.json", zoo_markdown),
    Block("labeling_cost", "docs/results/bench_labeling.json", labeling_cost_markdown, "docs/EXPLAIN.md"),
    PerformanceBlock("performance", "docs/results/toy_default.json", main_job_cost_markdown),
    Block("planted_labels", PLANTED, planted_labels_markdown, "docs/EXPLAIN.md"),
    Block("planted_labels_methods", PLANTED, planted_labels_markdown, "docs/METHODS.md"),
    Block("planted_label_means", PLANTED, planted_label_means_markdown, "docs/METHODS.md"),
    Block("planted_held_out_draws", PLANTED, planted_held_out_draws_markdown, "docs/METHODS.md"),
    Block("planted_interval_methods", PLANTED, planted_interval_methods_markdown, "docs/METHODS.md"),
    Block(
        "planted_gated_interval_methods", PLANTED, planted_gated_interval_methods_markdown, "docs/METHODS.md"
    ),
    Block("planted_driver_domain", PLANTED, planted_driver_domain_markdown, "docs/METHODS.md"),
    Block("planted_rho_methods", PLANTED, planted_rho_methods_markdown, "docs/METHODS.md"),
    Block("planted_excess", PLANTED, planted_excess_markdown, "docs/METHODS.md"),
    Block("planted_within_layer", PLANTED, planted_within_layer_markdown, "docs/METHODS.md"),
    Block("planted_reweighting", PLANTED, planted_reweighting_markdown, "docs/METHODS.md"),
    Block("planted_driver_holm", PLANTED, planted_driver_holm_markdown, "docs/METHODS.md"),
)


def replace_block(readme: str, block: str, markers: tuple[str, str] = (START, END)) -> str:
    """``readme`` with the text between the ``markers`` replaced by ``block``."""
    start_marker, end_marker = markers
    start, end = readme.index(start_marker) + len(start_marker), readme.index(end_marker)
    return readme[:start] + "\n" + block + "\n" + readme[end:]


ACCEPTED = "accepted: a tl-moe results.json (a run's 'results.json', or one of docs/results/), or --write README.md / a docs file"


class ToolInputError(Exception):
    """A file this tool cannot use, said in one line."""


def load_results(path: Path) -> Any:
    """The parsed JSON of ``path``, or a :class:`ToolInputError` naming the file and what is accepted."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ToolInputError(f"cannot read {str(path)!r} ({error.strerror or error}); {ACCEPTED}.") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ToolInputError(f"{str(path)!r} is not JSON; {ACCEPTED}.") from None


def render_results(path: Path) -> str:
    """The block of the results file at ``path``: its committed block's own (every block of the planted
    studies' file, one after another), else a run's findings."""
    results = load_results(path)
    block = next((b for b in BLOCKS if Path(b.source) == path), None)
    if block is None and not (isinstance(results, dict) and isinstance(results.get("metadata"), dict)):
        raise ToolInputError(f"{str(path)!r} is not a tl-moe run's results.json (no 'metadata'); {ACCEPTED}.")
    renders = [block.render if block is not None else findings_markdown]
    if Path(PLANTED) == path:
        renders = [b.render for b in BLOCKS if b.source == PLANTED]
    try:
        return "\n\n".join(render(results, str(path)) for render in renders)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ToolInputError(
            f"{str(path)!r} lacks what its block needs ({type(error).__name__}: {error}); {ACCEPTED}."
        ) from None


def write_blocks(path: Path) -> None:
    """Rewrite every generated block whose markers ``path`` holds, from its committed results file."""
    try:
        readme = path.read_text()
    except OSError as error:
        raise ToolInputError(f"cannot read {str(path)!r} ({error.strerror or error}); {ACCEPTED}.") from None
    for block in BLOCKS:
        if block.markers[0] in readme and (Path(block.source)).exists():
            readme = replace_block(readme, block.markdown(), block.markers)
            print(f"wrote the {block.name} results block of {path} from {block.source}")
    path.write_text(readme)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print (or write into the README) the results sections.")
    parser.add_argument("results", type=Path, nargs="?", help="print the block of this results file")
    parser.add_argument("--write", type=Path, default=None, help="rewrite every block of this README")
    args = parser.parse_args(argv)
    if args.write is None and args.results is None:
        parser.error("give a results file to print, or --write README.md")
    try:
        if args.write is None:
            print(render_results(args.results))
        else:
            write_blocks(args.write)
    except ToolInputError as error:
        print(f"readme_results: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
