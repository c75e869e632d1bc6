"""Domain experts: experts whose routing strongly favours one corpus domain.

From routed-token counts ``c[l, e, d]`` (tokens of domain ``d`` routed to expert ``e`` of layer ``l``)
and domain sizes ``T[d]`` (tokens of domain ``d`` seen):

- routing rate ``r[l, e, d] = c[l, e, d] / T[d]``: the fraction of domain ``d``'s tokens that expert
  ``e`` receives, so a large domain does not look favoured merely for being large;
- domain distribution ``π[l, e, :] = r[l, e, :] / Σ_d r[l, e, d]``;
- domain-specialization score ``1 − H(π) / log D``: 0 when the expert takes the same share of every
  domain, 1 when it takes tokens of a single domain only;
- favoured domain ``d* = argmax_d π``; lift ``r[d*] / mean_d r`` (how many times its average rate).

Experts that received fewer than ``min_tokens`` tokens in total are flagged (``insufficient_tokens_``)
and get NaN scores instead of noisy ones. Definitions are in ``docs/METHODS.md``.

Significance (:meth:`DomainExperts.permutation_test`): tokens of one document arrive together, so a
small expert can score high by chance. The null shuffles the domain labels of DOCUMENTS (each
document keeps its tokens and its routing), recomputes every expert's score, and gives each expert a
permutation p-value; Benjamini–Hochberg over the scored experts gives q-values. With a test, the
test alone decides: the domain experts are the BH discoveries (``q <= alpha``), whatever their score;
the score threshold (``score >= threshold``) is descriptive only. A randomized p-value cannot go below
``1 / (1 + n_permutations)`` (its floor), and BH can only discover a lone expert when that floor is at
most ``alpha / m`` for ``m`` tested experts: :func:`permutations_for_discovery` gives the count that
reaches it, and :attr:`DomainExperts.floor_blocks_lone_discovery_` says when a test had fewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.errors import InputError
from tl_moe.settings import is_integer, is_real

__all__ = ["DomainExperts", "domain_scores", "permutations_for_discovery"]


def domain_scores(
    counts: Float[torch.Tensor, "... expert domain"], domain_tokens: Float[torch.Tensor, "... domain"]
) -> Float[torch.Tensor, "... expert"]:
    """``1 − H(π)/log D`` of every expert, for counts with any leading batch axes (see the module)."""
    rates = counts / domain_tokens.unsqueeze(-2)
    shares = rates / rates.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(rates.dtype).tiny)
    entropy = -torch.xlogy(shares, shares).sum(dim=-1)
    return (1.0 - entropy / math.log(counts.shape[-1])).clamp(0.0, 1.0)


def permutations_for_discovery(n_tested: int, alpha: float) -> int:
    """The fewest random permutations whose p-value floor ``1 / (1 + P)`` is at most ``alpha / n_tested``,
    the Benjamini–Hochberg threshold of the most significant of ``n_tested`` tests: with fewer, no expert
    can be discovered unless many others are too."""
    return max(1, math.ceil(n_tested / alpha - 1 - 1e-9))


class DomainExperts:
    """Score every expert for how strongly its routing favours one domain.

    Args:
        threshold: a descriptive cut: the number of experts with a domain-specialization score
            ``>= threshold`` (and enough tokens) is reported, and before a test they are the candidates
            in ``is_domain_expert_``; after :meth:`permutation_test` the test alone decides. In ``[0, 1]``.
        min_tokens: experts that received fewer routed tokens than this, summed over domains, are
            flagged and not scored.

    Fitted attributes (``L`` layers, ``E`` experts, ``D`` domains):
        rates_: ``r``, the fraction of each domain's tokens routed to each expert, ``[L, E, D]``.
        shares_: ``π``, each expert's size-normalized routing distribution over domains, ``[L, E, D]``;
            NaN rows for flagged experts.
        scores_: ``1 − H(π)/log D`` per expert, ``[L, E]``; NaN when flagged.
        favoured_domain_: index of ``argmax π`` per expert, ``[L, E]``; ``-1`` when flagged.
        lift_: ``r[favoured] / mean_d r`` per expert, ``[L, E]``; NaN when flagged.
        n_tokens_: routed tokens per expert summed over domains, ``[L, E]``.
        insufficient_tokens_: True where ``n_tokens_ < min_tokens``, ``[L, E]``.
        is_domain_expert_: ``scores_ >= threshold`` among scored experts, ``[L, E]``; after
            :meth:`permutation_test`, the BH discoveries ``q_values_ <= alpha`` among scored experts.
        p_values_, q_values_: after :meth:`permutation_test`: document-level permutation p-values and
            their Benjamini–Hochberg adjustment, ``[L, E]`` (NaN for flagged experts); None before.
        n_permutations_, p_floor_, n_tested_: after :meth:`permutation_test`: the permutations drawn,
            the smallest p-value they can give (``1 / (1 + n_permutations_)``; an exact test's is
            ``1 / n!``) and the experts tested.
        floor_blocks_lone_discovery_: after :meth:`permutation_test`: True when ``p_floor_`` exceeds
            ``alpha / n_tested_``, so a single expert cannot be discovered on its own.
        max_null_, max_p_value_: after :meth:`permutation_test`: the highest score among the scored
            experts in each permutation (the null of a maximum chosen on the same documents), and the
            permutation p-value of the observed highest score against it; None before.
        domain_names_: the domain names, in the order of the last axis.
        layers_: the block index of each row of the ``layer`` axis.
    """

    def __init__(self, threshold: float = 0.5, min_tokens: int = 50):
        self.threshold = threshold
        self.min_tokens = min_tokens
        self._validate_parameters()

    def _validate_parameters(self) -> None:
        """Refuse, in one line, a threshold outside [0, 1] or a negative min_tokens (when built and fitted)."""
        if not is_real(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise InputError(
                f"DomainExperts threshold must lie in [0, 1] (a normalized entropy score); got {self.threshold!r}."
            )
        if not is_integer(self.min_tokens) or self.min_tokens < 0:
            raise InputError(f"DomainExperts min_tokens must be an integer >= 0; got {self.min_tokens!r}.")

    def fit(
        self,
        counts: Float[torch.Tensor, "layer expert domain"] | Int[torch.Tensor, "layer expert domain"],
        domain_tokens: Float[torch.Tensor, " domain"] | Int[torch.Tensor, " domain"],
        domain_names: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
    ) -> DomainExperts:
        """Compute rates, domain distributions and scores for every expert of every layer at once.

        Args:
            counts: tokens of each domain routed to each expert; with top-k routing a token counts once
                for each of its k experts.
            domain_tokens: number of tokens of each domain that passed through the model.
            domain_names: one name per domain; defaults to ``"domain_0"``, ``"domain_1"``, ...
            layers: the block index of each row of ``counts`` (default ``0, 1, ...``); frames,
                :meth:`heatmap` and titles use it.
        """
        self._validate_parameters()
        counts = torch.as_tensor(counts).detach().cpu().to(torch.float64)
        domain_tokens = torch.as_tensor(domain_tokens).detach().cpu().to(torch.float64)
        if counts.ndim != 3:
            raise ValueError(f"counts must be 3-D [layer, expert, domain]; got shape {tuple(counts.shape)}.")
        n_domains = counts.shape[-1]
        if n_domains < 2:
            raise ValueError(
                f"at least 2 domains are needed to compare routing across them; got {n_domains}."
            )
        if domain_tokens.shape != (n_domains,):
            raise ValueError(
                f"domain_tokens must have shape [domain] = ({n_domains},); got {tuple(domain_tokens.shape)}."
            )
        if not torch.isfinite(counts).all() or (counts < 0).any():
            raise ValueError("counts must hold finite non-negative values.")
        if not torch.isfinite(domain_tokens).all() or (domain_tokens <= 0).any():
            raise ValueError("every domain needs a positive, finite number of tokens in domain_tokens.")
        if domain_names is None:
            domain_names = [f"domain_{d}" for d in range(n_domains)]
        domain_names = [str(name) for name in domain_names]
        if len(domain_names) != n_domains:
            raise ValueError(f"domain_names has {len(domain_names)} names for {n_domains} domains.")

        layers = tuple(range(counts.shape[0])) if layers is None else tuple(int(x) for x in layers)
        if len(layers) != counts.shape[0]:
            raise ValueError(f"layers names {len(layers)} blocks for {counts.shape[0]} rows of counts.")

        rates = counts / domain_tokens
        n_tokens = counts.sum(dim=-1)
        insufficient = (n_tokens < self.min_tokens) | (n_tokens == 0)
        shares = rates / rates.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(rates.dtype).tiny)
        entropy = -torch.xlogy(shares, shares).sum(dim=-1)  # nats; 0·log 0 = 0
        scores = (1.0 - entropy / math.log(n_domains)).clamp(0.0, 1.0)
        favoured = shares.argmax(dim=-1)
        lift = rates.max(dim=-1).values / rates.mean(dim=-1).clamp_min(torch.finfo(rates.dtype).tiny)

        nan = float("nan")
        self.rates_ = rates
        self.shares_ = shares.masked_fill(insufficient.unsqueeze(-1), nan)
        self.scores_ = scores.masked_fill(insufficient, nan)
        self.favoured_domain_ = favoured.masked_fill(insufficient, -1)
        self.lift_ = lift.masked_fill(insufficient, nan)
        self.n_tokens_ = n_tokens
        self.insufficient_tokens_: Bool[torch.Tensor, "layer expert"] = insufficient
        self.is_domain_expert_ = (scores >= self.threshold) & ~insufficient
        self.p_values_ = self.q_values_ = None
        self.alpha_ = self.n_permutations_ = self.p_floor_ = self.n_tested_ = None
        self.max_null_ = self.max_p_value_ = None
        self.floor_blocks_lone_discovery_ = None
        self.domain_names_ = domain_names
        self.layers_ = layers
        self.n_layers_, self.n_experts_, self.n_domains_ = counts.shape
        return self

    def permutation_test(
        self,
        doc_counts: Float[torch.Tensor, "document layer expert"],
        doc_tokens: Float[torch.Tensor, " document"],
        doc_domain: Int[torch.Tensor, " document"],
        *,
        n_permutations: int = 999,
        alpha: float = 0.05,
        seed: int = 0,
        min_documents: int | None = None,
    ) -> DomainExperts:
        """Document-level permutation p-values of every scored expert's score, then BH at ``alpha``.

        Args:
            doc_counts: routed tokens of each document per (layer, expert).
            doc_tokens: tokens of each document that passed through the model.
            doc_domain: domain index of each document (into the fitted domain axis).
            n_permutations: random relabellings of the documents' domains.
            alpha: the false-discovery rate of the Benjamini–Hochberg procedure.
            min_documents: fewest documents the test runs on (None:
                :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS`; a study passes its ``Statistics``').

        The same permutations give the null of the highest score among the scored experts
        (``max_null_``): the highest score is chosen on the documents it is measured on, so it is compared
        with the highest score of each permutation (``max_p_value_``), not with its own expert's null.
        """
        from tl_moe.analysis.stats import (
            MIN_DOCUMENTS,
            benjamini_hochberg,
            max_statistic_pvalue,
            permutation_max_null,
        )

        min_documents = MIN_DOCUMENTS if min_documents is None else int(min_documents)

        self._check_fitted()
        doc_counts = torch.as_tensor(doc_counts).double().reshape(len(doc_tokens), -1)
        doc_tokens = torch.as_tensor(doc_tokens).double()
        doc_domain = torch.as_tensor(doc_domain).long()
        if len(doc_tokens) < min_documents:
            raise InputError(
                f"{len(doc_tokens)} documents: the domain permutation test needs at least {min_documents}; "
                "raise --max-tokens."
            )
        n_domains = self.n_domains_
        onehot_eye = torch.eye(n_domains, dtype=torch.float64)

        def statistic(labels: np.ndarray) -> np.ndarray:
            onehot = onehot_eye[torch.from_numpy(np.asarray(labels)).long()]  # [batch, doc, domain]
            counts = torch.einsum("bdk,dm->bmk", onehot, doc_counts)
            tokens = torch.einsum("bdk,d->bk", onehot, doc_tokens).clamp_min(1.0)
            return domain_scores(counts, tokens).numpy()

        scored = ~self.insufficient_tokens_.flatten().numpy()
        _, p_values, null_max = permutation_max_null(
            statistic, doc_domain.numpy(), scored, n_resamples=n_permutations, seed=seed
        )
        p_values = torch.from_numpy(p_values).reshape(self.n_layers_, self.n_experts_)
        p_values = p_values.masked_fill(self.insufficient_tokens_, float("nan"))
        q_values, discovered = benjamini_hochberg(p_values.numpy(), alpha)
        self.p_values_, self.q_values_ = p_values, torch.from_numpy(q_values)
        self.alpha_ = alpha
        self.n_tested_ = int(torch.isfinite(p_values).sum())
        exact = math.factorial(len(doc_domain)) <= n_permutations
        self.n_permutations_ = math.factorial(len(doc_domain)) if exact else int(n_permutations)
        self.p_floor_ = 1.0 / self.n_permutations_ if exact else 1.0 / (1.0 + n_permutations)
        self.max_null_ = null_max
        observed_max = float(np.nanmax(self.scores_.numpy())) if scored.any() else math.nan
        self.max_p_value_ = max_statistic_pvalue(observed_max, null_max, exact) if scored.any() else math.nan
        self.floor_blocks_lone_discovery_ = bool(
            self.n_tested_ and self.p_floor_ > alpha / self.n_tested_ * (1 + 1e-9)
        )
        self.is_domain_expert_ = ~self.insufficient_tokens_ & torch.from_numpy(discovered)
        return self

    def n_above_threshold(self) -> int:
        """Scored experts with ``score >= threshold`` (descriptive; the test, not this, decides)."""
        self._check_fitted()
        return int(((self.scores_ >= self.threshold) & ~self.insufficient_tokens_).sum())

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            raise RuntimeError("This DomainExperts is not fitted yet; call fit(counts, domain_tokens) first.")

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, expert): score, favoured domain, lift, flags, and the share of each domain."""
        self._check_fitted()
        layers, experts = np.meshgrid(np.array(self.layers_), np.arange(self.n_experts_), indexing="ij")
        favoured = self.favoured_domain_.flatten().numpy()
        names = np.array(self.domain_names_ + [None], dtype=object)  # index -1 (flagged) -> None
        frame = pd.DataFrame(
            {
                "layer": layers.ravel(),
                "expert": experts.ravel(),
                "n_tokens": self.n_tokens_.flatten().numpy(),
                "score": self.scores_.flatten().numpy(),
                "favoured_domain": names[favoured],
                "lift": self.lift_.flatten().numpy(),
                "domain_expert": self.is_domain_expert_.flatten().numpy(),
                "insufficient_tokens": self.insufficient_tokens_.flatten().numpy(),
            }
        )
        if self.p_values_ is not None:
            frame["p_value"] = self.p_values_.flatten().numpy()
            frame["q_value"] = self.q_values_.flatten().numpy()
        shares = self.shares_.reshape(-1, self.n_domains_).numpy()
        for d, name in enumerate(self.domain_names_):
            frame[f"share_{name}"] = shares[:, d]
        return frame

    def top(self, n: int = 10, domain: str | None = None) -> pd.DataFrame:
        """The ``n`` highest-scoring scored experts, optionally only those favouring ``domain``."""
        frame = self.to_frame()
        frame = frame[~frame["insufficient_tokens"]]
        if domain is not None:
            if domain not in self.domain_names_:
                raise ValueError(f"unknown domain {domain!r}; fitted domains are {self.domain_names_}.")
            frame = frame[frame["favoured_domain"] == domain]
        return frame.sort_values(["score", "lift"], ascending=False).head(n).reset_index(drop=True)

    def heatmap(self, layer: int, ax=None):
        """Image of ``π`` for block ``layer``: domains (rows) × experts (columns); flagged experts blank.

        Draws on ``ax`` if given, else on a new figure (no pyplot state, safe under any backend).
        Returns the axes.
        """
        self._check_fitted()
        if layer not in self.layers_:
            raise ValueError(f"layer must be one of the fitted layers {list(self.layers_)}; got {layer}.")
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(
                figsize=(max(4.0, 0.15 * self.n_experts_ + 2), 0.4 * self.n_domains_ + 1.5)
            ).add_subplot()
        shares = self.shares_[self.layers_.index(layer)].T.numpy()  # [domain, expert]
        image = ax.imshow(np.ma.masked_invalid(shares), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_yticks(range(self.n_domains_), self.domain_names_)
        ax.set_xlabel("expert")
        ax.set_title(f"layer {layer}: routing share per domain (size-normalized)")
        ax.figure.colorbar(image, ax=ax, label="π (share of the expert's routing rate)")
        return ax
