"""Driver experts against domain experts: are the experts that drive the output the domain-specific ones?

Two scores of every expert meet here: the domain score (:class:`~tl_moe.analysis.domain_experts.DomainExperts`,
data only: how strongly one domain favours the expert) and the causal effect (the loss change when it is
removed, :func:`~tl_moe.analysis.drivers.driver_report`). :func:`compare_drivers_with_domain_experts`
reports, per layer and over all layers:

- the overlap of the two sets (driver experts; significant domain experts), the overlap expected if the
  sets were drawn independently among the scored experts, and the hypergeometric p-value of an overlap at
  least as large (``scipy.stats.hypergeom``);
- Spearman's ρ between the domain score measured on the *selection-half* documents
  (:class:`DomainRouting`) and the causal effect measured on the *report-half* documents
  (:class:`ReportDocuments`), so that the two scores come from disjoint documents, with a 95% bootstrap
  interval over the documents of both halves (:func:`~tl_moe.analysis.stats.cluster_bootstrap`, method
  :data:`~tl_moe.analysis.stats.RHO_METHOD`): each resample draws the documents with replacement within
  their half (stratified: each half keeps its number of documents, as the design fixes it) and
  recomputes every expert's domain score from the drawn selection-half documents' routing counts and
  every expert's effect from the drawn report-half documents, then ρ. The documents are the independent
  units; the experts are not (their scores share the documents' noise), so resampling experts as if each
  score were exact would be too narrow. The ρ is over the scored experts routed on at least
  :data:`~tl_moe.analysis.stats.RHO_MIN_EXPERT_DOCUMENTS` documents of each half (the document gate,
  decided on counts before resampling). Unavailable, with the reason, below
  :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents or without per-document routing and effects;
- its routing-frequency control: an expert routed often can have both a larger removal effect and a
  flatter, less domain-specific routing, so ρ could restate how often experts are routed. Each expert's
  routing frequency (:data:`FREQUENCY`) is its share of its layer's routed slots on the documents of both
  halves (those the two scores use); the partial ρ of domain score and effect given routing frequency is
  the Pearson partial correlation of the three quantities' ranks (mid-ranks; the same as the Pearson
  correlation of the residuals of the score's and the effect's ranks after a least-squares line on the
  frequency's ranks), over the same experts. Each resample recomputes the three per-expert quantities
  from the drawn documents, and the partial ρ, the score's ρ with frequency and the effect's ρ with
  frequency get the same interval as ρ (the confound's size beside the controlled result). Routing
  frequency is a share within the expert's own layer, so a partial ρ pooled over layers still ranks the
  layers against each other; the layer-controlled partial (:data:`WITHIN_PARTIAL`, the ``all`` row's
  headline) is the mean over the layers of each layer's partial ρ, from the same resamples.

Experts too small to get a domain score are left out of both (they are listed by the domains analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.stats
import torch
from jaxtyping import Float

from tl_moe.analysis.stats import (
    MIN_DOCUMENTS,
    RHO_METHOD,
    RHO_MIN_EXPERT_DOCUMENTS,
    RHO_RANGE,
    basic_interval,
    cluster_bootstrap,
    interval_position,
)

__all__ = [
    "DomainRouting",
    "DriverDomainComparison",
    "FREQUENCY",
    "RHO_COLUMNS",
    "ReportDocuments",
    "WITHIN_PARTIAL",
    "compare_drivers_with_domain_experts",
]

NO_DOCUMENTS = "no per-document routing and effects given"
"""Why the ρ has no interval when the caller gives only the per-expert scores and effects."""

FREQUENCY = "routing frequency"
"""The control of the partial ρ: each expert's share of its layer's routed slots on the documents of both
halves (selection and report), the documents the domain score and the effect are measured on."""

NO_FREQUENCY = "no per-document routing of both halves given"
"""Why the partial ρ is undefined without the routed slots of the selection- and report-half documents."""

#: The ρ of each table row, by the prefix of its columns, with its name in an unavailable interval's
#: reason: the domain score with the effect, the same given routing frequency (partial), and each of the
#: two with routing frequency (the confound's size).
RHO_COLUMNS = {
    "spearman": "the domain score–effect Spearman ρ",
    "partial spearman": "the partial ρ given routing frequency",
    "score–frequency spearman": "the domain score–routing frequency Spearman ρ",
    "effect–frequency spearman": "the effect–routing frequency Spearman ρ",
    "within-layer partial spearman": "the mean within-layer partial ρ given routing frequency",
}

WITHIN_PARTIAL = "within-layer partial spearman"
"""The layer-controlled partial ρ (the ``all`` row's headline control): the mean over the layers of each
layer's partial ρ given routing frequency. Routing frequency is a share of the expert's own layer (mean
1 / experts in every layer), so it cannot absorb differences between layers; a pooled partial ρ still
ranks the layers against each other, while each layer's partial compares experts of one layer only. A
layer's row holds its own partial ρ."""

NO_LAYER_PARTIAL = "no layer's partial ρ given routing frequency is defined"
"""Why the mean within-layer partial ρ is undefined."""


@dataclass(frozen=True)
class ReportDocuments:
    """One effect of every expert, summed per report document: the units the ρ interval resamples.

    Attributes:
        layers: the block index of each row of ``sums``.
        sums: ``[layer, expert, document]`` summed loss change of the edit over the document's positions
            (nats), report-half documents only.
        counts: ``[document]`` positions behind each document's sums.
    """

    layers: tuple[int, ...]
    sums: Float[np.ndarray, "layer expert document"]
    counts: Float[np.ndarray, " document"]

    @classmethod
    def from_effects(cls, effects, kind: str) -> ReportDocuments:
        """The report-half documents of :class:`~tl_moe.collect.ExpertEffectsResult` for one
        edit ``kind`` — the documents behind the drivers frame's ``{kind}: effect (report)``."""
        from tl_moe.analysis.drivers import report_documents

        docs = report_documents(effects.counts)
        sums = effects.sums[effects.kinds.index(kind)].numpy()[..., docs]
        return cls(tuple(int(layer) for layer in effects.layers), sums, effects.counts.numpy()[docs])

    def effect(self, weights: Float[np.ndarray, "batch document"]) -> Float[np.ndarray, "batch layer expert"]:
        """Each expert's effect (nats per position) on documents drawn ``weights`` times each."""
        sums = np.asarray(self.sums, np.float64)
        totals = np.einsum("bd,led->ble", weights, sums)
        return totals / np.maximum(weights @ np.asarray(self.counts, np.float64), 1.0)[:, None, None]


@dataclass(frozen=True)
class DomainRouting:
    """Routed slots of every expert per selection-half document, with each document's domain: the units
    the domain score is recomputed from in each resample.

    Attributes:
        layers: the block index of each row of ``routed``.
        routed: ``[layer, expert, document]`` routed slots, selection-half documents only.
        domain: ``[document]`` the domain index of each of those documents.
        n_domains: the domains compared (the score's ``log D``); a domain without a selection-half
            document must be left out by the caller.
        report_routing: ``[layer, expert]`` how many report-half documents (those of
            :class:`ReportDocuments`) route each expert, for the document gate.
        report_routed: ``[layer, expert, document]`` routed slots on those report-half documents (in
            their order), for the routing frequency (None: the partial ρ is undefined, :data:`NO_FREQUENCY`).
    """

    layers: tuple[int, ...]
    routed: Float[np.ndarray, "layer expert document"]
    domain: np.ndarray
    n_domains: int
    report_routing: np.ndarray
    report_routed: Float[np.ndarray, "layer expert document"] | None = None

    @classmethod
    def from_saliency(cls, saliency, effects, domain_of_row: np.ndarray) -> DomainRouting:
        """From the drivers' :class:`~tl_moe.analysis.drivers.ExpertSaliencyResult` (routed slots per
        corpus row) and :class:`~tl_moe.collect.expert_effects.ExpertEffectsResult` (the report documents),
        with ``domain_of_row`` the domain code of every corpus row; domains without a selection-half
        document are dropped and the others renumbered."""
        from tl_moe.analysis.drivers import HALVES_KEY, report_documents
        from tl_moe.analysis.splits import document_split

        size = max(saliency.doc_routed.shape[-1], effects.counts.numel())
        _, routed = saliency.per_document(size)  # [layer · expert, document]
        routed = routed.reshape(len(saliency.layers), -1, size)
        half = document_split(np.arange(size), key=HALVES_KEY)
        selection = np.flatnonzero((half == 0) & (routed[0].sum(0) > 0))
        codes = np.asarray(domain_of_row)[selection]
        present, domain = np.unique(codes, return_inverse=True)
        report = report_documents(effects.counts)
        return cls(
            tuple(int(layer) for layer in saliency.layers),
            routed[..., selection],
            domain,
            len(present),
            (routed[..., report] > 0).sum(-1),
            routed[..., report],
        )

    def scores(self, weights: Float[np.ndarray, "batch document"]) -> Float[np.ndarray, "batch layer expert"]:
        """Each expert's domain score ``1 − H(π)/log D`` (:func:`~tl_moe.analysis.domain_experts.domain_scores`)
        on documents drawn ``weights`` times each; 0 for an expert not routed on the drawn documents (a
        domain without a drawn document counts as a rate of 0)."""
        from tl_moe.analysis.domain_experts import domain_scores

        routed = np.asarray(self.routed, np.float64)
        n_layers, n_experts, n_docs = routed.shape
        onehot = np.eye(self.n_domains)[self.domain]  # [document, domain]
        tokens = routed[0].sum(0)  # slots per document: k × its tokens (k cancels in the shares)
        flat = routed.reshape(-1, n_docs)
        counts = np.stack([(weights * onehot[:, d]) @ flat.T for d in range(self.n_domains)], -1)
        domain_tokens = np.maximum((weights * tokens) @ onehot, 1e-300)  # [batch, domain]
        counts = torch.from_numpy(counts.reshape(len(weights), n_layers, n_experts, self.n_domains))
        score = domain_scores(counts, torch.from_numpy(domain_tokens)[:, None, :]).numpy()
        return np.where(counts.sum(-1).numpy() > 0, score, 0.0)

    def frequency(
        self, weights: Float[np.ndarray, "batch document"]
    ) -> Float[np.ndarray, "batch layer expert"]:
        """Each expert's routing frequency (:data:`FREQUENCY`): its share of its layer's routed slots on
        documents drawn ``weights`` times each, the selection-half documents first, then the report-half
        ones (the columns of ``report_routed``)."""
        n_selection = self.routed.shape[-1]
        slots = np.einsum("bd,led->ble", weights[:, :n_selection], np.asarray(self.routed, np.float64))
        slots += np.einsum(
            "bd,led->ble", weights[:, n_selection:], np.asarray(self.report_routed, np.float64)
        )
        return slots / np.maximum(slots.sum(-1, keepdims=True), 1e-300)


@dataclass(frozen=True)
class DriverDomainComparison:
    """Attributes:
    table: one row per layer and one ``"all"`` row: ``experts`` (scored), ``drivers``,
        ``domain experts``, ``both``, ``expected both`` (independent sets), ``overlap p``
        (hypergeometric, overlap ≥ observed; NaN with ``overlap not testable`` saying why when either set
        is empty or covers every scored expert), ``spearman``, ``spearman ci low`` / ``high`` (95%
        bootstrap over the documents of both halves, both scores recomputed per resample), ``spearman
        bootstrap bias`` (mean resampled ρ − ρ), ``spearman position in interval`` (0 its low end, 1 its
        high end), ``spearman basic ci low`` / ``high`` (the basic interval of the same resamples: the
        percentile bounds reflected about ρ; diagnostics, the reported interval stays the percentile one),
        ``spearman unavailable`` (why ρ is undefined, empty when it is defined), ``spearman interval
        unavailable`` (why the interval is, empty when it is available), ``spearman experts`` (the
        experts in ρ), ``spearman experts left out (routed on too few documents)`` (the document
        gate), ``spearman domain score`` (the score column ρ uses) and ``spearman documents``
        (documents resampled, both halves; 0 without an interval) and ``report tokens per document
        (mean)`` (the scored positions per report-half document, NaN without per-document effects). The
        same columns (estimate, ``ci low`` / ``high``, ``bootstrap bias``, ``position in interval``,
        ``basic ci low`` / ``high``, ``unavailable``, ``interval unavailable``) with the prefixes
        ``partial spearman`` (ρ given routing frequency), ``score–frequency spearman`` and
        ``effect–frequency spearman`` (each score's ρ with routing frequency) and ``within-layer partial
        spearman`` (:data:`WITHIN_PARTIAL`: a layer's own partial ρ; in the ``all`` row the mean of the
        layers' partial ρs, those defined on the observed documents) on the same experts and resamples
        (:data:`RHO_COLUMNS`; undefined, :data:`NO_FREQUENCY`, without both halves' routing).
    experts: one row per scored expert: layer, expert, domain score (every document), the domain score
        on the selection half (with per-document routing), favoured domain, effect, the two flags and
        ``in ρ`` (passes the document gate) — the points of the scatter figure — and, with both halves'
        routing, its ``routing frequency`` (:data:`FREQUENCY`).
    effect: the name of the effect column compared (e.g. ``"remove: effect (report)"``).
    score: the name of the domain-score column ρ uses.
    """

    table: pd.DataFrame
    experts: pd.DataFrame
    effect: str
    score: str = "domain score"

    def figure(self):
        """Domain score vs causal effect, one panel per layer; drivers and domain experts marked."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        layers = sorted(self.experts["layer"].unique())
        fig = Figure(figsize=(3.2 * len(layers), 3.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(layers), sharey=True))
        styles = {
            (False, False): ("other experts", "tab:blue", "o"),
            (True, False): ("driver experts", "tab:red", "o"),
            (False, True): ("domain experts", "tab:green", "s"),
            (True, True): ("driver and domain expert", "tab:purple", "D"),
        }
        stats = self.table.set_index("layer")
        for ax, layer in zip(axes, layers, strict=True):
            rows = self.experts[self.experts["layer"] == layer]
            for (driver, domain), group in rows.groupby(["driver", "domain expert"]):
                label, color, marker = styles[(bool(driver), bool(domain))]
                ax.scatter(
                    group[self.score], group[self.effect], s=16, color=color, marker=marker, label=label
                )
            ax.axhline(0, color="grey", lw=0.8)
            rho = stats.loc[layer, "spearman"]
            ax.set_title(
                f"layer {layer}: ρ = {rho:+.2f}" if math.isfinite(rho) else f"layer {layer}", fontsize=9
            )
            ax.set_xlabel(self.score, fontsize=8)
        axes[0].set_ylabel("loss change when removed (nats/token)", fontsize=8)
        handles, labels = [], []
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        axes[-1].legend(handles, labels, fontsize=7)
        return fig


def _why_undefined(named: dict[str, np.ndarray]) -> str:
    """Why a rank correlation of these per-expert quantities (by name) is undefined over the experts
    (empty when it is defined): too few experts, or which of them are constant."""
    n = len(next(iter(named.values())))
    if n < 3:
        return f"{n} scored experts, at least 3 needed"
    constant = [name for name, values in named.items() if np.ptp(values) == 0]
    return f"a constant {' and a constant '.join(constant)}" if constant else ""


def _why_no_spearman(x: np.ndarray, y: np.ndarray) -> str:
    """Why Spearman's ρ of the domain score ``x`` and the removal effect ``y`` is undefined over these
    experts (empty when it is defined)."""
    return _why_undefined({"domain score": x, "removal effect": y})


def _rows_partial_spearman(
    a: Float[np.ndarray, "batch n"], b: Float[np.ndarray, "batch n"], c: Float[np.ndarray, "batch n"]
) -> Float[np.ndarray, " batch"]:
    """The partial Spearman ρ of ``a[i]`` and ``b[i]`` given ``c[i]`` for each row ``i``: the Pearson partial
    correlation of their mid-ranks, ``(ρ_ab − ρ_ac ρ_bc) / √((1 − ρ_ac²)(1 − ρ_bc²))`` (the correlation of
    the residuals of ``a``'s and ``b``'s ranks after a least-squares line on ``c``'s ranks); NaN where a
    ρ is undefined or ``a``'s or ``b``'s ranks follow ``c``'s exactly (a residual of 0)."""
    from tl_moe.analysis.effect_estimate import _rows_spearman

    r_ab, r_ac, r_bc = _rows_spearman(a, b), _rows_spearman(a, c), _rows_spearman(b, c)
    denominator = (1 - r_ac**2) * (1 - r_bc**2)
    with np.errstate(invalid="ignore", divide="ignore"):
        partial = (r_ab - r_ac * r_bc) / np.sqrt(denominator)
    return np.where(denominator > 1e-12, np.clip(partial, -1.0, 1.0), np.nan)


def _group_rhos(
    score: Float[np.ndarray, "batch n"],
    effect: Float[np.ndarray, "batch n"],
    frequency: Float[np.ndarray, "batch n"] | None,
) -> list[Float[np.ndarray, " batch"]]:
    """The ρ of :data:`RHO_COLUMNS` of one group of experts: ρ(score, effect) alone without a routing
    frequency, else also the partial ρ given frequency and the score's and effect's ρ with frequency."""
    from tl_moe.analysis.effect_estimate import _rows_spearman

    rho = _rows_spearman(score, effect)
    if frequency is None:
        return [rho]
    return [
        rho,
        _rows_partial_spearman(score, effect, frequency),
        _rows_spearman(score, frequency),
        _rows_spearman(effect, frequency),
    ]


def _spearman_intervals(
    scored: pd.DataFrame,
    groups: list[tuple[object, np.ndarray]],
    documents: ReportDocuments,
    routing: DomainRouting,
    n_resamples: int,
    seed: int,
    min_documents: int = MIN_DOCUMENTS,
):
    """ρ(domain score on the selection half, effect on the report half) of each group of ``scored`` rows
    with its 95% bootstrap interval over the documents of both halves, stratified by half (each resample
    draws each half's documents within that half, as many as it has): every resample recomputes each
    expert's domain score from the drawn selection-half documents, its effect from the drawn report-half
    documents and (with ``routing.report_routed``) its routing frequency from both, then each ρ of
    :data:`RHO_COLUMNS`. One list of :class:`~tl_moe.analysis.stats.Interval` per group, in that order (ρ
    alone without the report-half routing)."""
    row_of = {layer: i for i, layer in enumerate(documents.layers)}
    missing = sorted(set(scored["layer"]) - set(row_of) - set(routing.layers))
    if missing or documents.layers != routing.layers:
        raise ValueError("report documents and routing disagree on layers; give the drivers analysis' own.")
    with_frequency = routing.report_routed is not None
    if with_frequency and np.shape(routing.report_routed)[-1] != len(documents.counts):
        raise ValueError(
            "routing's report-half documents and the report documents differ in number; give the drivers "
            "analysis' own (DomainRouting.from_saliency with the same effects)."
        )
    li = scored["layer"].map(row_of).to_numpy(int)
    ei = scored["expert"].to_numpy(int)
    n_selection = routing.routed.shape[-1]

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, groups × statistics]
        score = routing.scores(weights[:, :n_selection])[:, li, ei]  # [batch, scored expert]
        effect = documents.effect(weights[:, n_selection:])[:, li, ei]
        frequency = routing.frequency(weights)[:, li, ei] if with_frequency else None
        per_group = []
        for _, picked in groups:
            part = None if frequency is None else frequency[:, picked]
            per_group.append(_group_rhos(score[:, picked], effect[:, picked], part))
        if frequency is not None:
            _add_within_layer_partial(per_group, [label for label, _ in groups], layers_in_mean)
        return np.stack([rho for rhos in per_group for rho in rhos], axis=1)

    layers_in_mean = _layers_with_a_partial(scored, groups, documents, routing) if with_frequency else []

    halves = np.repeat([0, 1], [n_selection, len(documents.counts)])  # drawn within each half
    intervals = cluster_bootstrap(
        statistic,
        n_selection + len(documents.counts),
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what=RHO_COLUMNS["spearman"],
        method=RHO_METHOD,
        strata=halves,
        min_clusters=min_documents,
    )
    k = len(RHO_COLUMNS) if with_frequency else 1
    return [intervals[g * k : (g + 1) * k] for g in range(len(groups))]


def _layers_with_a_partial(
    scored: pd.DataFrame, groups: list[tuple[object, np.ndarray]], documents, routing
) -> list[int]:
    """The groups (indices; layers only) whose partial ρ given routing frequency is defined on the observed
    documents: those the mean within-layer partial averages (decided before resampling)."""
    row_of = {layer: i for i, layer in enumerate(documents.layers)}
    li, ei = scored["layer"].map(row_of).to_numpy(int), scored["expert"].to_numpy(int)
    n_selection = routing.routed.shape[-1]
    score = routing.scores(np.ones((1, n_selection)))[0, li, ei]
    effect = documents.effect(np.ones((1, len(documents.counts))))[0, li, ei]
    frequency = routing.frequency(np.ones((1, n_selection + len(documents.counts))))[0, li, ei]
    return [
        g
        for g, (label, picked) in enumerate(groups)
        if label != "all" and not _why_no_partial(score[picked], effect[picked], frequency[picked])
    ]


def _add_within_layer_partial(
    per_group: list[list[np.ndarray]], labels: list[object], layers_in_mean: list[int]
) -> None:
    """Append to each group's ρ the layer-controlled partial ρ (:data:`WITHIN_PARTIAL`): a layer's own
    partial ρ (the second of its ρ), and for the ``all`` group the mean of the partials of the layers in
    ``layers_in_mean`` (NaN when there are none)."""
    if layers_in_mean:
        mean = np.mean([per_group[g][1] for g in layers_in_mean], axis=0)
    else:
        mean = np.full_like(per_group[0][0], np.nan)
    for rhos, label in zip(per_group, labels, strict=True):
        rhos.append(mean if label == "all" else rhos[1])


def _why_no_frequency_rho(values: np.ndarray, frequency: np.ndarray | None, name: str) -> str:
    """Why a score's (named ``name``) ρ with routing frequency is undefined over these experts (empty
    when it is defined)."""
    if frequency is None:
        return NO_FREQUENCY
    return _why_undefined({"routing frequency": frequency, name: values})


def _why_no_partial(x: np.ndarray, y: np.ndarray, frequency: np.ndarray | None) -> str:
    """Why the partial ρ given routing frequency is undefined over these experts (empty when it is defined)."""
    if frequency is None:
        return NO_FREQUENCY
    why = _why_undefined({"domain score": x, "removal effect": y, "routing frequency": frequency})
    if why:
        return why
    if np.isnan(_rows_partial_spearman(x[None], y[None], frequency[None])[0]):
        return "the domain score's or the effect's ranks follow routing frequency's exactly"
    return ""


def _rho_columns(prefix: str, estimate: float, interval, why: str, no_interval: str) -> dict[str, object]:
    """One ρ's columns of the table, named ``prefix``: the estimate, its percentile interval, bootstrap
    bias, position in the interval, basic interval (same resamples, clipped to [−1, 1]), why it is
    undefined and why it has no interval. ``interval`` None: no interval, for ``no_interval``."""
    low = high = bias = math.nan
    if why:
        estimate, no_interval = math.nan, why
    elif interval is not None:
        estimate, low, high, bias = interval.estimate, interval.low, interval.high, interval.bias
        no_interval = "" if interval.available else interval.reason
    basic_low, basic_high = basic_interval(estimate, low, high, RHO_RANGE)
    return {
        prefix: estimate,
        f"{prefix} ci low": low,
        f"{prefix} ci high": high,
        f"{prefix} bootstrap bias": bias,
        f"{prefix} position in interval": interval_position(estimate, low, high),
        f"{prefix} basic ci low": basic_low,
        f"{prefix} basic ci high": basic_high,
        f"{prefix} unavailable": why,
        f"{prefix} interval unavailable": no_interval,
    }


def _gated(
    scored: pd.DataFrame, routing: DomainRouting, documents: ReportDocuments, minimum: int
) -> np.ndarray:
    """Which scored experts are routed on at least ``minimum`` documents of each half (the document gate)."""
    row_of = {layer: i for i, layer in enumerate(routing.layers)}
    li = scored["layer"].map(row_of).to_numpy(int)
    ei = scored["expert"].to_numpy(int)
    selection = (np.asarray(routing.routed) > 0).sum(-1)[li, ei]
    return (selection >= minimum) & (np.asarray(routing.report_routing)[li, ei] >= minimum)


def compare_drivers_with_domain_experts(
    drivers: pd.DataFrame,
    domains: pd.DataFrame,
    effect: str = "remove: effect (report)",
    documents: ReportDocuments | None = None,
    routing: DomainRouting | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    min_expert_documents: int = RHO_MIN_EXPERT_DOCUMENTS,
    min_documents: int = MIN_DOCUMENTS,
) -> DriverDomainComparison:
    """Overlap and rank correlation of driver experts and domain experts.

    Args:
        drivers: the drivers analysis' per-expert frame (``layer``, ``expert``, ``driver``, ``effect``).
        domains: :meth:`DomainExperts.to_frame` (``layer``, ``expert``, ``score``, ``domain_expert``,
            ``insufficient_tokens``, ``favoured_domain``), on the same block-index layers.
        effect: the causal-effect column of ``drivers`` to correlate with the domain score.
        documents: the same effect per report document (:meth:`ReportDocuments.from_effects`).
        routing: routed slots per selection-half document with their domains
            (:meth:`DomainRouting.from_saliency`). With ``documents``: ρ is the domain score on the
            selection half against the effect on the report half (the ``effect`` column, their ratio),
            over the scored experts that pass the document gate (``min_expert_documents`` documents of
            each half), with an interval that resamples both halves' documents. Without either: ρ of the
            domains analysis' score (``domains``' ``score``, measured on every document) against the
            ``effect`` column, descriptive, with no interval (the reason says so).
    """
    missing = {"layer", "expert", "driver", effect} - set(drivers.columns)
    if missing:
        raise ValueError(
            f"drivers frame lacks column(s) {sorted(missing)}; give the drivers analysis' experts."
        )
    merged = drivers[["layer", "expert", "driver", effect]].merge(
        domains[["layer", "expert", "score", "favoured_domain", "domain_expert", "insufficient_tokens"]],
        on=["layer", "expert"],
        how="inner",
        validate="one_to_one",
    )
    if merged.empty:
        raise ValueError(
            "drivers and domain experts share no (layer, expert): were they fitted on one model?"
        )
    scored = merged[~merged["insufficient_tokens"].astype(bool)].rename(
        columns={"score": "domain score", "domain_expert": "domain expert"}
    )
    scored = scored.drop(columns="insufficient_tokens").reset_index(drop=True)
    scored["driver"] = scored["driver"].astype(bool)
    scored["domain expert"] = scored["domain expert"].astype(bool)
    groups = [
        (layer, np.flatnonzero(scored["layer"].to_numpy() == layer))
        for layer in sorted(scored["layer"].unique())
    ]
    groups.append(("all", np.arange(len(scored))))
    intervals, gated = None, np.ones(len(scored), dtype=bool)
    if documents is not None and routing is not None:
        gated = _gated(scored, routing, documents, min_expert_documents)
        _add_selection_half_columns(scored, routing, len(documents.counts))
        intervals = _spearman_intervals(
            scored,
            [(layer, picked[gated[picked]]) for layer, picked in groups],
            documents,
            routing,
            n_resamples,
            seed,
            min_documents,
        )
    compared = "domain score (selection half)" if intervals is not None else "domain score"
    tokens = math.nan if documents is None else float(np.mean(documents.counts))
    scored["in ρ"] = gated
    rows = []
    for g, (layer, picked) in enumerate(groups):
        rows_of = scored.iloc[picked]
        n = len(rows_of)
        n_drivers, n_domain = int(rows_of["driver"].sum()), int(rows_of["domain expert"].sum())
        both = int((rows_of["driver"] & rows_of["domain expert"]).sum())
        # P(overlap >= both) when n_drivers experts are drawn at random among n, n_domain of them domain experts
        untestable = _why_untestable(n, n_drivers, n_domain)
        p = float(scipy.stats.hypergeom(n, n_domain, n_drivers).sf(both - 1)) if not untestable else math.nan
        in_rho = rows_of[rows_of["in ρ"]]
        rows.append(
            {
                "layer": layer,
                "experts": n,
                "drivers": n_drivers,
                "domain experts": n_domain,
                "both": both,
                "expected both": n_drivers * n_domain / n if n else math.nan,
                "overlap p": p,
                "overlap not testable": untestable,
                **_group_columns(in_rho, compared, effect, None if intervals is None else intervals[g]),
                "spearman experts": len(in_rho),
                "spearman experts left out (routed on too few documents)": n - len(in_rho),
                "spearman domain score": compared,
                "spearman documents": 0 if intervals is None else intervals[g][0].n,
                "report tokens per document (mean)": tokens,
            }
        )
    return DriverDomainComparison(pd.DataFrame(rows), scored, effect, compared)


def _add_selection_half_columns(scored: pd.DataFrame, routing: DomainRouting, n_report: int) -> None:
    """Each scored expert's domain score on the selection half and (with the report half's routing) its
    routing frequency on both halves, as columns of ``scored`` (every document weighted once)."""
    row_of = {layer: i for i, layer in enumerate(routing.layers)}
    li, ei = scored["layer"].map(row_of).to_numpy(int), scored["expert"].to_numpy(int)
    ones = np.ones((1, routing.routed.shape[-1]))
    scored["domain score (selection half)"] = routing.scores(ones)[0][li, ei]
    if routing.report_routed is not None:
        both = np.ones((1, routing.routed.shape[-1] + n_report))
        scored[FREQUENCY] = routing.frequency(both)[0][li, ei]


def _group_columns(
    in_rho: pd.DataFrame, compared: str, effect: str, intervals: list | None
) -> dict[str, object]:
    """The columns of every ρ of :data:`RHO_COLUMNS` over one group's experts in ρ: from the bootstrap's
    ``intervals`` (one per ρ; ρ alone without routing frequency), or, without intervals, ρ descriptive."""
    x, y = in_rho[compared].to_numpy(float), in_rho[effect].to_numpy(float)
    frequency = in_rho[FREQUENCY].to_numpy(float) if FREQUENCY in in_rho and intervals else None
    why = {
        "spearman": _why_no_spearman(x, y),
        "partial spearman": _why_no_partial(x, y, frequency),
        "score–frequency spearman": _why_no_frequency_rho(x, frequency, "domain score"),
        "effect–frequency spearman": _why_no_frequency_rho(y, frequency, "removal effect"),
    }
    why[WITHIN_PARTIAL] = _why_no_within_partial(in_rho, why["partial spearman"], frequency, intervals)
    columns: dict[str, object] = {}
    for i, (prefix, name) in enumerate(RHO_COLUMNS.items()):
        if intervals is not None and i < len(intervals):
            own = intervals[i]
            if own.reason and "degenerate" in own.reason:  # the bootstrap names the ρ it ran for
                own = replace(own, reason=own.reason.replace(RHO_COLUMNS["spearman"], name))
            columns.update(_rho_columns(prefix, math.nan, own, why[prefix], ""))
        elif prefix == "spearman":
            rho = math.nan if why[prefix] else float(scipy.stats.spearmanr(x, y).statistic)
            columns.update(_rho_columns(prefix, rho, None, why[prefix], NO_DOCUMENTS))
        else:
            columns.update(_rho_columns(prefix, math.nan, None, why[prefix] or NO_FREQUENCY, NO_FREQUENCY))
    return columns


def _why_no_within_partial(in_rho: pd.DataFrame, why_partial: str, frequency, intervals) -> str:
    """Why the layer-controlled partial ρ of one group is undefined (empty when it is defined): a layer's
    is its own partial ρ's reason; the ``all`` group's (experts of several layers) is undefined when no
    layer's partial ρ is (its estimate then NaN)."""
    if frequency is None:
        return NO_FREQUENCY
    if "layer" not in in_rho or in_rho["layer"].nunique() <= 1:
        return why_partial
    own = intervals[list(RHO_COLUMNS).index(WITHIN_PARTIAL)] if intervals is not None else None
    if own is None or not math.isfinite(own.estimate):
        return NO_LAYER_PARTIAL
    return ""


def _why_untestable(n: int, n_drivers: int, n_domain: int) -> str:
    """Why the overlap test cannot tell anything (empty when it can): an empty or full set overlaps
    exactly as chance says, whatever the experts do (p = 1 would mean nothing)."""
    if n == 0:
        return "no scored experts"
    if n_domain == 0:
        return "no domain experts"
    if n_drivers == 0:
        return "no scored driver experts"
    if n_domain == n or n_drivers == n:
        return "a set holds every scored expert"
    return ""
