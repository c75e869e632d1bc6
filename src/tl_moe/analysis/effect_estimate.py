"""First-order (attribution-patching) estimate of every expert's causal effect, and its agreement with
the exact effects.

Definition (docs/METHODS.md, "First-order estimate of the effects"): for expert ``e`` of sparse block
``L``, with ``w_s`` the mixing weight of slot ``s`` (``hook_topk_weights``) and ``L_B`` the summed
next-token loss of a batch,

    Ê(L, e) = Σ_{slots s routed to e} −w_s · ∂L_B/∂w_s,

the first-order Taylor estimate of ``L_B(every slot of e scaled by 0) − L_B``, i.e. of the exact
**zeroing** effect (selected as usual, contribution removed, no re-routing): scaling all of ``e``'s
mixing weights by ``α`` is a smooth path from ``α = 1`` (clean) to ``α = 0`` (zeroed) on which the
routing of block ``L`` does not change, and ``dL_B/dα`` at 1 is ``Σ_s w_s ∂L_B/∂w_s``. One forward
and one backward per batch give it for every expert of every layer at once
(:mod:`tl_moe.collect.gradients`). Removal with re-routing is a discrete change of the selected set
(the substitute expert's output is not even computed), which no derivative at the clean point sees;
it is not estimated.

Each slot's estimate is booked to the document (and domain) of the routed token; sums are float64
per (layer, expert, document) and merge by addition, so checkpoint/resume, ``shard=`` and
torch.distributed give the single-pass result. Per corpus token: divide by the document's next-token
positions (the exact effect's denominator); per routed token: by the positions routed to ``e``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis.stats import MIN_DOCUMENTS, RHO_METHOD, RHO_MIN_EXPERT_DOCUMENTS
from tl_moe.collect.gradients import GradientAccumulator, SlotGradients
from tl_moe.collect.meta import BatchMeta

__all__ = [
    "FirstOrderEffects",
    "FirstOrderEffectsResult",
    "estimate_vs_reap",
    "paired_rho_difference",
    "routed_on_enough_documents",
    "score_agreement",
    "weighted_spearman",
]


def _grow(tensor: torch.Tensor, size: int, fill: int = 0) -> torch.Tensor:
    if tensor.shape[-1] >= size:
        return tensor
    pad = torch.full(
        (*tensor.shape[:-1], size - tensor.shape[-1]), fill, dtype=tensor.dtype, device=tensor.device
    )
    return torch.cat([tensor, pad], dim=-1)


class FirstOrderEffects(GradientAccumulator):
    """Per (layer, expert, document): Σ ``−w · ∂L/∂w`` over the slots routed to the expert.

    Args:
        layers: sparse blocks whose experts are estimated.
        n_experts: experts per block.
        max_tokens: run the backward on the first this many real tokens of the stream (the batch
            that crosses the budget included, as :class:`~tl_moe.collect.ExpertEffects`
            does, so both see the same batches); None: every batch.

    Example::

        acc = FirstOrderEffects(model.moe_cfg.sparse_layers, model.moe_cfg.num_experts)
        result = collect(model, corpus, {"estimate": acc})["estimate"]
        result.per_corpus_token()  # [layer, expert] nats per next-token position
    """

    def __init__(self, layers: Sequence[int], n_experts: int, max_tokens: int | None = None) -> None:
        self.layers = tuple(int(layer) for layer in layers)
        self.n_experts = int(n_experts)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.seen = 0
        shape = (len(self.layers), self.n_experts, 0)
        self.sums = torch.zeros(shape, dtype=torch.float64)  # [layer, expert, document]
        self.routed = torch.zeros(shape, dtype=torch.long)  # [layer, expert, document]
        self.counts = torch.zeros(0, dtype=torch.long)  # [document] next-token positions
        self.doc_domain = torch.zeros(0, dtype=torch.long)  # [document] domain code, -1: unseen
        self.domain_names: tuple[str, ...] | None = None

    def config(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "n_experts": self.n_experts, "max_tokens": self.max_tokens}

    def gradient_layers(self, model: Any) -> list[int]:
        return list(self.layers)

    def wants_gradients(self, meta: BatchMeta) -> bool:
        return self.max_tokens is None or self.seen < self.max_tokens

    def update_gradients(self, grads: SlotGradients, meta: BatchMeta) -> None:
        if self.domain_names is None:
            self.domain_names = tuple(meta.domain_names)
        elif tuple(meta.domain_names) != self.domain_names:
            raise ValueError(f"domain names changed from {self.domain_names} to {meta.domain_names}.")
        self.seen += int(meta.n_tokens)
        valid = grads.valid.cpu()
        docs = meta.doc_index.cpu()[valid].long()  # [m]
        size = max(self.counts.numel(), int(docs.max()) + 1 if docs.numel() else 0)
        self.sums, self.routed = _grow(self.sums, size), _grow(self.routed, size)
        self.counts, self.doc_domain = _grow(self.counts, size), _grow(self.doc_domain, size, -1)
        self.counts = self.counts.index_add(0, docs, torch.ones_like(docs))
        self.doc_domain = self.doc_domain.index_put((docs,), meta.domain.cpu()[valid].long())
        n_cells = self.n_experts * size
        new_sums, new_routed = [], []
        for row in range(len(self.layers)):
            experts = grads.indices[row].cpu()[valid].long()  # [m, k]
            w, g = grads.weights[row].cpu()[valid].double(), grads.grads[row].cpu()[valid].double()
            value = -(w * g)  # [m, k] first-order zeroing estimate of each slot, in float64
            cell = (experts * size + docs[:, None]).reshape(-1)
            new_sums.append(torch.zeros(n_cells, dtype=torch.float64).index_add(0, cell, value.reshape(-1)))
            new_routed.append(torch.bincount(cell, minlength=n_cells))
        self.sums = self.sums + torch.stack(new_sums).reshape(self.sums.shape)
        self.routed = self.routed + torch.stack(new_routed).reshape(self.routed.shape)

    def merge(self, other: FirstOrderEffects) -> FirstOrderEffects:
        self._check_mergeable(other)
        if other.domain_names is not None:
            if self.domain_names is not None and other.domain_names != self.domain_names:
                raise ValueError(f"cannot merge domains {other.domain_names} into {self.domain_names}.")
            self.domain_names = other.domain_names
        size = max(self.counts.numel(), other.counts.numel())
        self.sums = _grow(self.sums, size) + _grow(other.sums, size)
        self.routed = _grow(self.routed, size) + _grow(other.routed, size)
        self.counts = _grow(self.counts, size) + _grow(other.counts, size)
        self.doc_domain = torch.maximum(_grow(self.doc_domain, size, -1), _grow(other.doc_domain, size, -1))
        self.seen += other.seen
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums,
            "routed": self.routed,
            "counts": self.counts,
            "doc_domain": self.doc_domain,
            "domain_names": None if self.domain_names is None else list(self.domain_names),
            "seen": self.seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.routed = state["sums"], state["routed"]
        self.counts, self.doc_domain = state["counts"], state["doc_domain"]
        names = state["domain_names"]
        self.domain_names = None if names is None else tuple(names)
        self.seen = int(state["seen"])

    def finalize(self) -> FirstOrderEffectsResult:
        return FirstOrderEffectsResult(
            layers=self.layers,
            domain_names=self.domain_names or (),
            sums=self.sums.clone(),
            routed=self.routed.clone(),
            counts=self.counts.clone(),
            doc_domain=self.doc_domain.clone(),
        )


@dataclass(frozen=True)
class FirstOrderEffectsResult:
    """First-order zeroing estimates, summed per document.

    Attributes:
        layers: the sparse blocks (axis 0).
        domain_names: names of the domain codes.
        sums: ``[layer, expert, document]`` Σ ``−w · ∂L/∂w`` over slots routed to the expert (nats).
        routed: ``[layer, expert, document]`` next-token positions routed to the expert.
        counts: ``[document]`` next-token positions the backward saw.
        doc_domain: ``[document]`` domain code (-1 for documents not seen).
    """

    layers: tuple[int, ...]
    domain_names: tuple[str, ...]
    sums: Float[torch.Tensor, "layer expert document"]
    routed: Int[torch.Tensor, "layer expert document"]
    counts: Int[torch.Tensor, " document"]
    doc_domain: Int[torch.Tensor, " document"]

    def by_domain(self) -> tuple[Float[torch.Tensor, "layer expert domain"], Int[torch.Tensor, " domain"]]:
        """``(Σ estimate [layer, expert, domain], next-token positions [domain])``."""
        n = len(self.domain_names)
        seen = self.doc_domain >= 0
        domain = self.doc_domain[seen]
        sums = torch.zeros(*self.sums.shape[:2], n, dtype=torch.float64)
        sums = sums.index_add(2, domain, self.sums[..., seen])
        return sums, torch.zeros(n, dtype=torch.long).index_add(0, domain, self.counts[seen])

    def per_corpus_token(self) -> Float[torch.Tensor, "layer expert"]:
        """Estimated zeroing effect per next-token position of the corpus (the exact effect's unit)."""
        return self.sums.sum(-1) / max(int(self.counts.sum()), 1)

    def per_routed_token(self) -> Float[torch.Tensor, "layer expert"]:
        """Estimated zeroing effect per position routed to the expert (NaN where none)."""
        routed = self.routed.sum(-1)
        return torch.where(routed > 0, self.sums.sum(-1) / routed.clamp(min=1), torch.nan)

    def to_frame(self, by_domain: bool = True) -> pd.DataFrame:
        """One row per (layer, expert[, domain]): sums, counts, per corpus / routed token."""
        sums, n_tokens = self.by_domain()
        routed = torch.zeros_like(sums, dtype=torch.long)
        seen = self.doc_domain >= 0
        routed = routed.index_add(2, self.doc_domain[seen], self.routed[..., seen])
        if not by_domain:
            sums, routed, n_tokens = (
                sums.sum(-1, keepdim=True),
                routed.sum(-1, keepdim=True),
                n_tokens.sum(0, True),
            )
        names = self.domain_names if by_domain else ("all",)
        rows = []
        for li, layer in enumerate(self.layers):
            for e in range(sums.shape[1]):
                for d, name in enumerate(names):
                    total, n, r = float(sums[li, e, d]), int(n_tokens[d]), int(routed[li, e, d])
                    rows.append(
                        {
                            "layer": layer,
                            "expert": e,
                            "domain": name,
                            "n_tokens": n,
                            "n_routed": r,
                            "estimate_sum": total,
                            "per_corpus_token": total / n if n else float("nan"),
                            "per_routed_token": total / r if r else float("nan"),
                        }
                    )
        return pd.DataFrame(rows)


def weighted_spearman(
    x: Float[np.ndarray, " n"], y: Float[np.ndarray, " n"], weights: Float[np.ndarray, "batch n"]
) -> Float[np.ndarray, " batch"]:
    """Spearman ρ of ``(x, y)`` on the sample where item ``i`` occurs ``weights[b, i]`` times, per row
    ``b`` (mid-ranks for ties, as ``scipy.stats.spearmanr`` on the expanded sample)."""

    def midranks(v: np.ndarray) -> np.ndarray:  # [batch, n]
        below = (v[None, :] < v[:, None]).astype(np.float64)  # [i, j]: v_j < v_i
        equal = (v[None, :] == v[:, None]).astype(np.float64)
        return weights @ below.T + (weights @ equal.T + 1.0) / 2.0

    rx, ry = midranks(np.asarray(x, np.float64)), midranks(np.asarray(y, np.float64))
    total = weights.sum(-1, keepdims=True)
    mx, my = (weights * rx).sum(-1, keepdims=True) / total, (weights * ry).sum(-1, keepdims=True) / total
    cov = (weights * (rx - mx) * (ry - my)).sum(-1)
    var = (weights * (rx - mx) ** 2).sum(-1) * (weights * (ry - my) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.sqrt(var), np.nan)


def _top(values: np.ndarray, n: int) -> set[int]:
    return set(np.argsort(-values, kind="stable")[:n].tolist())


#: Why :func:`score_agreement` gives no interval (its ρ's document interval is the paired table's).
NO_EXPERT_INTERVAL = (
    "none here: resampling experts treats each expert's effect as exact; the paired table gives this ρ "
    "with its bootstrap over documents"
)


def score_agreement(
    exact: Mapping[str, Float[np.ndarray, "layer expert"]],
    scores: Mapping[str, Float[np.ndarray, "layer expert"]],
    layers: Sequence[int],
    n_top: int = 8,
) -> pd.DataFrame:
    """How well each score ranks experts by each exact effect, per layer and over all layers.

    Args:
        exact: edit kind (``"zero"``, ``"remove"``) -> exact effect per expert.
        scores: score name (e.g. ``"first-order estimate"``, ``"REAP saliency"``) -> score per expert.
        layers: block index of each row.
        n_top: experts in the top set (over all layers; per layer capped at half the experts).

    Returns:
        One row per (score, exact kind, layer or ``"all"``): Spearman ρ (no interval here: a
        bootstrap over experts would treat each expert's noisy effect as exact; the document
        interval of the same ρ is :func:`paired_rho_difference`'s, and ``interval`` says so), the
        number of experts, and the overlap of the ``n`` highest by score with the ``n`` highest by
        exact effect (count, Jaccard, and the count expected by chance, ``n² / experts``).
    """
    rows = []
    for score_name, score in scores.items():
        for kind, effect in exact.items():
            groups = [(str(layer), [li]) for li, layer in enumerate(layers)] + [
                ("all", list(range(len(layers))))
            ]
            for label, picked in groups:
                x = np.asarray(score, np.float64)[picked].reshape(-1)
                y = np.asarray(effect, np.float64)[picked].reshape(-1)
                keep = np.isfinite(x) & np.isfinite(y)
                x, y = x[keep], y[keep]
                n = len(x)
                rho = weighted_spearman(x, y, np.ones((1, n)))[0] if n > 1 else float("nan")
                top = min(n_top, n // 2) if label != "all" else min(n_top, n)
                by_score, by_exact = _top(x, top), _top(y, top)
                overlap = len(by_score & by_exact)
                rows.append(
                    {
                        "score": score_name,
                        "exact effect": kind,
                        "layer": label,
                        "experts": n,
                        "spearman": float(rho),
                        "interval": NO_EXPERT_INTERVAL,
                        "top n": top,
                        "top-n overlap": overlap,
                        "top-n jaccard": overlap / (2 * top - overlap) if top else float("nan"),
                        "chance overlap": top * top / n if n else float("nan"),
                    }
                )
    return pd.DataFrame(rows)


def _rows_spearman(
    a: Float[np.ndarray, "batch n"], b: Float[np.ndarray, "batch n"]
) -> Float[np.ndarray, " batch"]:
    """Spearman ρ of ``a[i]`` and ``b[i]`` for each row ``i`` (mid-ranks for ties)."""
    from scipy.stats import rankdata

    if np.shape(a)[-1] == 0:  # no experts in a row: undefined, without numpy's empty-mean warning
        return np.full(np.shape(a)[:-1], np.nan)
    ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    var = (ra**2).sum(-1) * (rb**2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, (ra * rb).sum(-1) / np.sqrt(var), np.nan)


def routed_on_enough_documents(
    routed: Float[np.ndarray, "expert document"], documents: np.ndarray, minimum: int
) -> np.ndarray:
    """Which experts (rows of ``routed``, routed slots per document) are routed on at least ``minimum`` of
    ``documents`` (column indices or a boolean mask): the document gate of every drivers ρ
    (:data:`~tl_moe.analysis.stats.RHO_MIN_EXPERT_DOCUMENTS`), decided on counts before resampling."""
    return (np.asarray(routed)[:, documents] > 0).sum(-1) >= minimum


POOLED_MINUS_WITHIN = "pooled − within layers (mean)"
"""The paired table's group of the pooled ρ minus the mean of the per-layer ρ, on the same resamples."""

WITHIN_LAYERS = "within layers (mean)"
"""The paired table's group of the mean of the per-layer ρ."""


def paired_rho_difference(
    exact_sums: Float[np.ndarray, "expert document"],
    exact_counts: Float[np.ndarray, " document"],
    estimate_sums: Float[np.ndarray, "expert document"],
    estimate_counts: Float[np.ndarray, " document"],
    saliency_sums: Float[np.ndarray, "expert document"],
    saliency_routed: Float[np.ndarray, "expert document"],
    *,
    layers: Sequence[Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    method: str = RHO_METHOD,
    min_expert_documents: int = RHO_MIN_EXPERT_DOCUMENTS,
    min_documents: int = MIN_DOCUMENTS,
    n_top: int | None = None,
) -> pd.DataFrame:
    """Spearman ρ of the first-order estimate and of REAP saliency with the exact effect, on the same
    experts, and their paired difference, with a 95% document-bootstrap interval (``method``, default
    :data:`~tl_moe.analysis.stats.RHO_METHOD`: docs/METHODS.md says why); pooled over every expert and,
    when ``layers`` is given, within each layer and as the mean of the per-layer ρ.

    Each resample draws documents with replacement and recomputes, per expert, all three scores on the
    drawn documents: the exact effect (``Σ exact_sums / Σ exact_counts``), the estimate
    (``Σ estimate_sums / Σ estimate_counts``) and REAP saliency (``Σ saliency_sums / Σ saliency_routed``,
    0 for an expert not routed in the resample), then every ρ over the same experts: those whose three
    values are finite on the observed documents and that are routed on at least
    ``min_expert_documents`` of them (the document gate, decided on counts before resampling:
    docs/METHODS.md). The documents are those the edits saw, so REAP saliency is taken over the same
    documents as the effects. Intervals are unavailable below :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS`
    documents.

    Args:
        layers: the layer of each expert row (None: pooled rows only). A pooled ρ mixes how experts
            rank within a layer with how layers differ; the per-layer rows, their mean
            (``within layers (mean)``) and the pooled ρ minus that mean (``pooled − within layers
            (mean)``, on the same resamples) separate the two.
        min_expert_documents: the document gate (default
            :data:`~tl_moe.analysis.stats.RHO_MIN_EXPERT_DOCUMENTS`).

    Returns:
        Three rows per group (``first-order estimate``, ``REAP saliency``, ``estimate − REAP``), the
        group in ``layer`` (``all``, each layer, ``within layers (mean)``, ``pooled − within layers
        (mean)``): ρ, interval, the interval's method, the bootstrap bias (mean resampled ρ minus ρ),
        where ρ sits in its interval (``interval position``, 0 at ``ci low`` to 1 at ``ci high``) and the
        basic interval from the same resamples (``basic ci low``/``basic ci high``, 2ρ minus the bounds:
        diagnostics of a leaning interval, reported beside the pre-chosen method's, never used to switch it),
        experts, documents, the experts the gate left out, and why an interval is unavailable (empty
        when available). ``attrs["left out"]``: the row indices of the experts the gate left out.
    """
    from tl_moe.analysis.stats import (
        RHO_DIFFERENCE_RANGE,
        RHO_RANGE,
        basic_interval,
        cluster_bootstrap,
        interval_position,
    )

    exact_sums, estimate_sums = np.asarray(exact_sums, np.float64), np.asarray(estimate_sums, np.float64)
    exact_counts, estimate_counts = (
        np.asarray(exact_counts, np.float64),
        np.asarray(estimate_counts, np.float64),
    )
    saliency_sums = np.asarray(saliency_sums, np.float64)
    saliency_routed = np.asarray(saliency_routed, np.float64)
    docs = np.nonzero((exact_counts > 0) | (estimate_counts > 0))[0]
    exact = exact_sums[:, docs].sum(-1) / max(exact_counts.sum(), 1.0)
    first = estimate_sums[:, docs].sum(-1) / max(estimate_counts.sum(), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        saliency = saliency_sums[:, docs].sum(-1) / saliency_routed[:, docs].sum(-1)
    defined = np.isfinite(exact) & np.isfinite(first) & np.isfinite(saliency)
    gated = routed_on_enough_documents(saliency_routed, docs, min_expert_documents)
    keep = defined & gated
    xs, xc = exact_sums[keep][:, docs], exact_counts[docs]
    es, ec = estimate_sums[keep][:, docs], estimate_counts[docs]
    ss, sr = saliency_sums[keep][:, docs], saliency_routed[keep][:, docs]
    groups: list[tuple[str, np.ndarray]] = [("all", np.arange(int(keep.sum())))]
    if layers is not None:
        kept_layers = np.asarray([str(layer) for layer in layers], dtype=object)[keep]
        for layer in dict.fromkeys(kept_layers.tolist()):
            groups.append((layer, np.nonzero(kept_layers == layer)[0]))
    per_layer = len(groups) > 1

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, 3 * groups]
        exact_b = (weights @ xs.T) / np.maximum(weights @ xc, 1.0)[:, None]  # [batch, expert]
        first_b = (weights @ es.T) / np.maximum(weights @ ec, 1.0)[:, None]
        reap_b = (weights @ ss.T) / np.maximum(weights @ sr.T, 1e-300)
        out = []
        for _, picked in groups:
            rho_first = _rows_spearman(first_b[:, picked], exact_b[:, picked])
            rho_reap = _rows_spearman(reap_b[:, picked], exact_b[:, picked])
            out.append(np.stack([rho_first, rho_reap, rho_first - rho_reap], axis=1))
        if per_layer:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a layer constant in a resample
                out.append(np.nanmean(np.stack(out[1:]), axis=0))
            out.append(out[0] - out[-1])  # pooled − within layers (mean), on the same resamples
        return np.concatenate(out, axis=1)

    intervals = cluster_bootstrap(
        statistic,
        len(docs),
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what="the paired Spearman ρ",
        method=method,
        min_clusters=min_documents,
    )
    labels = [(name, len(picked)) for name, picked in groups]
    if per_layer:
        labels.append((WITHIN_LAYERS, int(keep.sum())))
        labels.append((POOLED_MINUS_WITHIN, int(keep.sum())))
    names = ("first-order estimate", "REAP saliency", "estimate − REAP")
    rows = []
    for g, (label, n_experts) in enumerate(labels):
        for name, interval in zip(names, intervals[3 * g : 3 * g + 3], strict=True):
            is_difference = name == "estimate − REAP" or label == POOLED_MINUS_WITHIN
            basic = basic_interval(
                interval.estimate,
                interval.low,
                interval.high,
                RHO_DIFFERENCE_RANGE if is_difference else RHO_RANGE,
            )
            rows.append(
                {
                    "score": name,
                    "layer": label,
                    "spearman with exact zeroing effect": interval.estimate,
                    "ci low": interval.low,
                    "ci high": interval.high,
                    "interval method": method,
                    "bootstrap bias": interval.bias,
                    "interval position": interval_position(interval.estimate, interval.low, interval.high),
                    "basic ci low": basic[0],
                    "basic ci high": basic[1],
                    "experts": n_experts,
                    "documents": len(docs),
                    "experts left out (routed on too few documents)": int((defined & ~gated).sum()),
                    "interval unavailable": interval.reason or "",
                }
            )
    table = pd.DataFrame(rows)
    table.attrs["left out"] = np.flatnonzero(defined & ~gated).tolist()
    table.attrs["min expert documents"] = int(min_expert_documents)
    if n_top is not None:
        scores = {"first-order estimate": first[keep], "REAP saliency": saliency[keep]}
        table.attrs["top overlap"] = top_overlaps(scores, exact[keep], n_top)
    return table


def top_overlaps(
    scores: dict[str, Float[np.ndarray, " expert"]], exact: Float[np.ndarray, " expert"], n_top: int
) -> dict[str, Any]:
    """How many of the ``n`` highest experts by each score are among the ``n`` highest by the exact
    effect, all on the same experts (``n = min(n_top, experts)``), with the count expected by chance
    (``n² / experts``)."""
    n = len(exact)
    top = min(n_top, n)
    by_exact = _top(np.asarray(exact, np.float64), top)
    found: dict[str, Any] = {"top n": top, "experts": n, "chance": top * top / n if n else float("nan")}
    for name, score in scores.items():
        found[name] = len(_top(np.asarray(score, np.float64), top) & by_exact)
    return found


def reap_on_edited_documents(
    effects: Any, estimate: FirstOrderEffectsResult, saliency: Any
) -> Float[np.ndarray, "layer expert"]:
    """REAP saliency of every expert over the documents the edited forwards (or the estimate's
    backward) saw — the documents of the exact effects, as in :func:`estimate_vs_reap` — NaN for an
    expert not routed there. Without per-document saliency sums (an older checkpoint): over every
    streamed document."""
    if saliency.doc_routed is None:
        routed = saliency.routed.sum(0)
        return torch.where(routed > 0, saliency.saliency.sum(0) / routed.clamp(min=1), torch.nan).numpy()
    size = max(effects.counts.numel(), estimate.counts.numel(), saliency.doc_routed.shape[-1])
    seen = np.zeros(size, dtype=bool)
    seen[: effects.counts.numel()] |= effects.counts.numpy() > 0
    seen[: estimate.counts.numel()] |= estimate.counts.numpy() > 0
    sums, routed = saliency.per_document(size)  # [layer · expert, document]
    with np.errstate(invalid="ignore", divide="ignore"):
        reap = sums[:, seen].sum(-1) / routed[:, seen].sum(-1)
    return reap.reshape(len(saliency.layers), -1)


def estimate_report(
    effects: Any,
    saliency: Any,
    estimate: FirstOrderEffectsResult,
    n_top: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first-order estimate beside the exact effects and REAP saliency, over all documents seen.

    Args:
        effects: :class:`~tl_moe.collect.ExpertEffectsResult` (exact per-document effects).
        saliency: :class:`~tl_moe.analysis.drivers.ExpertSaliencyResult`, taken over the documents of
            the edited forwards (:func:`reap_on_edited_documents`), as in :func:`estimate_vs_reap`.
        estimate: the first-order estimate on the same batches (same ``max_tokens``).

    Returns:
        ``experts``: one row per (layer, expert): exact effect of each edit kind and the first-order
        estimate (nats per next-token position), the estimate per routed position, REAP saliency.
        ``agreement``: :func:`score_agreement` of the estimate and of REAP saliency with each exact
        effect (``attrs``: the positions behind the exact and the estimated effects).
    """
    exact_positions, estimate_positions = int(effects.counts.sum()), int(estimate.counts.sum())
    exact = {
        kind: (effects.sums[k].sum(-1) / max(exact_positions, 1)).numpy()
        for k, kind in enumerate(effects.kinds)
    }
    first_order = estimate.per_corpus_token().numpy()
    per_routed = estimate.per_routed_token().numpy()
    reap = reap_on_edited_documents(effects, estimate, saliency)
    rows = []
    for li, layer in enumerate(effects.layers):
        for e in range(first_order.shape[1]):
            row = {"layer": layer, "expert": e}
            row.update({f"{kind}: exact": float(exact[kind][li, e]) for kind in effects.kinds})
            row["first-order estimate"] = float(first_order[li, e])
            row["first-order per routed token"] = float(per_routed[li, e])
            row["saliency (REAP)"] = float(reap[li, e])
            rows.append(row)
    ordered = dict(sorted(exact.items(), key=lambda item: item[0] != "zero"))  # zeroing first
    agreement = score_agreement(
        ordered,
        {"first-order estimate": first_order, "REAP saliency": reap},
        effects.layers,
        n_top=n_top,
    )
    agreement.attrs["exact positions"] = exact_positions
    agreement.attrs["estimate positions"] = estimate_positions
    return pd.DataFrame(rows), agreement


def estimate_vs_reap(
    effects: Any,
    saliency: Any,
    estimate: FirstOrderEffectsResult,
    n_resamples: int = 1000,
    seed: int = 0,
    min_documents: int = MIN_DOCUMENTS,
    n_top: int | None = None,
) -> pd.DataFrame:
    """:func:`paired_rho_difference` of the first-order estimate and REAP saliency against the exact
    zeroing effect, over every expert of every sparse layer routed on enough of the documents the edits
    saw (pooled, per layer, the mean of the per-layer ρ and the pooled minus that mean), on those
    documents (REAP saliency recomputed on them in every resample). ``attrs["left out"]`` names the
    experts the document gate left out (``L{layer}E{expert}``); with ``n_top``, ``attrs["top overlap"]``
    the top-``n_top`` overlaps of both scores on those same experts (:func:`top_overlaps`)."""
    zero = list(effects.kinds).index("zero") if "zero" in effects.kinds else 0
    size = max(effects.counts.numel(), estimate.counts.numel())

    def padded(t: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.pad(t, (0, size - t.shape[-1])).double().numpy()

    saliency_sums, saliency_routed = saliency.per_document(size)
    n_experts = effects.sums.shape[2]
    table = paired_rho_difference(
        padded(effects.sums[zero]).reshape(-1, size),
        padded(effects.counts),
        padded(estimate.sums).reshape(-1, size),
        padded(estimate.counts),
        saliency_sums,
        saliency_routed,
        layers=np.repeat(np.asarray(effects.layers), n_experts),
        n_resamples=n_resamples,
        seed=seed,
        min_documents=min_documents,
        n_top=n_top,
    )
    table.attrs["left out"] = [
        f"L{effects.layers[i // n_experts]}E{i % n_experts}" for i in table.attrs["left out"]
    ]
    return table
