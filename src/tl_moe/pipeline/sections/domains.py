"""Domain experts: the entropy of each expert's size-normalized routing share over corpus domains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from tl_moe.analysis.domain_experts import DomainExperts
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, TokensByDomain
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem

__all__ = ["DomainExpertsResult", "Domains", "promoted_tokens"]


def promoted_tokens(lens: ExpertLogitLensResult, tokenizer: Any, n: int = 8) -> pd.DataFrame:
    """One row per (layer, expert): its ``n`` top mean-lens tokens, joined for display."""
    long = lens.top_tokens(tokenizer)
    long = long[(long["rank"] < n) & long["token"].notna()]
    joined = long.groupby(["layer", "expert"])["token"].agg(
        lambda tokens: " · ".join(repr(t)[1:-1] for t in tokens)
    )
    return joined.rename("top promoted tokens").reset_index()


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

    def to_frame(self) -> pd.DataFrame:
        return self.experts.to_frame()

    def metrics(self) -> dict[str, Any]:
        frame = self.experts.to_frame()
        return {
            "domain experts (score > 0.5)": int(self.experts.is_domain_expert_.sum()),
            "experts scored": int((~self.experts.insufficient_tokens_).sum()),
            "mean domain score": round(float(frame["score"].mean()), 4),
        }

    def findings(self) -> list[str]:
        scored = int((~self.experts.insufficient_tokens_).sum())
        called = int(self.experts.is_domain_expert_.sum())
        text = f"**Domain experts**: {called} of {scored} scored experts have a domain score ≥ 0.5"
        if len(self.top):
            best = self.top.iloc[0]
            text += (
                f"; the most specific is layer {int(best['layer'])} expert {int(best['expert'])} "
                f"({best['favoured_domain']}, score {best['score']:.2f}, {best['lift']:.1f}× its mean rate)"
            )
        return [text + " (no significance test)."]

    def tables(self) -> list[TableItem]:
        return [TableItem("domain_experts_top", self.top, "The most domain-specific experts.")]

    def figures(self) -> list[FigureItem]:
        return [
            FigureItem(
                f"domain_share_layer{layer}",
                self.experts.heatmap(layer).figure,
                f"Routing share per domain × expert, layer {layer}.",
            )
            for layer in self.shown_layers
        ]


class Domains(Analysis):
    """Experts whose routing strongly favours one domain (score = 1 − H(π) / log D)."""

    name = "domains"
    title = "Domain experts"
    summary = "domain experts: entropy of each expert's routing share over domains"
    intro = (
        "Rate r[l,e,d] = tokens of domain d routed to expert e / tokens of domain d; share π = r / Σ_d r; "
        "score = 1 - H(π)/log(n_domains) (0: uniform over domains, 1: one domain only); lift = r[favoured] / "
        "mean_d r. Experts with a score above 0.5 are called domain experts."
    )

    def check(self, run: RunContext) -> None:
        if len(run.domain_names) < 2:
            raise InputError(
                f"the 'domains' analysis compares routing across domains, but the corpus has one domain "
                f"{list(run.domain_names)}; give a corpus with several, or leave 'domains' out of --analyses."
            )

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, spec) for spec in (RoutedByDomain(), TokensByDomain(), ExpertLens())]

    def finalize(self, run: RunContext, inputs: Inputs) -> DomainExpertsResult:
        cfg = run.config(run.main)
        tokens = inputs[Need(run.main, TokensByDomain())]
        present = tokens > 0  # domains the token budget reached
        if int(present.sum()) < 2:
            raise InputError(
                f"--max-tokens {run.options.max_tokens} reached only {int(present.sum())} domain(s); "
                "domain experts need at least two: raise --max-tokens."
            )
        experts = DomainExperts(threshold=0.5, min_tokens=50).fit(
            inputs[Need(run.main, RoutedByDomain())][..., present],
            tokens[present],
            [name for name, keep in zip(run.domain_names, present.tolist(), strict=True) if keep],
            layers=cfg.sparse_layers,
        )
        top = experts.top(15).copy()
        lens = inputs[Need(run.main, ExpertLens())]
        top = top.merge(
            promoted_tokens(lens, run.model(run.main).tokenizer), on=["layer", "expert"], how="left"
        )
        return DomainExpertsResult(
            experts=experts,
            top=top,
            shown_layers=tuple(sorted({cfg.sparse_layers[0], cfg.sparse_layers[-1]})),
        )
