"""Domain experts: the entropy of each expert's size-normalized routing share over corpus domains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from tl_moe.analysis.domain_experts import DomainExperts, permutations_for_discovery
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, RoutingPerToken, TokensByDomain
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
                f"descriptive only, {experts.n_above_threshold()} have a domain score ≥ {experts.threshold}"
            )
        if len(self.top):
            best = self.top.iloc[0]
            tested = "q_value" in self.top.columns
            text += (
                f"; the highest score is layer {int(best['layer'])} expert {int(best['expert'])} "
                f"({best['favoured_domain']}, score {best['score']:.2f}, {best['lift']:.1f}× its mean rate"
                + (f", p = {best['p_value']:.3g}, q = {best['q_value']:.3g}" if tested else "")
                + ")"
            )
        return [text + "."]

    def _floor_text(self) -> str:
        """Whether the permutation count lets BH discover a lone expert (floor vs alpha / tested)."""
        experts = self.experts
        bound = experts.alpha_ / max(1, experts.n_tested_)
        if experts.floor_blocks_lone_discovery_:
            return (
                f"the p-value floor {experts.p_floor_:.3g} exceeds alpha / tested = {bound:.3g}, so no expert "
                "can be discovered on its own (only together with many others): raise --permutations"
            )
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


class Domains(Analysis):
    """Experts whose routing strongly favours one domain (score = 1 − H(π) / log D)."""

    name = "domains"
    title = "Domain experts"
    summary = "domain experts: entropy of each expert's routing share over domains"
    intro = (
        "Rate r[l,e,d] = tokens of domain d routed to expert e / tokens of domain d; share π = r / Σ_d r; "
        "score = 1 - H(π)/log(n_domains) (0: uniform over domains, 1: one domain only); lift = r[favoured] / "
        "mean_d r. p-value: the fraction of document-level relabellings (each document keeps its tokens "
        "and routing, domains shuffled across documents) whose score reaches the expert's; q: Benjamini–"
        "Hochberg over the scored experts. The test alone decides: the domain experts are the experts with "
        "q <= --fdr; the count with a score >= 0.5 is descriptive only. The test draws --permutations "
        "permutations, raised when needed so that the p-value floor 1/(1 + permutations) is at most --fdr / "
        "(experts tested), the BH threshold of the most significant expert."
    )

    def check(self, run: RunContext) -> None:
        if len(run.domain_names) < 2:
            raise InputError(
                f"the 'domains' analysis compares routing across domains, but the corpus has one domain "
                f"{list(run.domain_names)}; give a corpus with several, or leave 'domains' out of --analyses."
            )

    def needs(self, run: RunContext) -> list[Need]:
        return [
            Need(run.main, spec)
            for spec in (RoutedByDomain(), TokensByDomain(), ExpertLens(), RoutingPerToken())
        ]

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
        notes = []
        try:
            doc_counts, doc_tokens, doc_domain = per_document_routing(
                inputs[Need(run.main, RoutingPerToken())], cfg, present
            )
            n_tested = int((~experts.insufficient_tokens_).sum())
            experts.permutation_test(
                doc_counts,
                doc_tokens,
                doc_domain,
                n_permutations=max(
                    run.options.permutations, permutations_for_discovery(n_tested, run.options.fdr)
                ),
                alpha=run.options.fdr,
                seed=run.options.seed,
            )
        except InputError as error:
            notes.append(f"no significance test, so no expert is called a domain expert: {error}")
            experts.is_domain_expert_ = experts.is_domain_expert_ & False
        top = experts.top(15).copy()
        lens = inputs[Need(run.main, ExpertLens())]
        top = top.merge(
            promoted_tokens(lens, run.model(run.main).tokenizer), on=["layer", "expert"], how="left"
        )
        return DomainExpertsResult(
            experts=experts,
            top=top,
            shown_layers=tuple(sorted({cfg.sparse_layers[0], cfg.sparse_layers[-1]})),
            notes=tuple(notes),
        )


def per_document_routing(stored, cfg, present: torch.Tensor):
    """``(doc_counts [doc, layer, expert], doc_tokens [doc], doc_domain [doc])`` from stored routing.

    Documents of domains outside ``present`` are dropped; domain indices count present domains only.
    """
    from tl_moe.models.hook_names import get_act_name

    docs, doc_of_token = torch.unique(stored.doc_index, return_inverse=True)
    n_docs, n_experts = len(docs), cfg.num_experts
    counts = torch.zeros(n_docs, len(cfg.sparse_layers), n_experts, dtype=torch.float64)
    for i, layer in enumerate(cfg.sparse_layers):
        indices = stored.rows[get_act_name("topk_indices", layer)].long()
        flat = doc_of_token[:, None] * n_experts + indices
        counts[:, i] = (
            torch.bincount(flat.flatten(), minlength=n_docs * n_experts).reshape(n_docs, n_experts).double()
        )
    tokens = torch.bincount(doc_of_token, minlength=n_docs).double()
    domain = torch.zeros(n_docs, dtype=torch.long).scatter_(0, doc_of_token, stored.domain.long())
    new_code = torch.cumsum(present.long(), 0) - 1
    keep = present[domain]
    return counts[keep], tokens[keep], new_code[domain[keep]]
