"""The causal checks of the labels as the explain section shows them: the findings line (removal's
labeled − control difference unadjusted and at equal mixing weight, two headlines of equal rank) and
the per-expert table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tl_moe.explain.causal import BALANCE_CALIPER, CausalResult

__all__ = ["causal_expert_table", "causal_finding", "causal_value"]


def causal_value(row: dict[str, Any]) -> str | None:
    """A causal summary row as ``mean [low, high]``, or ``mean (interval unavailable: reason)``."""
    if row["mean"] is None or not np.isfinite(row["mean"]):
        return None
    if str(row["interval"]).startswith("unavailable"):
        return f"{row['mean']:.3f} (interval {row['interval']})"
    if not np.isfinite(row["ci low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"


_CAUSAL_EXPERT_COLUMNS = {
    "layer": "layer",
    "expert": "expert",
    "label": "label",
    "kind": "label kind",
    "kind group": "kind group",
    "n_described": "n described",
    "n_other": "n other",
    "n_described_routed": "n described routed",
    "n_other_routed": "n other routed",
    "remove_effect": "effect",
    "control_remove_effect": "control effect",
    "remove_effect_weight_adjusted": "effect, adjusted",
    "control_remove_effect_weight_adjusted": "control effect, adjusted",
    "remove_labeled_minus_control_weight_adjusted": "effect - control, adjusted",
    "remove_labeled_minus_control_weight_stratified": "effect - control, weight strata",
    "control_expert": "control expert",
    "explain_routing_described": "explain: routing at described",
    "control_explain_routing_described": "explain: control routing at described",
    "explain_routing_standardized_difference": "explain: standardized difference",
    "routing_described standardized difference": "causal windows: standardized difference",
    "status": "status",
}


def causal_expert_table(causal: CausalResult) -> pd.DataFrame:
    """One row per labeled expert of the causal checks (:data:`_CAUSAL_EXPERT_COLUMNS`), rounded."""
    present = {k: v for k, v in _CAUSAL_EXPERT_COLUMNS.items() if k in causal.frame}
    return causal.frame[list(present)].rename(columns=present).round(4)


def _reading(row: dict[str, Any], adjusted: bool = False) -> str:
    """What an interval says about 0: above, below, covers (no evidence either way), or no interval. An
    ``adjusted`` difference (at equal mixing weight) is read as what it is, the part of the effect beyond
    the router's weight, never as evidence for or against the label as a whole."""
    if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
        return "no interval"
    if adjusted:
        if row["ci low"] > 0:
            return "interval above 0: an excess beyond the mixing weight"
        if row["ci high"] < 0:
            return "interval below 0: less than the mixing weight predicts"
        return "interval covers 0: no excess beyond the mixing weight shown"
    if row["ci low"] > 0:
        return "interval above 0: for the label"
    if row["ci high"] < 0:
        return "interval below 0: against the label"
    side = "for" if row["mean"] > 0 else "against"
    return f"interval covers 0: no difference shown, the estimate on the side {side} the label"


def _accounted_for(summary: pd.DataFrame, edit: str) -> str:
    """``, the described-token excess (+x) accounted for by the router's larger mixing weight there``
    where the unadjusted difference is above 0 and the one at equal weight covers 0 or lies below it, the
    labeled expert's weights beside (empty otherwise)."""
    raw, adjusted = (
        summary.loc[f"{edit}_labeled_minus_control"],
        summary.loc[f"{edit}_labeled_minus_control_weight_adjusted"],
    )
    if not (
        np.isfinite(raw["ci low"])
        and raw["ci low"] > 0
        and np.isfinite(adjusted["ci low"])
        and adjusted["ci low"] <= 0
    ):
        return ""
    weights = ""
    if "weight_described" in summary.index:
        weights = (
            f" (the labeled expert's mean mixing weight {summary.loc['weight_described', 'mean']:.3f} at described vs "
            f"{summary.loc['weight_other', 'mean']:.3f} at other routed positions)"
        )
    return f": the described-token excess ({raw['mean']:+.3f}) is accounted for by the router's larger mixing weight there{weights}"


