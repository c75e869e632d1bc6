"""The specialization section's :class:`~tl_moe.pipeline.protocol.Result`: a
:class:`~tl_moe.analysis.specialization_study.SpecializationOutcome` as the report shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.specialization_permutation import BOOTSTRAP_PERMUTATIONS, DocumentPermutationBaseline
from tl_moe.analysis.specialization_study import DIFFERENCE, SpecializationOutcome
from tl_moe.analysis.stats import DRAW_MEAN_METHOD, basic_interval
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_interval, format_mean_sd, format_number

__all__ = ["SpecializationSummary"]


@dataclass(frozen=True)
class SpecializationSummary(SpecializationOutcome, Result):
    """A :class:`~tl_moe.analysis.specialization_study.SpecializationOutcome` (the same fields) with the
    report's view."""

    @classmethod
    def of(cls, outcome: SpecializationOutcome) -> SpecializationSummary:
        """The report's view of what :class:`~tl_moe.analysis.specialization_study.SpecializationStudy`
        found."""
        return cls(**{spec.name: getattr(outcome, spec.name) for spec in fields(outcome)})

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
            difference = self.interval_rows(name, DIFFERENCE)
            if difference is not None:
                metrics[
                    f"{name} | {DIFFERENCE} excess over the document-permutation baseline, last layer"
                ] = _interval_text(difference.iloc[-1])
                if _over_inits(last := difference.iloc[-1]):
                    metrics[
                        f"{name} | untrained initializations | n, mean and sd of their excess, last layer"
                    ] = (
                        f"{int(last['n_untrained_inits'])}, {last['untrained_inits_mean']:+.4f}, "
                        f"sd {last['untrained_inits_sd']:.4f}"
                    )
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
            rows = self.interval_rows(name, "trained")
            if name in self.permutation and rows is not None:
                head = f"{name} {_both_text(rows.iloc[-1])}"
                difference = self.interval_rows(name, DIFFERENCE)
                if difference is not None:  # the strongest control: the untrained model of the same config
                    head += f" (trained − untrained model {_difference_text(difference.iloc[-1])})"
                heads.append(head)
            elif name in self.permutation:
                heads.append(f"{name} {self._excess_text(name, 'trained', self.permutation[name])}")
            else:
                heads.append(
                    f"{name}: no control ({self.no_control_reason(name)}); above the sampling baseline "
                    f"only, token-weighted {format_number(last['token_weighted_mean_excess'], '+.4f', why)} (no interval)"
                )
        return (
            f"**Specialization** in the last sparse layer ({layer}), token-weighted over experts of >= "
            f"{self.min_tokens} tokens, bits above the document-permutation baseline with its 95% "
            "document-bootstrap intervals, basic and percentile of the same resamples: "
            + "; ".join(heads)
            + ". Spread over experts (unweighted mean ± sd of each expert's excess over the multinomial "
            "sampling baseline, all experts with tokens; a spread, not an interval): "
            + "; ".join(spreads)
            + "."
        )

    def _permutation_finding(self, layer: int) -> str:
        parts = [self._finding_part(name, baseline) for name, baseline in self.permutation.items()]
        return (
            f"**Specialization above the document-permutation baseline** (layer {layer}, token-weighted "
            f"over experts of >= {self.min_tokens} tokens, bits, 95% document-bootstrap intervals): "
            + "; ".join(parts)
            + "."
            + self._diagnostics_text()
        )

    def _diagnostics_text(self) -> str:
        """What the intervals above leave out: where each estimate sits in its interval, the bootstrap
        bias, the other of the basic / percentile pair for the most leaning one, and the Monte Carlo error of
        the null mean (last layer, every model and measure; not the draw-mean t intervals)."""
        found = [
            (frame.iloc[-1], f"{name}, {model}")
            for name in self.permutation
            for model in ("trained", "untrained", DIFFERENCE)
            if (frame := self.interval_rows(name, model)) is not None and "bootstrap_bias" in frame
        ]
        found = [
            (row, label)
            for row, label in found
            if bool(row["interval_available"]) and row.get("method") != DRAW_MEAN_METHOD
        ]
        if not found:
            return ""
        rows, labels = [row for row, _ in found], [label for _, label in found]
        position = [float(row["interval_position"]) for row in rows]
        bias = [float(row["bootstrap_bias"]) for row in rows]
        null_se = [float(row["null_mean_se"]) for row in rows if np.isfinite(row["null_mean_se"])]
        worst, label = max(
            zip(rows, labels, strict=True), key=lambda pair: abs(float(pair[0]["interval_position"]) - 0.5)
        )
        estimate, low, high = (float(worst[c]) for c in ("estimate", "ci_low", "ci_high"))
        method = str(worst.get("method", "percentile"))
        # Reflecting bounds about the estimate turns a percentile interval into the basic one and back.
        other = "percentile" if method == "basic" else "basic"
        reflected = format_interval(estimate, *basic_interval(estimate, low, high), "+.4f", "undefined")
        text = (
            f" Diagnostics of these {len(rows)} intervals (basic and percentile, the same resamples): each estimate sits at "
            f"{min(position):.2f}–{max(position):.2f} of its {method} interval's width (of its {other} interval's: "
            f"one minus that; 0.5: centred), the bootstrap "
            f"bias (mean resampled − estimate) is {min(bias):+.4f} to {max(bias):+.4f} bits; the most leaning, "
            f"{label} at {float(worst['interval_position']):.2f}, has the {other} interval (the same resamples' "
            f"bounds reflected about the estimate) {reflected}"
        )
        if null_se:
            text += (
                f"; the null mean from {BOOTSTRAP_PERMUTATIONS} permutations adds a Monte Carlo standard error of "
                f"up to {max(null_se):.4f} bits, which the intervals do not include"
            )
        return text + "."

    def _excess_text(self, name: str, model: str, baseline: DocumentPermutationBaseline) -> str:
        """``estimate [low, high], p = ..., N documents`` of one model's last-layer excess."""
        last = baseline.layer_summary(self.min_tokens).iloc[-1]
        rows = self.interval_rows(name, model)
        interval = _both_text(rows.iloc[-1]) if rows is not None else "no interval"
        return f"{interval}, {_p_text(last, baseline)}, {baseline.n_documents} documents"

    def _finding_part(self, name: str, baseline: DocumentPermutationBaseline) -> str:
        """One routing measure's finding: trained, untrained, their paired difference, and what the
        p-values can and cannot say."""
        text = f"{name}: trained {self._excess_text(name, 'trained', baseline)}"
        untrained = self.untrained_permutation.get(name)
        if untrained is None:
            return text
        difference = self.interval_rows(name, DIFFERENCE)
        several = difference is not None and _over_inits(difference.iloc[-1])
        label = "untrained model (first initialization)" if several else "untrained model"
        text += f"; {label} {self._excess_text(name, 'untrained', untrained)}"
        if difference is not None:
            text += f"; {DIFFERENCE} {_difference_text(difference.iloc[-1], detail=True)}"
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
                summary = self.interval_rows(name, model)
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
                    "measure: against the mean over the untrained model's random initializations with the "
                    "draw-mean t interval (method column), or, with one initialization, its paired 95% "
                    "document-bootstrap interval, conditional on that initialization.",
                )
            )
        return tables


