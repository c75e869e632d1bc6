"""The re-weighting section's :class:`~tl_moe.pipeline.protocol.Result`: metrics, findings, tables and
figures of :class:`~tl_moe.analysis.expert_reweighting.ReweightingOutcome`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.expert_reweighting import ReweightingOutcome
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem
from tl_moe.pipeline.results.reweighting_findings import (
    holm_record,
    interval_record,
    reweighting_finding,
    steering_finding,
    steering_testability,
    untestable,
)
from tl_moe.report.figures import new_figure

__all__ = ["ReweightingResult"]


@dataclass(frozen=True)
class ReweightingResult(ReweightingOutcome, Result):
    """The report's view of a :class:`~tl_moe.analysis.expert_reweighting.ReweightingOutcome` (the same
    fields: study, steering, candidates, capacity, steering_capacity, min_documents)."""

    @classmethod
    def from_outcome(cls, outcome: ReweightingOutcome) -> ReweightingResult:
        """The result of ``outcome``."""
        return cls(**{f.name: getattr(outcome, f.name) for f in fields(ReweightingOutcome)})

    def to_frame(self) -> pd.DataFrame:
        return self.study.gains

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for _, row in self.study.gains.iterrows():
            key = row["domain"]
            metrics[f"{key} | chosen"] = f"{row['expert set']} × {row['factor']:g} ({row['experts']})"
            for prefix in ("loss change", "control loss change", "chosen − control"):
                metrics[f"{key} | {prefix}"] = interval_record(row, prefix, row["documents"])
            metrics[f"{key} | chosen − control | Holm"] = holm_record(row)
        for domain, (total, held_out) in self.capacity.items():
            metrics[f"{domain} | documents in the split, held-out half"] = [total, held_out]
        if self.steering is not None:
            for _, row in self.steering.switches.iterrows():
                key = f"steer {row['experts of']}-experts {row['switch']} | on {row['evaluated on']}"
                for prefix in ("loss change", "detected − random"):
                    metrics[f"{key} | {prefix}"] = interval_record(row, prefix, row["documents"])
        return metrics

    def records(self) -> dict[str, Any]:
        out = {
            "gains": self.study.gains.to_dict(orient="records"),
            "matrix": self.study.matrix.to_dict(orient="records"),
        }
        if self.steering is not None:
            out["steering"] = self.steering.switches.to_dict(orient="records")
            out["steering_replication"] = self.steering.replication.to_dict(orient="records")
        return out

    def findings(self) -> list[str]:
        gains = self.study.gains
        if gains.empty:
            return ["**Re-weighting**: no domain had a candidate expert set."]
        least = self.min_documents
        findings = [reweighting_finding(gains, least) + untestable(self.capacity, "re-weighting", least)]
        if self.steering is not None:
            findings.append(
                steering_finding(self.steering, least) + steering_testability(self.steering_capacity, least)
            )
        return findings

    def figures(self) -> list[FigureItem]:
        items = [self._gains_figure(), self._matrix_figure()]
        if self.steering is not None:
            items.append(self._steering_figure())
        return items

    def _gains_figure(self) -> FigureItem:
        gains = self.study.gains
        fig, ax = new_figure(max(6.4, 0.9 * len(gains) + 2), 4.2)
        x = np.arange(len(gains))
        for offset, prefix, label, color in (
            (-0.12, "loss change", "chosen re-weighting", "tab:red"),
            (0.12, "control loss change", "matched random experts, same factor", "tab:blue"),
        ):
            values = gains[prefix].to_numpy(dtype=float)
            low = values - gains[f"{prefix} ci low"].to_numpy(dtype=float)
            high = gains[f"{prefix} ci high"].to_numpy(dtype=float) - values
            ax.errorbar(x + offset, values, yerr=[low, high], fmt="o", color=color, label=label, capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(
            x,
            [
                f"{d}\n{s.removesuffix(' experts')}\n× {f:g}"
                for d, s, f in zip(gains["domain"], gains["expert set"], gains["factor"], strict=True)
            ],
            fontsize=7,
        )
        ax.set_ylabel("held-out loss change, nats/token (< 0: better)")
        ax.set_title("Re-weighting chosen experts vs matched random experts")
        ax.legend(fontsize=8)
        return FigureItem(
            "reweighting_gains",
            fig,
            "Per domain: the re-weighting chosen on the selection half, on the domain's held-out documents, "
            "and the same factor on routing-rate-matched random experts (mean of the draws); 95% intervals: "
            "the chosen re-weighting's a percentile document bootstrap, the control's a draw-mean t interval "
            "(the documents' bootstrap variance of the draw mean plus the variance between the draws over their "
            f"number); missing where a domain has fewer than {self.min_documents} held-out documents.",
        )

    def _matrix_figure(self) -> FigureItem:
        matrix = self.study.matrix.pivot(
            index="re-weighted domain", columns="evaluated on", values="loss change"
        )
        fig, ax = new_figure(1.0 * matrix.shape[1] + 3, 0.6 * matrix.shape[0] + 2.5)
        values = matrix.to_numpy(dtype=float)
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=8)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(j, i, f"{values[i, j]:+.3f}", ha="center", va="center", fontsize=6)
        ax.set_xlabel("held-out text of domain")
        ax.set_ylabel("re-weighting chosen for domain")
        fig.colorbar(image, ax=ax, label="loss change, nats/token")
        ax.set_title("What each domain's re-weighting does on every domain")
        return FigureItem(
            "reweighting_matrix", fig, "Row D, column D': D's chosen re-weighting on D''s held-out documents."
        )

    def _steering_figure(self) -> FigureItem:
        table = self.steering.switches
        fig, ax = new_figure(6.8, 4.2)
        labels = [
            f"{s}-experts {w}\non {g}"
            for s, w, g in zip(table["experts of"], table["switch"], table["evaluated on"], strict=True)
        ]
        x = np.arange(len(table))
        for offset, prefix, label, color in (
            (-0.12, "loss change", "detected experts", "tab:red"),
            (0.12, "random sets", "matched random experts", "tab:blue"),
        ):
            values = table[prefix].to_numpy(dtype=float)
            err = [
                values - table[f"{prefix} ci low"].to_numpy(dtype=float),
                table[f"{prefix} ci high"].to_numpy(dtype=float) - values,
            ]
            ax.errorbar(x + offset, values, yerr=err, fmt="o", color=color, label=label, capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_ylabel("held-out loss change, nats/token")
        a, b = self.steering.contrast
        ax.set_title(f"Switching experts found from {a} vs {b} routing rates")
        ax.legend(fontsize=8)
        return FigureItem(
            "steering_switches",
            fig,
            "Experts with the largest routing-rate difference (selection half) switched on (activated) or "
            "off (removed) on each group's held-out documents, vs matched random experts; 95% intervals.",
        )

    def tables(self) -> list[TableItem]:
        items = [
            TableItem("reweighting_gains", self.study.gains, "Chosen re-weighting per domain, held out."),
            TableItem(
                "reweighting_matrix", self.study.matrix, "Every domain's re-weighting on every domain.", 60
            ),
            TableItem("reweighting_candidates", self.candidates, "Candidate expert sets per domain."),
            TableItem("reweighting_grid", self.study.grid, "The selection grid (selection half only).", 60),
        ]
        if self.steering is not None:
            items += [
                TableItem("steering_switches", self.steering.switches, "Switching on / off, held out."),
                TableItem(
                    "steering_replication", self.steering.replication, "Held-out routing-rate difference."
                ),
                TableItem("steering_detected", self.steering.detected, "Detected experts."),
            ]
        return items
