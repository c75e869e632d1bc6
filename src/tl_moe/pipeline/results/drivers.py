"""The drivers section's :class:`~tl_moe.pipeline.protocol.Result`: a
:class:`~tl_moe.analysis.driver_study.DriverOutcome` as the report shows it (metrics and records here;
findings, figures and tables in ``drivers_findings`` / ``drivers_figures``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from tl_moe.analysis.driver_study import DriverOutcome
from tl_moe.analysis.stats import RHO_RANGE, basic_interval
from tl_moe.pipeline.protocol import Result
from tl_moe.pipeline.results.drivers_figures import DriverFigures
from tl_moe.pipeline.results.drivers_findings import DriverFindings
from tl_moe.pipeline.results.drivers_text import (
    EDITED_FORWARDS,
    WITHIN,
    interval_position,
    left_out_key,
    rounded,
)

__all__ = ["EDITED_FORWARDS", "WITHIN", "DriversResult"]


@dataclass(frozen=True)
class DriversResult(DriverFindings, DriverFigures, DriverOutcome, Result):
    """A :class:`~tl_moe.analysis.driver_study.DriverOutcome` (the same fields) with the report's view."""

    @classmethod
    def of(cls, outcome: DriverOutcome) -> DriversResult:
        """The report's view of what :class:`~tl_moe.analysis.driver_study.DriverStudy` found."""
        return cls(**{spec.name: getattr(outcome, spec.name) for spec in fields(outcome)})

    def _frequency_metrics(self) -> dict[str, Any]:
        """The selection-half routed share's ρ with the removal effect and REAP − frequency, paired."""
        metrics: dict[str, Any] = {}
        for score, key in (
            ("routed share (selection)", "Spearman(routed share (selection), removal effect)"),
            ("REAP − frequency", "Spearman(REAP saliency) − Spearman(routed share), removal effect"),
        ):
            row = self._frequency_row(score)
            if row is None:
                return {}
            metrics[key] = rounded(row["spearman with exact zeroing effect"])
            metrics[f"{key} | 95% CI"] = [rounded(row["ci low"]), rounded(row["ci high"])]
            metrics[f"{key} | bootstrap bias"] = rounded(row["bootstrap bias"])
            metrics[f"{key} | position in interval"] = rounded(
                interval_position(row.iloc[0], row["ci low"], row["ci high"])
            )
            metrics[f"{key} | basic 95% CI"] = [rounded(row["basic ci low"]), rounded(row["basic ci high"])]
            metrics[f"{key} | experts"] = int(self.comparison.attrs["saliency_frequency"]["experts"])
            if row["interval unavailable"]:
                metrics[f"{key} | interval unavailable"] = row["interval unavailable"]
        return metrics

    def to_frame(self) -> pd.DataFrame:
        return self.experts

    def metrics(self) -> dict[str, Any]:
        metrics = {}
        for row in self.comparison.itertuples(index=False):
            key = f"{row.edit} | {row.group}"
            metrics[key] = round(row[2], 5)
            metrics[f"{key} | 95% CI"] = [rounded(row[3], 5), rounded(row[4], 5)]
        metrics["report documents"] = int(self.comparison["report documents"].iloc[0])
        reason = self.comparison["interval unavailable"].iloc[0]
        if reason:
            metrics["interval unavailable"] = reason
        metrics["controls from another layer"] = int(self.comparison["controls from another layer"].iloc[0])
        metrics["edited forwards"] = EDITED_FORWARDS[self.resumed]
        metrics["Spearman(REAP saliency, removal effect)"] = round(self.saliency_spearman, 4)
        if self.saliency_interval is not None:
            key = "Spearman(REAP saliency, removal effect) | 95% CI"
            metrics[key] = [rounded(self.saliency_interval.low), rounded(self.saliency_interval.high)]
            metrics["Spearman(REAP saliency, removal effect) | documents"] = int(self.saliency_interval.n)
            metrics["Spearman(REAP saliency, removal effect) | interval method"] = (
                self.saliency_interval.method
            )
            metrics["Spearman(REAP saliency, removal effect) | bootstrap bias"] = rounded(
                self.saliency_interval.bias
            )
            metrics["Spearman(REAP saliency, removal effect) | position in interval"] = rounded(
                interval_position(
                    self.saliency_spearman, self.saliency_interval.low, self.saliency_interval.high
                )
            )
            metrics["Spearman(REAP saliency, removal effect) | basic 95% CI"] = [
                rounded(bound)
                for bound in basic_interval(
                    self.saliency_spearman, self.saliency_interval.low, self.saliency_interval.high, RHO_RANGE
                )
            ]
            if self.saliency_gate is not None:
                experts, left_out = self.saliency_gate
                metrics["Spearman(REAP saliency, removal effect) | experts"] = experts
                metrics[left_out_key("Spearman(REAP saliency, removal effect)")] = left_out
            if not self.saliency_interval.available:
                metrics["Spearman(REAP saliency, removal effect) | interval unavailable"] = (
                    self.saliency_interval.reason
                )
        ungated = self.comparison.attrs.get("saliency_spearman_ungated")
        if ungated:
            key = "Spearman(REAP saliency, removal effect), no document gate"
            metrics[key] = rounded(ungated["estimate"])
            metrics[f"{key} | 95% CI"] = [
                None if b is None else rounded(b) for b in (ungated["low"], ungated["high"])
            ]
            metrics[f"{key} | experts"] = ungated["experts"]
        metrics.update(self._frequency_metrics())
        if self.agreement is not None:
            for score in ("first-order estimate", "REAP saliency"):
                row = self._agreement_row(score)
                key = f"Spearman({score}, exact zeroing effect) | all layers"
                metrics[key] = rounded(row["spearman"])
                metrics[f"{key} | experts"] = int(row["experts"])
                metrics[f"{key} | computed on"] = (
                    f"the {int(row['experts'])} experts with a defined {score} on the documents of the edited "
                    f"forwards; interval: {row['interval']}"
                )
                top = f"top-{int(row['top n'])} overlap({score}, exact zeroing effect)"
                metrics[top] = int(row["top-n overlap"])
                metrics[f"{top} | chance"] = round(float(row["chance overlap"]), 2)
        if self.paired is not None:
            for row in self.paired.to_dict("records"):
                layer = row.get("layer", "all")
                group = (
                    "" if layer == "all" else (f" | layer {layer}" if layer[0].isdigit() else f" | {layer}")
                )
                key = f"paired Spearman with exact zeroing effect | {row['score']}{group}"
                metrics[key] = rounded(row["spearman with exact zeroing effect"])
                metrics[f"{key} | 95% CI"] = [rounded(row["ci low"]), rounded(row["ci high"])]
                metrics[f"{key} | bootstrap bias"] = rounded(row["bootstrap bias"])
                metrics[f"{key} | position in interval"] = rounded(row["interval position"])
                metrics[f"{key} | basic 95% CI"] = [
                    rounded(row["basic ci low"]),
                    rounded(row["basic ci high"]),
                ]
                if group:
                    metrics[f"{key} | experts"] = int(row["experts"])
            pooled = self._paired_rows("all")
            metrics["paired Spearman | interval method"] = str(pooled["interval method"].iloc[0])
            metrics["paired Spearman | experts"] = int(pooled["experts"].iloc[0])
            metrics["paired Spearman | documents"] = int(pooled["documents"].iloc[0])
            metrics[left_out_key("paired Spearman")] = list(self.paired.attrs.get("left out", []))
            overlap = self.paired.attrs.get("top overlap")
            if overlap:
                top = int(overlap["top n"])
                for score in ("first-order estimate", "REAP saliency"):
                    metrics[f"paired experts | top-{top} overlap({score}, exact zeroing effect)"] = int(
                        overlap[score]
                    )
                metrics[f"paired experts | top-{top} overlap | chance"] = rounded(overlap["chance"], 2)
            metrics["paired Spearman | computed on"] = (
                f"the same {int(pooled['experts'].iloc[0])} experts (routed on the documents of the edited "
                f"forwards) and {int(pooled['documents'].iloc[0])} documents for the estimate, REAP saliency "
                "and the exact effect; interval: bootstrap over those documents"
            )
        if self.domain_overlap is not None:
            total = self.domain_overlap.table.set_index("layer").loc["all"]
            metrics["drivers that are domain experts"] = int(total["both"])
            metrics["drivers that are domain experts | expected by chance"] = round(
                float(total["expected both"]), 3
            )
            metrics["drivers that are domain experts | hypergeometric p"] = rounded(total["overlap p"])
            if total["overlap not testable"]:
                metrics["drivers that are domain experts | not testable"] = total["overlap not testable"]
            metrics["Spearman(domain score, removal effect) | all layers"] = rounded(total["spearman"])
            metrics["Spearman(domain score, removal effect) | all layers | 95% CI"] = [
                rounded(total["spearman ci low"]),
                rounded(total["spearman ci high"]),
            ]
            key = "Spearman(domain score, removal effect) | all layers"
            metrics[f"{key} | bootstrap bias"] = rounded(total["spearman bootstrap bias"])
            metrics[f"{key} | position in interval"] = rounded(total["spearman position in interval"])
            metrics[f"{key} | basic 95% CI"] = [
                rounded(total["spearman basic ci low"]),
                rounded(total["spearman basic ci high"]),
            ]
            metrics["Spearman(domain score, removal effect) | report tokens per document (mean)"] = rounded(
                total["report tokens per document (mean)"], 1
            )
            metrics["Spearman(domain score, removal effect) | all layers | documents"] = int(
                total["spearman documents"]
            )
            metrics["Spearman(domain score, removal effect) | all layers | experts"] = int(
                total["spearman experts"]
            )
            metrics["Spearman(domain score, removal effect) | domain score"] = str(
                total["spearman domain score"]
            )
            out = self.domain_overlap.experts[~self.domain_overlap.experts["in ρ"]]
            metrics[left_out_key("Spearman(domain score, removal effect)")] = [
                f"L{int(layer)}E{int(expert)}"
                for layer, expert in zip(out["layer"], out["expert"], strict=True)
            ]
            if total["spearman interval unavailable"]:
                metrics["Spearman(domain score, removal effect) | all layers | no interval"] = total[
                    "spearman interval unavailable"
                ]
            metrics.update(_frequency_metrics(total))
        return metrics

    def records(self) -> dict[str, Any]:
        if self.agreement is None:
            return {}

        def plain(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return frame.astype(object).where(frame.notna(), None).to_dict("records")

        return {
            "first_order_estimate": {
                "agreement": plain(self.agreement),
                "experts": plain(self.estimates),
                "exact positions": int(self.agreement.attrs.get("exact positions", 0)),
                "estimate positions": int(self.agreement.attrs.get("estimate positions", 0)),
                "paired with REAP": [] if self.paired is None else plain(self.paired),
            }
        }


FREQUENCY_METRICS = {
    "partial spearman": "Spearman(domain score, removal effect) given routing frequency (partial, pooled over layers)",
    "within-layer partial spearman": "Spearman(domain score, removal effect) given routing frequency (partial), mean over layers",
    "score–frequency spearman": "Spearman(domain score, routing frequency)",
    "effect–frequency spearman": "Spearman(removal effect, routing frequency)",
}
"""The metric name of each routing-frequency ρ of the drivers vs domain experts table, by its column prefix."""


def _frequency_metrics(total: pd.Series) -> dict[str, Any]:
    """The pooled routing-frequency control of the domain-score ρ as metrics: each ρ with its interval,
    basic interval, bootstrap bias and position (none for results without the control)."""
    metrics: dict[str, Any] = {}
    for prefix, name in FREQUENCY_METRICS.items():
        if prefix not in total:
            continue
        key = f"{name} | all layers"
        metrics[key] = rounded(total[prefix])
        metrics[f"{key} | 95% CI"] = [rounded(total[f"{prefix} ci low"]), rounded(total[f"{prefix} ci high"])]
        metrics[f"{key} | basic 95% CI"] = [
            rounded(total[f"{prefix} basic ci low"]),
            rounded(total[f"{prefix} basic ci high"]),
        ]
        metrics[f"{key} | bootstrap bias"] = rounded(total[f"{prefix} bootstrap bias"])
        metrics[f"{key} | position in interval"] = rounded(total[f"{prefix} position in interval"])
        if total[f"{prefix} interval unavailable"]:
            metrics[f"{key} | no interval"] = total[f"{prefix} interval unavailable"]
    return metrics