def _interval_text(row: pd.Series) -> str:
    """``+0.0660 [+0.0600, +0.0720]``, or the estimate with why its interval is unavailable."""
    if not row["interval_available"]:
        return format_interval(row["estimate"], math.nan, math.nan, "+.4f", row["reason"])
    return format_interval(row["estimate"], row["ci_low"], row["ci_high"], "+.4f", row["reason"])


def _both_text(row: pd.Series) -> str:
    """A bootstrap excess with both intervals of its resamples (the percentile bounds reflected about
    the estimate give the basic ones and back): ``+0.0660, basic [..], percentile [..]``."""
    method = str(row.get("method", "percentile"))
    if not row["interval_available"] or method not in ("basic", "percentile"):
        return _interval_text(row)
    estimate, low, high = (float(row[c]) for c in ("estimate", "ci_low", "ci_high"))
    other_low, other_high = basic_interval(estimate, low, high)
    other = "percentile" if method == "basic" else "basic"
    bounds = {method: (low, high), other: (other_low, other_high)}
    return f"{estimate:+.4f}, " + ", ".join(
        f"{m} [{bounds[m][0]:+.4f}, {bounds[m][1]:+.4f}]" for m in ("basic", "percentile")
    )


def _over_inits(row: pd.Series) -> bool:
    """Whether a trained − untrained row is against the mean over several initializations."""
    inits = row.get("n_untrained_inits", math.nan)
    return bool(np.isfinite(inits) and inits >= 2)


def _difference_text(row: pd.Series, detail: bool = False) -> str:
    """Trained − untrained with what its interval holds: against the mean over the initializations with
    the draw-mean t interval, or one initialization with the paired interval conditional on it."""
    if not _over_inits(row):
        return (
            f"{_both_text(row)} (paired over documents; one random initialization of the untrained "
            "model: the interval is conditional on it and leaves out the variance between initializations)"
        )
    inits = int(row["n_untrained_inits"])
    text = f"{_interval_text(row)} (against the mean of {inits} random initializations of the untrained model"
    if not detail:
        return text + ")"
    first = format_interval(
        row["first_init_estimate"], row["first_init_ci_low"], row["first_init_ci_high"], "+.4f", "unavailable"
    )
    return (
        f"{text}, whose excess is {row['untrained_inits_mean']:+.4f} with sd {row['untrained_inits_sd']:.4f} "
        "across them; t interval with variance the document-bootstrap variance of trained − the first "
        "initialization plus the variance between initializations over their number, "
        f"{format_number(row['df'], '.0f', 'undefined')} degrees of freedom; the first initialization "
        f"alone {first}, conditional on it)"
    )


def _p_text(row: pd.Series, baseline: DocumentPermutationBaseline) -> str:
    """The permutation p-value; at its floor, said as such (``p <= 1/(1 + permutations)``)."""
    if not np.isfinite(row["p_value"]):
        return "p unavailable"
    if row["p_at_floor"]:
        return f"p = {baseline.p_floor:.3g}, at its floor 1/{baseline.n_permutations + 1}"
    return f"p = {row['p_value']:.3g} ({baseline.n_permutations} permutations)"
