"""Driver experts: the exact causal effect of removing (and zeroing) each expert, selected on one half
of the documents and reported on the other, against routing-frequency-matched control experts; beside
it, the first-order (attribution-patching) estimate and REAP saliency, scored against the exact effect."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.configs import DriversConfig
from tl_moe.analysis.driver_domain import (
    DomainRouting,
    DriverDomainComparison,
    ReportDocuments,
    compare_drivers_with_domain_experts,
)
from tl_moe.analysis.drivers import ExpertSaliency, driver_report, max_drivers
from tl_moe.analysis.effect_estimate import (
    POOLED_MINUS_WITHIN,
    WITHIN_LAYERS,
    FirstOrderEffects,
    estimate_report,
    estimate_vs_reap,
)
from tl_moe.analysis.stats import MIN_DOCUMENTS, RHO_METHOD, RHO_MIN_EXPERT_DOCUMENTS, Interval
from tl_moe.collect.accumulator import Accumulator
from tl_moe.collect.expert_effects import ExpertEffects
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.memory import backward_bytes
from tl_moe.pipeline.protocol import (
    AccumulatorSpec,
    Analysis,
    FigureItem,
    Inputs,
    Need,
    OptionLimit,
    Result,
    TableItem,
)
from tl_moe.pipeline.validation import check_driver_budget, check_n_drivers, check_removable_experts
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_interval, format_number, is_defined

__all__ = ["DriverEffects", "DriverEstimate", "DriverSaliency", "Drivers", "DriversResult"]


@dataclass(frozen=True)
class DriverEffects(AccumulatorSpec):
    """Per-document loss changes of removing / zeroing each expert of every sparse layer."""

    kinds: tuple[str, ...] = ("remove", "zero")
    max_tokens: int = 8000

    def build(self, model: Any, run: RunContext) -> Accumulator:
        cfg = model.moe_cfg
        return ExpertEffects(cfg.sparse_layers, self.kinds, max_tokens=self.max_tokens)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        documents = len(run.dataset)
        return len(self.kinds) * len(cfg.sparse_layers) * cfg.num_experts * documents * 8


@dataclass(frozen=True)
class DriverSaliency(AccumulatorSpec):
    """Routed counts, REAP saliency and document positions of every expert, per document half."""

    def build(self, model: Any, run: RunContext) -> Accumulator:
        cfg = model.moe_cfg
        return ExpertSaliency(cfg.sparse_layers, cfg.num_experts)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        """Its per-document routed counts and saliency sums (float64, every corpus row at most)."""
        return 2 * len(cfg.sparse_layers) * cfg.num_experts * len(run.dataset) * 8


@dataclass(frozen=True)
class DriverEstimate(AccumulatorSpec):
    """First-order zeroing estimate of every expert (one backward per batch), on the same batches."""

    max_tokens: int = 8000

    def build(self, model: Any, run: RunContext) -> Accumulator:
        cfg = model.moe_cfg
        return FirstOrderEffects(cfg.sparse_layers, cfg.num_experts, self.max_tokens)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        """Its per-document sums, plus what its backward pass keeps for one batch."""
        dtype_bytes = torch.finfo(getattr(torch, run.options.dtype)).bits // 8
        sums = 2 * len(cfg.sparse_layers) * cfg.num_experts * len(run.dataset) * 8
        return sums + backward_bytes(cfg, run.options, dtype_bytes)


EDITED_FORWARDS = {
    True: "resumed from the edited layer",
    False: "whole model (a resumed forward did not reproduce the clean one)",
}
"""How the exact effects' edited forwards ran, by ``DriversResult.resumed``."""


