"""The findings line of the explain section's labels: the headline metric beside its shuffled-label
control and the token-set baseline, each difference with its document interval and what it says about 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.report.numbers import format_interval, format_number, is_defined

__all__ = ["METRIC_NAMES", "labels_finding"]

METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "precision": "precision",
                 "recall": "recall", "auc": "AUC", "accuracy": "accuracy"}  # fmt: skip


def _show(mean: float, low: float, high: float, why: str = "") -> str:
    """``mean [low, high]``, ``mean (no interval: why)``, or ``unavailable (no expert scored)``."""
    return format_interval(mean, low, high, ".3f", "no expert scored", why or "the bootstrap gave none")


def _signed(mean: float, low: float, high: float, why: str = "") -> str:
    """A signed difference with its interval and what the interval says about 0."""
    if not np.isfinite(mean):
        return "unavailable (no pair scored)"
    if not np.isfinite(low):
        return f"{mean:+.3f} (no interval: {why})" if why else f"{mean:+.3f} (no interval)"
    reading = "above 0" if low > 0 else "below 0" if high < 0 else "covers 0"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (interval {reading})"


def _why(row: dict[str, Any], arm: str = "") -> str:
    """Why a summary row (``arm``: its shuffled or baseline columns) has no interval, or ``""``."""
    if row.get("interval over") == "score documents":
        reason = str(row.get("interval", ""))
        return reason.removeprefix("unavailable: ") if reason.startswith("unavailable") else ""
    return str(row.get(f"{arm} interval unavailable" if arm else "interval unavailable", "") or "")


def _unit(row: dict[str, Any]) -> str:
    """The unit of a summary row's intervals, or why it has none."""
    if row.get("interval over") != "score documents":
        why = row.get("interval unavailable")
        return f"no interval over experts: {why}" if why else "95% bootstrap over experts"
    if str(row.get("interval", "")).startswith("unavailable"):
        return f"no interval: {str(row['interval']).removeprefix('unavailable: ')}"
    unit = f"95% bootstrap over the {int(row['documents'])} score documents of the scoring items"
    if isinstance(row.get("mean interval method"), str):  # results written before the methods were recorded
        unit += (
            f" ({row['mean interval method']} for the means and for own − chance, the mean's interval moved by "
            f"the chance constant; {row['difference interval method']} for the paired differences between arms)"
        )
    return unit


def labels_finding(
    row: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    explainer: str,
    scorer: str,
    frame: pd.DataFrame,
    layers: Sequence[dict[str, Any]] = (),
) -> str:
    """The findings line of the labels: the headline metric vs the shuffled control and the token-set
    baseline (each a paired difference with its interval and what it says about 0; the baseline
    comparison per layer too, ``layers``: that metric's per-layer summary rows), then the other metrics,
    and the unit of the intervals (score documents; AUC: experts)."""
    m = METRIC_NAMES.get(row["metric"], row["metric"])
    shuffled = (row["own - shuffled"], row["diff ci low"], row["diff ci high"])
    verdict = "better than" if np.isfinite(shuffled[1]) and shuffled[1] > 0 else "compared with"
    text = (
        f"**Automatic labels** ({explainer} explainer, {scorer} scorer, scored on held-out documents): mean "
        f"{m} over {row['experts scored']} experts {_show(row['mean'], row['ci low'], row['ci high'], _why(row))} "
        f"(chance {format_number(row['chance'], '.3f', 'no expert scored')}{_against_chance(row)}{_lean(row)}); {verdict} its shuffled control (another expert's label of the same "
        f"layer, one seeded derangement, the intervals conditional on it; {_show(row['shuffled mean'], row['shuffled ci low'], row['shuffled ci high'], _why(row, 'shuffled'))}"
        f"{_shuffled_below_chance(row)}): own − shuffled {_signed(*shuffled, _why(row, 'shuffled'))}"
    )
    if "baseline mean" in row and np.isfinite(row["baseline mean"]):
        text += (
            f"; against the token-set baseline (the labeler's own best token set alone, chosen on the explain "
            f"documents by {m}, {_show(row['baseline mean'], row['baseline ci low'], row['baseline ci high'], _why(row, 'baseline'))}): "
            f"own − baseline {_signed(row['own - baseline'], row['baseline diff ci low'], row['baseline diff ci high'], _why(row, 'baseline'))}"
        )
        per_layer = [
            f"layer {r['layer']} {_signed(r['own - baseline'], r['baseline diff ci low'], r['baseline diff ci high'])}"
            for r in layers
            if np.isfinite(r.get("own - baseline", np.nan))
        ]
        if per_layer:
            text += f" — per layer (each interval unadjusted for the {len(per_layer)} layers): " + ", ".join(
                per_layer
            )
    text += _share_part(row)
    others = [
        f"{METRIC_NAMES[k]} {_show(r['mean'], r['ci low'], r['ci high'], _why(r))} "
        f"({_lean(r).removeprefix('; ') + '; ' if _lean(r) else ''}shuffled {format_number(r['shuffled mean'], '.3f', 'no pair scored')}"
        + (
            f"; own − baseline {_signed(r['own - baseline'], r['baseline diff ci low'], r['baseline diff ci high'], _why(r, 'baseline'))}"
            if is_defined(r.get("own - baseline"))
            else ""
        )
        + ")"
        + ("" if r.get("interval over") == row.get("interval over") else f" ({_unit(r)})")
        for k, r in rows.items()
        if k in ("f1", "precision", "recall", "auc") and np.isfinite(r["mean"])
    ]
    if others:
        text += "; " + ", ".join(others)
        if "f1" in rows:
            text += f" (F1 of answering yes to every item: {format_number(rows['f1']['chance'], '.3f', 'no expert scored')})"
    kinds = frame["kind"].value_counts() if "kind" in frame else pd.Series(dtype=int)
    if len(kinds):
        text += "; label kinds: " + ", ".join(f"{k} {n}" for k, n in kinds.items())
    return text + (
        f"; {_unit(row)}; {row['experts not scored']} experts not scored. Each expert's score items are its "
        "most salient routed contexts plus contexts spread over its saliency quantiles, against as many "
        "negatives: the scores describe the label on those items, not on every routed token."
    )