def _causal_parts(summary: pd.DataFrame) -> list[str]:
    """The clauses of the causal finding, from a summary indexed by quantity."""

    def value(name: str) -> str:  # the reason of a missing interval is said once, in the header
        row = summary.loc[name].to_dict()
        if str(row["interval"]).startswith("unavailable") and np.isfinite(row["mean"]):
            return f"{row['mean']:.3f} (no interval)"
        return causal_value(row) or "undefined"

    def difference(name: str, adjusted: bool = False) -> str:
        return f"{value(name)} ({_reading(summary.loc[name].to_dict(), adjusted)})"

    parts = []
    for edit, verb in (("remove", "removing"), ("boost", "boosting the weight of")):
        adjusted = f"{edit}_labeled_minus_control_weight_adjusted"
        if adjusted in summary.index:
            stratified = f"{edit}_labeled_minus_control_weight_stratified"
            check = f"; within weight strata {value(stratified)}" if stratified in summary.index else ""
            parts.append(
                f"{verb} a labeled expert, labeled − control unadjusted {difference(f'{edit}_labeled_minus_control')} "
                f"(labeled expert {value(f'{edit}_effect')}, control {value(f'control_{edit}_effect')}) and at "
                f"equal mixing weight {difference(adjusted, adjusted=True)} (labeled expert "
                f"{value(f'{edit}_effect_weight_adjusted')}, control {value(f'control_{edit}_effect_weight_adjusted')}"
                f"{check}){_accounted_for(summary, edit)}"
            )
        elif f"{edit}_labeled_minus_control" in summary.index:
            parts.append(
                f"{verb} a labeled expert: {value(f'{edit}_effect')}, control {value(f'control_{edit}_effect')}, "
                f"labeled − control {difference(f'{edit}_labeled_minus_control')}"
            )
    if "remove_labeled_minus_control_weight_adjusted" in summary.index:
        parts.append(ADJUSTMENT_LIMITS)
    if "routing_described standardized difference" in summary.index:
        parts.append(
            "balance of the control at the described positions (it is chosen by routing there on the explain "
            f"documents; no expert of the layer need reach the labeled one's rate): labeled − control routing "
            f"rate {value('routing_described labeled - control')}, standardized difference "
            f"{value('routing_described standardized difference')} (|d| ≤ {BALANCE_CALIPER} reads as balanced)"
        )
    if "routing_described" in summary.index:
        parts.append(
            f"routing rate at described vs other positions: labeled expert {value('routing_described')} vs "
            f"{value('routing_other')}, control {value('control_routing_described')} vs "
            f"{value('control_routing_other')}"
            + (
                f"; mean mixing weight at described vs other routed positions: labeled expert "
                f"{value('weight_described')} vs {value('weight_other')}, control "
                f"{value('control_weight_described')} vs {value('control_weight_other')}"
                if "weight_described" in summary.index
                else ""
            )
        )
    if "dla_rank1_rate" in summary.index:
        chance = (
            f" (chance 1/k = {summary.loc['dla_rank1 chance (1/k)', 'mean']:.3f})"
            if "dla_rank1 chance (1/k)" in summary.index
            else ""
        )
        parts.append(
            f"the paper's DLA rank-1 rate: {value('dla_rank1_rate')} for the labeled expert vs "
            f"{value('control_dla_rank1_rate')} for the control{chance}, labeled − control "
            f"{difference('dla_rank1_rate labeled - control')}"
        )
    return parts


ADJUSTMENT_LIMITS = (
    "how to read the two: a router that gives the labeled expert a larger mixing weight on the tokens its "
    "label describes is part of what the label asserts (a mediator, not a confounder), so the unadjusted "
    "difference is the label's whole effect and the one at equal weight asks only whether the expert "
    "matters more there beyond its weight; neither alone makes the label causally supported or unsupported; "
    "the adjustment fits one common linear slope of |Δloss| on the mixing weight per expert (described and "
    "other positions share it; the within-strata check drops the linear shape), and the control is chosen, "
    "not balanced, on routing at the described positions (its balance below)"
)
"""The causal finding's statement of what the weight adjustment can and cannot say."""


