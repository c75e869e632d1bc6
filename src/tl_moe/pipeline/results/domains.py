"""The domains section's :class:`~tl_moe.pipeline.protocol.Result`: the fitted, tested domain experts as
the report shows them (metrics, the finding, the top table, the share heatmaps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.domain_experts import DomainExperts
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem

__all__ = ["DomainExpertsResult"]


@dataclass(frozen=True)
class DomainExpertsResult(Result):
    """The fitted domain-expert scores and the most domain-specific experts.

    Attributes:
        experts: the fitted :class:`~tl_moe.analysis.domain_experts.DomainExperts` (block-index layers).
        top: the 15 highest-scoring experts, with their top promoted tokens.
        shown_layers: the layers whose share heatmaps the report shows (first and last sparse layer).
    """

    experts: DomainExperts
    top: pd.DataFrame
    shown_layers: tuple[int, ...]
    notes: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        return self.experts.to_frame()

    def metrics(self) -> dict[str, Any]:
        frame = self.experts.to_frame()
        scored = ~self.experts.insufficient_tokens_
        threshold = self.experts.threshold
        metrics = {
            "domain experts (BH q <= fdr, document-level permutation test)": (
                int(self.experts.is_domain_expert_.sum()) if self.experts.q_values_ is not None else None
            ),
            f"experts with score >= {threshold} (descriptive, no test)": self.experts.n_above_threshold(),
            "experts scored": int(scored.sum()),
            "mean domain score": round(float(frame["score"].mean()), 4),
        }
        if self.experts.q_values_ is not None:
            metrics["false-discovery rate"] = self.experts.alpha_
            metrics["permutations"] = self.experts.n_permutations_
            metrics["p-value floor"] = self.experts.p_floor_
        if self.experts.max_null_ is not None and len(self.experts.max_null_):
            median, upper = np.quantile(self.experts.max_null_, [0.5, 0.95])
            key = "highest domain score"
            metrics[key] = round(float(np.nanmax(self.experts.scores_.numpy())), 4)
            metrics[f"{key} | control"] = (
                "the highest score among the same scored experts in each document-label permutation"
            )
            metrics[f"{key} | control median"] = round(float(median), 4)
            metrics[f"{key} | control 95th percentile"] = round(float(upper), 4)
            metrics[f"{key} | max-statistic p"] = self.experts.max_p_value_
        for i, note in enumerate(self.notes):
            metrics[f"note {i + 1}"] = note
        return metrics

    def findings(self) -> list[str]:
        experts = self.experts
        scored = int((~experts.insufficient_tokens_).sum())
        if experts.q_values_ is None:
            text = (
                f"**Domain experts**: not tested (too few documents for the permutation test), so no expert "
                f"is called a domain expert; {experts.n_above_threshold()} of {scored} scored experts have a "
                f"domain score ≥ {experts.threshold} (descriptive only)"
            )
        else:
            text = (
                f"**Domain experts**: {int(experts.is_domain_expert_.sum())} of {scored} scored experts are "
                f"discoveries of a document-level permutation test (domain labels shuffled over documents, "
                f"{experts.n_permutations_} permutations) at false-discovery rate {experts.alpha_} "
                f"(Benjamini–Hochberg over all {experts.n_tested_} tested; a discovery says the expert's "
                "routing depends on the domain beyond document-level chance, however small its score); "
                f"{self._floor_text()}; "
                f"descriptive only, {experts.n_above_threshold()} "
                f"{'has' if experts.n_above_threshold() == 1 else 'have'} a domain score ≥ {experts.threshold}"
            )
        if len(self.top):
            text += self._maximum_text(scored)
        return [text + "."]

    def _maximum_text(self, scored: int) -> str:
        """The highest score, a maximum chosen on the documents it is measured on: against the highest
        score of each permutation of the test (its control), or labelled descriptive without a test."""
        experts, best = self.experts, self.top.iloc[0]
        who = (
            f"layer {int(best['layer'])} expert {int(best['expert'])} ({best['favoured_domain']}, score "
            f"{best['score']:.2f}, {best['lift']:.1f}× its mean rate"
        )
        if experts.max_null_ is None or "q_value" not in self.top.columns:
            return (
                f"; the highest score is {who}): a descriptive maximum over the {scored} scores on the same "
                "documents it was selected on, with no interval and, untested, no control"
            )
        median, upper = np.quantile(experts.max_null_, [0.5, 0.95])
        return (
            f"; the highest score is {who}; its own p = {best['p_value']:.3g}, q = {best['q_value']:.3g}), the "
            f"largest of {scored} scores on the documents it is measured on, so its control is the largest of "
            f"the {scored} with the domain labels shuffled over documents (the same {experts.n_permutations_} "
            f"permutations): median {median:.2f}, 95th percentile {upper:.2f}, max-statistic p = "
            f"{experts.max_p_value_:.3g}{self._at_floor(experts.max_p_value_)} (a maximum selected on the data "
            "has no interval)"
        )

    def _at_floor(self, p_value: float) -> str:
        """Says so where a permutation p-value is at its floor (1/(1 + permutations); an exact test's 1/orderings)."""
        floor = self.experts.p_floor_
        return f", at its floor 1/{round(1 / floor)}" if np.isclose(p_value, floor) else ""

    def _floor_text(self) -> str:
        """Whether the permutation count lets BH discover a lone expert (floor vs alpha / tested)."""
        experts = self.experts
        bound = experts.alpha_ / max(1, experts.n_tested_)
        if experts.floor_blocks_lone_discovery_:
            exact = np.isclose(experts.p_floor_, 1.0 / experts.n_permutations_)
            remedy = (
                f"the test already enumerates all {experts.n_permutations_} orderings of the documents, so more "
                "documents (a larger --max-tokens or corpus) are the remedy"
                if exact
                else "raise --permutations"
            )
            reach = (
                "so no expert can be discovered at all"
                if experts.p_floor_ > experts.alpha_
                else "so no expert can be discovered on its own (only together with many others)"
            )
            return f"the p-value floor {experts.p_floor_:.3g} exceeds alpha / tested = {bound:.3g}, {reach}: {remedy}"
        return f"the p-value floor {experts.p_floor_:.3g} is at most alpha / tested = {bound:.3g}"

    def tables(self) -> list[TableItem]:
        return [TableItem("domain_experts_top", self.top, "The most domain-specific experts.")]

    def figures(self) -> list[FigureItem]:
        return [
            FigureItem(
                f"domain_share_layer{layer}",
                self.experts.heatmap(layer).figure,
                f"Routing share per domain × expert, layer {layer}.{self._blank_columns(layer)}",
            )
            for layer in self.shown_layers
        ]

    def _blank_columns(self, layer: int) -> str:
        """The caption's note on blank heatmap columns: experts too small to score."""
        row = self.experts.layers_.index(layer)
        small = torch.nonzero(self.experts.insufficient_tokens_[row]).flatten().tolist()
        if not small:
            return ""
        tokens = self.experts.n_tokens_[row]
        listed = ", ".join(f"{e} ({int(tokens[e])} tokens)" for e in small)
        return f" Blank columns: experts with fewer than {self.experts.min_tokens} routed tokens, not scored: {listed}."
