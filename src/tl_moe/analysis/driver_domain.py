"""Driver experts against domain experts: are the experts that drive the output the domain-specific ones?

Two scores of every expert meet here: the domain score (:class:`~tl_moe.analysis.domain_experts.DomainExperts`,
data only: how strongly one domain favours the expert) and the causal effect (the loss change when it is
removed, :func:`~tl_moe.analysis.drivers.driver_report`). :func:`compare_drivers_with_domain_experts`
reports, per layer and over all layers:

- the overlap of the two sets (driver experts; significant domain experts), the overlap expected if the
  sets were drawn independently among the scored experts, and the hypergeometric p-value of an overlap at
  least as large (``scipy.stats.hypergeom``);
- Spearman's ρ between domain score and causal effect over the scored experts, with a 95% bootstrap
  interval over *report documents* (:func:`~tl_moe.analysis.stats.cluster_bootstrap`, method
  :data:`~tl_moe.analysis.stats.RHO_METHOD`): each resample draws the report documents with replacement
  and recomputes every expert's effect from them (:class:`ReportDocuments`), then ρ. The documents are
  the independent units; the experts are not (their effects share the documents' noise), so resampling
  experts as if each effect were exact would be too narrow. The domain score is held fixed as the domains
  analysis measured it on its own tokens (it keeps no per-document records), so the interval carries the
  effects' sampling noise only. Unavailable, with the reason, below
  :data:`~tl_moe.analysis.stats.MIN_DOCUMENTS` documents or without per-document effects.

Experts too small to get a domain score are left out of both (they are listed by the domains analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats
from jaxtyping import Float

from tl_moe.analysis.stats import RHO_METHOD, cluster_bootstrap

__all__ = ["DriverDomainComparison", "ReportDocuments", "compare_drivers_with_domain_experts"]

NO_DOCUMENTS = "no per-document effects given"
"""Why the ρ has no interval when the caller gives only the per-expert effects."""


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
class DriverDomainComparison:
    """Attributes:
    table: one row per layer and one ``"all"`` row: ``experts`` (scored), ``drivers``,
        ``domain experts``, ``both``, ``expected both`` (independent sets), ``overlap p``
        (hypergeometric, overlap ≥ observed; NaN with ``overlap not testable`` saying why when either set
        is empty or covers every scored expert), ``spearman``, ``spearman ci low`` / ``high`` (95%
        report-document bootstrap, the domain score held fixed), ``spearman unavailable`` (why ρ is
        undefined, empty when it is defined), ``spearman interval unavailable`` (why the interval is, empty
        when it is available) and ``spearman documents`` (report documents resampled).
    experts: one row per scored expert: layer, expert, domain score, favoured domain, effect, and the
        two flags — the points of the scatter figure.
    effect: the name of the effect column compared (e.g. ``"remove: effect (report)"``).
    """

    table: pd.DataFrame
    experts: pd.DataFrame
    effect: str

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
                    group["domain score"], group[self.effect], s=16, color=color, marker=marker, label=label
                )
            ax.axhline(0, color="grey", lw=0.8)
            rho = stats.loc[layer, "spearman"]
            ax.set_title(
                f"layer {layer}: ρ = {rho:+.2f}" if math.isfinite(rho) else f"layer {layer}", fontsize=9
            )
            ax.set_xlabel("domain score", fontsize=8)
        axes[0].set_ylabel("loss change when removed (nats/token)", fontsize=8)
        handles, labels = [], []
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        axes[-1].legend(handles, labels, fontsize=7)
        return fig


def _why_no_spearman(x: np.ndarray, y: np.ndarray) -> str:
    """Why Spearman's ρ is undefined over these experts (empty when it is defined)."""
    if len(x) < 3:
        return f"{len(x)} scored experts, at least 3 needed"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return "a constant domain score or effect"
    return ""


