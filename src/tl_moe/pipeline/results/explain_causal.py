"""The causal checks of the labels as the explain section shows them: the findings line (removal's
labeled − control difference at equal mixing weight first) and the per-expert table."""

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


def _reading(row: dict[str, Any]) -> str:
    """What an interval says about 0: above, below, covers (no evidence either way), or no interval."""
    if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
        return "no interval"
    if row["ci low"] > 0:
        return "interval above 0: for the label"
    if row["ci high"] < 0:
        return "interval below 0: against the label"
    side = "for" if row["mean"] > 0 else "against"
    return f"interval covers 0: no difference shown, the estimate on the side {side} the label"


def _causal_parts(summary: pd.DataFrame) -> list[str]:
    """The clauses of the causal finding, from a summary indexed by quantity."""

    def value(name: str) -> str:  # the reason of a missing interval is said once, in the header
        row = summary.loc[name].to_dict()
        if str(row["interval"]).startswith("unavailable") and np.isfinite(row["mean"]):
            return f"{row['mean']:.3f} (no interval)"
        return causal_value(row) or "undefined"

    def difference(name: str) -> str:
        return f"{value(name)} ({_reading(summary.loc[name].to_dict())})"

    parts = []
    for edit, verb in (("remove", "removing"), ("boost", "boosting the weight of")):
        adjusted = f"{edit}_labeled_minus_control_weight_adjusted"
        if adjusted in summary.index:
            stratified = f"{edit}_labeled_minus_control_weight_stratified"
            check = f"within weight strata {value(stratified)}; " if stratified in summary.index else ""
            parts.append(
                f"{verb} a labeled expert, labeled − control at equal mixing weight {difference(adjusted)} "
                f"({check}unadjusted {value(f'{edit}_labeled_minus_control')}; labeled expert {value(f'{edit}_effect_weight_adjusted')} "
                f"at equal weight, {value(f'{edit}_effect')} unadjusted; control {value(f'control_{edit}_effect_weight_adjusted')} "
                f"at equal weight, {value(f'control_{edit}_effect')} unadjusted)"
            )
        elif f"{edit}_labeled_minus_control" in summary.index:
            parts.append(
                f"{verb} a labeled expert: {value(f'{edit}_effect')}, control {value(f'control_{edit}_effect')}, "
                f"labeled − control {difference(f'{edit}_labeled_minus_control')}"
            )
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


def _by_kind_part(by_kind: pd.DataFrame) -> str:
    """The clause of the causal finding per group of label kinds (removal, labeled − control at equal
    mixing weight; no interval below the documents an interval needs)."""
    rows = by_kind[by_kind["quantity"] == "remove_labeled_minus_control_weight_adjusted"]
    shown = []
    for row in rows.to_dict("records"):
        if not np.isfinite(row["mean"]):
            continue
        if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
            number = f"{row['mean']:.3f} (no interval: {row['interval'].removeprefix('unavailable: ')})"
        else:
            number = f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"
        documents = row.get("documents with described routed positions")
        where = (
            f", {int(documents)} documents with described routed positions" if documents is not None else ""
        )
        experts = f"{row['experts']} expert" + ("s" if row["experts"] != 1 else "")
        shown.append(f"{row['kind group']} {number}, {experts}{where}")
    return (
        "by label kind, removal, labeled − control at equal mixing weight: " + "; ".join(shown)
        if shown
        else ""
    )


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

    def shown(name: str, reading: bool = True) -> str:
        row = rows.loc[name].to_dict()
        if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
            why = str(row["interval"]).removeprefix("unavailable: ")
            return f"{row['mean']:.3f} (no interval: {why})"
        said = f" ({_reading(row)})" if reading else ""
        return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]{said}"

    return (
        f"{explain}; over those experts, removal, labeled − control at equal mixing weight "
        f"{shown('remove_labeled_minus_control_weight_adjusted')}, with their standardized difference of "
        f"routing at the described positions of the causal windows {shown('routing_described standardized difference', reading=False)}"
    )


def causal_finding(causal: CausalResult) -> str:
    """The findings line of the causal checks: the headline is removal's labeled − control difference at
    equal mixing weight, the unadjusted one beside it; boosting and the paper's DLA rank-1 check as their
    own labeled − control differences; each with its document interval and what it says about 0."""
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
        else "95% bootstrap over documents, each interval unadjusted: removal at equal mixing weight is the "
        "headline, every other interval is secondary and not corrected for the others shown"
    )
    return (
        f"**Causal checks of the labels** (held-out documents: {causal.n_windows} windows of "
        f"{causal.n_documents} documents, {experts} experts; |Δloss| in nats/token on the positions where "
        f"each expert is routed, label-described minus other tokens; {interval}): "
        + "; ".join(p for p in parts if p)
        + "."
    )
