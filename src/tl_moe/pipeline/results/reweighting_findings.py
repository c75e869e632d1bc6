"""The re-weighting section's sentences: each row's estimate with its interval (or why it has none), and
the findings of re-weighting and steering as the report and the end-of-run summary show them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.analysis.steering import SteeringStudy
from tl_moe.report.numbers import format_interval

__all__ = [
    "estimate_text",
    "holm_record",
    "interval_record",
    "reweighting_finding",
    "steering_finding",
    "steering_testability",
    "untestable",
]


def estimate_text(frame: pd.Series, prefix: str, least: int = MIN_DOCUMENTS) -> str:
    """``estimate [low, high]``, the estimate with why it has no interval (too few documents: fewer than
    ``least``, the run's --min-documents), or ``unavailable``."""
    low, high = frame[prefix + " ci low"], frame[prefix + " ci high"]
    why = frame.get(prefix + " interval unavailable") or _no_interval(frame, least).removeprefix(
        "no interval: "
    )
    return format_interval(frame[prefix], low, high, "+.4f", "no held-out document", why)


def _no_interval(frame: pd.Series, least: int = MIN_DOCUMENTS) -> str:
    """Why a row has no interval (``least``: the fewest documents behind one)."""
    n = int(frame.get("documents", 0))
    if n < least:
        return f"no interval: {n} documents; a document-level interval needs {least}"
    return "no interval: no control was drawn"


def _absolute_change(row: pd.Series, least: int = MIN_DOCUMENTS) -> str:
    """The chosen re-weighting's absolute held-out loss change with its 95% interval, and in words
    whether it raised the loss (an increase: worse in absolute terms), lowered it, or neither."""
    estimate, low, high = row["loss change"], row["loss change ci low"], row["loss change ci high"]
    text = f"absolute change {estimate_text(row, 'loss change', least)}"
    if not np.isfinite(estimate):
        return text
    if np.isfinite(low) and np.isfinite(high):
        if low > 0:
            return text + ": an increase (held-out loss worse in absolute terms)"
        if high < 0:
            return text + ": a decrease (held-out loss better in absolute terms)"
        return (
            text + f": not separated from 0 (the estimate {'an increase' if estimate > 0 else 'a decrease'})"
        )
    return text + f", the estimate {'an increase' if estimate > 0 else 'a decrease'}"


def interval_record(row: pd.Series, prefix: str, n: int) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if not np.isfinite(value) else round(float(value), 6)

    record = {
        "estimate": clean(row[prefix]),
        "ci_low": clean(row[f"{prefix} ci low"]),
        "ci_high": clean(row[f"{prefix} ci high"]),
        "n": int(n),
    }
    if f"{prefix} interval method" in row:
        record["interval_method"] = row[f"{prefix} interval method"]
    if f"{prefix} df" in row:
        record["draws_df"] = clean(row[f"{prefix} df"])
    return record


def holm_record(row: pd.Series) -> dict[str, Any]:
    def clean(value: float) -> float | None:
        return None if not np.isfinite(value) else round(float(value), 6)

    return {
        "p": clean(row["chosen − control p"]),
        "p_holm": clean(row["p (Holm)"]),
        "level": clean(row["Holm level"]),
        "ci_low": clean(row["Holm ci low"]),
        "ci_high": clean(row["Holm ci high"]),
        "draws_df": clean(row["Holm df"]) if "Holm df" in row else None,
        "improved": bool(row["improved (Holm)"]),
        "worse": bool(row["worse (Holm)"]),
        "unavailable": row["Holm unavailable"] or None,
    }


def _holm_row(row: pd.Series, least: int = MIN_DOCUMENTS) -> str:
    """A domain's chosen − control with its Holm interval (or why it has none), beside the chosen
    re-weighting's absolute held-out loss change."""
    absolute = _absolute_change(row, least)
    if row["Holm unavailable"]:
        return (
            f"{row['domain']} ({row['expert set']} × {row['factor']:g}): {absolute}; vs control "
            f"{row['chosen − control']:+.4f} (not tested: {row['Holm unavailable']})"
        )
    verdict = (
        "improved" if row["improved (Holm)"] else "worse" if row["worse (Holm)"] else "no difference shown"
    )
    return (
        f"{row['domain']} ({row['expert set']} × {row['factor']:g}): {absolute}; vs control "
        f"{row['chosen − control']:+.4f} [{row['Holm ci low']:+.4f}, {row['Holm ci high']:+.4f}] at level "
        f"{row['Holm level']:.4f}, Holm p = {row['p (Holm)']:.3g}: {verdict}"
    )


def _draws(table: pd.DataFrame, column: str = "control draws") -> str:
    """The number of control draws per row of ``table`` (a range when they differ)."""
    if column not in table:
        return "random"
    counts = sorted({int(n) for n in table[column]})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _control_interval(table: pd.DataFrame, column: str, draws_column: str) -> str:
    """How the intervals that average the control's draws were computed, from the ``interval method``
    column (``column``) of ``table``: the draw-mean t interval, or with one draw the percentile document
    bootstrap that holds the draw fixed."""
    methods = {m for m in table.get(column, pd.Series(dtype=object)) if m != "none"}
    n = _draws(table, draws_column)
    t_words = (
        f"t interval over the {n} control draws: the documents' bootstrap variance of the draw mean plus the "
        "variance between the draws over their number, Satterthwaite's degrees of freedom"
    )
    if methods == {"percentile"}:
        return (
            "percentile document bootstrap with the one control draw held fixed (its draw variance not in it)"
        )
    if "percentile" in methods:
        return t_words + "; percentile document bootstrap where a control has one draw (held fixed)"
    return t_words


def reweighting_finding(gains: pd.DataFrame, least: int = MIN_DOCUMENTS) -> str:
    """Every domain's held-out chosen − control, Holm-adjusted over the domains; none singled out
    (``least``: the run's fewest documents behind an interval)."""
    helped = gains["loss change (selection)"] < 0
    tested_mask = gains["Holm unavailable"] == ""
    tested = gains[tested_mask]
    better, worse = int(tested["improved (Holm)"].sum()), int(tested["worse (Holm)"].sum())

    def named(mask: pd.Series) -> str:
        return ", ".join(map(str, gains.loc[mask, "domain"])) or "none"

    return (
        f"**Re-weighting experts** (set and factor chosen on half the documents, measured on the other half): "
        f"on {int(helped.sum())} of {len(gains)} domains some re-weighting of the grid lowered the selection-half "
        f"loss ({named(helped)}; of them tested held out: {named(helped & tested_mask)}); the tested domains "
        f"whose best re-weighting did not lower the selection-half loss, so had no gain to confirm: "
        f"{named(~helped & tested_mask)}; held "
        f"out, against routing-rate-matched random experts with the same factor, {better} of the {len(tested)} "
        f"tested domains improved and {worse} got worse (Holm-adjusted over the domains, family-wise 5%). "
        "Every domain, in nats/token: the chosen re-weighting's absolute held-out loss change (95% document "
        "bootstrap; > 0 is an increase, i.e. worse) and chosen − control with its Holm interval (paired, "
        f"{_control_interval(gains, 'chosen − control interval method', 'control draws')}, at Holm's level): "
        + "; ".join(_holm_row(row, least) for _, row in gains.iterrows())
        + "."
    )


def steering_finding(steering: SteeringStudy, least: int = MIN_DOCUMENTS) -> str:
    """Switching each group's experts off and on, on its own held-out text: the loss change of the
    detected experts, of matched random experts, and their paired difference with its interval (or why
    it has none)."""
    table = steering.switches
    own = table[table["experts of"] == table["evaluated on"]]
    parts = [
        f"{r['experts of']}-experts {r['switch']} on {r['evaluated on']}: {estimate_text(r, 'loss change', least)} "
        f"vs {estimate_text(r, 'random sets', least)} for matched random experts, paired difference (experts − "
        f"matched random experts) {estimate_text(r, 'detected − random', least)}"
        for _, r in own.sort_values(["experts of", "switch"]).iterrows()
    ]
    a, b = steering.contrast
    return (
        f"**Steering** ({a} vs {b}, experts chosen by routing-rate difference on the selection half), switched "
        f"{' and '.join(sorted(set(own['switch'])))}: "
        + "; ".join(parts)
        + " (nats/token, held out; the experts' loss change: 95% percentile document bootstrap; the matched "
        "random experts' (mean of the draws) and the paired difference: 95% "
        + _control_interval(own, "detected − random interval method", "random draws")
        + ")."
        + "".join(f" Note: {note}." for note in getattr(steering, "notes", ()))
    )


def _short_groups(capacity: dict[str, tuple[int, int]], counts: str, least: int) -> tuple[list[str], str]:
    """``(groups, listing)``: the groups whose held-out half cannot reach ``least`` documents, and
    them joined by "; ", each followed by its document counts written into the ``counts`` pattern."""
    short = [g for g, (_, held_out) in capacity.items() if held_out < least]
    listed = "; ".join(
        f"{g} "
        + counts.format(f"{capacity[g][0]} documents in the split, {capacity[g][1]} on the held-out half")
        for g in short
    )
    return short, listed


def untestable(capacity: dict[str, tuple[int, int]], what: str, least: int = MIN_DOCUMENTS) -> str:
    """A sentence naming the groups this corpus cannot make testable with ``least`` held-out documents
    per interval (empty when none)."""
    short, listed = _short_groups(capacity, "({})", least)
    if not short:
        return ""
    return (
        f" The corpus cannot make {what} testable for {len(short)} of {len(capacity)} groups, whatever "
        f"--reweight-tokens is: a held-out interval needs {least} documents, and it has {listed}."
    )


def steering_testability(capacity: dict[str, tuple[int, int]], least: int = MIN_DOCUMENTS) -> str:
    """Whether both steering groups can reach ``least`` held-out documents, from the counts."""
    short, listed = _short_groups(capacity, "{}", least)
    if not short:
        return ""
    return (
        f" Steering is untestable on this corpus for this contrast ({listed}; {least} held-out "
        "documents needed, whatever --reweight-tokens is): the values above are descriptive only."
    )