def _by_kind_part(by_kind: pd.DataFrame) -> str:
    """The clause of the causal finding per group of label kinds (removal, labeled − control unadjusted
    and at equal mixing weight; no interval below the documents an interval needs)."""
    shown = []
    for group in dict.fromkeys(by_kind["kind group"]):
        rows = by_kind[by_kind["kind group"] == group].set_index("quantity")
        if "remove_labeled_minus_control_weight_adjusted" not in rows.index:
            continue
        numbers = [
            f"{words} {_kind_number(rows.loc[name].to_dict())}"
            for name, words in (
                ("remove_labeled_minus_control", "unadjusted"),
                ("remove_labeled_minus_control_weight_adjusted", "at equal weight"),
            )
            if name in rows.index and np.isfinite(rows.loc[name, "mean"])
        ]
        if not numbers:
            continue
        row = rows.loc["remove_labeled_minus_control_weight_adjusted"].to_dict()
        documents = row.get("documents with described routed positions")
        where = (
            f", {int(documents)} documents with described routed positions" if documents is not None else ""
        )
        experts = f"{row['experts']} expert" + ("s" if row["experts"] != 1 else "")
        shown.append(f"{group} {', '.join(numbers)}, {experts}{where}")
    return "by label kind, removal, labeled − control: " + "; ".join(shown) if shown else ""


def _kind_number(row: dict[str, Any]) -> str:
    """A per-kind difference with its interval, or why it has none."""
    if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
        return f"{row['mean']:.3f} (no interval: {str(row['interval']).removeprefix('unavailable: ')})"
    return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"


def _balanced_part(causal: CausalResult) -> str:
    """The clause of the causal finding over the experts whose control is balanced on the explain
    documents: how many, the headline over them and their balance on the causal windows."""
    frame = causal.frame
    if "explain_routing_standardized_difference" not in frame:
        return ""
    ok = frame[frame["status"] == "ok"]
    d = ok["explain_routing_standardized_difference"].astype(float)
    explain = (
        f"on the explain documents, where the controls were chosen, labeled vs control routing rate at the "
        f"described tokens {ok['explain_routing_described'].mean():.3f} vs "
        f"{ok['control_explain_routing_described'].mean():.3f} (mean standardized difference {d.mean():.2f}); "
        f"{int((d.abs() <= BALANCE_CALIPER).sum())} of {len(ok)} checked experts have a control within "
        f"|d| ≤ {BALANCE_CALIPER} there"
    )
    if not len(causal.balanced):
        return explain
    rows = causal.balanced.set_index("quantity")

    def shown(name: str, reading: bool = True, adjusted: bool = False) -> str:
        row = rows.loc[name].to_dict()
        if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
            why = str(row["interval"]).removeprefix("unavailable: ")
            return f"{row['mean']:.3f} (no interval: {why})"
        said = f" ({_reading(row, adjusted)})" if reading else ""
        return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]{said}"

    unadjusted = (
        f"unadjusted {shown('remove_labeled_minus_control')} and "
        if "remove_labeled_minus_control" in rows.index
        else ""
    )
    return (
        f"{explain}; over those experts, removal, labeled − control {unadjusted}at equal mixing weight "
        f"{shown('remove_labeled_minus_control_weight_adjusted', adjusted=True)}, with their standardized difference of "
        f"routing at the described positions of the causal windows {shown('routing_described standardized difference', reading=False)}"
    )


def causal_finding(causal: CausalResult) -> str:
    """The findings line of the causal checks: the headlines are removal's labeled − control difference
    unadjusted and at equal mixing weight, side by side (with what the adjustment can say); boosting and
    the paper's DLA rank-1 check as their own labeled − control differences; each with its document
    interval and what it says about 0."""
    summary = causal.summary.set_index("quantity")
    unavailable = summary["interval"].astype(str).str.startswith("unavailable")
    reason = (
        summary.loc[unavailable, "interval"].iloc[0].removeprefix("unavailable: ")
        if unavailable.any()
        else ""
    )
    parts = _causal_parts(summary)
    balance = [i for i, p in enumerate(parts) if p.startswith("balance of the control")]
    parts.insert(balance[0] + 1 if balance else len(parts), _balanced_part(causal))  # beside the balance
    if len(causal.by_kind):
        parts.append(_by_kind_part(causal.by_kind))
    experts = int(summary["experts"].max())
    interval = (
        f"intervals unavailable: {reason}"
        if reason
        else "95% bootstrap over documents, each interval unadjusted for multiplicity: removal's labeled − "
        "control difference, unadjusted and at equal mixing weight, are the two headlines of equal rank, "
        "every other interval is secondary and not corrected for the others shown"
    )
    return (
        f"**Causal checks of the labels** (held-out documents: {causal.n_windows} windows of "
        f"{causal.n_documents} documents, {experts} experts; |Δloss| in nats/token on the positions where "
        f"each expert is routed, label-described minus other tokens; {interval}): "
        + "; ".join(p for p in parts if p)
        + "."
    )
