"""Driver experts against domain experts: are the experts that drive the output the domain-specific ones?

Two scores of every expert meet here: the domain score (:class:`~tl_moe.analysis.domain_experts.DomainExperts`,
data only: how strongly one domain favours the expert) and the causal effect (the loss change when it is
removed, :func:`~tl_moe.analysis.drivers.driver_report`). :func:`compare_drivers_with_domain_experts`
reports, per layer and over all layers:

- the overlap of the two sets (driver experts; significant domain experts), the overlap expected if the
  sets were drawn independently among the scored experts, and the hypergeometric p-value of an overlap at
  least as large (``scipy.stats.hypergeom``);
- Spearman's ρ between domain score and causal effect over the scored experts, with a 95% percentile
  bootstrap interval over experts (``scipy.stats.bootstrap``, paired resampling of experts).

Experts too small to get a domain score are left out of both (they are listed by the domains analysis).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

__all__ = ["DriverDomainComparison", "compare_drivers_with_domain_experts"]


@dataclass(frozen=True)
class DriverDomainComparison:
    """Attributes:
    table: one row per layer and one ``"all"`` row: ``experts`` (scored), ``drivers``,
        ``domain experts``, ``both``, ``expected both`` (independent sets), ``overlap p``
        (hypergeometric, overlap ≥ observed; NaN with ``overlap not testable`` saying why when either set
        is empty or covers every scored expert), ``spearman``, ``spearman ci low`` / ``high``, and
        ``spearman unavailable`` (why ρ is undefined, empty when it is defined).
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


def _spearman_interval(
    x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int
) -> tuple[float, float, float]:
    if _why_no_spearman(x, y):
        return math.nan, math.nan, math.nan
    rho = float(scipy.stats.spearmanr(x, y).statistic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant resamples: scipy warns, the interval still stands
        result = scipy.stats.bootstrap(
            (x, y),
            lambda a, b: scipy.stats.spearmanr(a, b).statistic,
            paired=True,
            vectorized=False,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return rho, float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare_drivers_with_domain_experts(
    drivers: pd.DataFrame,
    domains: pd.DataFrame,
    effect: str = "remove: effect (report)",
    n_resamples: int = 1000,
    seed: int = 0,
) -> DriverDomainComparison:
    """Overlap and rank correlation of driver experts and domain experts.

    Args:
        drivers: the drivers analysis' per-expert frame (``layer``, ``expert``, ``driver``, ``effect``).
        domains: :meth:`DomainExperts.to_frame` (``layer``, ``expert``, ``score``, ``domain_expert``,
            ``insufficient_tokens``, ``favoured_domain``), on the same block-index layers.
        effect: the causal-effect column of ``drivers`` to correlate with the domain score.
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
    rows = []
    groups = [(layer, scored[scored["layer"] == layer]) for layer in sorted(scored["layer"].unique())]
    for layer, rows_of in [*groups, ("all", scored)]:
        n = len(rows_of)
        n_drivers, n_domain = int(rows_of["driver"].sum()), int(rows_of["domain expert"].sum())
        both = int((rows_of["driver"] & rows_of["domain expert"]).sum())
        # P(overlap >= both) when n_drivers experts are drawn at random among n, n_domain of them domain experts
        untestable = _why_untestable(n, n_drivers, n_domain)
        p = float(scipy.stats.hypergeom(n, n_domain, n_drivers).sf(both - 1)) if not untestable else math.nan
        rho, low, high = _spearman_interval(
            rows_of["domain score"].to_numpy(float), rows_of[effect].to_numpy(float), n_resamples, seed
        )
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
                "spearman unavailable": _why_no_spearman(
                    rows_of["domain score"].to_numpy(float), rows_of[effect].to_numpy(float)
                ),
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
