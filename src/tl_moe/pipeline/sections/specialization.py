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
    min_tokens: int = 0

    def to_frame(self) -> pd.DataFrame:
        """Per (measure, layer): mean and standard deviation over experts of JSD − baseline (bits), and
        the token-weighted mean over experts of at least ``min_tokens`` tokens."""
        rows = [
            result.layer_summary(self.min_tokens).assign(measure=name)
            for name, result in self.measures.items()
        ]
        return pd.concat(rows, ignore_index=True)

    def small_experts(self) -> pd.DataFrame:
        """Experts below the minimum size, per measure (listed, not averaged)."""
        rows = [
            result.small_experts(self.min_tokens).assign(measure=name)
            for name, result in self.measures.items()
        ]
        return pd.concat(rows, ignore_index=True)

    def experts_frame(self) -> pd.DataFrame:
        """Per (measure, layer, expert): score, baseline, excess and the expert's sample size."""
        rows = [result.to_frame().assign(measure=name) for name, result in self.measures.items()]
        return pd.concat(rows, ignore_index=True)

    def metrics(self) -> dict[str, Any]:
        metrics = {}
        for name, result in self.measures.items():
            summary = result.layer_summary(self.min_tokens).iloc[-1]
            metrics[
                f"{name} | token-weighted mean excess (experts >= {self.min_tokens} tokens), last layer"
            ] = round(float(summary["token_weighted_mean_excess"]), 4)
            metrics[f"{name} | mean excess, last layer"] = round(float(summary["mean_excess"]), 4)
            metrics[f"{name} | experts below {self.min_tokens} tokens, last layer"] = int(
                summary["n_small_experts"]
            )
        return metrics

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
        return [
            TableItem("specialization_per_layer", self.to_frame(), "Per layer and measure."),
            TableItem(
                "specialization_small_experts",
                self.small_experts(),
                f"Experts with fewer than {self.min_tokens} tokens: listed, left out of the token-weighted means.",
            ),
        ]


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
        "functional specialization), or corpus domains. The baseline's sample size is the expert's number "
        "of TOKENS (a token's top-3 logit-lens entries are not independent draws). Layer means: "
        "token-weighted over experts with at least --min-expert-tokens tokens (smaller experts are listed "
        "in their own table); the unweighted mean over all experts is kept beside it."
    )

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, spec) for spec in (RoutedByTokenGroup(), RoutedByDomain(), ExpertLens())]

    def finalize(self, run: RunContext, inputs: Inputs) -> SpecializationSummary:
        layers = tuple(run.config(run.main).sparse_layers)
        seed, groups = run.options.seed, run.options.n_token_groups

        def scores(counts, kind: str, sample_sizes=None) -> SpecializationResult:
            return specialization_scores(counts, sample_sizes, seed=seed, kind=kind, layers=layers)

        lens = inputs[Need(run.main, ExpertLens())]
        lens_counts = lens.dense_counts()
        routed_by_group = inputs[Need(run.main, RoutedByTokenGroup())]
        # Each routed token adds up to top_n entries to its expert's lens counts: the baseline's draws
        # are the expert's routed tokens, not its entries.
        lens_tokens = routed_by_group.sum(-1).double()
        return SpecializationSummary(
            {
                f"routing, {groups} token clusters": scores(routed_by_group, "routing"),
                "routing, domains": scores(inputs[Need(run.main, RoutedByDomain())], "routing"),
                f"functional, {groups} token clusters": scores(lens_counts, "functional", lens_tokens),
            },
            min_tokens=run.options.min_expert_tokens,
        )
