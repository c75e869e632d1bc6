"""The drivers report's figures and tables."""

from __future__ import annotations

from typing import Any

from tl_moe.pipeline.protocol import FigureItem, TableItem
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_number

__all__ = ["DriverFigures"]


class DriverFigures:
    """The figures and tables of :class:`~tl_moe.pipeline.results.drivers.DriversResult` (a mixin over its
    fields)."""

    def figures(self) -> list[FigureItem]:
        fig, ax = new_figure(6.4, 4.2)
        effect = f"{self.comparison['edit'].iloc[0]}: effect (report)"
        for is_driver, group in self.experts.groupby("driver"):
            ax.scatter(
                group["saliency (REAP)"],
                group[effect],
                s=18,
                label="driver experts" if is_driver else "other experts",
                color="tab:red" if is_driver else "tab:blue",
                alpha=0.8,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("REAP saliency: mean weight × ‖expert output‖ (selection half)")
        ax.set_ylabel("loss change when removed, nats/token (report half)")
        ax.set_title("Exact causal effect vs data-only saliency")
        ax.legend(fontsize=8)
        items = [
            FigureItem(
                "drivers_effect_vs_saliency", fig, "Each dot is an expert; drivers chosen on the other half."
            )
        ]
        if self.estimates is not None:
            items.append(
                FigureItem(
                    "drivers_estimate_vs_exact",
                    self._estimate_figure(),
                    "Each dot is an expert (all documents of the edited forwards); colour: layer. Left: the "
                    "first-order estimate against the exact zeroing effect (dashed: y = x). Right: REAP "
                    "saliency against the same exact effect.",
                )
            )
        if self.domain_overlap is not None:
            items.append(
                FigureItem(
                    "drivers_vs_domain_experts",
                    self.domain_overlap.figure(),
                    "Each dot is a scored expert: its domain score (domains analysis) against the loss change "
                    "when it is removed (report half); drivers and domain experts marked, one panel per layer.",
                )
            )
        return items

    def _estimate_figure(self) -> Any:
        fig, left = new_figure(10.0, 4.2)
        left.remove()
        left, right = fig.subplots(1, 2)
        exact = self.estimates["zero: exact"]
        layers = sorted(self.estimates["layer"].unique())
        for layer in layers:
            rows = self.estimates["layer"] == layer
            left.scatter(
                exact[rows], self.estimates.loc[rows, "first-order estimate"], s=16, label=f"L{layer}"
            )
            right.scatter(exact[rows], self.estimates.loc[rows, "saliency (REAP)"], s=16, label=f"L{layer}")
        low = float(min(exact.min(), self.estimates["first-order estimate"].min()))
        high = float(max(exact.max(), self.estimates["first-order estimate"].max()))
        left.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        for ax, score, name in (
            (left, "first-order estimate", "first-order estimate, nats/token"),
            (right, "REAP saliency", "REAP saliency: mean weight × ‖expert output‖"),
        ):
            row = self._agreement_row(score)
            ax.set_xlabel("exact loss change when zeroed, nats/token")
            ax.set_ylabel(name)
            ax.set_title(
                f"Spearman ρ = {format_number(row['spearman'], '.2f', 'constant scores')} over {int(row['experts'])} experts",
                fontsize=9,
            )
            ax.ticklabel_format(style="sci", scilimits=(-2, 3))
            ax.axvline(0, color="grey", lw=0.5)
        if len(layers) <= 12:
            left.legend(fontsize=7)
        return fig

    def tables(self) -> list[TableItem]:
        top = self.experts.sort_values(self.experts.columns[5], ascending=False)
        return (
            [
                TableItem(
                    "drivers_comparison",
                    self.comparison,
                    "Drivers vs frequency-matched controls (report half).",
                ),
                TableItem(
                    "drivers_experts",
                    top,
                    "Every expert's effects (sorted by the removal effect on the selection half).",
                ),
            ]
            + (
                []
                if self.agreement is None
                else [
                    TableItem(
                        "drivers_estimate_agreement",
                        self.agreement,
                        "How well the first-order estimate and REAP saliency rank experts by their exact effect: "
                        "Spearman ρ (no interval here: the paired table drivers_estimate_vs_reap gives it over documents) "
                        "and overlap of the top n, against the overlap expected by chance.",
                    )
                ]
            )
            + (
                []
                if self.paired is None
                else [
                    TableItem(
                        "drivers_estimate_vs_reap",
                        self.paired,
                        "Spearman ρ of the first-order estimate and of REAP saliency with the exact zeroing effect "
                        "on the same experts and documents, and their paired difference, pooled over layers "
                        "(layer 'all'), within each layer, the mean of the per-layer ρ and the pooled minus that "
                        "mean (95% document bootstrap, "
                        "the interval method in its column: each resample recomputes the exact effects, the "
                        "estimates, REAP saliency and every ρ).",
                    )
                ]
            )
            + (
                []
                if self.domain_overlap is None
                else [
                    TableItem(
                        "drivers_vs_domain_experts",
                        self.domain_overlap.table,
                        "Driver experts vs domain experts per layer: overlap against the overlap of independent "
                        "sets (hypergeometric p of an overlap at least as large), and Spearman ρ of the domain "
                        "score (selection half) vs the removal effect (report half) over the experts routed on "
                        "enough documents of each half, with a 95% bootstrap over the documents of both halves "
                        "(both recomputed per resample).",
                    )
                ]
            )
        )
