"""Domain experts of a corpus, tested: the score of :class:`~tl_moe.analysis.domain_experts.DomainExperts`
on the domains a token budget reached, and its document-level permutation test.

:class:`DomainExpertStudy` takes what a collection pass gathers: routed tokens per (layer, expert,
domain), tokens per domain, and every token's stored routing with its document (a
:class:`~tl_moe.analysis.activations.TokenActivationStore` of the ``topk_indices`` hooks). Domains
without tokens are left out; the permutation draws at least ``statistics.permutations`` relabellings
and as many as :func:`~tl_moe.analysis.domain_experts.permutations_for_discovery` asks, at the
false-discovery rate ``statistics.fdr``. When the test cannot run (too few documents), no expert is
called a domain expert and the outcome says why.

Example (a notebook)::

    from tl_moe.analysis import DomainExpertStudy, Statistics

    outcome = DomainExpertStudy(statistics=Statistics(permutations=199))(
        routed, tokens, ["code", "prose"], stored, layers=cfg.sparse_layers, num_experts=cfg.num_experts
    )
    outcome.experts.top(10)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.configs import Statistics
from tl_moe.analysis.domain_experts import DomainExperts, permutations_for_discovery
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name

__all__ = ["DomainExpertStudy", "DomainExpertsOutcome", "per_document_routing", "promoted_tokens"]


def per_document_routing(
    stored: StoredTokens, layers: Sequence[int], num_experts: int, present: Bool[torch.Tensor, " domain"]
) -> tuple[Float[torch.Tensor, "doc layer expert"], Float[torch.Tensor, " doc"], Int[torch.Tensor, " doc"]]:
    """``(doc_counts, doc_tokens, doc_domain)``: per document of ``stored`` (tokens with their
    ``topk_indices`` of every layer of ``layers``, document and domain), its routed tokens per (layer,
    expert), its tokens, and its domain's index among the ``present`` domains; documents of other
    domains are dropped."""
    docs, doc_of_token = torch.unique(stored.doc_index, return_inverse=True)
    n_docs = len(docs)
    counts = torch.zeros(n_docs, len(layers), num_experts, dtype=torch.float64)
    for i, layer in enumerate(layers):
        indices = stored.rows[get_act_name("topk_indices", layer)].long()
        flat = doc_of_token[:, None] * num_experts + indices
        counts[:, i] = (
            torch.bincount(flat.flatten(), minlength=n_docs * num_experts)
            .reshape(n_docs, num_experts)
            .double()
        )
    tokens = torch.bincount(doc_of_token, minlength=n_docs).double()
    domain = torch.zeros(n_docs, dtype=torch.long).scatter_(0, doc_of_token, stored.domain.long())
    new_code = torch.cumsum(present.long(), 0) - 1
    keep = present[domain]
    return counts[keep], tokens[keep], new_code[domain[keep]]


def promoted_tokens(lens: Any, tokenizer: Any, n: int = 8) -> pd.DataFrame:
    """One row per (layer, expert): its ``n`` top mean-lens tokens of ``lens`` (an
    :class:`~tl_moe.analysis.logit_lens_accumulator.ExpertLogitLensResult`), joined for display."""
    long = lens.top_tokens(tokenizer)
    long = long[(long["rank"] < n) & long["token"].notna()]
    joined = long.groupby(["layer", "expert"])["token"].agg(
        lambda tokens: " · ".join(repr(t)[1:-1] for t in tokens)
    )
    return joined.rename("top promoted tokens").reset_index()


@dataclass(frozen=True)
class DomainExpertsOutcome:
    """What :class:`DomainExpertStudy` returns: the fitted, tested experts (domains without tokens left
    out) and notes (why there is no test, when there is none)."""

    experts: DomainExperts
    notes: tuple[str, ...] = ()


class DomainExpertStudy:
    """Domain-specialization scores and their document-level permutation test.

    Args:
        rule: the unfitted scorer whose ``threshold`` (descriptive) and ``min_tokens`` apply
            (default: ``DomainExperts()``).
        statistics: seed, false-discovery rate and permutations (default: ``Statistics()``).
    """

    def __init__(self, rule: DomainExperts | None = None, statistics: Statistics | None = None) -> None:
        self.rule = rule or DomainExperts()
        self.statistics = statistics or Statistics()

    def __call__(
        self,
        routed: Float[torch.Tensor, "layer expert domain"],
        tokens: Float[torch.Tensor, " domain"],
        domain_names: Sequence[str],
        stored: StoredTokens,
        *,
        layers: Sequence[int],
        num_experts: int,
    ) -> DomainExpertsOutcome:
        """Score the experts on the domains with tokens (at least two) and test them on ``stored``."""
        _check_inputs(routed, tokens, domain_names, stored, tuple(layers), num_experts)
        present = tokens > 0
        if int(present.sum()) < 2:
            raise InputError(f"only {int(present.sum())} domain(s) have tokens; domain experts need two.")
        names = [name for name, keep in zip(domain_names, present.tolist(), strict=True) if keep]
        experts = DomainExperts(threshold=self.rule.threshold, min_tokens=self.rule.min_tokens)
        experts.fit(routed[..., present], tokens[present], names, layers=layers)
        try:
            doc_counts, doc_tokens, doc_domain = per_document_routing(stored, layers, num_experts, present)
            n_tested = int((~experts.insufficient_tokens_).sum())
            stats = self.statistics
            experts.permutation_test(
                doc_counts,
                doc_tokens,
                doc_domain,
                n_permutations=max(stats.permutations, permutations_for_discovery(n_tested, stats.fdr)),
                alpha=stats.fdr,
                seed=stats.seed,
                min_documents=stats.min_documents,
            )
        except InputError as error:
            experts.is_domain_expert_ = experts.is_domain_expert_ & False
            return DomainExpertsOutcome(
                experts, (f"no significance test, so no expert is called a domain expert: {error}",)
            )
        return DomainExpertsOutcome(experts)


def _check_inputs(
    routed: torch.Tensor,
    tokens: torch.Tensor,
    domain_names: Sequence[str],
    stored: StoredTokens,
    layers: tuple[int, ...],
    num_experts: int,
) -> None:
    """Refuse, in one line, inputs that contradict each other, before any scoring."""
    expected = (len(layers), num_experts, len(domain_names))
    if tuple(routed.shape) != expected:
        raise InputError(
            f"DomainExpertStudy's routed counts have shape {tuple(routed.shape)}; accepted: [layers, "
            f"num_experts, domains] = {expected} (layers {layers}, {len(domain_names)} domain names)."
        )
    if tuple(tokens.shape) != (len(domain_names),):
        raise InputError(
            f"DomainExpertStudy's tokens hold {tuple(tokens.shape)}; accepted: one count per domain name "
            f"({len(domain_names)})."
        )
    if stored.doc_index is None:
        raise InputError(
            "DomainExpertStudy's stored tokens have no document ids; accepted: tokens collected with their "
            "documents (TokenActivationStore of the topk_indices hooks)."
        )
    missing = [layer for layer in layers if get_act_name("topk_indices", layer) not in stored.rows]
    if missing:
        raise InputError(
            f"DomainExpertStudy's stored tokens lack the topk_indices of layers {missing}; accepted: a store "
            f"of the topk_indices hooks of every layer in {layers}."
        )
