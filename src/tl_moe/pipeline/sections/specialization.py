"""Routing and functional specialization by Jensen–Shannon divergence, above a sampling baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from tl_moe.analysis.specialization import SpecializationResult, specialization_scores
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, RoutedByTokenGroup
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.report.figures import new_figure

__all__ = ["Specialization", "SpecializationSummary"]


@dataclass(frozen=True)
class SpecializationSummary(Result):
    """Specialization of every expert under several groupings.

    Attributes:
        measures: measure name (e.g. ``"routing, 50 token clusters"``) -> its per-expert scores,
            in the order they are shown.
    """

    measures: dict[str, SpecializationResult]

    def to_frame(self) -> pd.DataFrame:
        """Per (measure, layer): mean and standard deviation over experts of JSD − baseline (bits)."""
        rows = [result.layer_summary().assign(measure=name) for name, result in self.measures.items()]
        return pd.concat(rows, ignore_index=True)

    def experts_frame(self) -> pd.DataFrame:
        """Per (measure, layer, expert): score, baseline, excess and the expert's sample size."""
        rows = [result.to_frame().assign(measure=name) for name, result in self.measures.items()]
        return pd.concat(rows, ignore_index=True)

    def metrics(self) -> dict[str, Any]:
        return {
            f"{name} | mean excess, last layer": round(
                float(result.layer_summary()["mean_excess"].iloc[-1]), 4
            )
            for name, result in self.measures.items()
        }

    def findings(self) -> list[str]:
        parts = []
        for name, result in self.measures.items():
            last = result.layer_summary().iloc[-1]
            parts.append(f"{name} {last['mean_excess']:.3f} ± {last['std_excess']:.3f}")
        layer = next(iter(self.measures.values())).layers[-1]
        return [
            f"**Specialization** in the last sparse layer ({layer}), bits above the sampling baseline "
            f"(mean ± sd over experts): " + "; ".join(parts) + "."
        ]

    def figures(self) -> list[FigureItem]:
        fig, ax = new_figure(6.4, 4.2)
        for name, result in self.measures.items():
            result.plot(ax=ax, label=name)
        ax.set_ylabel("JSD - sampling baseline (bits)")
        ax.set_title("Specialization per layer (mean ± sd over experts)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return [
            FigureItem(
                "specialization_per_layer", fig, "Specialization above the sampling baseline, per layer."
            )
        ]

    def tables(self) -> list[TableItem]:
        return [TableItem("specialization_per_layer", self.to_frame(), "Per layer and measure.")]


class Specialization(Analysis):
    """JSD of each expert's token distribution (input clusters, domains, logit-lens output) vs its layer's."""

    name = "specialization"
    title = "Routing and functional specialization"
    summary = "routing and functional specialization (JSD above a sampling baseline)"
    intro = (
        "Per expert, JSD (bits) between the distribution of its tokens over groups and its layer's pooled "
        "distribution, minus the mean JSD of multinomial samples of the same size from the pooled "
        "distribution (the sampling baseline). Groups: spherical k-means clusters of the unembedding "
        "(input tokens routed to the expert: routing specialization; tokens in its logit-lens top-3: "
        "functional specialization), or corpus domains."
    )

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, spec) for spec in (RoutedByTokenGroup(), RoutedByDomain(), ExpertLens())]

    def finalize(self, run: RunContext, inputs: Inputs) -> SpecializationSummary:
        layers = tuple(run.config(run.main).sparse_layers)
        seed, groups = run.options.seed, run.options.n_token_groups

        def scores(counts, kind: str) -> SpecializationResult:
            return specialization_scores(counts, seed=seed, kind=kind, layers=layers)

        lens = inputs[Need(run.main, ExpertLens())]
        return SpecializationSummary(
            {
                f"routing, {groups} token clusters": scores(
                    inputs[Need(run.main, RoutedByTokenGroup())], "routing"
                ),
                "routing, domains": scores(inputs[Need(run.main, RoutedByDomain())], "routing"),
                f"functional, {groups} token clusters": scores(lens.dense_counts(), "functional"),
            }
        )
