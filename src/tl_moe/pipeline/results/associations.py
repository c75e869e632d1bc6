"""The associations section's :class:`~tl_moe.pipeline.protocol.Result`: an
:class:`~tl_moe.analysis.association_study.AssociationOutcome` as the report shows it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.association_study import AssociationOutcome
from tl_moe.analysis.stats import MIN_DOCUMENTS as MIN_INTERVAL_DOCUMENTS
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_interval

__all__ = ["AssociationsResult"]


@dataclass(frozen=True)
class AssociationsResult(AssociationOutcome, Result):
    """An :class:`~tl_moe.analysis.association_study.AssociationOutcome` (the same fields) with the report's
    view."""

    @classmethod
    def of(cls, outcome: AssociationOutcome) -> AssociationsResult:
        """The report's view of what :class:`~tl_moe.analysis.association_study.AssociationStudy` found."""
        return cls(outcome.associations, outcome.positions, outcome.segmentation)

    def to_frame(self) -> pd.DataFrame:
        return self.associations.table

    def _effect(self, name: str) -> pd.Series:
        return self.positions.effects.set_index("effect").loc[name]

    def metrics(self) -> dict[str, Any]:
        summary = self.associations.summary
        metrics: dict[str, Any] = {
            key: summary[key]
            for key in (
                "tested triples",
                "discoveries",
                "discoveries (Benjamini–Yekutieli)",
                "discoveries measured on the report half",
                "discoveries without a report interval",
                "report interval above 1 (unadjusted)",
                "confirmed",
                "confirmed (Benjamini–Yekutieli)",
            )
            if key in summary
        }
        for key, value in summary.items():
            if key.startswith("mean report lift"):
                metrics[key] = _round(value["estimate"])
                metrics[f"{key} | 95% CI"] = [_round(value["ci_low"]), _round(value["ci_high"])]
        for row in self.positions.effects.to_dict("records"):
            metrics[f"position | {row['effect']}"] = _round(row["estimate"])
            metrics[f"position | {row['effect']} | 95% CI"] = [_round(row["ci low"]), _round(row["ci high"])]
        metrics["position | report documents"] = self.positions.n_documents
        effects = self.positions.effects
        if len(effects):
            metrics["position | early tokens"] = int(effects["early tokens"].iloc[0])
            metrics["position | late tokens"] = int(effects["late tokens"].iloc[0])
        metrics["association | report documents"] = summary.get("report documents", 0)
        return metrics

    def records(self) -> dict[str, Any]:
        effects = [
            {
                "effect": row["effect"],
                "estimate": _round(row["estimate"]),
                "ci_low": _round(row["ci low"]),
                "ci_high": _round(row["ci high"]),
                "n": int(row["documents"]),
                "early_tokens": int(row["early tokens"]),
                "late_tokens": int(row["late tokens"]),
            }
            for row in self.positions.effects.to_dict("records")
        ]
        summary = dict(self.associations.summary)
        return {
            "position_effects": effects,
            "association_summary": summary,
            "early_positions": self.positions.early,
        }

    def findings(self) -> list[str]:
        summary = self.associations.summary
        least = _least_documents(summary)

        def show(name: str) -> str:
            row = self._effect(name)
            why = row.get("interval unavailable") or f"fewer than {least} documents"
            return format_interval(row["estimate"], row["ci low"], row["ci high"], "+.3f", "no document", why)

        early = self.positions.early
        return [
            f"**Position effect**: the driver experts' hit rate (share of their blocks that route the token to "
            f"one) is {show('drivers: early − late')} higher on the first {early} tokens of a sentence / statement / "
            f"line than on later ones (matched controls {show('controls: early − late')}; difference "
            f"{show('drivers − controls: early − late')}). Within token id (the same token early vs late): drivers "
            f"{show('drivers: early − late, within token id')}, controls "
            f"{show('controls: early − late, within token id')}, difference "
            f"{show('drivers − controls: early − late, within token id')}; 95% bootstrap over "
            f"{self.positions.n_documents} report-half documents.",
            _association_finding(summary),
        ]

    def figures(self) -> list[FigureItem]:
        curve = self.positions.curve
        fig, ax = new_figure(6.4, 4.0)
        x = np.arange(len(curve))
        for name, color in (("drivers", "tab:red"), ("controls", "tab:blue")):
            label = "driver experts" if name == "drivers" else "frequency-matched controls"
            ax.plot(x, curve[f"{name} rate"], marker="o", color=color, label=label)
            ax.fill_between(x, curve[f"{name} ci low"], curve[f"{name} ci high"], color=color, alpha=0.2)
        ax.set_xticks(x, curve["position"])
        ax.axvline(self.positions.early - 0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("position of the token in its sentence / statement / line")
        ax.set_ylabel("hit rate: share of the blocks routing the token to one")
        ax.set_title("Driver experts by position (report half)")
        ax.legend(fontsize=8)
        figures = [
            FigureItem(
                "associations_position_curve",
                fig,
                "Hit rate of the driver experts and of their routing-frequency-matched controls by position, "
                f"with 95% document-bootstrap bands ({self.positions.n_documents} report-half documents); "
                f"left of the dashed line: early positions (< {self.positions.early}).",
            )
        ]
        table = self.associations.table
        if len(table) and table["report ci low"].notna().any():
            fig, ax = new_figure(5.2, 4.2)
            measured = table[table["report ci low"].notna()]  # lifts with an interval
            ax.errorbar(
                measured["lift"],
                measured["report lift"],
                yerr=[
                    measured["report lift"] - measured["report ci low"],
                    measured["report ci high"] - measured["report lift"],
                ],
                fmt="o",
                ms=3,
                alpha=0.7,
            )
            top = float(np.nanmax(np.r_[measured["lift"], measured["report ci high"]])) * 1.1
            ax.plot([0, top], [0, top], color="grey", lw=0.8)
            ax.axhline(1, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("lift on the selection half")
            ax.set_ylabel("lift on the report half (95% CI)")
            ax.set_title("Discovered token–expert associations, held out")
            figures.append(
                FigureItem(
                    "associations_lift_held_out",
                    fig,
                    "Each dot a (block, expert, token) discovered on the selection half whose token sits in at "
                    f"least {_least_documents(self.associations.summary)} report documents; below the diagonal: selection's optimism.",
                )
            )
        return figures

    def tables(self) -> list[TableItem]:
        return [
            TableItem(
                "associations_position_effects", self.positions.effects, "Early − late effects (report half)."
            ),
            TableItem("associations_position_curve", self.positions.curve, "Hit rates by position bin."),
            TableItem(
                "associations_discoveries",
                self.associations.table,
                "Token–expert associations discovered on the selection half (q ≤ FDR, lift > 1), "
                "measured on the report half.",
            ),
            TableItem("associations_segmentation", self.segmentation, "Segmentation per domain."),
        ]


def _least_documents(summary: dict[str, Any]) -> int:
    """The fewest report documents behind an interval in this run (its ``--min-documents``; the default
    for a summary that does not record it)."""
    return int(summary.get("least report documents for an interval", MIN_INTERVAL_DOCUMENTS))


def _association_finding(summary: dict[str, Any]) -> str:
    """Discoveries on the selection half (BH, BY beside it) and how many the report half confirms after
    a multiplicity correction over the measured discoveries (BH, BY as the check)."""
    fdr = summary.get("fdr", 0.05)
    discoveries = summary.get("discoveries", 0)
    measured = summary.get("discoveries measured on the report half", 0)
    least = _least_documents(summary)
    text = (
        f"**Token–expert association**: {discoveries} of {summary.get('tested triples', 0)} (block, expert, "
        f"token) triples enriched within documents at FDR {fdr} on the selection half by Benjamini–Hochberg, "
        f"{summary.get('discoveries (Benjamini–Yekutieli)', 0)} by Benjamini–Yekutieli (valid under the "
        f"negative dependence of one token's experts). On the report half, {measured} of the {discoveries} BH "
        f"discoveries have a lift interval (their token in at least {least} report documents; the other "
        f"{summary.get('discoveries without a report interval', discoveries - measured)} have an estimate "
        "only, no interval)"
    )
    if not measured:
        return text + ", so none is confirmed."
    return (
        text + f"; {summary.get('confirmed', 0)} of those {measured} keep a lift above 1 after "
        f"Benjamini–Hochberg at {fdr} over the {measured} (bootstrap p-values of lift = 1), "
        f"{summary.get('confirmed (Benjamini–Yekutieli)', 0)} after Benjamini–Yekutieli "
        f"({summary.get('report interval above 1 (unadjusted)', 0)} have an unadjusted 95% interval above 1)."
    )


def _round(value: Any, digits: int = 5) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)