@dataclass(frozen=True)
class DriversResult(Result):
    """Attributes:
    experts: one row per (layer, expert): routed share, REAP saliency, effects per edit and half.
    comparison: drivers vs matched controls on the report half, with 95% document-bootstrap intervals.
    saliency_spearman: Spearman ρ between REAP saliency (selection half) and the removal effect
        (report half), over all experts.
    estimates: one row per (layer, expert) over all documents: exact effects, first-order estimate,
        REAP saliency (:func:`~tl_moe.analysis.effect_estimate.estimate_report`).
    agreement: Spearman ρ (no interval: see ``paired``) and top-n overlap of the estimate and of REAP
        saliency with each exact effect, per layer and over all layers.
    domain_overlap: driver experts vs the domains analysis' domain experts (when it ran too): overlap
        against hypergeometric chance and Spearman ρ of the domain score (selection half) vs the removal
        effect (report half), per layer and over all layers, with a 95% bootstrap over the documents of
        both halves (both recomputed per resample).
    paired: Spearman ρ of the first-order estimate and of REAP saliency with the exact zeroing effect
        on the same experts, and their difference, with a 95% document-bootstrap interval, pooled over
        layers, per layer, as the mean of the per-layer ρ and as the pooled minus that mean (column ``layer``;
        :func:`~tl_moe.analysis.effect_estimate.paired_rho_difference`).
    resumed: whether the edited forwards resumed from the edited layer (False: the model's resumed
        forward did not reproduce its clean one, and every edited forward ran on the whole model).
    saliency_interval: the document-bootstrap interval of ``saliency_spearman``.
    saliency_gate: the experts in ``saliency_spearman`` and the names of those the document gate left
        out (routed on fewer than :data:`~tl_moe.analysis.stats.RHO_MIN_EXPERT_DOCUMENTS` documents of a
        half).
    """

    experts: pd.DataFrame
    comparison: pd.DataFrame
    saliency_spearman: float
    estimates: pd.DataFrame | None = None
    agreement: pd.DataFrame | None = None
    domain_overlap: DriverDomainComparison | None = None
    paired: pd.DataFrame | None = None
    resumed: bool = True
    saliency_interval: Interval | None = None
    saliency_gate: tuple[int, list[str]] | None = None

    def _agreement_row(self, score: str, kind: str = "zero", layer: str = "all") -> Any:
        frame = self.agreement
        pick = (frame["score"] == score) & (frame["exact effect"] == kind) & (frame["layer"] == layer)
        return frame[pick].iloc[0]

    def to_frame(self) -> pd.DataFrame:
        return self.experts

    def metrics(self) -> dict[str, Any]:
        metrics = {}
        for row in self.comparison.itertuples(index=False):
            key = f"{row.edit} | {row.group}"
            metrics[key] = round(row[2], 5)
            metrics[f"{key} | 95% CI"] = [_rounded(row[3], 5), _rounded(row[4], 5)]
        metrics["report documents"] = int(self.comparison["report documents"].iloc[0])
        reason = self.comparison["interval unavailable"].iloc[0]
        if reason:
            metrics["interval unavailable"] = reason
        metrics["controls from another layer"] = int(self.comparison["controls from another layer"].iloc[0])
        metrics["edited forwards"] = EDITED_FORWARDS[self.resumed]
        metrics["Spearman(REAP saliency, removal effect)"] = round(self.saliency_spearman, 4)
        if self.saliency_interval is not None:
            key = "Spearman(REAP saliency, removal effect) | 95% CI"
            metrics[key] = [_rounded(self.saliency_interval.low), _rounded(self.saliency_interval.high)]
            metrics["Spearman(REAP saliency, removal effect) | documents"] = int(self.saliency_interval.n)
            metrics["Spearman(REAP saliency, removal effect) | interval method"] = (
                self.saliency_interval.method
            )
            metrics["Spearman(REAP saliency, removal effect) | bootstrap bias"] = _rounded(
                self.saliency_interval.bias
            )
            metrics["Spearman(REAP saliency, removal effect) | position in interval"] = _rounded(
                _position(self.saliency_spearman, self.saliency_interval.low, self.saliency_interval.high)
            )
            if self.saliency_gate is not None:
                experts, left_out = self.saliency_gate
                metrics["Spearman(REAP saliency, removal effect) | experts"] = experts
                metrics[_left_out_key("Spearman(REAP saliency, removal effect)")] = left_out
            if not self.saliency_interval.available:
                metrics["Spearman(REAP saliency, removal effect) | interval unavailable"] = (
                    self.saliency_interval.reason
                )
        if self.agreement is not None:
            for score in ("first-order estimate", "REAP saliency"):
                row = self._agreement_row(score)
                key = f"Spearman({score}, exact zeroing effect) | all layers"
                metrics[key] = _rounded(row["spearman"])
                metrics[f"{key} | experts"] = int(row["experts"])
                metrics[f"{key} | computed on"] = (
                    f"the {int(row['experts'])} experts with a defined {score} on the documents of the edited "
                    f"forwards; interval: {row['interval']}"
                )
                top = f"top-{int(row['top n'])} overlap({score}, exact zeroing effect)"
                metrics[top] = int(row["top-n overlap"])
                metrics[f"{top} | chance"] = round(float(row["chance overlap"]), 2)
        if self.paired is not None:
            for row in self.paired.to_dict("records"):
                layer = row.get("layer", "all")
                group = (
                    "" if layer == "all" else (f" | layer {layer}" if layer[0].isdigit() else f" | {layer}")
                )
                key = f"paired Spearman with exact zeroing effect | {row['score']}{group}"
                metrics[key] = _rounded(row["spearman with exact zeroing effect"])
                metrics[f"{key} | 95% CI"] = [_rounded(row["ci low"]), _rounded(row["ci high"])]
                metrics[f"{key} | bootstrap bias"] = _rounded(row["bootstrap bias"])
                metrics[f"{key} | position in interval"] = _rounded(
                    _position(row["spearman with exact zeroing effect"], row["ci low"], row["ci high"])
                )
                if group:
                    metrics[f"{key} | experts"] = int(row["experts"])
            pooled = self._paired_rows("all")
            metrics["paired Spearman | interval method"] = str(pooled["interval method"].iloc[0])
            metrics["paired Spearman | experts"] = int(pooled["experts"].iloc[0])
            metrics["paired Spearman | documents"] = int(pooled["documents"].iloc[0])
            metrics[_left_out_key("paired Spearman")] = list(self.paired.attrs.get("left out", []))
            metrics["paired Spearman | computed on"] = (
                f"the same {int(pooled['experts'].iloc[0])} experts (routed on the documents of the edited "
                f"forwards) and {int(pooled['documents'].iloc[0])} documents for the estimate, REAP saliency "
                "and the exact effect; interval: bootstrap over those documents"
            )
        if self.domain_overlap is not None:
            total = self.domain_overlap.table.set_index("layer").loc["all"]
            metrics["drivers that are domain experts"] = int(total["both"])
            metrics["drivers that are domain experts | expected by chance"] = round(
                float(total["expected both"]), 3
            )
            metrics["drivers that are domain experts | hypergeometric p"] = _rounded(total["overlap p"])
            if total["overlap not testable"]:
                metrics["drivers that are domain experts | not testable"] = total["overlap not testable"]
            metrics["Spearman(domain score, removal effect) | all layers"] = _rounded(total["spearman"])
            metrics["Spearman(domain score, removal effect) | all layers | 95% CI"] = [
                _rounded(total["spearman ci low"]),
                _rounded(total["spearman ci high"]),
            ]
            metrics["Spearman(domain score, removal effect) | all layers | documents"] = int(
                total["spearman documents"]
            )
            metrics["Spearman(domain score, removal effect) | all layers | experts"] = int(
                total["spearman experts"]
            )
            metrics["Spearman(domain score, removal effect) | domain score"] = str(
                total["spearman domain score"]
            )
            out = self.domain_overlap.experts[~self.domain_overlap.experts["in ρ"]]
            metrics[_left_out_key("Spearman(domain score, removal effect)")] = [
                f"L{int(layer)}E{int(expert)}"
                for layer, expert in zip(out["layer"], out["expert"], strict=True)
            ]
            if total["spearman interval unavailable"]:
                metrics["Spearman(domain score, removal effect) | all layers | no interval"] = total[
                    "spearman interval unavailable"
                ]
        return metrics

    def records(self) -> dict[str, Any]:
        if self.agreement is None:
            return {}

        def plain(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return frame.astype(object).where(frame.notna(), None).to_dict("records")

        return {
            "first_order_estimate": {
                "agreement": plain(self.agreement),
                "experts": plain(self.estimates),
                "exact positions": int(self.agreement.attrs.get("exact positions", 0)),
                "estimate positions": int(self.agreement.attrs.get("estimate positions", 0)),
                "paired with REAP": [] if self.paired is None else plain(self.paired),
            }
        }

    def findings(self) -> list[str]:
        rows = self.comparison.set_index(["edit", "group"])
        edit = self.comparison["edit"].iloc[0]
        reason = self.comparison["interval unavailable"].iloc[0]

        def show(group: str) -> str:
            row = rows.loc[(edit, group)]
            low, high = (math.nan, math.nan) if reason else (row["ci low"], row["ci high"])
            return format_interval(row.iloc[0], low, high, "+.4f", reason or "no report document")

        n = int(self.comparison["experts"].iloc[0])
        moved = int(self.comparison["controls from another layer"].iloc[0])
        matched = (
            "routing-frequency-matched controls of the same layer"
            if not moved
            else f"routing-frequency-matched controls ({moved} of {n} from another layer: the driver's layer "
            "had no non-driver expert left)"
        )
        interval = f"interval unavailable: {reason}" if reason else "95% document bootstrap"
        findings = [
            f"**Driver experts** (chosen on half the documents, measured on the other "
            f"{int(self.comparison['report documents'].iloc[0])}): removing one of the {n} strongest changes "
            f"next-token loss by {show('driver experts')} nats/token vs {show('matched controls')} for "
            f"{matched} (difference {show('driver − control')}, {interval}); REAP saliency (selection half) "
            f"ranks experts with Spearman ρ = {self._saliency_rho()} against the exact removal effect "
            "(report half)."
        ]
        if not self.resumed:
            findings.append(
                "The exact effects' edited forwards ran on the whole model: a forward resumed from the edited "
                "layer did not reproduce this model's clean forward (the same numbers, more compute)."
            )
        if self.agreement is not None:
            findings.append(self._estimate_finding())
        if self.domain_overlap is not None:
            findings.append(self._domain_finding())
        return findings

    def _saliency_rho(self) -> str:
        """REAP saliency's ρ with the removal effect, with its document-bootstrap interval or why none."""
        interval = self.saliency_interval
        if not is_defined(self.saliency_spearman):
            return "unavailable (constant saliency or effect)"
        if interval is None:
            return f"{self.saliency_spearman:+.2f} (no interval: no per-document saliency was recorded)"
        if not interval.available:
            return f"{self.saliency_spearman:+.2f} (no interval: {interval.reason})"
        rho, low, high, bias = self.saliency_spearman, interval.low, interval.high, interval.bias
        return (
            f"{rho:+.2f} [{low:+.2f}, {high:+.2f}] (95% {interval.method} bootstrap over {interval.n} "
            f"documents, both scores recomputed on each resample; {_gate_text(self.saliency_gate)}; "
            f"{_diagnostic(rho, low, high, bias)})"
        )

    def _estimate_finding(self) -> str:
        first, reap = self._agreement_row("first-order estimate"), self._agreement_row("REAP saliency")
        text = (
            f"**First-order estimate** (one backward per batch) of the zeroing effect: its top "
            f"{int(first['top n'])} share {int(first['top-n overlap'])} experts with the exact top "
            f"{int(first['top n'])} (chance {format_number(first['chance overlap'], '.2f', 'no expert')}; REAP saliency: "
            f"{int(reap['top-n overlap'])})."
        )
        if self.paired is None:
            return text
        rows = self._paired_rows("all").set_index("score")
        reason = rows["interval unavailable"].iloc[0]

        def rho(score: str, layer: str = "all") -> str:
            row = self._paired_rows(layer).set_index("score").loc[score]
            value = row["spearman with exact zeroing effect"]
            why = row["interval unavailable"]
            low, high = (math.nan, math.nan) if why else (row["ci low"], row["ci high"])
            return format_interval(value, low, high, "+.2f", why or "constant scores")

        diff = rows.loc["estimate − REAP"]
        signed = _Signed(diff)
        if reason:
            verdict = f"no interval ({reason})"
        elif signed.below_zero():
            verdict = "REAP saliency, a data-only score, ranks experts better than the estimate"
        elif signed.above_zero():
            verdict = "the estimate ranks experts better than REAP saliency"
        else:
            verdict = "the data cannot tell which of the two ranks experts better"
        reap = rows.loc["REAP saliency"]
        left_out = list(self.paired.attrs.get("left out", []))
        text += (
            f" Spearman ρ with the exact zeroing effect, all three scores on the same "
            f"{int(rows['experts'].iloc[0])} experts (those routed on at least {RHO_MIN_EXPERT_DOCUMENTS} of the "
            f"{int(rows['documents'].iloc[0])} documents of the edited forwards; {_left_out_text(left_out)}) and "
            f"those documents, pooled over layers: estimate {rho('first-order estimate')}, REAP saliency "
            f"{rho('REAP saliency')} ("
            + _diagnostic(
                reap["spearman with exact zeroing effect"],
                reap["ci low"],
                reap["ci high"],
                reap["bootstrap bias"],
            )
            + "), "
            f"difference {rho('estimate − REAP')} (paired 95% {rows['interval method'].iloc[0]} bootstrap over the "
            f"documents, all three scores recomputed on each resample): {verdict}."
        )
        layers = [
            layer
            for layer in self.paired["layer"].unique()
            if layer not in ("all", WITHIN, POOLED_MINUS_WITHIN)
        ]
        if not layers:
            return text
        per_layer = ", ".join(f"layer {layer} {rho('first-order estimate', layer)}" for layer in layers)
        reap_layers = ", ".join(f"layer {layer} {rho('REAP saliency', layer)}" for layer in layers)
        experts = "/".join(str(int(n)) for n in self._paired_rows_per_layer(layers))
        return (
            f"{text} Within each layer ({experts} experts; same documents and bootstrap): estimate {per_layer}; "
            f"mean over layers {rho('first-order estimate', WITHIN)}; REAP saliency {reap_layers}; mean "
            f"{rho('REAP saliency', WITHIN)}; estimate − REAP, mean over layers {rho('estimate − REAP', WITHIN)}: "
            f"{self._layer_verdict(layers)}."
        )

    def _paired_rows(self, layer: str) -> pd.DataFrame:
        """The paired table's rows of one group (``all``, a layer, or the mean over layers)."""
        frame = self.paired
        if "layer" not in frame:
            return frame if layer == "all" else frame.iloc[:0]
        return frame[frame["layer"] == layer]

    def _paired_rows_per_layer(self, layers: list[str]) -> list[int]:
        return [int(self._paired_rows(layer)["experts"].iloc[0]) for layer in layers]

    def _layer_verdict(self, layers: list[str]) -> str:
        """What the per-layer ρ of the estimate and the pooled − within-layer difference say about its
        pooled ρ (worded from intervals only: a ρ is above 0 when its interval is)."""

        def signed(layer: str) -> _Signed:
            return _Signed(self._paired_rows(layer).set_index("score").loc["first-order estimate"])

        pooled, within = signed("all"), signed(WITHIN)
        if pooled.why or within.why:
            return "without intervals, the per-layer values are descriptive only"
        above = sum(signed(layer).above_zero() for layer in layers)
        count = (
            f"{above} of {len(layers)} layers have an interval above 0 (each unadjusted for the "
            f"{len(layers)} layers); the mean within-layer ρ "
            + ("is above 0" if within.above_zero() else "is below 0" if within.below_zero() else "covers 0")
        )
        if self._paired_rows(POOLED_MINUS_WITHIN).empty:
            return count
        gap = signed(POOLED_MINUS_WITHIN)
        shown = format_interval(gap.estimate, gap.low, gap.high, "+.2f", gap.why or "constant scores")
        text = f"{count}; pooled minus mean within-layer ρ {shown} (same resamples)"
        if gap.above_zero():
            return (
                f"{text}: the pooled ρ is higher than the within-layer mean, so part of it comes from "
                "differences between layers"
            )
        if gap.below_zero():
            return f"{text}: the pooled ρ is lower than the within-layer mean"
        return (
            f"{text}: the data cannot tell the pooled ρ from the within-layer mean, nor say how much of it "
            "comes from differences between layers"
        )

    def _domain_finding(self) -> str:
        total = self.domain_overlap.table.set_index("layer").loc["all"]
        why = total.get("spearman unavailable") or "undefined"
        low, high = total["spearman ci low"], total["spearman ci high"]
        no_interval = total.get("spearman interval unavailable") or "the bootstrap gave none"
        shown = format_interval(total["spearman"], low, high, "+.2f", why, no_interval)
        left_out = int(total["spearman experts left out (routed on too few documents)"])
        rho = f"domain score (selection half) vs removal effect (report half): Spearman ρ = {shown}" + (
            f" (95% {RHO_METHOD} bootstrap over {int(total['spearman documents'])} documents of both halves, "
            "each expert's domain score and removal effect recomputed per resample; over the "
            f"{int(total['spearman experts'])} scored experts routed on at least {RHO_MIN_EXPERT_DOCUMENTS} "
            f"documents of each half, {left_out} left out)"
            if "[" in shown
            else " (descriptive: the domains analysis' score on every document, no per-document routing)"
            if total["spearman domain score"] == "domain score"
            else ""
        )
        if total["overlap not testable"]:
            return (
                f"**Drivers vs domain experts**: the overlap is not testable ({total['overlap not testable']} "
                f"among {int(total['experts'])} scored experts; an empty set overlaps exactly as chance says); "
                f"{rho}."
            )
        return (
            f"**Drivers vs domain experts**: {int(total['both'])} of the {int(total['drivers'])} driver experts "
            f"are domain experts (expected by chance {format_number(total['expected both'], '.1f', 'no scored expert')} of "
            f"{int(total['experts'])} scored experts with {int(total['domain experts'])} domain experts; "
            f"hypergeometric p = {format_number(total['overlap p'], '.3g', 'not testable')}); {rho}."
        )

    def figures(self) -> list[FigureItem]:
        fig, ax = new_figure(6.4, 4.2)
        effect = f"{self.comparison['edit'].iloc[0]}: effect (report)"
        for is_driver, group in self.experts.groupby("driver"):
            ax.scatter(
                group["saliency (REAP)"],
                group[effect],
                s=18,
                label="driver experts" if is_driver else "other experts",
                color="tab:red" if is_driver else "tab:blue",
                alpha=0.8,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("REAP saliency: mean weight × ‖expert output‖ (selection half)")
        ax.set_ylabel("loss change when removed, nats/token (report half)")
        ax.set_title("Exact causal effect vs data-only saliency")
        ax.legend(fontsize=8)
        items = [
            FigureItem(
                "drivers_effect_vs_saliency", fig, "Each dot is an expert; drivers chosen on the other half."
            )
        ]
        if self.estimates is not None:
            items.append(
                FigureItem(
                    "drivers_estimate_vs_exact",
                    self._estimate_figure(),
                    "Each dot is an expert (all documents of the edited forwards); colour: layer. Left: the "
                    "first-order estimate against the exact zeroing effect (dashed: y = x). Right: REAP "
                    "saliency against the same exact effect.",
                )
            )
        if self.domain_overlap is not None:
            items.append(
                FigureItem(
                    "drivers_vs_domain_experts",
                    self.domain_overlap.figure(),
                    "Each dot is a scored expert: its domain score (domains analysis) against the loss change "
                    "when it is removed (report half); drivers and domain experts marked, one panel per layer.",
                )
            )
        return items

    def _estimate_figure(self) -> Any:
        fig, left = new_figure(10.0, 4.2)
        left.remove()
        left, right = fig.subplots(1, 2)
        exact = self.estimates["zero: exact"]
        layers = sorted(self.estimates["layer"].unique())
        for layer in layers:
            rows = self.estimates["layer"] == layer
            left.scatter(
                exact[rows], self.estimates.loc[rows, "first-order estimate"], s=16, label=f"L{layer}"
            )
            right.scatter(exact[rows], self.estimates.loc[rows, "saliency (REAP)"], s=16, label=f"L{layer}")
        low = float(min(exact.min(), self.estimates["first-order estimate"].min()))
        high = float(max(exact.max(), self.estimates["first-order estimate"].max()))
        left.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        for ax, score, name in (
            (left, "first-order estimate", "first-order estimate, nats/token"),
            (right, "REAP saliency", "REAP saliency: mean weight × ‖expert output‖"),
        ):
            row = self._agreement_row(score)
            ax.set_xlabel("exact loss change when zeroed, nats/token")
            ax.set_ylabel(name)
            ax.set_title(
                f"Spearman ρ = {format_number(row['spearman'], '.2f', 'constant scores')} over {int(row['experts'])} experts",
                fontsize=9,
            )
            ax.ticklabel_format(style="sci", scilimits=(-2, 3))
            ax.axvline(0, color="grey", lw=0.5)
        if len(layers) <= 12:
            left.legend(fontsize=7)
        return fig

    def tables(self) -> list[TableItem]:
        top = self.experts.sort_values(self.experts.columns[5], ascending=False)
        return (
            [
                TableItem(
                    "drivers_comparison",
                    self.comparison,
                    "Drivers vs frequency-matched controls (report half).",
                ),
                TableItem(
                    "drivers_experts",
                    top,
                    "Every expert's effects (sorted by the removal effect on the selection half).",
                ),
            ]
            + (
                []
                if self.agreement is None
                else [
                    TableItem(
                        "drivers_estimate_agreement",
                        self.agreement,
                        "How well the first-order estimate and REAP saliency rank experts by their exact effect: "
                        "Spearman ρ (no interval here: the paired table drivers_estimate_vs_reap gives it over documents) "
                        "and overlap of the top n, against the overlap expected by chance.",
                    )
                ]
            )
            + (
                []
                if self.paired is None
                else [
                    TableItem(
                        "drivers_estimate_vs_reap",
                        self.paired,
                        "Spearman ρ of the first-order estimate and of REAP saliency with the exact zeroing effect "
                        "on the same experts and documents, and their paired difference, pooled over layers "
                        "(layer 'all'), within each layer, the mean of the per-layer ρ and the pooled minus that "
                        "mean (95% document bootstrap, "
                        "the interval method in its column: each resample recomputes the exact effects, the "
                        "estimates, REAP saliency and every ρ).",
                    )
                ]
            )
            + (
                []
                if self.domain_overlap is None
                else [
                    TableItem(
                        "drivers_vs_domain_experts",
                        self.domain_overlap.table,
                        "Driver experts vs domain experts per layer: overlap against the overlap of independent "
                        "sets (hypergeometric p of an overlap at least as large), and Spearman ρ of the domain "
                        "score (selection half) vs the removal effect (report half) over the experts routed on "
                        "enough documents of each half, with a 95% bootstrap over the documents of both halves "
                        "(both recomputed per resample).",
                    )
                ]
            )
        )


class Drivers(Analysis):
    """Exact per-expert causal effects (remove / zero) through the interventional pass."""

    name = "drivers"
    config_class = DriversConfig
    title = "Driver experts"
    summary = "exact loss change when each expert is removed or zeroed; drivers vs matched controls, held out"
    intro = (
        "For every expert of every sparse layer, the change in next-token loss when it is removed from routing "
        "(tokens re-route to the next best) and when its output is zeroed (no re-routing), computed exactly by "
        "interventional forwards on the first --driver-tokens tokens (resumed from the edited layer, or of the "
        "whole model when the first batch shows a resumed forward does not reproduce the clean one: the "
        "'edited forwards' metric says which). Documents are split in two halves by a "
        "hash; driver experts are the largest removal effects on the selection half and are reported on the "
        "other half against, for each driver, the expert of the same layer with the closest routing frequency "
        "(of another layer when the driver's layer has no non-driver expert left; the tables say which). "
        f"Intervals: 95% percentile bootstrap over report-half documents, unavailable below {MIN_DOCUMENTS} documents. Beside the exact effects: the first-order "
        "(attribution-patching) estimate of every zeroing effect from one backward per batch, −w·∂L/∂w summed over "
        "the expert's slots, and REAP saliency, each scored by its rank correlation with the exact zeroing effect, "
        "and the two compared on the same experts by a paired document bootstrap of the difference of ρ, pooled over "
        "layers and within each layer (a pooled ρ also counts differences between layers)."
    )
    default = False

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        cfg = run.config(run.main)
        total = len(cfg.sparse_layers) * cfg.num_experts
        most = max_drivers(len(cfg.sparse_layers), cfg.num_experts)
        return {
            "n_drivers": OptionLimit(most, f"each driver needs a distinct control: half of {total} experts")
        }

    def check(self, run: RunContext) -> None:
        """Before the pass: at most half the experts as drivers, and edited forwards that reach documents on
        both halves (:func:`~tl_moe.pipeline.validation.check_driver_budget`; a warning below 30 report
        documents)."""
        self.check_config(run)
        cfg, options = run.config(run.main), run.options
        # the same rule as option_limits; after the fitted defaults, so not in check_config
        check_n_drivers(run.options.config("drivers").count, len(cfg.sparse_layers), cfg.num_experts)
        check_driver_budget(
            run.dataset,
            run.model(run.main).tokenizer,
            seq_len=options.seq_len,
            batch_size=options.batch_size,
            max_tokens=options.max_tokens,
            driver_tokens=run.options.config("drivers").tokens,
        )

    def check_config(self, run: RunContext) -> None:
        """Tokens must leave some expert unused (k < n experts), or no expert can be removed from routing."""
        cfg = run.config(run.main)
        check_removable_experts(run.main, cfg.num_experts, cfg.experts_per_token)

    def needs(self, run: RunContext) -> list[Need]:
        return [
            Need(run.main, DriverEffects(max_tokens=run.options.config("drivers").tokens)),
            Need(run.main, DriverSaliency()),
            Need(run.main, DriverEstimate(max_tokens=run.options.config("drivers").tokens)),
        ]

    def finalize(self, run: RunContext, inputs: Inputs) -> DriversResult:
        """Drivers on the selection half, reported on the other; the first-order estimate beside the
        exact effects; and, when the domains analysis ran too, drivers against domain experts."""
        effects = inputs[Need(run.main, DriverEffects(max_tokens=run.options.config("drivers").tokens))]
        saliency = inputs[Need(run.main, DriverSaliency())]
        experts, comparison = driver_report(
            effects, saliency, n_drivers=run.options.config("drivers").count, seed=run.options.seed
        )
        estimate = inputs[Need(run.main, DriverEstimate(max_tokens=run.options.config("drivers").tokens))]
        estimates, agreement = estimate_report(
            effects, saliency, estimate, n_top=run.options.config("drivers").count, seed=run.options.seed
        )
        domains = inputs.optional_result("domains")
        overlap = None
        if domains is not None:
            overlap = compare_drivers_with_domain_experts(
                experts,
                domains.experts.to_frame(),
                effect="remove: effect (report)",
                documents=ReportDocuments.from_effects(effects, "remove"),
                routing=_domain_routing(run, saliency, effects),
                seed=run.options.seed,
            )
        paired = estimate_vs_reap(
            effects, saliency, estimate, n_resamples=run.options.bootstrap_resamples, seed=run.options.seed
        )
        return DriversResult(
            experts,
            comparison,
            comparison.attrs["saliency_spearman"],
            estimates=estimates,
            agreement=agreement,
            domain_overlap=overlap,
            paired=paired,
            resumed=effects.resumed,
            saliency_interval=_saliency_interval(comparison),
            saliency_gate=_saliency_gate(comparison),
        )


def _domain_routing(run: RunContext, saliency: Any, effects: Any) -> DomainRouting | None:
    """Routed slots per selection-half document with each document's domain (None without per-document
    saliency sums, an older checkpoint, or with fewer than two domains on the selection half)."""
    from tl_moe.collect.batching import document_domain_codes

    if saliency.doc_routed is None:
        return None
    routing = DomainRouting.from_saliency(saliency, effects, np.asarray(document_domain_codes(run.dataset)))
    return routing if routing.n_domains >= 2 else None


def _saliency_gate(comparison: pd.DataFrame) -> tuple[int, list[str]] | None:
    """The experts in the REAP saliency ρ and those the document gate left out, kept by :func:`driver_report`."""
    kept = comparison.attrs.get("saliency_spearman_interval")
    if kept is None or "experts" not in kept:
        return None
    return int(kept["experts"]), list(kept["left out"])


def _saliency_interval(comparison: pd.DataFrame) -> Interval | None:
    """The REAP saliency ρ's document-bootstrap interval kept by :func:`driver_report` (None if none)."""
    kept = comparison.attrs.get("saliency_spearman_interval")
    if kept is None:
        return None
    nan = float("nan")
    low, high = (nan if kept[k] is None else kept[k] for k in ("low", "high"))
    bias = kept.get("bootstrap bias")
    return Interval(
        comparison.attrs["saliency_spearman"],
        low,
        high,
        kept["documents"],
        method=kept.get("method", "percentile"),
        available=not kept["unavailable"],
        reason=kept["unavailable"] or None,
        bias=nan if bias is None else bias,
    )


class _Signed:
    """One paired-table ρ with its interval, read for its sign: above (below) 0 when its interval is."""

    def __init__(self, row: Any) -> None:
        self.estimate = float(row["spearman with exact zeroing effect"])
        self.low, self.high = float(row["ci low"]), float(row["ci high"])
        self.why = row["interval unavailable"]

    def above_zero(self) -> bool:
        return bool(not self.why and self.low > 0)

    def below_zero(self) -> bool:
        return bool(not self.why and self.high < 0)


WITHIN = WITHIN_LAYERS
"""The paired table's group of the mean of the per-layer ρ."""


def _position(estimate: float, low: float, high: float) -> float:
    """Where ``estimate`` sits in ``[low, high]``: 0 at the lower end, 1 at the upper (NaN without one)."""
    if not all(np.isfinite([estimate, low, high])) or high <= low:
        return math.nan
    return (estimate - low) / (high - low)


def _diagnostic(estimate: float, low: float, high: float, bias: float) -> str:
    """The interval's bootstrap bias and the estimate's position in it, a diagnostic (the interval is
    the pre-chosen method's whatever they are)."""
    position = _position(estimate, low, high)
    if not np.isfinite(position):
        return "no interval"
    return f"bootstrap bias {bias:+.2f}, the estimate at {position:.2f} of its interval from the lower end"


def _left_out_key(key: str) -> str:
    return f"{key} | experts left out (routed on fewer than {RHO_MIN_EXPERT_DOCUMENTS} documents)"


def _left_out_text(left_out: list[str]) -> str:
    """The experts the document gate left out, in words."""
    if not left_out:
        return "none left out"
    return f"{len(left_out)} left out, routed on fewer: {', '.join(left_out)}"


def _gate_text(gate: tuple[int, list[str]] | None) -> str:
    """The split ρ's experts and the document gate, in words."""
    if gate is None:
        return "every expert with a saliency"
    experts, left_out = gate
    return (
        f"over the {experts} experts routed on at least {RHO_MIN_EXPERT_DOCUMENTS} documents of each half, "
        + _left_out_text(left_out)
    )


def _rounded(value: Any, digits: int = 4) -> float | None:
    value = float(value)
    return round(value, digits) if value == value else None
