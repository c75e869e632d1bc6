"""Routing and functional specialization by Jensen–Shannon divergence, above two baselines.

- the **multinomial** baseline: an expert's tokens as independent draws from its layer's pooled
  distribution (:func:`tl_moe.analysis.specialization.sampling_baseline`);
- the **document-permutation** baseline (routing measures): tokens keep their routing but take their
  content from another, permuted document (:mod:`tl_moe.analysis.specialization_permutation`), so the
  clumping of content within documents is kept.

The untrained null of the analyzed model (same config, random init) is drawn in the same figures when
its pass runs anyway (the probing section's untrained null; not with ``--skip-untrained-null``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.specialization import SpecializationResult, specialization_scores
from tl_moe.analysis.specialization_permutation import (
    DocumentPermutationBaseline,
    document_permutation_baseline,
)
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, RoutedByTokenGroup, RoutingPerToken
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.report.figures import new_figure

__all__ = ["PERMUTATIONS", "Specialization", "SpecializationSummary"]

#: Document permutations behind each permutation baseline (its mean, its 95% range, its p-values).
PERMUTATIONS = 200


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
        notes: why a baseline or the untrained curve is missing, if one is.
    """

    measures: dict[str, SpecializationResult]
    min_tokens: int = 0
    permutation: dict[str, DocumentPermutationBaseline] = field(default_factory=dict)
    untrained: dict[str, SpecializationResult] = field(default_factory=dict)
    untrained_permutation: dict[str, DocumentPermutationBaseline] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_frame(self) -> pd.DataFrame:
        """Per (measure, layer): mean and standard deviation over experts of JSD − baseline (bits), the
        token-weighted mean over experts of at least ``min_tokens`` tokens, and (routing measures) the
        token-weighted excess over the document-permutation baseline with the null's 95% range and
        p-value."""
        rows = []
        for name, result in self.measures.items():
            frame = result.layer_summary(self.min_tokens).assign(measure=name)
            rows.append(_with_permutation(frame, self.permutation.get(name), self.min_tokens))
        return pd.concat(rows, ignore_index=True)

    def untrained_frame(self) -> pd.DataFrame:
        """The same per-layer table for the untrained null model (empty when it was not run)."""
        rows = []
        for name, result in self.untrained.items():
            frame = result.layer_summary(self.min_tokens).assign(measure=name, model="untrained")
            rows.append(_with_permutation(frame, self.untrained_permutation.get(name), self.min_tokens))
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
        for prefix, permutation in (("", self.permutation), ("untrained | ", self.untrained_permutation)):
            for name, baseline in permutation.items():
                last = baseline.layer_summary(self.min_tokens).iloc[-1]
                metrics[
                    f"{prefix}{name} | excess over the document-permutation baseline, token-weighted "
                    f"(experts >= {self.min_tokens} tokens), last layer"
                ] = _permutation_text(last)
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
        parts = []
        for name, result in self.measures.items():
            last = result.layer_summary().iloc[-1]
            parts.append(f"{name} {last['mean_excess']:.3f} ± {last['std_excess']:.3f}")
        layer = next(iter(self.measures.values())).layers[-1]
        findings = [
            f"**Specialization** in the last sparse layer ({layer}), bits above the sampling baseline "
            f"(mean ± sd over experts): " + "; ".join(parts) + "."
        ]
        if self.permutation:
            parts = []
            for name, baseline in self.permutation.items():
                text = f"{name} {_permutation_text(baseline.layer_summary(self.min_tokens).iloc[-1])}"
                if name in self.untrained_permutation:
                    untrained = self.untrained_permutation[name].layer_summary(self.min_tokens).iloc[-1]
                    text += f" (untrained model: {_permutation_text(untrained, short=True)})"
                parts.append(text)
            findings.append(
                f"**Specialization above the document-permutation baseline** (layer {layer}, token-weighted "
                f"over experts of >= {self.min_tokens} tokens, bits, null's 95% range): "
                + "; ".join(parts)
                + "."
            )
        return findings

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
                    f"of at least {self.min_tokens} tokens, with the null's 95% range; dashed: the untrained "
                    "model.",
                )
            )
        return items

    def _permutation_figure(self):
        fig, ax = new_figure(6.4, 4.2)
        names = list(self.measures)
        for source, style, suffix in (
            (self.permutation, "-", ""),
            (self.untrained_permutation, "--", " (untrained)"),
        ):
            for name, baseline in source.items():
                i = names.index(name)
                summary = baseline.layer_summary(self.min_tokens)
                x = np.asarray(summary["layer"], dtype=float) + (0.05 if suffix else 0.0)
                y = summary["permutation_excess"].to_numpy()
                ax.errorbar(
                    x,
                    y,
                    yerr=[np.nan_to_num(y - summary["ci_low"]), np.nan_to_num(summary["ci_high"] - y)],
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
        return tables


def _with_permutation(
    frame: pd.DataFrame, baseline: DocumentPermutationBaseline | None, min_tokens: int
) -> pd.DataFrame:
    columns = ["permutation_excess", "ci_low", "ci_high", "p_value", "n_documents"]
    names = {c: "permutation_" + c for c in columns if c != "permutation_excess"}
    if baseline is None:
        return frame.assign(**{names.get(c, c): np.nan for c in columns})
    summary = baseline.layer_summary(min_tokens)[["layer", *columns]].rename(columns=names)
    return frame.merge(summary, on="layer", how="left")


def _permutation_text(row: pd.Series, short: bool = False) -> str:
    if not np.isfinite(row["permutation_excess"]):
        return "unavailable"
    text = f"{row['permutation_excess']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    if short:
        return text
    return text + f", p = {row['p_value']:.3g}, {int(row['n_documents'])} documents"


def _untrained_pass_runs(run: RunContext) -> bool:
    """Whether the untrained null's pass runs in this run anyway (the probing section asks for it)."""
    if run.options.skip_untrained_null:
        return False
    return run.options.analyses is None or "probing" in run.options.analyses


class Specialization(Analysis):
    """JSD of each expert's token distribution (input clusters, domains, logit-lens output) vs its layer's."""

    name = "specialization"
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
        f"excess is given with the null's 95% range and a permutation p-value ({PERMUTATIONS} "
        "permutations). Dashed curves: the untrained model of the same config (random init, the run's "
        "seed), whose pass the probing section's untrained null runs (not with --skip-untrained-null)."
    )

    def needs(self, run: RunContext) -> list[Need]:
        specs = (RoutedByTokenGroup(), RoutedByDomain(), ExpertLens(), RoutingPerToken())
        needs = [Need(run.main, spec) for spec in specs]
        if _untrained_pass_runs(run):
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
        if _untrained_pass_runs(run):
            name = untrained_name(run.main)
            untrained = {
                clusters: scores(inputs[Need(name, RoutedByTokenGroup())], "routing"),
                domains: scores(inputs[Need(name, RoutedByDomain())], "routing"),
            }
            untrained_permutation = self._permutations(run, inputs.get(Need(name, RoutingPerToken())), notes)
        return SpecializationSummary(
            measures,
            min_tokens=run.options.min_expert_tokens,
            permutation=permutation,
            untrained=untrained,
            untrained_permutation=untrained_permutation,
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
                    n_permutations=PERMUTATIONS,
                    seed=run.options.seed,
                    layers=layers,
                )
            except InputError as error:
                notes.append(f"document-permutation baseline unavailable: {error}")
        return out
