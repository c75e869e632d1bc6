"""A document-level permutation baseline for routing specialization (beside the multinomial one).

The multinomial baseline (:func:`tl_moe.analysis.specialization.sampling_baseline`) treats an
expert's tokens as independent draws from its layer's pooled distribution. Tokens arrive in
documents, and what a document contains is clumped (one domain, a few topics), so an expert that
takes its tokens from a handful of documents departs from the pooled distribution by chance far more
than independent draws would. This null keeps that clumping:

for each permutation ``π`` of the documents, every token of document ``d`` keeps its routing (which
experts it went to, in every layer) but carries the group of a token of document ``π(d)``: the tokens
of ``π(d)`` are shuffled and laid over those of ``d`` in order (``d``'s i-th token gets the i-th
shuffled token of ``π(d)``, starting over when ``π(d)`` is shorter), so an expert's tokens from one
document are drawn from ``π(d)`` without replacement. The statistic is recomputed on the permuted
data: each expert's null counts against its layer's pooled null counts (documents of different
lengths change the pooled distribution when they change content).

What it preserves exactly: every expert's number of routed tokens and how they spread over documents
(its per-document loads), the routing of every token in every layer, and the group composition of
every document (so within-document clumping of groups; a document shorter than the one it is laid
over repeats its tokens). What it breaks: any association between routing and content — which
documents an expert draws from, and which tokens within a document. For a document-level grouping (the corpus
domain), a token drawn from ``π(d)`` has ``π(d)``'s domain, so the null is exactly the shuffle of
domain labels over documents used by the domain-expert test.

The excess over this null is ``score − mean null``; its range is ``score − [97.5%, 2.5%]`` quantiles
of the null (the null's 95% range, not a bootstrap over documents), and the permutation p-value is
``(1 + #{null >= score}) / (1 + n_permutations)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.specialization import js_divergence
from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.errors import InputError

__all__ = ["DocumentPermutationBaseline", "document_permutation_baseline"]

# Upper bound on the (permutation x token x layer x slot) index elements built at once.
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class DocumentPermutationBaseline:
    """Observed and document-permutation-null JSD of every expert, in bits.

    Attributes:
        score: ``[layer, expert]`` JSD of each expert's routed tokens over groups vs the layer's pooled
            distribution (NaN for experts without tokens).
        null: ``[permutation, layer, expert]`` the same JSD under each document permutation (against the
            permuted pooled distribution).
        n: ``[layer, expert]`` routed tokens (token, slot pairs) per expert: the layer means' weights.
        layers: block index of each row of the ``layer`` axis.
        n_documents: documents permuted.
    """

    score: Float[torch.Tensor, "layer expert"]
    null: Float[torch.Tensor, "permutation layer expert"]
    n: Float[torch.Tensor, "layer expert"]
    layers: tuple[int, ...]
    n_documents: int

    @property
    def n_permutations(self) -> int:
        return self.null.shape[0]

    @property
    def baseline(self) -> Float[torch.Tensor, "layer expert"]:
        """Mean null JSD per expert."""
        return self.null.mean(0)

    @property
    def excess(self) -> Float[torch.Tensor, "layer expert"]:
        """``score − mean null`` per expert (NaN for empty experts)."""
        return self.score - self.baseline

    def p_values(self) -> Float[torch.Tensor, "layer expert"]:
        """One-sided permutation p-value per expert: ``(1 + #{null >= score}) / (1 + permutations)``."""
        exceed = (self.null >= self.score[None] - 1e-12).sum(0).double()
        p = (1.0 + exceed) / (1.0 + self.n_permutations)
        return p.masked_fill(self.score.isnan(), float("nan"))

    def layer_summary(self, min_n: float = 0) -> pd.DataFrame:
        """Per layer, over experts with at least ``min_n`` routed tokens, weighted by their tokens:
        ``permutation_excess`` (weighted score − mean weighted null), ``ci_low`` / ``ci_high`` (the
        null's 95% range subtracted from the weighted score), ``p_value``, ``n_experts_min_size``,
        ``n_permutations``, ``n_documents``."""
        large = ~self.score.isnan() & (self.n >= min_n)
        weights = torch.where(large, self.n.double(), 0.0)
        total = weights.sum(1)
        safe = total.clamp_min(1e-300)
        observed = torch.where(large, self.score.double(), 0.0).mul(weights).sum(1) / safe  # [layer]
        null = (
            torch.where(large[None], self.null.double(), 0.0).mul(weights[None]).sum(2) / safe
        )  # [perm, layer]
        low_q, high_q = torch.quantile(null, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
        exceed = (null >= observed[None] - 1e-12).sum(0).double()
        none = total == 0
        nan = float("nan")
        return pd.DataFrame(
            {
                "layer": list(self.layers),
                "permutation_excess": (observed - null.mean(0)).masked_fill(none, nan).numpy(),
                "ci_low": (observed - high_q).masked_fill(none, nan).numpy(),
                "ci_high": (observed - low_q).masked_fill(none, nan).numpy(),
                "p_value": ((1.0 + exceed) / (1.0 + self.n_permutations)).masked_fill(none, nan).numpy(),
                "n_experts_min_size": large.sum(1).numpy(),
                "n_permutations": self.n_permutations,
                "n_documents": self.n_documents,
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): score, permutation baseline, excess, p-value, n."""
        n_layers, n_experts = self.score.shape
        return pd.DataFrame(
            {
                "layer": np.repeat(np.array(self.layers), n_experts),
                "expert": np.tile(np.arange(n_experts), n_layers),
                "score": self.score.flatten().double().numpy(),
                "permutation_baseline": self.baseline.flatten().double().numpy(),
                "permutation_excess": self.excess.flatten().double().numpy(),
                "p_value": self.p_values().flatten().numpy(),
                "n": self.n.flatten().double().numpy(),
            }
        )


def _jsd_rows(
    counts: Float[torch.Tensor, "... layer expert group"], pooled: Float[torch.Tensor, "layer 1 group"]
) -> Float[torch.Tensor, "... layer expert"]:
    """JSD of every expert's counts vs its layer's pooled counts; NaN for empty experts."""
    empty = counts.sum(-1) == 0
    rows = torch.where(empty[..., None], pooled.expand_as(counts), counts)
    return js_divergence(rows, pooled).masked_fill(empty, float("nan"))


def document_permutation_baseline(
    expert_indices: Int[torch.Tensor, "token layer slot"],
    groups: Int[torch.Tensor, " token"],
    doc_index: Int[torch.Tensor, " token"],
    num_experts: int,
    n_groups: int,
    *,
    n_permutations: int = 200,
    seed: int = 0,
    layers: tuple[int, ...] | None = None,
) -> DocumentPermutationBaseline:
    """Score every expert and its document-level permutation null (see the module docstring).

    Args:
        expert_indices: the experts each token was routed to, per layer (its top-k slots).
        groups: the group of each token (its vocabulary cluster, or its document's domain).
        doc_index: the document of each token.
        num_experts, n_groups: sizes of the expert and group axes.
        n_permutations: document permutations drawn.
        seed: seed of the permutations and of the within-document draws.
        layers: block index of each layer row (default ``0, 1, ...``).

    Raises:
        InputError: fewer than :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents.
    """
    expert_indices = torch.as_tensor(expert_indices).long()
    groups = torch.as_tensor(groups).long()
    doc_index = torch.as_tensor(doc_index).long()
    if expert_indices.ndim != 3 or not (len(groups) == len(doc_index) == expert_indices.shape[0]):
        raise ValueError(
            "expert_indices must be [token, layer, slot] and groups / doc_index [token], with one token "
            f"axis; got {tuple(expert_indices.shape)}, {tuple(groups.shape)}, {tuple(doc_index.shape)}."
        )
    n_tokens, n_layers, n_slots = expert_indices.shape
    docs, doc_of_token, doc_sizes = torch.unique(doc_index, return_inverse=True, return_counts=True)
    n_docs = len(docs)
    if n_docs < MIN_DOCUMENTS:
        raise InputError(
            f"{n_docs} document(s): the document-level permutation baseline needs at least {MIN_DOCUMENTS}; "
            "raise --max-tokens."
        )
    order = torch.argsort(doc_of_token, stable=True)
    starts = torch.cumsum(doc_sizes, 0) - doc_sizes  # document j's tokens sit at starts[j]: starts[j+1]
    rank = torch.empty(n_tokens, dtype=torch.long)
    rank[order] = torch.arange(n_tokens) - starts[doc_of_token[order]]  # each token's place in its document
    cell = (torch.arange(n_layers)[None, :, None] * num_experts + expert_indices) * n_groups  # [t, l, s]
    cells = n_layers * num_experts * n_groups
    small = (n_permutations + 1) * cells < 2**31  # int32 indices: half the memory traffic
    cell = cell.to(torch.int32 if small else torch.int64)

    def counts_of(token_groups: torch.Tensor) -> torch.Tensor:
        """[batch, token] groups -> [batch, layer, expert, group] routed counts."""
        batch = token_groups.shape[0]
        shifted = token_groups.to(cell.dtype) + torch.arange(batch, dtype=cell.dtype)[:, None] * cells
        flat = cell[None] + shifted[:, :, None, None]
        counts = torch.bincount(flat.flatten(), minlength=batch * cells)
        return counts.reshape(batch, n_layers, num_experts, n_groups).double()

    observed = counts_of(groups[None])[0]
    pooled = observed.sum(1, keepdim=True)
    score = _jsd_rows(observed, pooled)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_tokens * n_layers * n_slots))
    nulls = []
    for start in range(0, n_permutations, chunk):
        size = min(chunk, n_permutations - start)
        perms = torch.stack([torch.randperm(n_docs, generator=generator) for _ in range(size)])
        # Every document's tokens in a random order, documents in order: sort by document + U(0, 1).
        keys = doc_of_token[None].double() + torch.rand(
            size, n_tokens, generator=generator, dtype=torch.float64
        )
        shuffled = groups[keys.argsort(dim=1)]  # [perm, token]
        source = perms[:, doc_of_token]  # [perm, token]: the document each token takes its group from
        position = starts[source] + rank[None] % doc_sizes[source]
        null_counts = counts_of(shuffled.gather(1, position))
        # The statistic recomputed on the permuted data: against the layer's pooled counts under the
        # same permutation (a long document relabelled changes the pooled distribution too).
        nulls.append(_jsd_rows(null_counts, null_counts.sum(-2, keepdim=True)))
    return DocumentPermutationBaseline(
        score=score,
        null=torch.cat(nulls),
        n=observed.sum(-1),
        layers=tuple(range(n_layers)) if layers is None else tuple(int(layer) for layer in layers),
        n_documents=n_docs,
    )
