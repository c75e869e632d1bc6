"""Routing and functional specialization by Jensen–Shannon divergence, above two baselines.

- the **multinomial** baseline: an expert's tokens as independent draws from its layer's pooled
  distribution (:func:`tl_moe.analysis.specialization.sampling_baseline`);
- the **document-permutation** baseline (routing measures): tokens keep their routing but take their
  content from another, permuted document (:mod:`tl_moe.analysis.specialization_permutation`), so the
  clumping of content within documents is kept.

The excess over the document-permutation baseline carries a document-bootstrap interval, and so does
the trained − untrained difference (paired over the same documents). The untrained null of the
analyzed model (same config, random init) is drawn in the same figures when its pass runs anyway (the
probing section's untrained null; not with ``--skip-untrained-null``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.configs import SpecializationConfig
from tl_moe.analysis.specialization import SpecializationResult, specialization_scores
from tl_moe.analysis.specialization_permutation import (
    BOOTSTRAP_PERMUTATIONS,
    DocumentPermutationBaseline,
    document_permutation_baseline,
    excess_intervals,
)
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, RoutedByTokenGroup, RoutingPerToken
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_interval, format_mean_sd, format_number

__all__ = ["Specialization", "SpecializationSummary"]

DIFFERENCE = "trained − untrained"
#: Why functional specialization has no control: a token's group there is the expert's own logit-lens
#: output on that token, which permuting content across documents cannot reassign without running the
#: expert again on the other document's token, and the lens is accumulated over the corpus (no
#: per-document counts to bootstrap) and only for the trained model.
FUNCTIONAL_NO_CONTROL = (
    "its groups are the expert's own logit-lens outputs, which a document permutation cannot reassign "
    "without rerunning the expert on other content; the lens is summed over the corpus, so there are no "
    "per-document counts to bootstrap, and the untrained model's lens is not computed"
)


@dataclass(frozen=True)
class SpecializationSummary(Result):
    """Specialization of every expert under several groupings.

    Attributes:
        measures: measure name (e.g. ``"routing, 50 token clusters"``) -> its per-expert scores,
            in the order they are shown.
        min_tokens: experts with fewer tokens are listed, not averaged.
        permutation: measure name -> its document-permutation baseline (routing measures).
        untrained: measure name -> the untrained null model's scores (routing measures; empty when its
            pass did not run).
        untrained_permutation: the same for the untrained model's permutation baselines.
        intervals: measure name -> per (model, layer) document-bootstrap interval of the excess over
            the document-permutation baseline (``model``: ``"trained"``, ``"untrained"``,
            ``"trained − untrained"``; see :func:`~tl_moe.analysis.specialization_permutation.excess_intervals`).
        notes: why a baseline or the untrained curve is missing, if one is.
    """

    measures: dict[str, SpecializationResult]
    min_tokens: int = 0
    permutation: dict[str, DocumentPermutationBaseline] = field(default_factory=dict)
    untrained: dict[str, SpecializationResult] = field(default_factory=dict)
    untrained_permutation: dict[str, DocumentPermutationBaseline] = field(default_factory=dict)
    intervals: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def _interval_rows(self, name: str, model: str) -> pd.DataFrame | None:
        frame = self.intervals.get(name)
        if frame is None or not len(frame):
            return None
        rows = frame[frame["model"] == model]
        return rows if len(rows) else None

    def to_frame(self) -> pd.DataFrame:
        """Per (measure, layer): mean and standard deviation over experts of JSD − baseline (bits), the
        token-weighted mean over experts of at least ``min_tokens`` tokens, and (routing measures) the
        token-weighted excess over the document-permutation baseline with its 95% document-bootstrap
        interval, its p-value and whether the p-value is at its floor."""
        rows = []
        for name, result in self.measures.items():
            frame = result.layer_summary(self.min_tokens).assign(measure=name)
            rows.append(
                _with_permutation(
                    frame,
                    self.permutation.get(name),
                    self.min_tokens,
                    self._interval_rows(name, "trained"),
                )
            )
        return pd.concat(rows, ignore_index=True)

    def difference_frame(self) -> pd.DataFrame:
        """Per (routing measure, layer): trained − untrained excess over the document-permutation
        baseline, with its paired 95% document-bootstrap interval (or why it is unavailable)."""
        rows = [
            diff.assign(measure=name)
            for name in self.intervals
            if (diff := self._interval_rows(name, DIFFERENCE)) is not None
        ]
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def untrained_frame(self) -> pd.DataFrame:
        """The same per-layer table for the untrained null model (empty when it was not run)."""
        rows = []
        for name, result in self.untrained.items():
            frame = result.layer_summary(self.min_tokens).assign(measure=name, model="untrained")
            rows.append(
                _with_permutation(
                    frame,
                    self.untrained_permutation.get(name),
                    self.min_tokens,
                    self._interval_rows(name, "untrained"),
                )
            )
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def small_experts(self) -> pd.DataFrame:
        """Experts below the minimum size, per measure (listed, not averaged)."""
        rows = [
            result.small_experts(self.min_tokens).assign(measure=name)
            for name, result in self.measures.items()
        ]
        return pd.concat(rows, ignore_index=True)

    def experts_frame(self) -> pd.DataFrame:
        """Per (measure, layer, expert): score, baseline, excess and the expert's sample size."""
        rows = [result.to_frame().assign(measure=name) for name, result in self.measures.items()]
        return pd.concat(rows, ignore_index=True)

    def metrics(self) -> dict[str, Any]:
        metrics = {}
        for name, result in self.measures.items():
            summary = result.layer_summary(self.min_tokens).iloc[-1]
            metrics[
                f"{name} | token-weighted mean excess (experts >= {self.min_tokens} tokens), last layer"
            ] = round(float(summary["token_weighted_mean_excess"]), 4)
            metrics[f"{name} | mean excess, last layer"] = round(float(summary["mean_excess"]), 4)
            metrics[f"{name} | experts below {self.min_tokens} tokens, last layer"] = int(
                summary["n_small_experts"]
            )
        for prefix, model, permutation in (
            ("", "trained", self.permutation),
            ("untrained | ", "untrained", self.untrained_permutation),
        ):
            for name, baseline in permutation.items():
                metrics[
                    f"{prefix}{name} | excess over the document-permutation baseline, token-weighted "
                    f"(experts >= {self.min_tokens} tokens), last layer"
                ] = self._excess_text(name, model, baseline)
        for name in self.intervals:
            difference = self._interval_rows(name, DIFFERENCE)
            if difference is not None:
                metrics[
                    f"{name} | {DIFFERENCE} excess over the document-permutation baseline, last layer"
                ] = _interval_text(difference.iloc[-1])
        for name, result in self.untrained.items():
            summary = result.layer_summary(self.min_tokens).iloc[-1]
            metrics[
                f"untrained | {name} | token-weighted mean excess (experts >= {self.min_tokens} tokens), "
                "last layer"
            ] = round(float(summary["token_weighted_mean_excess"]), 4)
        for i, note in enumerate(self.notes):
            metrics[f"note {i + 1}"] = note
        return metrics

    def findings(self) -> list[str]:
        layer = next(iter(self.measures.values())).layers[-1]
        return [self._lead_finding(layer)] + ([self._permutation_finding(layer)] if self.permutation else [])

    def _lead_finding(self, layer: int) -> str:
        """The headline: per measure, the token-weighted excess over its strongest control with its
        document-bootstrap interval (routing measures), or why it has none (functional), then the
        unweighted mean ± sd over experts labelled as a spread."""
        heads, spreads = [], []
        for name, result in self.measures.items():
            last = result.layer_summary(self.min_tokens).iloc[-1]
            why = f"no expert of layer {int(last['layer'])} was routed a token"
            spreads.append(f"{name} {format_mean_sd(last['mean_excess'], last['std_excess'], '.3f', why)}")
            rows = self._interval_rows(name, "trained")
            if name in self.permutation and rows is not None:
                heads.append(f"{name} {_interval_text(rows.iloc[-1])}")
            elif name in self.permutation:
                heads.append(f"{name} {self._excess_text(name, 'trained', self.permutation[name])}")
            else:
                heads.append(
                    f"{name}: no control ({self._no_control_reason(name)}); above the sampling baseline "
                    f"only, token-weighted {format_number(last['token_weighted_mean_excess'], '+.4f', why)} (no interval)"
                )
        return (
            f"**Specialization** in the last sparse layer ({layer}), token-weighted over experts of >= "
            f"{self.min_tokens} tokens, bits above the document-permutation baseline with its 95% "
            "document-bootstrap interval: "
            + "; ".join(heads)
            + ". Spread over experts (unweighted mean ± sd of each expert's excess over the multinomial "
            "sampling baseline, all experts with tokens; a spread, not an interval): "
            + "; ".join(spreads)
            + "."
        )

    def _no_control_reason(self, name: str) -> str:
        """Why a measure has no document-permutation baseline, no bootstrap interval and no untrained
        difference."""
        if name.startswith("functional"):
            return FUNCTIONAL_NO_CONTROL
        return "no routing per token with document ids"

    def _permutation_finding(self, layer: int) -> str:
        parts = [self._finding_part(name, baseline) for name, baseline in self.permutation.items()]
        return (
            f"**Specialization above the document-permutation baseline** (layer {layer}, token-weighted "
            f"over experts of >= {self.min_tokens} tokens, bits, 95% document-bootstrap intervals): "
            + "; ".join(parts)
            + "."
        )

    def _excess_text(self, name: str, model: str, baseline: DocumentPermutationBaseline) -> str:
        """``estimate [low, high], p = ..., N documents`` of one model's last-layer excess."""
        last = baseline.layer_summary(self.min_tokens).iloc[-1]
        rows = self._interval_rows(name, model)
        interval = _interval_text(rows.iloc[-1]) if rows is not None else "no interval"
        return f"{interval}, {_p_text(last, baseline)}, {baseline.n_documents} documents"

    def _finding_part(self, name: str, baseline: DocumentPermutationBaseline) -> str:
        """One routing measure's finding: trained, untrained, their paired difference, and what the
        p-values can and cannot say."""
        text = f"{name}: trained {self._excess_text(name, 'trained', baseline)}"
        untrained = self.untrained_permutation.get(name)
        if untrained is None:
            return text
        text += f"; untrained model {self._excess_text(name, 'untrained', untrained)}"
        difference = self._interval_rows(name, DIFFERENCE)
        if difference is not None:
            text += f"; {DIFFERENCE} {_interval_text(difference.iloc[-1])} (paired over documents; one random initialization of the untrained model, the interval conditional on it)"
        trained_floor = bool(baseline.layer_summary(self.min_tokens).iloc[-1]["p_at_floor"])
        untrained_floor = bool(untrained.layer_summary(self.min_tokens).iloc[-1]["p_at_floor"])
        if trained_floor and untrained_floor:
            text += (
                " — both p-values sit at their floor (no permutation reached either score): they do not "
                f"tell the two models apart; the {DIFFERENCE} difference does"
            )
        return text

    def figures(self) -> list[FigureItem]:
        fig, ax = new_figure(6.4, 4.2)
        for i, (name, result) in enumerate(self.measures.items()):
            result.plot(ax=ax, label=name, color=f"C{i}")
            if name in self.untrained:
                self.untrained[name].plot(ax=ax, label=f"{name} (untrained)", color=f"C{i}", linestyle="--")
        ax.set_ylabel("JSD - sampling baseline (bits)")
        ax.set_title("Specialization per layer (mean ± sd over experts)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        caption = "Specialization above the multinomial sampling baseline, per layer."
        if self.untrained:
            caption += " Dashed: the untrained model of the same config (routing measures)."
        items = [FigureItem("specialization_per_layer", fig, caption)]
        if self.permutation:
            items.append(
                FigureItem(
                    "specialization_permutation_per_layer",
                    self._permutation_figure(),
                    "Specialization above the document-permutation baseline, token-weighted over experts "
                    f"of at least {self.min_tokens} tokens, with its 95% document-bootstrap interval; dashed: "
                    "the untrained model.",
                )
            )
        return items

    def _permutation_figure(self):
        fig, ax = new_figure(6.4, 4.2)
        names = list(self.measures)
        for model, style, suffix in (("trained", "-", ""), ("untrained", "--", " (untrained)")):
            for name in self.intervals:
                summary = self._interval_rows(name, model)
                if summary is None:
                    continue
                i = names.index(name)
                x = np.asarray(summary["layer"], dtype=float) + (0.05 if suffix else 0.0)
                y = summary["estimate"].to_numpy(dtype=float)
                low, high = summary["ci_low"].to_numpy(dtype=float), summary["ci_high"].to_numpy(dtype=float)
                ax.errorbar(
                    x,
                    y,
                    yerr=[np.nan_to_num(y - low), np.nan_to_num(high - y)],
                    marker="o",
                    capsize=3,
                    linestyle=style,
                    color=f"C{i}",
                    label=name + suffix,
                )
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(list(next(iter(self.measures.values())).layers))
        ax.set_xlabel("layer")
        ax.set_ylabel("JSD - document-permutation baseline (bits)")
        ax.set_title("Specialization above the document-permutation baseline")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return fig

    def tables(self) -> list[TableItem]:
        tables = [
            TableItem("specialization_per_layer", self.to_frame(), "Per layer and measure."),
            TableItem(
                "specialization_small_experts",
                self.small_experts(),
                f"Experts with fewer than {self.min_tokens} tokens: listed, left out of the token-weighted means.",
            ),
        ]
        untrained = self.untrained_frame()
        if len(untrained):
            tables.append(
                TableItem(
                    "specialization_untrained_per_layer",
                    untrained,
                    "The untrained model of the same config: per layer and routing measure.",
                )
            )
        difference = self.difference_frame()
        if len(difference):
            tables.append(
                TableItem(
                    "specialization_trained_minus_untrained",
                    difference,
                    "Trained − untrained excess over the document-permutation baseline per layer and routing "
                    "measure, with its paired 95% document-bootstrap interval.",
                )
            )
        return tables


_PERMUTATION_COLUMNS = (
    "permutation_excess",
    "permutation_ci_low",
    "permutation_ci_high",
    "permutation_interval_available",
    "permutation_interval_unavailable_reason",
    "permutation_p_value",
    "permutation_p_at_floor",
    "permutation_n_permutations",
    "permutation_n_documents",
)


def _with_permutation(
    frame: pd.DataFrame,
    baseline: DocumentPermutationBaseline | None,
    min_tokens: int,
    intervals: pd.DataFrame | None,
) -> pd.DataFrame:
    """``frame`` with the permutation excess (the bootstrap statistic's estimate), its document-bootstrap
    interval, p-value and floor flag per layer (NaN where there is no permutation baseline)."""
    if baseline is None:
        return frame.assign(**{c: np.nan for c in _PERMUTATION_COLUMNS})
    summary = baseline.layer_summary(min_tokens)
    summary = pd.DataFrame(
        {
            "layer": summary["layer"],
            "permutation_excess": summary["permutation_excess"],
            "permutation_ci_low": np.nan,
            "permutation_ci_high": np.nan,
            "permutation_interval_available": False,
            "permutation_interval_unavailable_reason": "not computed",
            "permutation_p_value": summary["p_value"],
            "permutation_p_at_floor": summary["p_at_floor"],
            "permutation_n_permutations": summary["n_permutations"],
            "permutation_n_documents": summary["n_documents"],
        }
    )
    if intervals is not None:
        by_layer = intervals.set_index("layer").reindex(summary["layer"])
        summary["permutation_excess"] = by_layer["estimate"].to_numpy()
        summary["permutation_ci_low"] = by_layer["ci_low"].to_numpy()
        summary["permutation_ci_high"] = by_layer["ci_high"].to_numpy()
        summary["permutation_interval_available"] = by_layer["interval_available"].to_numpy()
        summary["permutation_interval_unavailable_reason"] = by_layer["reason"].to_numpy()
    return frame.merge(summary, on="layer", how="left")


def _interval_text(row: pd.Series) -> str:
    """``+0.0660 [+0.0600, +0.0720]``, or the estimate with why its interval is unavailable."""
    if not row["interval_available"]:
        return format_interval(row["estimate"], math.nan, math.nan, "+.4f", row["reason"])
    return format_interval(row["estimate"], row["ci_low"], row["ci_high"], "+.4f", row["reason"])


def _p_text(row: pd.Series, baseline: DocumentPermutationBaseline) -> str:
    """The permutation p-value; at its floor, said as such (``p <= 1/(1 + permutations)``)."""
    if not np.isfinite(row["p_value"]):
        return "p unavailable"
    if row["p_at_floor"]:
        return f"p = {baseline.p_floor:.3g}, at its floor 1/{baseline.n_permutations + 1}"
    return f"p = {row['p_value']:.3g} ({baseline.n_permutations} permutations)"


def untrained_pass_runs(run: RunContext) -> bool:
    """Whether the untrained null's pass runs in this run anyway: probing is in the run (declared by
    ``uses``) and asks for it (not ``--skip-untrained-null``)."""
    return "probing" in run.analyses and not run.options.config("probing").skip_untrained_null


class Specialization(Analysis):
    """JSD of each expert's token distribution (input clusters, domains, logit-lens output) vs its layer's."""

    name = "specialization"
    config_class = SpecializationConfig
    uses = ("probing",)
    title = "Routing and functional specialization"
    summary = "routing and functional specialization (JSD above a sampling baseline)"
    intro = (
        "Per expert, JSD (bits) between the distribution of its tokens over groups and its layer's pooled "
        "distribution, minus the mean JSD of multinomial samples of the same size from the pooled "
        "distribution (the sampling baseline). Groups: spherical k-means clusters of the unembedding "
        "(input tokens routed to the expert: routing specialization; tokens in its logit-lens top-3: "
        "functional specialization), or corpus domains. The baseline's sample size is the expert's number "
        "of TOKENS (a token's top-3 logit-lens entries are not independent draws). Layer means: "
        "token-weighted over experts with at least --min-expert-tokens tokens (smaller experts are listed "
        "in their own table); the unweighted mean over all experts is kept beside it. For the routing "
        "measures, a second, **document-permutation** baseline: every token keeps its routing but takes "
        "the group of a token of another document (documents permuted, a document's tokens drawn without "
        "replacement), so content clumped within documents is not mistaken for specialization; its "
        "excess is given with a 95% document-bootstrap interval (documents resampled, score and null mean "
        f"recomputed on them; the null mean over the first {BOOTSTRAP_PERMUTATIONS} permutations) and a "
        "permutation p-value (--permutations permutations; its floor, 1/(1 + permutations), means no "
        "permutation reached the score, and two models at the floor are not told apart by it: their "
        "trained − untrained difference, with a paired document-bootstrap interval, is). Functional "
        "specialization has no control: "
        + FUNCTIONAL_NO_CONTROL
        + ". Dashed curves: the untrained model of the same config (random init, the run's "
        "seed), whose pass the probing section's untrained null runs (not with --skip-untrained-null)."
    )

    def needs(self, run: RunContext) -> list[Need]:
        specs = (RoutedByTokenGroup(), RoutedByDomain(), ExpertLens(), RoutingPerToken())
        needs = [Need(run.main, spec) for spec in specs]
        if untrained_pass_runs(run):
            untrained = untrained_name(run.main)
            needs += [
                Need(untrained, spec) for spec in (RoutedByTokenGroup(), RoutedByDomain(), RoutingPerToken())
            ]
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> SpecializationSummary:
        cfg = run.config(run.main)
        layers = tuple(cfg.sparse_layers)
        seed, groups = run.options.seed, run.options.n_token_groups
        clusters, domains = f"routing, {groups} token clusters", "routing, domains"

        def scores(counts, kind: str, sample_sizes=None) -> SpecializationResult:
            return specialization_scores(counts, sample_sizes, seed=seed, kind=kind, layers=layers)

        lens = inputs[Need(run.main, ExpertLens())]
        lens_counts = lens.dense_counts()
        routed_by_group = inputs[Need(run.main, RoutedByTokenGroup())]
        # Each routed token adds up to top_n entries to its expert's lens counts: the baseline's draws
        # are the expert's routed tokens, not its entries.
        lens_tokens = routed_by_group.sum(-1).double()
        measures = {
            clusters: scores(routed_by_group, "routing"),
            domains: scores(inputs[Need(run.main, RoutedByDomain())], "routing"),
            f"functional, {groups} token clusters": scores(lens_counts, "functional", lens_tokens),
        }
        notes: list[str] = []
        permutation = self._permutations(run, inputs.get(Need(run.main, RoutingPerToken())), notes)
        untrained, untrained_permutation = {}, {}
        if untrained_pass_runs(run):
            name = untrained_name(run.main)
            untrained = {
                clusters: scores(inputs[Need(name, RoutedByTokenGroup())], "routing"),
                domains: scores(inputs[Need(name, RoutedByDomain())], "routing"),
            }
            untrained_permutation = self._permutations(run, inputs.get(Need(name, RoutingPerToken())), notes)
        intervals = {
            name: excess_intervals(
                baseline,
                untrained_permutation.get(name),
                min_n=run.options.config("specialization").min_expert_tokens,
                n_resamples=run.options.bootstrap_resamples,
                seed=seed,
            )
            for name, baseline in permutation.items()
        }
        return SpecializationSummary(
            measures,
            min_tokens=run.options.config("specialization").min_expert_tokens,
            permutation=permutation,
            untrained=untrained,
            untrained_permutation=untrained_permutation,
            intervals=intervals,
            notes=tuple(dict.fromkeys(notes)),
        )

    def _permutations(
        self, run: RunContext, stored, notes: list[str]
    ) -> dict[str, DocumentPermutationBaseline]:
        """The document-permutation baseline of both routing measures from stored routing per token."""
        if stored is None or stored.doc_index is None:
            notes.append("no routing per token with document ids: no document-permutation baseline.")
            return {}
        cfg = run.config(run.main)
        layers = tuple(cfg.sparse_layers)
        indices = torch.stack(
            [stored.rows[get_act_name("topk_indices", layer)].long() for layer in layers], 1
        )
        groupings = {
            f"routing, {run.options.n_token_groups} token clusters": (
                run.token_groups[stored.input_ids.long()],
                run.options.n_token_groups,
            ),
            "routing, domains": (stored.domain.long(), len(run.domain_names)),
        }
        out = {}
        for name, (token_groups, n_groups) in groupings.items():
            try:
                out[name] = document_permutation_baseline(
                    indices,
                    token_groups,
                    stored.doc_index,
                    cfg.num_experts,
                    n_groups,
                    n_permutations=run.options.permutations,
                    seed=run.options.seed,
                    layers=layers,
                )
            except InputError as error:
                notes.append(f"document-permutation baseline unavailable: {error}")
        return out