def _spearman_intervals(
    scored: pd.DataFrame,
    groups: list[tuple[object, np.ndarray]],
    documents: ReportDocuments,
    n_resamples: int,
    seed: int,
):
    """ρ(domain score, effect) of each group of ``scored`` rows with its 95% report-document bootstrap
    interval: every resample recomputes each expert's effect from the drawn documents, the domain score
    held fixed. One :class:`~tl_moe.analysis.stats.Interval` per group."""
    from tl_moe.analysis.effect_estimate import _rows_spearman

    row_of = {layer: i for i, layer in enumerate(documents.layers)}
    missing = sorted(set(scored["layer"]) - set(row_of))
    if missing:
        raise ValueError(f"report documents lack layer(s) {missing}; give the drivers analysis' effects.")
    li = scored["layer"].map(row_of).to_numpy(int)
    ei = scored["expert"].to_numpy(int)
    score = scored["domain score"].to_numpy(float)

    def statistic(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, groups]
        effect = documents.effect(weights)[:, li, ei]  # [batch, scored expert]
        out = []
        for _, picked in groups:
            x = np.broadcast_to(score[picked], (len(weights), len(picked)))
            out.append(_rows_spearman(x, effect[:, picked]))
        return np.stack(out, axis=1)

    return cluster_bootstrap(
        statistic,
        len(documents.counts),
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what="the domain score–effect Spearman ρ",
        method=RHO_METHOD,
    )


def compare_drivers_with_domain_experts(
    drivers: pd.DataFrame,
    domains: pd.DataFrame,
    effect: str = "remove: effect (report)",
    documents: ReportDocuments | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> DriverDomainComparison:
    """Overlap and rank correlation of driver experts and domain experts.

    Args:
        drivers: the drivers analysis' per-expert frame (``layer``, ``expert``, ``driver``, ``effect``).
        domains: :meth:`DomainExperts.to_frame` (``layer``, ``expert``, ``score``, ``domain_expert``,
            ``insufficient_tokens``, ``favoured_domain``), on the same block-index layers.
        effect: the causal-effect column of ``drivers`` to correlate with the domain score.
        documents: the same effect per report document (:meth:`ReportDocuments.from_effects`): ρ and its
            interval are computed from them (the estimate equals ρ of the ``effect`` column, which is
            their ratio). None: ρ from the ``effect`` column, no interval (the reason says so).
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
    intervals = None
    if documents is not None:
        intervals = _spearman_intervals(scored, groups, documents, n_resamples, seed)
    rows = []
    for g, (layer, picked) in enumerate(groups):
        rows_of = scored.iloc[picked]
        n = len(rows_of)
        n_drivers, n_domain = int(rows_of["driver"].sum()), int(rows_of["domain expert"].sum())
        both = int((rows_of["driver"] & rows_of["domain expert"]).sum())
        # P(overlap >= both) when n_drivers experts are drawn at random among n, n_domain of them domain experts
        untestable = _why_untestable(n, n_drivers, n_domain)
        p = float(scipy.stats.hypergeom(n, n_domain, n_drivers).sf(both - 1)) if not untestable else math.nan
        x, y = rows_of["domain score"].to_numpy(float), rows_of[effect].to_numpy(float)
        why = _why_no_spearman(x, y)
        if why:
            rho, low, high, no_interval = math.nan, math.nan, math.nan, why
        elif intervals is None:
            rho, low, high, no_interval = (
                float(scipy.stats.spearmanr(x, y).statistic),
                math.nan,
                math.nan,
                NO_DOCUMENTS,
            )
        else:
            interval = intervals[g]
            rho, low, high = interval.estimate, interval.low, interval.high
            no_interval = "" if interval.available else interval.reason
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
                "spearman": rho,
                "spearman ci low": low,
                "spearman ci high": high,
                "spearman unavailable": why,
                "spearman interval unavailable": no_interval,
                "spearman documents": 0 if documents is None else len(documents.counts),
            }
        )
    return DriverDomainComparison(pd.DataFrame(rows), scored, effect)


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
