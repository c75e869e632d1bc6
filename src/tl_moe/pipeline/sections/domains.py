"""Domain experts: the entropy of each expert's size-normalized routing share over corpus domains.

The adapter of :class:`~tl_moe.analysis.domain_expert_study.DomainExpertStudy`: it asks the pass for
routing by domain, tokens by domain, the expert lens and per-token routing, and wraps the outcome in
:class:`~tl_moe.pipeline.results.domains.DomainExpertsResult`.
"""

from __future__ import annotations

from tl_moe.analysis.domain_expert_study import DomainExpertStudy, per_document_routing, promoted_tokens
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, RoutingPerToken, TokensByDomain
from tl_moe.pipeline.protocol import Analysis, Inputs, Need
from tl_moe.pipeline.results.domains import DomainExpertsResult

__all__ = ["DomainExpertsResult", "Domains", "per_document_routing", "promoted_tokens"]

#: The most domain-specific experts the report lists.
TOP_EXPERTS = 15


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
        present = int((tokens > 0).sum())  # domains the token budget reached
        if present < 2:
            raise InputError(
                f"--max-tokens {run.options.max_tokens} reached only {present} domain(s); "
                "domain experts need at least two: raise --max-tokens."
            )
        outcome = DomainExpertStudy(statistics=run.options.statistics)(
            inputs[Need(run.main, RoutedByDomain())],
            tokens,
            run.domain_names,
            inputs[Need(run.main, RoutingPerToken())],
            layers=cfg.sparse_layers,
            num_experts=cfg.num_experts,
        )
        lens = inputs[Need(run.main, ExpertLens())]
        top = outcome.experts.top(TOP_EXPERTS).merge(
            promoted_tokens(lens, run.model(run.main).tokenizer), on=["layer", "expert"], how="left"
        )
        return DomainExpertsResult(
            experts=outcome.experts,
            top=top,
            shown_layers=tuple(sorted({cfg.sparse_layers[0], cfg.sparse_layers[-1]})),
            notes=outcome.notes,
        )
