"""The drivers report's findings in words, each worded from intervals only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.driver_domain import WITHIN_PARTIAL
from tl_moe.analysis.effect_estimate import POOLED_MINUS_WITHIN
from tl_moe.analysis.stats import (
    RHO_DIFFERENCE_RANGE,
    RHO_METHOD,
    RHO_MIN_EXPERT_DOCUMENTS,
    RHO_RANGE,
    basic_interval,
)
from tl_moe.pipeline.results.drivers_text import (
    WITHIN,
    Signed,
    diagnostic,
    gate_text,
    left_out_text,
)
from tl_moe.report.numbers import format_interval, format_number, is_defined

__all__ = ["DriverFindings"]


class DriverFindings:
    """The findings of :class:`~tl_moe.pipeline.results.drivers.DriversResult` (a mixin over its fields)."""

    def _agreement_row(self, score: str, kind: str = "zero", layer: str = "all") -> Any:
        frame = self.agreement
        pick = (frame["score"] == score) & (frame["exact effect"] == kind) & (frame["layer"] == layer)
        return frame[pick].iloc[0]

    def findings(self) -> list[str]:
        rows = self.comparison.set_index(["edit", "group"])
        edit = self.comparison["edit"].iloc[0]
        reason = self.comparison["interval unavailable"].iloc[0]

        values = rows.iloc[:, :3].to_numpy(dtype=float)
        largest = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0
        spec = "+.4f" if largest >= 1e-3 or largest == 0 else "+.2e"  # tiny effects: not all -0.0000

        def show(group: str) -> str:
            row = rows.loc[(edit, group)]
            low, high = (math.nan, math.nan) if reason else (row["ci low"], row["ci high"])
            return format_interval(row.iloc[0], low, high, spec, reason or "no report document")

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
            f"**Driver experts** (chosen on the selection half of the documents, measured on the report "
            f"half's {int(self.comparison['report documents'].iloc[0])} edited documents): removing one of the {n} strongest changes "
            f"next-token loss by {show('driver experts')} nats/token vs {show('matched controls')} for "
            f"{matched} (difference {show('driver − control')}, {interval}); REAP saliency (selection half) "
            f"ranks experts with Spearman ρ = {self._saliency_rho()} against the exact removal effect "
            f"(report half){self._frequency_control()}."
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
            f"documents, both scores recomputed on each resample; {gate_text(self.saliency_gate)}; "
            f"{diagnostic(rho, low, high, bias)}{self._ungated_text()})"
        )

    def _ungated_text(self) -> str:
        """REAP's ρ without the document gate (every expert with both scores), the same resamples: the
        gate was set after seeing the toy run's intervals, so both are shown (empty for older results)."""
        kept = self.comparison.attrs.get("saliency_spearman_ungated")
        if not kept or not is_defined(kept["estimate"]):
            return ""
        shown = format_interval(
            kept["estimate"],
            math.nan if kept["low"] is None else kept["low"],
            math.nan if kept["high"] is None else kept["high"],
            "+.2f",
            kept["unavailable"] or "constant scores",
        )
        return (
            f"; without the document gate (all {kept['experts']} experts with both scores; the gate was "
            f"chosen after seeing this toy's intervals, docs/METHODS.md): ρ = {shown}"
        )

    def _frequency_row(self, score: str) -> pd.Series | None:
        """One ρ of the REAP-vs-frequency control (``FREQUENCY_SCORES``) as a paired-table row (None
        without the control: no per-document saliency, or an older result)."""
        found = self.comparison.attrs.get("saliency_frequency")
        if not found:
            return None
        kept = found[score]
        low, high = (np.nan if kept[b] is None else kept[b] for b in ("low", "high"))
        bounds = RHO_DIFFERENCE_RANGE if score == "REAP − frequency" else RHO_RANGE
        return pd.Series(
            {
                "spearman with exact zeroing effect": kept["estimate"],
                "ci low": low,
                "ci high": high,
                "interval unavailable": kept["unavailable"],
                "bootstrap bias": np.nan if kept["bootstrap bias"] is None else kept["bootstrap bias"],
                "basic ci low": basic_interval(kept["estimate"], low, high, bounds)[0],
                "basic ci high": basic_interval(kept["estimate"], low, high, bounds)[1],
            }
        )

    def _frequency_signed(self) -> Signed | None:
        """ρ(REAP) − ρ(routed share), read for its sign (None without the control)."""
        row = self._frequency_row("REAP − frequency")
        return None if row is None else Signed(row)

    def _frequency_control(self) -> str:
        """Routing frequency's ρ beside REAP's and their paired difference, with the verdict it allows."""
        share, signed = self._frequency_row("routed share (selection)"), self._frequency_signed()
        if share is None or signed is None:
            return ""

        def shown(row: pd.Series) -> str:
            why = row["interval unavailable"]
            low, high = (math.nan, math.nan) if why else (row["ci low"], row["ci high"])
            return format_interval(row.iloc[0], low, high, "+.2f", why or "constant scores")

        if signed.why:
            verdict = f"no interval ({signed.why})"
        elif signed.above_zero():
            verdict = "REAP ranks experts better than routing frequency alone"
        elif signed.below_zero():
            verdict = "routing frequency alone ranks experts better than REAP"
        else:
            verdict = "REAP is not shown to rank experts better than routing frequency alone" + (
                " (the percentile and basic intervals disagree about excluding 0)"
                if signed.disputed()
                else ""
            )
        return (
            f"; routing frequency alone (the selection half's routed share, the same experts and document "
            f"resamples): ρ = {shown(share)} ({Signed(share).diagnostics()}); REAP − frequency: "
            f"{shown(self._frequency_row('REAP − frequency'))} (paired; {signed.diagnostics()}): {verdict} "
            "(two marginal ρs compared, pooled over layers, where REAP can also rank the layers against "
            "each other and a share within a layer cannot; REAP's ρ given frequency is not computed)"
        )

    def _overlap_text(self) -> str:
        """The top-n overlaps of the estimate and of REAP with the exact effect, on the paired ρ's experts
        where the result has them (else on each score's own defined experts, as older results do)."""
        kept = None if self.paired is None else self.paired.attrs.get("top overlap")
        if kept:
            top = int(kept["top n"])
            return (
                f"on the {int(kept['experts'])} experts of the paired ρ below, its top {top} share "
                f"{int(kept['first-order estimate'])} experts with the exact top {top} (REAP saliency's top "
                f"{top}: {int(kept['REAP saliency'])}; chance {format_number(kept['chance'], '.2f', 'no expert')})"
            )
        first, reap = self._agreement_row("first-order estimate"), self._agreement_row("REAP saliency")
        return (
            f"its top {int(first['top n'])} share {int(first['top-n overlap'])} experts with the exact top "
            f"{int(first['top n'])} (chance {format_number(first['chance overlap'], '.2f', 'no expert')}; REAP "
            f"saliency: {int(reap['top-n overlap'])})"
        )

    def _estimate_finding(self) -> str:
        text = f"**First-order estimate** (one backward per batch) of the zeroing effect: {self._overlap_text()}."
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
        signed = Signed(diff)
        if reason:
            verdict = f"no interval ({reason})"
        elif signed.disputed():
            verdict = (
                "which of the two ranks experts better is not established (the percentile and basic "
                f"intervals disagree about excluding 0; {signed.diagnostics()})"
            )
        elif signed.below_zero():
            verdict = "REAP saliency, a data-only score, ranks experts better than the estimate"
            if self._frequency_signed() is not None and not self._frequency_signed().above_zero():
                verdict += (
                    " (a comparison of these two scores only: REAP itself is not separated from routing "
                    "frequency, first finding)"
                )
        elif signed.above_zero():
            verdict = "the estimate ranks experts better than REAP saliency"
        else:
            verdict = "the data cannot tell which of the two ranks experts better"
        reap = rows.loc["REAP saliency"]
        left_out = list(self.paired.attrs.get("left out", []))
        text += (
            f" Spearman ρ with the exact zeroing effect, all three scores on the same "
            f"{int(rows['experts'].iloc[0])} experts (those routed on at least {RHO_MIN_EXPERT_DOCUMENTS} of the "
            f"{int(rows['documents'].iloc[0])} documents of the edited forwards; {left_out_text(left_out)}) and "
            f"those documents, pooled over layers: estimate {rho('first-order estimate')}, REAP saliency "
            f"{rho('REAP saliency')} ("
            + diagnostic(
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
            f"mean over layers {rho('first-order estimate', WITHIN)} ({self._within_diagnostics()}); REAP "
            f"saliency {reap_layers}; mean "
            f"{rho('REAP saliency', WITHIN)}; estimate − REAP, mean over layers {rho('estimate − REAP', WITHIN)}: "
            f"{self._layer_verdict(layers)}.{self._layer_diagnostics(layers)}"
        )

    def _layer_diagnostics(self, layers: list[str]) -> str:
        """Where each per-layer ρ of the estimate and of REAP saliency sits in its interval, the bootstrap
        bias, and the basic interval of the most leaning one (reported; the pre-chosen method stays)."""
        rows = [
            (row, f"{score}, layer {layer}")
            for layer in layers
            for score in ("first-order estimate", "REAP saliency")
            for row in [self._paired_rows(layer).set_index("score").loc[score]]
            if "interval position" in row
        ]
        found = [(row, label) for row, label in rows if is_defined(row["interval position"])]
        if not found:
            return ""
        skipped = len(rows) - len(found)
        position = [float(row["interval position"]) for row, _ in found]
        bias = [float(row["bootstrap bias"]) for row, _ in found]
        worst, label = max(found, key=lambda pair: abs(float(pair[0]["interval position"]) - 0.5))
        basic = format_interval(
            worst["spearman with exact zeroing effect"],
            worst["basic ci low"],
            worst["basic ci high"],
            "+.2f",
            "undefined",
        )
        return (
            f" Diagnostics of these {len(found)} per-layer {RHO_METHOD} intervals"
            + (f" ({skipped} more without an interval of positive width left out)" if skipped else "")
            + " (the method chosen before the "
            f"data; reported, not used to switch it): each ρ sits at {min(position):.2f}–{max(position):.2f} of "
            f"its interval's width (0.5: centred), the bootstrap bias (mean resampled ρ − ρ) is {min(bias):+.2f} "
            f"to {max(bias):+.2f}; the most leaning, {label} at {float(worst['interval position']):.2f}, has the "
            f"basic interval (the percentile bounds reflected about ρ, same resamples) {basic}."
        )

    def _within_diagnostics(self) -> str:
        """The mean within-layer ρ of the estimate: its bootstrap bias, position and basic interval."""
        return Signed(self._paired_rows(WITHIN).set_index("score").loc["first-order estimate"]).diagnostics()

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
        pooled ρ (worded from intervals only: a ρ is above 0 when its percentile interval is and the basic
        interval of the same resamples agrees; not established when the two disagree about 0)."""

        def signed(layer: str) -> Signed:
            return Signed(self._paired_rows(layer).set_index("score").loc["first-order estimate"])

        pooled, within = signed("all"), signed(WITHIN)
        if pooled.why or within.why:
            return "without intervals, the per-layer values are descriptive only"
        above = sum(signed(layer).above_zero() for layer in layers)
        disputed = sum(signed(layer).disputed() for layer in layers)
        count = (
            f"the estimate's own ρ: {above} of {len(layers)} layers have an interval above 0 (percentile and basic agreeing; each "
            f"unadjusted for the {len(layers)} layers"
            + (f"; in {disputed} the two intervals disagree about excluding 0" if disputed else "")
            + f"); the mean within-layer ρ {within.sign_text()}"
        )
        if self._paired_rows(POOLED_MINUS_WITHIN).empty:
            return count
        gap = signed(POOLED_MINUS_WITHIN)
        shown = format_interval(gap.estimate, gap.low, gap.high, "+.2f", gap.why or "constant scores")
        text = f"{count}; pooled minus mean within-layer ρ {shown} (same resamples)"
        if gap.disputed():
            return (
                f"{text}: whether the pooled ρ differs from the within-layer mean is not established (the "
                f"percentile and basic intervals disagree about excluding 0; {gap.diagnostics()})"
            )
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
        if "[" in shown:
            shown += f" ({_domain_diagnostics(total)})"
        left_out = int(total["spearman experts left out (routed on too few documents)"])
        rho = f"domain score (selection half) vs removal effect (report half): Spearman ρ = {shown}" + (
            f" (95% {RHO_METHOD} bootstrap over {int(total['spearman documents'])} documents of both halves, "
            "drawn within each half, each expert's domain score and removal effect recomputed per resample; over the "
            f"{int(total['spearman experts'])} scored experts routed on at least {RHO_MIN_EXPERT_DOCUMENTS} "
            f"documents of each half, {left_out} left out; {_tokens_text(total)})"
            if "[" in shown
            else " (descriptive: the domains analysis' score on every document, no per-document routing)"
            if total["spearman domain score"] == "domain score"
            else ""
        )
        rho += _frequency_control(total, self.domain_overlap.table) + _domain_per_layer(
            self.domain_overlap.table
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
            f"{int(total['experts'])} scored experts with {int(total['domain experts'])} domain expert{'' if int(total['domain experts']) == 1 else 's'}; "
            f"hypergeometric p = {format_number(total['overlap p'], '.3g', 'not testable')}); {rho}."
        )


FREQUENCY_TEXT = "each expert's share of its layer's routed slots on the documents of both halves"
"""The routing frequency the partial ρ controls for, in words (:data:`~tl_moe.analysis.driver_domain.FREQUENCY`)."""


def _signed(row, prefix: str) -> Signed:
    """One ρ of the domain table's row (columns named ``prefix``), read for its sign like the paired table's."""
    why = row.get(f"{prefix} unavailable") or row.get(f"{prefix} interval unavailable") or ""
    return Signed(
        pd.Series(
            {
                "spearman with exact zeroing effect": row[prefix],
                "ci low": row[f"{prefix} ci low"],
                "ci high": row[f"{prefix} ci high"],
                "interval unavailable": why,
                "bootstrap bias": row[f"{prefix} bootstrap bias"],
                "basic ci low": row[f"{prefix} basic ci low"],
                "basic ci high": row[f"{prefix} basic ci high"],
            }
        )
    )


def _shown(row, prefix: str) -> str:
    """One ρ of the domain table's row with its interval, or why it has none (for a routing-frequency ρ
    that lacks it for the domain-score ρ's reason, "as for ρ")."""
    why = row.get(f"{prefix} unavailable") or "undefined"
    no_interval = row.get(f"{prefix} interval unavailable") or "the bootstrap gave none"
    if prefix != "spearman" and no_interval == row.get("spearman interval unavailable"):
        no_interval = "as for ρ"
    low, high = row[f"{prefix} ci low"], row[f"{prefix} ci high"]
    return format_interval(row[prefix], low, high, "+.2f", why, no_interval)


def _frequency_control(row, table: pd.DataFrame | None = None) -> str:
    """The routing-frequency control of the domain-score ρ: the layer-controlled partial ρ (the mean of the
    within-layer partial ρs given routing frequency) with its interval and diagnostics, the pooled partial ρ
    (which also ranks the layers), each score's ρ with routing frequency (the confound's size), and what
    the layer-controlled partial says, worded from its intervals and the per-layer partials' only (above
    or below 0 when a percentile interval is and the basic interval of the same resamples agrees; not
    established otherwise). Empty for results without the control."""
    if "partial spearman" not in row:
        return ""
    headline = WITHIN_PARTIAL if WITHIN_PARTIAL in row else "partial spearman"
    partial = _signed(row, headline)
    shown = _shown(row, headline)
    if "[" in shown:
        shown += f" ({partial.diagnostics()})"
    layers = pd.DataFrame() if table is None else table[table["layer"].astype(str) != "all"]
    if headline == WITHIN_PARTIAL:
        text = (
            f"; given routing frequency ({FREQUENCY_TEXT}; a share within the expert's own layer, so it "
            f"cannot absorb differences between layers): mean within-layer partial ρ = {shown} (each "
            f"layer's Pearson partial correlation of the ranks, averaged over {_layers_averaged(layers)}; same experts, resamples and "
            f"method); pooled partial ρ {_shown(row, 'partial spearman')} (it also "
            "ranks the layers against each other)"
        )
    else:
        text = (
            f"; given routing frequency ({FREQUENCY_TEXT}): partial ρ = {shown} (Pearson partial correlation "
            "of the ranks, same experts, resamples and method)"
        )
    text += (
        f"; routing frequency's ρ with the domain score {_shown(row, 'score–frequency spearman')}, with the "
        f"removal effect {_shown(row, 'effect–frequency spearman')}"
    )
    per_layer = [
        (row_of["layer"], _signed(row_of, "partial spearman"))
        for _, row_of in layers.iterrows()
        if headline == WITHIN_PARTIAL
    ]
    return f"{text}: {_frequency_verdict(partial, _signed(row, 'spearman'), per_layer)}"


def _layers_averaged(layers: pd.DataFrame) -> str:
    """The layers the mean within-layer partial ρ averages (those whose own partial ρ is defined), in words."""
    defined = layers[layers["partial spearman unavailable"].fillna("") == ""]["layer"].astype(str).tolist()
    if len(defined) == len(layers):
        return f"the {len(layers)} layers"
    if not defined:
        return f"none of the {len(layers)} layers: no layer has a defined partial ρ"
    return f"the {len(defined)} of {len(layers)} layers with a defined partial ρ ({', '.join(defined)})"


def _established_sign(rho: Signed) -> int:
    """+1 (−1) when the ρ is above (below) 0, percentile and basic intervals agreeing; 0 otherwise."""
    return 1 if rho.above_zero() else -1 if rho.below_zero() else 0


_SIGN_WORD = {1: "positive", -1: "negative"}
_SIDE_WORD = {1: "above", -1: "below"}


def _layers_established(layers) -> str:
    """The layers whose own partial ρ is established, with its side of 0, in words (empty when none is)."""
    found = [
        f"layer {layer}'s is {_SIDE_WORD[_established_sign(own)]} 0"
        for layer, own in layers
        if not own.why and _established_sign(own)
    ]
    if not found:
        return ""
    return (
        f"; of the layers' own partial ρs (each unadjusted for the {len(layers)} layers), {', '.join(found)}"
    )


def _layer_against(partial: Signed, layers) -> str:
    """The layers whose own partial ρ is established with the sign opposite to the layer-controlled
    partial's established sign, in words (empty when none is, or that sign is not established)."""
    given = 0 if partial.why or partial.disputed() else _established_sign(partial)
    if not given:
        return ""
    against = [str(layer) for layer, own in layers if not own.why and _established_sign(own) == -given]
    if not against:
        return ""
    which = "layer " + ", ".join(against) if len(against) == 1 else "layers " + ", ".join(against)
    verb = "is" if len(against) == 1 else "are"
    return (
        f"the mean within-layer partial ρ is {_SIDE_WORD[given]} 0, but {which}' partial ρ {verb} "
        f"{_SIDE_WORD[-given]} 0"
        if len(against) > 1
        else f"the mean within-layer partial ρ is {_SIDE_WORD[given]} 0, but {which}'s partial ρ {verb} "
        f"{_SIDE_WORD[-given]} 0"
    )


_EFFECT_WORD = {1: "larger", -1: "smaller"}


def _frequency_verdict(partial: Signed, raw: Signed, layers: list[tuple[object, Signed]] = ()) -> str:
    """What the (layer-controlled) partial ρ given routing frequency says about the domain score–effect
    association, beside the raw ρ: it holds when both have the same established sign, reverses when their
    established signs differ; the partial's sign alone when the raw ρ's is not established; neither when
    both are not. Not established, with the layer named, when a layer's own partial ρ (``layers``) is
    established with the opposite sign."""
    against = _layer_against(partial, layers)
    if against:
        return f"the association is not established beyond routing frequency ({against})"
    name = "the mean within-layer partial ρ" if layers else "the partial ρ"
    if partial.why or not np.isfinite(partial.low):
        return f"without an interval for {name}, the association is not established beyond routing frequency"
    if partial.disputed():
        return (
            f"the association is not established beyond routing frequency ({name}'s percentile and "
            "basic intervals disagree about excluding 0)"
        )
    given, alone = _established_sign(partial), _established_sign(raw)
    if not given:
        covers = f"{name}'s interval covers 0{_layers_established(layers)}"
        if not alone:
            return (
                "neither the association nor its part beyond routing frequency is established (the raw ρ's "
                f"sign is not established and {covers})"
            )
        restated = "how often the experts are routed" + (" or how the layers differ" if layers else "")
        return (
            f"the association is not established beyond routing frequency ({covers}), "
            f"so the raw ρ may only restate {restated}"
        )
    meaning = f"given it, the more domain-specific experts have the {_EFFECT_WORD[given]} removal effects"
    if given == alone:
        return f"the association holds beyond routing frequency: {meaning}"
    if alone:
        return (
            f"the sign reverses given routing frequency: the raw ρ is {_SIGN_WORD[alone]}, but {meaning} "
            f"(the raw ρ's {_SIGN_WORD[alone]} sign comes from routing frequency)"
        )
    return (
        f"beyond routing frequency the association is {_SIGN_WORD[given]}: {meaning} (the raw ρ's sign "
        "is not established)"
    )


def _domain_per_layer(table) -> str:
    """The domain-score ρ within each layer (a pooled ρ also ranks the layers against each other)."""
    layers = table[table["layer"].astype(str) != "all"]
    if not len(layers):
        return ""
    parts = []
    for _, row in layers.iterrows():
        why = row.get("spearman unavailable") or "undefined"
        no_interval = row.get("spearman interval unavailable") or "the bootstrap gave none"
        shown = format_interval(
            row["spearman"], row["spearman ci low"], row["spearman ci high"], "+.2f", why, no_interval
        )
        notes = []
        if "[" in shown and is_defined(row.get("spearman basic ci low", math.nan)):
            notes.append(f"basic [{row['spearman basic ci low']:+.2f}, {row['spearman basic ci high']:+.2f}]")
        if "partial spearman" in row:
            partial = _shown(row, "partial spearman")
            if "[" in partial and is_defined(row.get("partial spearman basic ci low", math.nan)):
                partial += (
                    f", basic [{row['partial spearman basic ci low']:+.2f}, "
                    f"{row['partial spearman basic ci high']:+.2f}], the estimate at "
                    f"{row['partial spearman position in interval']:.2f} of its interval"
                )
            notes.append(f"partial {partial}")
        parts.append(f"layer {row['layer']} {shown}" + (f" ({'; '.join(notes)})" if notes else ""))
    partial = " and partial ρ given routing frequency" if "partial spearman" in table else ""
    return (
        f"; within each layer (a pooled ρ also ranks the layers against each other; same method, unadjusted), "
        f"ρ{partial}: " + ", ".join(parts)
    )


def _domain_diagnostics(row) -> str:
    """The domain-score ρ's bootstrap bias, position in its interval and basic interval, in words."""
    text = diagnostic(
        row["spearman"],
        row["spearman ci low"],
        row["spearman ci high"],
        row.get("spearman bootstrap bias", math.nan),
    )
    low, high = row["spearman basic ci low"], row["spearman basic ci high"]
    if not (is_defined(low) and is_defined(high)):
        return text
    return f"{text}; basic interval (same resamples) [{low:+.2f}, {high:+.2f}]"


def _tokens_text(row) -> str:
    """The report half's mean scored tokens per document (the planted study's coverage depends on it)."""
    tokens = row.get("report tokens per document (mean)", math.nan)
    if not is_defined(tokens):
        return "tokens per report document not recorded"
    return f"a mean {tokens:.0f} scored tokens per report document"
