"""Driver experts: experts whose removal most raises next-token loss, chosen and reported on disjoint documents.

Definitions (docs/METHODS.md, "Driver experts"):

- **Causal effect** of an edit ``κ`` (``remove``: the expert cannot be selected, tokens re-route;
  ``zero``: selected as usual, output zeroed) of expert ``e`` in block ``L`` on a set of documents
  ``D``: ``Δ = Σ_{d∈D} S[d] / Σ_{d∈D} N[d]``, where ``S[d]`` sums ``loss(edited) − loss(clean)`` over
  the next-token positions of document ``d`` that the interventional pass saw and ``N[d]`` counts them
  (nats per token). Exact: every position's edited loss is a real forward (``collect``'s
  interventional pass), not an approximation.
- **Saliency** (REAP, a data-only score): mean over the tokens routed to ``e`` of its mixing weight ×
  ‖expert output‖.
- Documents are split by a hash of their corpus row into a *selection* half and a *report* half.
  Driver experts are the ``n`` largest removal effects on the selection half; their effects are
  reported on the report half with a document-level bootstrap interval, beside **control experts**:
  for each driver, the non-driver expert of the same block whose routing share (selection half)
  is closest; when the block has no non-driver expert left (a block holding most of the drivers), the
  closest routing share among the unused non-driver experts of every block (``control match``:
  ``same layer`` / ``other layer``). Controls cannot run out while ``n ≤`` half the experts
  (:func:`max_drivers`).
- Intervals: 95% percentile bootstrap over report-half documents, available from
  :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents on; with fewer the interval is unavailable
  (NaN bounds) and the comparison table says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int

from tl_moe.analysis._document_halves import HALVES_KEY, split_documents, split_gate
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS, RHO_METHOD, RHO_MIN_EXPERT_DOCUMENTS
from tl_moe.collect.accumulator import Accumulator, Activations
from tl_moe.collect.expert_effects import ExpertEffectsResult
from tl_moe.collect.meta import BatchMeta
from tl_moe.models.hook_names import get_act_name

__all__ = [
    "ExpertSaliency",
    "HALVES_KEY",
    "driver_report",
    "match_controls",
    "max_drivers",
    "saliency_effect_spearman",
    "split_gate",
]

EDIT_KINDS = ("remove", "zero")


def _grow(tensor: torch.Tensor, size: int) -> torch.Tensor:
    if tensor.shape[-1] >= size:
        return tensor
    pad = torch.zeros(*tensor.shape[:-1], size - tensor.shape[-1], dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, pad], dim=-1)


class ExpertSaliency(Accumulator):
    """Per expert of ``layers``: routed tokens, Σ weight × ‖output‖ (REAP), Σ position in document,
    on each document half; and routed tokens and Σ weight × ‖output‖ per document, so that REAP
    saliency can be recomputed on resampled documents."""

    def __init__(self, layers: Sequence[int], n_experts: int) -> None:
        self.layers = tuple(int(layer) for layer in layers)
        self.n_experts = int(n_experts)
        shape = (2, len(self.layers), self.n_experts)
        self.routed = torch.zeros(shape, dtype=torch.long)
        self.saliency = torch.zeros(shape, dtype=torch.float64)
        self.position = torch.zeros(shape, dtype=torch.float64)
        per_document = (len(self.layers), self.n_experts, 0)
        self.doc_routed = torch.zeros(per_document, dtype=torch.float64)
        self.doc_saliency = torch.zeros(per_document, dtype=torch.float64)

    def config(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "n_experts": self.n_experts, "per_document": True}

    def hook_names(self, model: Any) -> list[str]:
        kinds = ("topk_indices", "topk_weights", "expert_out")
        return [get_act_name(kind, layer) for layer in self.layers for kind in kinds]

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        real = meta.tokens(meta.doc_position) >= 0
        docs = meta.tokens(meta.doc_index)[real].long().cpu()
        half = document_split(docs, key=HALVES_KEY).cpu()
        where = meta.tokens(meta.doc_position)[real].double().cpu()
        size = max(self.doc_routed.shape[-1], int(docs.max()) + 1 if docs.numel() else 0)
        self.doc_routed, self.doc_saliency = _grow(self.doc_routed, size), _grow(self.doc_saliency, size)
        for row, layer in enumerate(self.layers):
            indices = meta.tokens(acts[get_act_name("topk_indices", layer)])[real].long().cpu()
            weights = meta.tokens(acts[get_act_name("topk_weights", layer)])[real].double().cpu()
            norms = meta.tokens(acts[get_act_name("expert_out", layer)])[real].double().norm(dim=-1).cpu()
            k = indices.shape[-1]
            flat = half.repeat_interleave(k) * self.n_experts + indices.reshape(-1)
            n_cells = 2 * self.n_experts
            value = (weights * norms).reshape(-1)
            routed = torch.bincount(flat, minlength=n_cells).reshape(2, -1)
            salient = torch.zeros(n_cells, dtype=torch.float64).index_add(0, flat, value)
            positions = torch.zeros(n_cells, dtype=torch.float64).index_add(
                0, flat, where.repeat_interleave(k)
            )
            self.routed = self.routed.index_add(1, torch.tensor([row]), routed.unsqueeze(1))
            self.saliency = self.saliency.index_add(1, torch.tensor([row]), salient.reshape(2, 1, -1))
            self.position = self.position.index_add(1, torch.tensor([row]), positions.reshape(2, 1, -1))
            cell = (indices * size + docs[:, None]).reshape(-1)  # (expert, document) of each slot
            n_doc_cells = self.n_experts * size
            self.doc_routed[row] += torch.bincount(cell, minlength=n_doc_cells).double().reshape(-1, size)
            self.doc_saliency[row] += (
                torch.zeros(n_doc_cells, dtype=torch.float64).index_add(0, cell, value).reshape(-1, size)
            )

    def merge(self, other: ExpertSaliency) -> ExpertSaliency:
        self._check_mergeable(other)
        self.routed = self.routed + other.routed
        self.saliency = self.saliency + other.saliency
        self.position = self.position + other.position
        size = max(self.doc_routed.shape[-1], other.doc_routed.shape[-1])
        self.doc_routed = _grow(self.doc_routed, size) + _grow(other.doc_routed, size)
        self.doc_saliency = _grow(self.doc_saliency, size) + _grow(other.doc_saliency, size)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "routed": self.routed,
            "saliency": self.saliency,
            "position": self.position,
            "doc_routed": self.doc_routed,
            "doc_saliency": self.doc_saliency,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.routed, self.saliency, self.position = state["routed"], state["saliency"], state["position"]
        self.doc_routed, self.doc_saliency = state["doc_routed"], state["doc_saliency"]

    def finalize(self) -> ExpertSaliencyResult:
        return ExpertSaliencyResult(
            self.layers,
            self.routed.clone(),
            self.saliency.clone(),
            self.position.clone(),
            self.doc_routed.clone(),
            self.doc_saliency.clone(),
        )


@dataclass(frozen=True)
class ExpertSaliencyResult:
    """``[half, layer, expert]`` routed counts, Σ weight × ‖output‖ and Σ document position; and
    ``[layer, expert, document]`` routed slots and Σ weight × ‖output‖ per document (indexed by the
    document's corpus row; None when not recorded)."""

    layers: tuple[int, ...]
    routed: Int[torch.Tensor, "half layer expert"]
    saliency: Float[torch.Tensor, "half layer expert"]
    position: Float[torch.Tensor, "half layer expert"]
    doc_routed: Float[torch.Tensor, "layer expert document"] | None = None
    doc_saliency: Float[torch.Tensor, "layer expert document"] | None = None

    def mean_saliency(self, half: int) -> Float[torch.Tensor, "layer expert"]:
        return torch.where(
            self.routed[half] > 0, self.saliency[half] / self.routed[half].clamp(min=1), torch.nan
        )

    def mean_position(self, half: int) -> Float[torch.Tensor, "layer expert"]:
        return torch.where(
            self.routed[half] > 0, self.position[half] / self.routed[half].clamp(min=1), torch.nan
        )

    def per_document(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(Σ weight × ‖output‖, routed slots)``, each ``[layer · expert, document]`` over the first
        ``size`` document rows (zero-padded)."""
        if self.doc_routed is None or self.doc_saliency is None:
            raise ValueError("this saliency result has no per-document sums (an older checkpoint).")
        sums, routed = self.doc_saliency[..., :size], self.doc_routed[..., :size]
        sums, routed = _grow(sums, size), _grow(routed, size)
        return sums.reshape(-1, size).double().numpy(), routed.reshape(-1, size).double().numpy()


def max_drivers(n_layers: int, n_experts: int) -> int:
    """The most driver experts that each get a distinct control: half the experts of the sparse blocks."""
    return (n_layers * n_experts) // 2


def match_controls(
    drivers: Sequence[int], share: Float[np.ndarray, " flat"], n_experts: int
) -> tuple[list[int], list[str]]:
    """One distinct control per driver (flat indices ``layer * n_experts + expert``) and how it was matched.

    The non-driver, not yet used expert of the driver's block with the closest routing share
    (``"same layer"``); when its block has none left, the closest routing share over every block
    (``"other layer"``).

    Raises:
        InputError: more drivers than half the experts (no distinct control is left).
    """
    taken = set(int(d) for d in drivers)
    if len(taken) > max_drivers(len(share) // n_experts, n_experts):
        from tl_moe.errors import InputError

        raise InputError(
            f"{len(taken)} driver experts of {len(share)}: each needs a distinct control, so at most "
            f"{max_drivers(len(share) // n_experts, n_experts)} (lower --n-drivers)."
        )
    controls: list[int] = []
    how: list[str] = []
    for d in drivers:
        layer_of = int(d) // n_experts
        free = [c for c in range(len(share)) if c not in taken]
        same = [c for c in free if c // n_experts == layer_of]
        pool, label = (same, "same layer") if same else (free, "other layer")
        best = min(pool, key=lambda c: (abs(share[c] - share[d]), c))
        controls.append(best)
        how.append(label)
        taken.add(best)
    return controls, how


def _bootstrap_ratio(
    sums: np.ndarray, counts: np.ndarray, n_resamples: int, seed: int, min_documents: int = MIN_DOCUMENTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """Ratio estimate Σ sums / Σ counts per row of ``sums [rows, docs]``, its 95% percentile
    document-bootstrap interval (:func:`tl_moe.analysis.stats.cluster_bootstrap`, documents as
    clusters; NaN bounds below ``min_documents`` documents) and the reason
    the interval is unavailable (None when available)."""
    from tl_moe.analysis.stats import cluster_bootstrap

    def ratio(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, rows]
        return (weights @ sums.T) / np.maximum(weights @ counts, 1)[:, None]

    intervals = cluster_bootstrap(
        ratio,
        counts.shape[0],
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what="the effect",
        min_clusters=min_documents,
    )
    intervals = intervals if isinstance(intervals, list) else [intervals]
    estimate, low, high = (
        np.array([getattr(i, name) for i in intervals]) for name in ("estimate", "low", "high")
    )
    return estimate, low, high, intervals[0].reason


def report_documents(counts: Int[torch.Tensor, " document"]) -> np.ndarray:
    """Corpus rows of the report-half documents with at least one edited position."""
    docs = np.nonzero(counts.numpy() > 0)[0]
    return docs[document_split(docs, key=HALVES_KEY) == 1]


def driver_report(
    effects: ExpertEffectsResult,
    saliency: ExpertSaliencyResult,
    n_drivers: int = 8,
    n_resamples: int = 1000,
    seed: int = 0,
    min_documents: int = 2,
    min_interval_documents: int = MIN_DOCUMENTS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Driver experts selected on the selection half, reported on the report half.

    Returns:
        ``experts``: one row per (layer, expert): routed share, REAP saliency, mean document position,
        and for each edit kind its effect on each half with the report half's 95% interval.
        ``comparison``: per edit kind, the mean effect on the report half of the drivers, of their
        frequency-matched controls, and the paired difference, each with a 95% document-bootstrap
        interval (NaN with ``interval unavailable`` saying why below ``min_interval_documents``
        report documents, :attr:`~tl_moe.analysis.configs.Statistics.min_documents`), the number of report
        documents and of controls matched in another layer.

    Raises:
        InputError: fewer than ``min_documents`` documents on a half (nothing to select or report on).
    """
    from scipy.stats import spearmanr

    counts = effects.counts.numpy()
    docs = np.nonzero(counts > 0)[0]
    half = document_split(docs, key=HALVES_KEY)
    report_docs, selection_docs = docs[half == 1], docs[half == 0]
    if min(len(report_docs), len(selection_docs)) < min_documents:
        from tl_moe.errors import InputError

        raise InputError(
            f"driver experts need at least {min_documents} documents in each half, got "
            f"{len(selection_docs)} (selection) and {len(report_docs)} (report): run the edits on more "
            "documents (--driver-tokens, within --max-tokens)."
        )
    n_kinds, n_layers, n_experts, _ = effects.sums.shape
    rows = []
    flat = effects.sums.numpy().reshape(n_kinds, n_layers * n_experts, -1)
    selected_effect, report = {}, {}
    for k, kind in enumerate(effects.kinds):
        select = flat[k][:, selection_docs].sum(1) / max(counts[selection_docs].sum(), 1)
        estimate, low, high, reason = _bootstrap_ratio(
            flat[k][:, report_docs], counts[report_docs], n_resamples, seed, min_interval_documents
        )
        selected_effect[kind], report[kind] = select, (estimate, low, high, reason or "")
    routed_share = saliency.routed[0].double() / saliency.routed[0].sum(-1, keepdim=True).clamp(min=1)
    for li, layer in enumerate(effects.layers):
        for e in range(n_experts):
            i = li * n_experts + e
            row = {
                "layer": layer,
                "expert": e,
                "routed share (selection)": float(routed_share[li, e]),
                "saliency (REAP)": float(saliency.mean_saliency(0)[li, e]),
                "mean document position": float(saliency.mean_position(1)[li, e]),
            }
            for kind in effects.kinds:
                estimate, low, high, reason = report[kind]
                row[f"{kind}: effect (selection)"] = float(selected_effect[kind][i])
                row[f"{kind}: effect (report)"] = float(estimate[i])
                row[f"{kind}: report ci low"] = float(low[i])
                row[f"{kind}: report ci high"] = float(high[i])
                row[f"{kind}: report interval unavailable"] = reason
            rows.append(row)
    experts = pd.DataFrame(rows)
    main_kind = effects.kinds[0]
    order = np.argsort(-selected_effect[main_kind])
    drivers = order[: min(n_drivers, len(order))]
    share = routed_share.reshape(-1).numpy()
    controls, matched = match_controls(drivers.tolist(), share, n_experts)
    experts["driver"] = False
    experts.loc[drivers, "driver"] = True
    experts["control for"] = ""
    experts["control match"] = ""
    for d, c, how in zip(drivers, controls, matched, strict=True):
        experts.loc[c, "control for"] = f"L{effects.layers[d // n_experts]}E{d % n_experts}"
        experts.loc[c, "control match"] = how
    comparisons = []
    for k, kind in enumerate(effects.kinds):
        group = np.stack(
            [
                flat[k][drivers][:, report_docs].mean(0),
                flat[k][controls][:, report_docs].mean(0),
            ]
        )
        paired = np.concatenate([group, (group[0] - group[1])[None]])
        estimate, low, high, reason = _bootstrap_ratio(
            paired, counts[report_docs], n_resamples, seed + 1, min_interval_documents
        )
        for name, j in (("driver experts", 0), ("matched controls", 1), ("driver − control", 2)):
            comparisons.append(
                {
                    "edit": kind,
                    "group": name,
                    "mean effect (nats/token, report half)": float(estimate[j]),
                    "ci low": float(low[j]),
                    "ci high": float(high[j]),
                    "experts": len(drivers),
                    "report documents": len(report_docs),
                    "controls from another layer": matched.count("other layer"),
                    "interval unavailable": reason or "",
                }
            )
    rho = spearmanr(experts["saliency (REAP)"], experts[f"{main_kind}: effect (report)"], nan_policy="omit")
    comparison = pd.DataFrame(comparisons)
    comparison.attrs["saliency_spearman"] = float(rho.statistic)
    if saliency.doc_routed is not None:
        size = max(len(counts), saliency.doc_routed.shape[-1])
        sal_sums, sal_routed = saliency.per_document(size)
        interval = saliency_effect_spearman(
            np.pad(flat[0], ((0, 0), (0, size - len(counts)))),
            np.pad(counts, (0, size - len(counts))),
            sal_sums,
            sal_routed,
            n_resamples=n_resamples,
            seed=seed + 2,
            min_documents=min_interval_documents,
        )
        padded_counts = np.pad(counts, (0, size - len(counts)))
        defined = sal_routed[:, split_documents(padded_counts, sal_routed)[0]].sum(1) > 0  # has a saliency
        left_out = defined & ~split_gate(padded_counts, sal_routed)
        comparison.attrs["saliency_spearman"] = float(interval.estimate)  # on the gated experts
        # Plain values (the frame's attrs travel with it into results.json).
        comparison.attrs["saliency_spearman_interval"] = {
            "experts": int((defined & ~left_out).sum()),
            "left out": [
                f"L{effects.layers[i // n_experts]}E{i % n_experts}" for i in np.flatnonzero(left_out)
            ],
            "min expert documents": RHO_MIN_EXPERT_DOCUMENTS,
            "low": float(interval.low) if interval.available else None,
            "high": float(interval.high) if interval.available else None,
            "documents": int(interval.n),
            "unavailable": interval.reason or "",
            "method": RHO_METHOD,
            "bootstrap bias": float(interval.bias) if np.isfinite(interval.bias) else None,
        }
        ungated = saliency_effect_spearman(  # the same resamples, every expert with both scores defined
            np.pad(flat[0], ((0, 0), (0, size - len(counts)))),
            padded_counts,
            sal_sums,
            sal_routed,
            n_resamples=n_resamples,
            seed=seed + 2,
            min_documents=min_interval_documents,
            min_expert_documents=0,
        )
        comparison.attrs["saliency_spearman_ungated"] = {
            "estimate": float(ungated.estimate),
            "experts": int(defined.sum()),
            "low": float(ungated.low) if ungated.available else None,
            "high": float(ungated.high) if ungated.available else None,
            "unavailable": ungated.reason or "",
        }
        comparison.attrs["saliency_frequency"] = _frequency_control(
            np.pad(flat[0], ((0, 0), (0, size - len(counts)))),
            padded_counts,
            sal_sums,
            sal_routed,
            n_experts,
            n_resamples=n_resamples,
            seed=seed + 2,  # the saliency ρ's seed: the same resamples
            min_documents=min_interval_documents,
        )
    return experts, comparison


def _frequency_control(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """REAP's ρ, the selection-half routed share's ρ and their paired difference
    (:func:`~tl_moe.analysis.driver_frequency.saliency_frequency_spearman`) as plain values."""
    from tl_moe.analysis.driver_frequency import saliency_frequency_spearman

    found = saliency_frequency_spearman(*args, **kwargs)
    plain: dict[str, Any] = {"experts": found.pop("experts")}
    for name, interval in found.items():
        plain[name] = {
            "estimate": float(interval.estimate),
            "low": float(interval.low) if interval.available else None,
            "high": float(interval.high) if interval.available else None,
            "documents": int(interval.n),
            "unavailable": interval.reason or "",
            "method": interval.method,
            "bootstrap bias": float(interval.bias) if np.isfinite(interval.bias) else None,
        }
    return plain


def saliency_effect_spearman(
    effect_sums: Float[np.ndarray, "expert document"],
    effect_counts: Float[np.ndarray, " document"],
    saliency_sums: Float[np.ndarray, "expert document"],
    saliency_routed: Float[np.ndarray, "expert document"],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    method: str = RHO_METHOD,
    min_expert_documents: int = RHO_MIN_EXPERT_DOCUMENTS,
    min_documents: int = MIN_DOCUMENTS,
):
    """Spearman ρ of REAP saliency on the selection half with the exact effect on the report half, over
    experts, with a 95% document-bootstrap interval (``method``, default
    :data:`~tl_moe.analysis.stats.RHO_METHOD`: docs/METHODS.md says why).

    Documents (columns, indexed by corpus row; the half of each from
    :func:`~tl_moe.analysis.splits.document_split` with :data:`HALVES_KEY`) are the clusters: every
    document with a routed slot on the selection half or an edited token on the report half. Each resample draws them with replacement and recomputes both scores on the drawn documents:
    saliency ``Σ saliency_sums / Σ saliency_routed`` over selection-half documents (0 for an expert not
    routed in the resample) and the effect ``Σ effect_sums / Σ effect_counts`` over report-half ones,
    then ρ over the experts with both scores defined on the observed data and routed on at least
    ``min_expert_documents`` documents of each half (:func:`split_gate`, decided before resampling).
    The estimate is the ρ :func:`driver_report` reports.

    Returns:
        An :class:`~tl_moe.analysis.stats.Interval` with the bootstrap's bias (unavailable below
        ``min_documents`` documents, with the reason).
    """
    from tl_moe.analysis.effect_estimate import _rows_spearman
    from tl_moe.analysis.stats import cluster_bootstrap

    effect_sums, effect_counts = np.asarray(effect_sums, np.float64), np.asarray(effect_counts, np.float64)
    saliency_sums = np.asarray(saliency_sums, np.float64)
    saliency_routed = np.asarray(saliency_routed, np.float64)
    selection, report = split_documents(effect_counts, saliency_routed)
    docs = np.nonzero(selection | report)[0]
    on_selection, on_report = selection[docs].astype(np.float64), report[docs].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed_saliency = (saliency_sums[:, selection].sum(1)) / saliency_routed[:, selection].sum(1)
    observed_effect = effect_sums[:, report].sum(1) / max(effect_counts[report].sum(), 1.0)
    keep = np.isfinite(observed_saliency) & np.isfinite(observed_effect)
    keep &= split_gate(effect_counts, saliency_routed, min_expert_documents)
    ss, sr = saliency_sums[keep][:, docs], saliency_routed[keep][:, docs]
    es, ec = effect_sums[keep][:, docs], effect_counts[docs]

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, 1]
        w_sel, w_rep = weights * on_selection, weights * on_report
        reap = (w_sel @ ss.T) / np.maximum(w_sel @ sr.T, 1e-300)
        effect = (w_rep @ es.T) / np.maximum(w_rep @ ec, 1.0)[:, None]
        return _rows_spearman(reap, effect)[:, None]

    (interval,) = cluster_bootstrap(
        statistic,
        len(docs),
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what="the saliency–effect Spearman ρ",
        method=method,
        min_clusters=min_documents,
        strata=report[docs].astype(int),  # drawn within each half: the halves keep their sizes
    )
    return interval