def _against_chance(row: dict[str, Any]) -> str:
    """``; own − chance +d [low, high]`` (the mean's interval moved by the chance level), or ``""``."""
    if not is_defined(row.get("own - chance")):
        return ""
    low, high = row.get("chance diff ci low"), row.get("chance diff ci high")
    return f"; own − chance {_signed(row['own - chance'], low if is_defined(low) else np.nan, high if is_defined(high) else np.nan, _why(row))}"


def _lean(row: dict[str, Any]) -> str:
    """``; bootstrap bias −b, the estimate at p of its interval`` (mean of the resamples − estimate, and
    (estimate − low) / (high − low)): the diagnostics of the mean's interval, or ``""`` without them."""
    bias, position = row.get("bootstrap bias"), row.get("position in interval")
    if not (is_defined(bias) and is_defined(position)):
        return ""
    return f"; bootstrap bias {bias:+.4f}, the estimate at {position:.2f} of its interval from the lower end"


def _shuffled_below_chance(row: dict[str, Any]) -> str:
    """Why the shuffled control sits below chance, said where its interval lies wholly below it."""
    chance, high = row.get("chance"), row.get("shuffled ci high")
    if not (is_defined(chance) and is_defined(high)) or high >= chance:
        return ""
    return (
        f", below chance {chance:.3f}: half of each expert's negatives are other experts' top contexts of the "
        "same layer (at times the deranged label's own expert's), the kind of context a label of that layer "
        "says yes to, while the expert's own positives are not what the other label describes; own − chance "
        "is the comparison free of that"
    )


def _share_part(row: dict[str, Any]) -> str:
    """The clause of the share of experts whose own label beats the shuffled one (on the same items),
    with its interval over the score documents (every expert's scores recomputed in each resample)."""
    share = row.get("share beating shuffled")
    if not is_defined(share):
        return ""
    reason = str(row.get("share interval", ""))
    if reason.startswith("unavailable") or not is_defined(row.get("share ci low")):
        shown = (
            f"{share:.0%} (no interval: {reason.removeprefix('unavailable: ') or 'the bootstrap gave none'})"
        )
    elif share >= 1 or share <= 0:  # at a bound the two-sided bracket ends at the estimate by construction
        end, side = ("share ci low", "lower") if share >= 1 else ("share ci high", "upper")
        shown = (
            f"{round(share * row['share experts'])} of {int(row['share experts'])} ({share:.0%}; one-sided 97.5% "
            f"{side} bound {row[end]:.0%}, the bootstrap's {'2.5th' if side == 'lower' else '97.5th'} percentile"
            f" — a share at {share:.0%} has no two-sided interval)"
        )
        return (
            f"; experts whose own label's {METRIC_NAMES['balanced_accuracy']} is above the shuffled one's on "
            f"the same items: {shown} (bootstrap over the {int(row['share documents'])} score documents, each "
            "expert's scores recomputed in every resample)"
        )
    else:
        shown = f"{share:.0%} [{row['share ci low']:.0%}, {row['share ci high']:.0%}]"
    return (
        f"; share of experts whose own label's {METRIC_NAMES['balanced_accuracy']} is above the shuffled "
        f"one's on the same items: {shown} of {int(row['share experts'])} (95% bootstrap over the "
        f"{int(row['share documents'])} score documents, each expert's scores recomputed in every resample)"
    )


def _f1_below_chance(layers: Sequence[dict[str, Any]]) -> str:
    """Layers whose mean F1 is below the F1 of answering yes to every item (its chance level on these
    items), said beside the headline so that a good overall mean does not hide them."""
    below = [
        f"layer {r['layer']} {r['mean']:.3f} vs {r['chance']:.3f}"
        for r in layers
        if is_defined(r.get("mean")) and is_defined(r.get("chance")) and r["mean"] < r["chance"]
    ]
    if not below:
        return ""
    return " Mean F1 is below that of answering yes to every item in " + ", ".join(below) + "."
