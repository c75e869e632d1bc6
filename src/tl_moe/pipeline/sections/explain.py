"""Automatic labels of every expert, each scored on held-out documents beside its controls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tl_moe.analysis.configs import ExplainConfig
from tl_moe.analysis.readout import LogitReadout
from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.collect.accumulator import Accumulator
from tl_moe.data.concepts import TokenConceptLabeler, concepts_for_corpus
from tl_moe.errors import InputError
from tl_moe.explain import (
    CachedChatClient,
    ConceptScorer,
    DetectionScorer,
    DissectionExplainer,
    ExpertExamplesAccumulator,
    FuzzingScorer,
    IntruderScorer,
    LabelingResult,
    LMExplainer,
    TokenSetBaseline,
    client_from_spec,
    label_experts,
)
from tl_moe.explain.causal import BALANCE_CALIPER, CausalResult, causal_checks
from tl_moe.explain.labels import RICHER_LABEL_MARGIN
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import AccumulatorSpec, Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.pipeline.sections.explain_dashboard import dashboard_cards
from tl_moe.report.dashboard import ExpertCard
from tl_moe.report.numbers import format_interval, format_number, is_defined

__all__ = ["Explain", "ExplainResult", "ExpertExamplesSpec"]

SCORERS = ("concept", "detection", "fuzzing", "intruder")


@dataclass(frozen=True)
class ExpertExamplesSpec(AccumulatorSpec):
    """Every expert's top / quantile / random contexts and dissection counts (:mod:`tl_moe.explain.examples`)."""

    seed: int = 0

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return ExpertExamplesAccumulator(
            model,
            run.domain_names,
            TokenConceptLabeler(concepts_for_corpus(run.options.corpus)).concept_names,
            seed=self.seed,
        )


@dataclass(frozen=True)
class ExplainResult(Result):
    """The labels, their scores and controls.

    Attributes:
        labeling: per-expert rows and per-layer summaries (:class:`~tl_moe.explain.LabelingResult`).
        explainer: the explainer's name.
        main_scorer: the scorer of the headline F1 (``concept`` offline, else ``detection``).
    """

    labeling: LabelingResult
    explainer: str
    main_scorer: str
    causal: CausalResult | None = None
    cards: pd.DataFrame | None = None
    dashboard: tuple[ExpertCard, ...] = ()

    def label_table(self) -> pd.DataFrame:
        frame, s = self.labeling.frame, self.main_scorer
        columns = {
            "layer": "layer",
            "expert": "expert",
            "label": "label",
            "kind": "kind",
            f"{s}_balanced_accuracy": "balanced accuracy",
            f"{s}_shuffled_balanced_accuracy": "shuffled-label balanced accuracy",
            f"{s}_own_minus_shuffled_ci_low": "own - shuffled ci low",
            f"{s}_own_minus_shuffled_ci_high": "own - shuffled ci high",
            f"{s}_own_minus_shuffled_interval": "own - shuffled interval",
            f"{s}_baseline_balanced_accuracy": "token-set baseline balanced accuracy",
            f"{s}_f1": "F1",
            f"{s}_f1_ci_low": "F1 ci low",
            f"{s}_f1_ci_high": "F1 ci high",
            f"{s}_f1_interval": "F1 interval",
            f"{s}_shuffled_f1": "shuffled-label F1",
            f"{s}_chance_f1": "chance F1",
            f"{s}_precision": "precision",
            f"{s}_recall": "recall",
            f"{s}_auc": "AUC",
            "status": "status",
        }
        present = {k: v for k, v in columns.items() if k in frame}
        table = frame[list(present)].rename(columns=present)
        if "label_error" in frame:
            table["status"] = np.where(frame["label_error"].notna(), frame["label_error"], table["status"])
        if self.causal is not None and "remove_effect" in self.causal.frame:
            names = {
                "remove_effect": "causal effect (remove; routed positions)",
                "remove_labeled_minus_control": "causal: labeled - control expert",
                "remove_labeled_minus_control_weight_adjusted": "causal: labeled - control, equal mixing weight",
                "control_expert": "causal control expert",
                "control_chosen_on": "causal control chosen on",
                "status": "causal status",
                "routing_described": "routing rate, described",
                "routing_other": "routing rate, other",
                "control_routing_described": "control routing rate, described",
                "routing_described standardized difference": "routing at described, standardized difference",
                "explain_routing_described": "explain documents: routing rate, described",
                "control_explain_routing_described": "explain documents: control routing rate, described",
                "explain_routing_standardized_difference": "explain documents: standardized difference",
            }
            effects = self.causal.frame[["layer", "expert", *(n for n in names if n in self.causal.frame)]]
            table = table.merge(effects.rename(columns=names), on=["layer", "expert"], how="left")
            table[names["control_expert"]] = table[names["control_expert"]].astype("Int64")
        return table

    def to_frame(self) -> pd.DataFrame:
        return self.label_table()

    def _main_summary(self) -> pd.DataFrame:
        """The summary rows of the main scorer; empty when nothing was scored (every request failed)."""
        summary = self.labeling.summary
        if "scorer" not in summary:
            return summary.iloc[:0]
        return summary[summary["scorer"] == self.main_scorer]

    def failure(self) -> str | None:
        """One line saying why no label was scored (every expert's label or score failed), else None."""
        if len(self._main_summary()):
            return None
        frame = self.labeling.frame
        errors = frame["label_error"].dropna() if "label_error" in frame else pd.Series(dtype=object)
        first = f"; first error: {str(errors.iloc[0])[:200]}" if len(errors) else ""
        return (
            f"no label was scored: {len(errors)} of {len(frame)} experts' label requests failed and the "
            f"others could not be scored{first}"
        )

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"explainer": self.explainer, "scorer": self.main_scorer}
        if self.failure() is not None:
            out["failure"] = self.failure()
        for row in self._main_summary().to_dict("records"):
            key = f"layer {row['layer']}" if row["layer"] != "all" else "all layers"
            m = _METRIC_NAMES.get(row["metric"], row["metric"])
            out[f"{key}: mean {m} [95% CI]"] = _interval(
                row["mean"], row["ci low"], row["ci high"], row.get("interval unavailable", "")
            )
            for name, short, words in (
                ("shuffled", "diff", "shuffled-label"),
                ("baseline", "baseline diff", "token-set baseline"),
            ):
                if f"{name} mean" in row:
                    why = row.get(f"{name} interval unavailable", "")
                    out[f"{key}: {words} {m} [95% CI]"] = _interval(
                        row[f"{name} mean"], row[f"{name} ci low"], row[f"{name} ci high"], why
                    )
                    out[f"{key}: own - {words} {m} [95% CI]"] = _interval(
                        row[f"own - {name}"], row[f"{short} ci low"], row[f"{short} ci high"], why
                    )
            out[f"{key}: chance {m}"] = None if np.isnan(row["chance"]) else round(float(row["chance"]), 4)
            if row["metric"] == "balanced_accuracy" or row["metric"] == "accuracy":
                out[f"{key}: experts scored / not scored"] = (
                    f"{row['experts scored']} / {row['experts not scored']}"
                )
        kinds = self.labeling.frame.get("kind")
        if kinds is not None and kinds.notna().any():
            out["label kinds"] = ", ".join(f"{k} {n}" for k, n in kinds.value_counts().items())
        if self.causal is not None:
            for row in self.causal.summary.to_dict("records"):
                out[f"causal: {row['quantity']} [95% CI]"] = _causal_value(row)
            out["causal: windows / documents"] = f"{self.causal.n_windows} / {self.causal.n_documents}"
            for row in self.causal.balanced.to_dict("records"):  # experts whose control is balanced
                out[f"causal, balanced controls ({row['experts']} experts): {row['quantity']} [95% CI]"] = (
                    _causal_value(row)
                )
        return out

    def findings(self) -> list[str]:
        if self.failure() is not None:
            return [f"**Automatic labels** ({self.explainer} explainer): {self.failure()}."]
        summary = self._main_summary()
        main = summary[summary["layer"] == "all"]
        if not len(main):
            return []
        metric = (
            "balanced_accuracy" if (main["metric"] == "balanced_accuracy").any() else main["metric"].iloc[0]
        )
        row = main[main["metric"] == metric].iloc[0]
        rows = {r["metric"]: r for r in main.to_dict("records")}
        layers = summary[(summary["layer"] != "all") & (summary["metric"] == metric)].to_dict("records")
        f1_layers = summary[(summary["layer"] != "all") & (summary["metric"] == "f1")].to_dict("records")
        findings = [
            labels_finding(row, rows, self.explainer, self.main_scorer, self.labeling.frame, layers)
            + _f1_below_chance(f1_layers)
        ]
        if self.causal is not None and len(self.causal.summary):
            findings.append(causal_finding(self.causal))
        return findings

    def tables(self) -> list[TableItem]:
        return [
            TableItem("explain_labels", self.label_table(), "Label and its kind; balanced accuracy on held-out "
                      "items, another expert's label (shuffled within the layer) on the same items with the "
                      "interval of the difference over the documents of the expert's items, the token-set baseline's (the labeler's best token set); F1 with its interval over the same documents (unavailable below 30), "
                      "chance F1 (answering 'yes' to every item), precision, recall, AUC where graded.", max_rows=200),
            TableItem("explain_summary", self.labeling.summary.round(4), "Per layer and metric: mean over experts "
                      "with a 95% bootstrap interval over the score documents ('interval over': documents for "
                      "balanced accuracy, F1, precision, recall, AUC — each expert's score recomputed in every resample; unavailable below 30 documents), "
                      "the shuffled-label control and the token-set baseline with the paired differences, chance."),
        ] + ([TableItem("explain_causal", self.causal.summary.round(4), "Causal checks on held-out documents, on "
              "the positions where each expert is routed: mean over experts of |Δloss| on label-described minus "
              "other routed positions, removing or boosting the expert, unadjusted and at equal mixing weight "
              "(_weight_adjusted: least-squares adjustment for the expert's mixing weight); the same for a "
              "control expert of the layer chosen by its routing at the described tokens of the explain documents, and their difference "
              "(labeled_minus_control); routing rates and mixing weights at described and other positions; the "
              "control's balance at the described positions of the causal windows (labeled − control routing rate "
              "and its standardized difference, |d| ≤ 0.1 read as balanced); "
              "95% bootstrap intervals over documents (unavailable, with the reason, below 30 documents, or "
              "when fewer hold a described routed position). DLA rank-1 rate: the paper's check, labeled − "
              "control with its interval.")]
             if self.causal is not None else []) + self._causal_tables()  # fmt: skip

    def _causal_tables(self) -> list[TableItem]:
        """The causal checks per expert and per group of label kinds (when they ran)."""
        if self.causal is None or not len(self.causal.frame):
            return []
        tables = [TableItem("explain_causal_experts", causal_expert_table(self.causal), "Causal checks per "
                            "labeled expert: its label and kind, the described and other positions of the causal "
                            "windows (and how many the expert is routed on), the control's balance (routing rates at "
                            "described positions on the explain documents, where it was chosen, and their "
                            "standardized difference), |Δloss| on described minus other routed "
                            "positions when the expert is removed (effect) and for its control expert (control "
                            "effect), both also at equal mixing weight (adjusted), and their difference. Per-expert "
                            "values have no interval: the intervals are over documents, for the means over experts.",
                            max_rows=500)]  # fmt: skip
        if len(self.causal.balanced):
            tables.append(TableItem("explain_causal_balanced", self.causal.balanced.round(4), "Causal checks over "
                                    "the experts whose control is balanced on the explain documents (|standardized "
                                    "difference| of routing at the described tokens ≤ 0.1, chosen there, read on "
                                    "the causal windows): mean over those experts with a 95% bootstrap interval over "
                                    "documents, and their balance on the causal windows."))  # fmt: skip
        if len(self.causal.by_kind):
            tables.append(TableItem("explain_causal_by_kind", self.causal.by_kind.round(4), "Causal checks per "
                                    "group of label kinds (one concept, one token set, a composition): mean over the "
                                    "group's experts with a 95% bootstrap interval over documents (unavailable, with "
                                    "the reason, below 30 documents)."))  # fmt: skip
        return tables

    def figures(self) -> list[FigureItem]:
        return [FigureItem("explain_f1_histograms", f1_histograms(self.labeling, self.main_scorer),
                           "Balanced accuracy of each expert's own label vs another expert's label, per layer; "
                           "dashed: chance (0.5).")]  # fmt: skip


DASHBOARD_CAPTION = (
    "Expert dashboard. Index: click a numeric header to sort (balanced accuracy and F1 of the label on "
    "held-out items, own − shuffled-label balanced accuracy, causal effects where measured). Cards: the "
    "top contexts by saliency with each token's routing weight to the expert as its background (relative "
    "to the context's highest), tokens routed to the expert underlined, the context's target outlined; "
    "logit-lens tokens; a histogram of saliency over a uniform sample of routed tokens; routing share "
    "per domain (bar) beside the domain's share of all tokens (mark)."
)


def expert_cards(
    records: list, labeling: LabelingResult, examples: Any, scorer: str, n_contexts: int = 3
) -> pd.DataFrame:
    """One row per expert: what a researcher browses (label, scores, contexts, lens, domains)."""
    from tl_moe.explain.explainers import over_represented_tokens

    frame = labeling.frame.set_index(["layer", "expert"])
    routed = examples.routed_total.sum(0)  # [layer, expert, domain]
    rows = []
    for record in records:
        row = (
            frame.loc[(record.layer, record.expert)] if (record.layer, record.expert) in frame.index else None
        )
        share = routed[examples.layer_row(record.layer), record.expert]
        total = float(share.sum())
        domains = ", ".join(
            f"{name} {float(v) / total:.0%}"
            for name, v in sorted(
                zip(examples.domain_names, share.tolist(), strict=True), key=lambda x: -x[1]
            )
            if total and v / total >= 0.05
        )
        rows.append({
            "layer": record.layer,
            "expert": record.expert,
            "label": None if row is None else row["label"],
            "balanced accuracy": None if row is None or f"{scorer}_balanced_accuracy" not in row
            else row[f"{scorer}_balanced_accuracy"],
            "F1": None if row is None or f"{scorer}_f1" not in row else row[f"{scorer}_f1"],
            "top contexts": " ‖ ".join(c.text(left="«", right="»") for c in record.explanation[:n_contexts]),
            "logit-lens tokens": " · ".join(record.lens_tokens),
            "over-represented routed tokens": " · ".join(over_represented_tokens(record)),
            "routing share per domain": domains,
            "status": record.status,
        })  # fmt: skip
    return pd.DataFrame(rows)


_METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "precision": "precision",
                 "recall": "recall", "auc": "AUC", "accuracy": "accuracy"}  # fmt: skip


def _show(mean: float, low: float, high: float, why: str = "") -> str:
    """``mean [low, high]``, ``mean (no interval: why)``, or ``unavailable (no expert scored)``."""
    return format_interval(mean, low, high, ".3f", "no expert scored", why or "the bootstrap gave none")


def _signed(mean: float, low: float, high: float, why: str = "") -> str:
    """A signed difference with its interval and what the interval says about 0."""
    if not np.isfinite(mean):
        return "unavailable (no pair scored)"
    if not np.isfinite(low):
        return f"{mean:+.3f} (no interval: {why})" if why else f"{mean:+.3f} (no interval)"
    reading = "above 0" if low > 0 else "below 0" if high < 0 else "covers 0"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] (interval {reading})"


def _why(row: dict[str, Any], arm: str = "") -> str:
    """Why a summary row (``arm``: its shuffled or baseline columns) has no interval, or ``""``."""
    if row.get("interval over") == "score documents":
        reason = str(row.get("interval", ""))
        return reason.removeprefix("unavailable: ") if reason.startswith("unavailable") else ""
    return str(row.get(f"{arm} interval unavailable" if arm else "interval unavailable", "") or "")


def _unit(row: dict[str, Any]) -> str:
    """The unit of a summary row's intervals, or why it has none."""
    if row.get("interval over") != "score documents":
        why = row.get("interval unavailable")
        return f"no interval over experts: {why}" if why else "95% bootstrap over experts"
    if str(row.get("interval", "")).startswith("unavailable"):
        return f"no interval: {str(row['interval']).removeprefix('unavailable: ')}"
    unit = f"95% bootstrap over the {int(row['documents'])} score documents of the scoring items"
    if isinstance(row.get("mean interval method"), str):  # results written before the methods were recorded
        unit += f" ({row['mean interval method']} for the means, {row['difference interval method']} for the differences)"
    return unit


def labels_finding(
    row: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    explainer: str,
    scorer: str,
    frame: pd.DataFrame,
    layers: Sequence[dict[str, Any]] = (),
) -> str:
    """The findings line of the labels: the headline metric vs the shuffled control and the token-set
    baseline (each a paired difference with its interval and what it says about 0; the baseline
    comparison per layer too, ``layers``: that metric's per-layer summary rows), then the other metrics,
    and the unit of the intervals (score documents; AUC: experts)."""
    m = _METRIC_NAMES.get(row["metric"], row["metric"])
    shuffled = (row["own - shuffled"], row["diff ci low"], row["diff ci high"])
    verdict = "better than" if np.isfinite(shuffled[1]) and shuffled[1] > 0 else "compared with"
    text = (
        f"**Automatic labels** ({explainer} explainer, {scorer} scorer, scored on held-out documents): mean "
        f"{m} over {row['experts scored']} experts {_show(row['mean'], row['ci low'], row['ci high'], _why(row))} "
        f"(chance {format_number(row['chance'], '.3f', 'no expert scored')}); {verdict} its shuffled control (another expert's label of the same "
        f"layer, one seeded derangement, the intervals conditional on it; {_show(row['shuffled mean'], row['shuffled ci low'], row['shuffled ci high'], _why(row, 'shuffled'))}): own − shuffled "
        f"{_signed(*shuffled, _why(row, 'shuffled'))}"
    )
    if "baseline mean" in row and np.isfinite(row["baseline mean"]):
        text += (
            f"; against the token-set baseline (the labeler's own best token set alone, chosen on the explain "
            f"documents by {m}, {_show(row['baseline mean'], row['baseline ci low'], row['baseline ci high'], _why(row, 'baseline'))}): "
            f"own − baseline {_signed(row['own - baseline'], row['baseline diff ci low'], row['baseline diff ci high'], _why(row, 'baseline'))}"
        )
        per_layer = [
            f"layer {r['layer']} {_signed(r['own - baseline'], r['baseline diff ci low'], r['baseline diff ci high'])}"
            for r in layers
            if np.isfinite(r.get("own - baseline", np.nan))
        ]
        if per_layer:
            text += f" — per layer (each interval unadjusted for the {len(per_layer)} layers): " + ", ".join(
                per_layer
            )
    text += _share_part(row)
    others = [
        f"{_METRIC_NAMES[k]} {_show(r['mean'], r['ci low'], r['ci high'], _why(r))} "
        f"(shuffled {format_number(r['shuffled mean'], '.3f', 'no pair scored')}"
        + (
            f"; own − baseline {_signed(r['own - baseline'], r['baseline diff ci low'], r['baseline diff ci high'], _why(r, 'baseline'))}"
            if is_defined(r.get("own - baseline"))
            else ""
        )
        + ")"
        + ("" if r.get("interval over") == row.get("interval over") else f" ({_unit(r)})")
        for k, r in rows.items()
        if k in ("f1", "precision", "recall", "auc") and np.isfinite(r["mean"])
    ]
    if others:
        text += "; " + ", ".join(others)
        if "f1" in rows:
            text += f" (F1 of answering yes to every item: {format_number(rows['f1']['chance'], '.3f', 'no expert scored')})"
    kinds = frame["kind"].value_counts() if "kind" in frame else pd.Series(dtype=int)
    if len(kinds):
        text += "; label kinds: " + ", ".join(f"{k} {n}" for k, n in kinds.items())
    return text + (
        f"; {_unit(row)}; {row['experts not scored']} experts not scored. Each expert's score items are its "
        "most salient routed contexts plus contexts spread over its saliency quantiles, against as many "
        "negatives: the scores describe the label on those items, not on every routed token."
    )


def _share_part(row: dict[str, Any]) -> str:
    """The clause of the share of experts whose own label beats the shuffled one (on the same items),
    with its interval over the score documents (every expert's scores recomputed in each resample)."""
    share = row.get("share beating shuffled")
    if not is_defined(share):
        return ""
    reason = str(row.get("share interval", ""))
    if reason.startswith("unavailable") or not is_defined(row.get("share ci low")):
        shown = (
            f"{share:.0%} (no interval: {reason.removeprefix('unavailable: ') or 'the bootstrap gave none'})"
        )
    elif share >= 1 or share <= 0:  # at a bound the two-sided bracket ends at the estimate by construction
        end, side = ("share ci low", "lower") if share >= 1 else ("share ci high", "upper")
        shown = (
            f"{round(share * row['share experts'])} of {int(row['share experts'])} ({share:.0%}; one-sided 97.5% "
            f"{side} bound {row[end]:.0%}, the bootstrap's {'2.5th' if side == 'lower' else '97.5th'} percentile"
            f" — a share at {share:.0%} has no two-sided interval)"
        )
        return (
            f"; experts whose own label's {_METRIC_NAMES['balanced_accuracy']} is above the shuffled one's on "
            f"the same items: {shown} (bootstrap over the {int(row['share documents'])} score documents, each "
            "expert's scores recomputed in every resample)"
        )
    else:
        shown = f"{share:.0%} [{row['share ci low']:.0%}, {row['share ci high']:.0%}]"
    return (
        f"; share of experts whose own label's {_METRIC_NAMES['balanced_accuracy']} is above the shuffled "
        f"one's on the same items: {shown} of {int(row['share experts'])} (95% bootstrap over the "
        f"{int(row['share documents'])} score documents, each expert's scores recomputed in every resample)"
    )


def _f1_below_chance(layers: Sequence[dict[str, Any]]) -> str:
    """Layers whose mean F1 is below the F1 of answering yes to every item (its chance level on these
    items), said beside the headline so that a good overall mean does not hide them."""
    below = [
        f"layer {r['layer']} {r['mean']:.3f} vs {r['chance']:.3f}"
        for r in layers
        if is_defined(r.get("mean")) and is_defined(r.get("chance")) and r["mean"] < r["chance"]
    ]
    if not below:
        return ""
    return " Mean F1 is below that of answering yes to every item in " + ", ".join(below) + "."


def _causal_value(row: dict[str, Any]) -> str | None:
    """A causal summary row as ``mean [low, high]``, or ``mean (interval unavailable: reason)``."""
    if row["mean"] is None or not np.isfinite(row["mean"]):
        return None
    if str(row["interval"]).startswith("unavailable"):
        return f"{row['mean']:.3f} (interval {row['interval']})"
    if not np.isfinite(row["ci low"]):
        return f"{row['mean']:.3f}"
    return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"


_CAUSAL_EXPERT_COLUMNS = {
    "layer": "layer",
    "expert": "expert",
    "label": "label",
    "kind": "label kind",
    "kind group": "kind group",
    "n_described": "n described",
    "n_other": "n other",
    "n_described_routed": "n described routed",
    "n_other_routed": "n other routed",
    "remove_effect": "effect",
    "control_remove_effect": "control effect",
    "remove_effect_weight_adjusted": "effect, adjusted",
    "control_remove_effect_weight_adjusted": "control effect, adjusted",
    "remove_labeled_minus_control_weight_adjusted": "effect - control, adjusted",
    "remove_labeled_minus_control_weight_stratified": "effect - control, weight strata",
    "control_expert": "control expert",
    "explain_routing_described": "explain: routing at described",
    "control_explain_routing_described": "explain: control routing at described",
    "explain_routing_standardized_difference": "explain: standardized difference",
    "routing_described standardized difference": "causal windows: standardized difference",
    "status": "status",
}


def causal_expert_table(causal: CausalResult) -> pd.DataFrame:
    """One row per labeled expert of the causal checks (:data:`_CAUSAL_EXPERT_COLUMNS`), rounded."""
    present = {k: v for k, v in _CAUSAL_EXPERT_COLUMNS.items() if k in causal.frame}
    return causal.frame[list(present)].rename(columns=present).round(4)


def _reading(row: dict[str, Any]) -> str:
    """What an interval says about 0: above, below, covers (no evidence either way), or no interval."""
    if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
        return "no interval"
    if row["ci low"] > 0:
        return "interval above 0: for the label"
    if row["ci high"] < 0:
        return "interval below 0: against the label"
    side = "for" if row["mean"] > 0 else "against"
    return f"interval covers 0: no difference shown, the estimate on the side {side} the label"


def _causal_parts(summary: pd.DataFrame) -> list[str]:
    """The clauses of the causal finding, from a summary indexed by quantity."""

    def value(name: str) -> str:  # the reason of a missing interval is said once, in the header
        row = summary.loc[name].to_dict()
        if str(row["interval"]).startswith("unavailable") and np.isfinite(row["mean"]):
            return f"{row['mean']:.3f} (no interval)"
        return _causal_value(row) or "undefined"

    def difference(name: str) -> str:
        return f"{value(name)} ({_reading(summary.loc[name].to_dict())})"

    parts = []
    for edit, verb in (("remove", "removing"), ("boost", "boosting the weight of")):
        adjusted = f"{edit}_labeled_minus_control_weight_adjusted"
        if adjusted in summary.index:
            stratified = f"{edit}_labeled_minus_control_weight_stratified"
            check = f"within weight strata {value(stratified)}; " if stratified in summary.index else ""
            parts.append(
                f"{verb} a labeled expert, labeled − control at equal mixing weight {difference(adjusted)} "
                f"({check}unadjusted {value(f'{edit}_labeled_minus_control')}; labeled expert {value(f'{edit}_effect_weight_adjusted')} "
                f"at equal weight, {value(f'{edit}_effect')} unadjusted; control {value(f'control_{edit}_effect_weight_adjusted')} "
                f"at equal weight, {value(f'control_{edit}_effect')} unadjusted)"
            )
        elif f"{edit}_labeled_minus_control" in summary.index:
            parts.append(
                f"{verb} a labeled expert: {value(f'{edit}_effect')}, control {value(f'control_{edit}_effect')}, "
                f"labeled − control {difference(f'{edit}_labeled_minus_control')}"
            )
    if "routing_described standardized difference" in summary.index:
        parts.append(
            "balance of the control at the described positions (it is chosen by routing there on the explain "
            f"documents; no expert of the layer need reach the labeled one's rate): labeled − control routing "
            f"rate {value('routing_described labeled - control')}, standardized difference "
            f"{value('routing_described standardized difference')} (|d| ≤ {BALANCE_CALIPER} reads as balanced)"
        )
    if "routing_described" in summary.index:
        parts.append(
            f"routing rate at described vs other positions: labeled expert {value('routing_described')} vs "
            f"{value('routing_other')}, control {value('control_routing_described')} vs "
            f"{value('control_routing_other')}"
            + (
                f"; mean mixing weight at described vs other routed positions: labeled expert "
                f"{value('weight_described')} vs {value('weight_other')}, control "
                f"{value('control_weight_described')} vs {value('control_weight_other')}"
                if "weight_described" in summary.index
                else ""
            )
        )
    if "dla_rank1_rate" in summary.index:
        chance = (
            f" (chance 1/k = {summary.loc['dla_rank1 chance (1/k)', 'mean']:.3f})"
            if "dla_rank1 chance (1/k)" in summary.index
            else ""
        )
        parts.append(
            f"the paper's DLA rank-1 rate: {value('dla_rank1_rate')} for the labeled expert vs "
            f"{value('control_dla_rank1_rate')} for the control{chance}, labeled − control "
            f"{difference('dla_rank1_rate labeled - control')}"
        )
    return parts


def _by_kind_part(by_kind: pd.DataFrame) -> str:
    """The clause of the causal finding per group of label kinds (removal, labeled − control at equal
    mixing weight; no interval below the documents an interval needs)."""
    rows = by_kind[by_kind["quantity"] == "remove_labeled_minus_control_weight_adjusted"]
    shown = []
    for row in rows.to_dict("records"):
        if not np.isfinite(row["mean"]):
            continue
        if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
            number = f"{row['mean']:.3f} (no interval: {row['interval'].removeprefix('unavailable: ')})"
        else:
            number = f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]"
        documents = row.get("documents with described routed positions")
        where = (
            f", {int(documents)} documents with described routed positions" if documents is not None else ""
        )
        experts = f"{row['experts']} expert" + ("s" if row["experts"] != 1 else "")
        shown.append(f"{row['kind group']} {number}, {experts}{where}")
    return (
        "by label kind, removal, labeled − control at equal mixing weight: " + "; ".join(shown)
        if shown
        else ""
    )


def _balanced_part(causal: CausalResult) -> str:
    """The clause of the causal finding over the experts whose control is balanced on the explain
    documents: how many, the headline over them and their balance on the causal windows."""
    frame = causal.frame
    if "explain_routing_standardized_difference" not in frame:
        return ""
    ok = frame[frame["status"] == "ok"]
    d = ok["explain_routing_standardized_difference"].astype(float)
    explain = (
        f"on the explain documents, where the controls were chosen, labeled vs control routing rate at the "
        f"described tokens {ok['explain_routing_described'].mean():.3f} vs "
        f"{ok['control_explain_routing_described'].mean():.3f} (mean standardized difference {d.mean():.2f}); "
        f"{int((d.abs() <= BALANCE_CALIPER).sum())} of {len(ok)} checked experts have a control within "
        f"|d| ≤ {BALANCE_CALIPER} there"
    )
    if not len(causal.balanced):
        return explain
    rows = causal.balanced.set_index("quantity")

    def shown(name: str, reading: bool = True) -> str:
        row = rows.loc[name].to_dict()
        if str(row["interval"]).startswith("unavailable") or not np.isfinite(row["ci low"]):
            why = str(row["interval"]).removeprefix("unavailable: ")
            return f"{row['mean']:.3f} (no interval: {why})"
        said = f" ({_reading(row)})" if reading else ""
        return f"{row['mean']:.3f} [{row['ci low']:.3f}, {row['ci high']:.3f}]{said}"

    return (
        f"{explain}; over those experts, removal, labeled − control at equal mixing weight "
        f"{shown('remove_labeled_minus_control_weight_adjusted')}, with their standardized difference of "
        f"routing at the described positions of the causal windows {shown('routing_described standardized difference', reading=False)}"
    )


def causal_finding(causal: CausalResult) -> str:
    """The findings line of the causal checks: the headline is removal's labeled − control difference at
    equal mixing weight, the unadjusted one beside it; boosting and the paper's DLA rank-1 check as their
    own labeled − control differences; each with its document interval and what it says about 0."""
    summary = causal.summary.set_index("quantity")
    unavailable = summary["interval"].astype(str).str.startswith("unavailable")
    reason = (
        summary.loc[unavailable, "interval"].iloc[0].removeprefix("unavailable: ")
        if unavailable.any()
        else ""
    )
    parts = _causal_parts(summary)
    balance = [i for i, p in enumerate(parts) if p.startswith("balance of the control")]
    parts.insert(balance[0] + 1 if balance else len(parts), _balanced_part(causal))  # beside the balance
    if len(causal.by_kind):
        parts.append(_by_kind_part(causal.by_kind))
    experts = int(summary["experts"].max())
    interval = (
        f"intervals unavailable: {reason}"
        if reason
        else "95% bootstrap over documents, each interval unadjusted: removal at equal mixing weight is the "
        "headline, every other interval is secondary and not corrected for the others shown"
    )
    return (
        f"**Causal checks of the labels** (held-out documents: {causal.n_windows} windows of "
        f"{causal.n_documents} documents, {experts} experts; |Δloss| in nats/token on the positions where "
        f"each expert is routed, label-described minus other tokens; {interval}): "
        + "; ".join(p for p in parts if p)
        + "."
    )


def _interval(mean: float, low: float, high: float, why: str = "") -> str | None:
    """A metric's ``mean [low, high]`` or ``mean (no interval: why)``; None when nothing was scored."""
    if not is_defined(mean):
        return None
    return format_interval(mean, low, high, ".3f", "no expert scored", why or "the bootstrap gave none")


def f1_histograms(labeling: LabelingResult, scorer: str, metric: str = "balanced_accuracy") -> Figure:
    """One panel per layer: histograms of own-label and shuffled-label scores, chance as a dashed line."""
    frame = labeling.frame
    layers = sorted(frame["layer"].unique())
    figure = Figure(figsize=(3.2 * len(layers), 2.8))
    bins = np.linspace(0, 1, 11)
    for i, layer in enumerate(layers):
        ax = figure.add_subplot(1, len(layers), i + 1)
        part = frame[frame["layer"] == layer]
        for column, name, color in (
            (f"{scorer}_{metric}", "own label", "C0"),
            (f"{scorer}_shuffled_{metric}", "shuffled", "C1"),
        ):
            if column in part:
                ax.hist(part[column].dropna(), bins=bins, alpha=0.6, label=name, color=color)
        if f"{scorer}_chance_{metric}" in part and part[f"{scorer}_chance_{metric}"].notna().any():
            ax.axvline(
                float(part[f"{scorer}_chance_{metric}"].mean()), color="k", linestyle="--", label="chance"
            )
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(_METRIC_NAMES.get(metric, metric))
        if i == 0:
            ax.set_ylabel("experts")
            ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def check_endpoint_answers(spec: str) -> None:
    """Refuse ``--explainer openai:URL`` when nothing accepts a connection at URL (a probe of a few seconds)."""
    import os

    from tl_moe.network import unreachable_reason

    url = (
        spec.partition(":")[2]
        or os.environ.get("TL_MOE_OPENAI_BASE_URL")
        or os.environ.get("OPENAI_BASE_URL")
    )
    if not url:
        raise InputError(
            f"--explainer {spec!r} names no endpoint; accepted: openai:URL (e.g. openai:http://localhost:8000/v1), "
            "or set TL_MOE_OPENAI_BASE_URL."
        )
    reason = unreachable_reason(url)
    if reason is not None:
        raise InputError(
            f"--explainer {spec!r}: nothing answers at {url} ({reason}); accepted: the URL of a running "
            "OpenAI-compatible server (start it first), local:PATH, or offline."
        )


def check_local_explainer(spec: str) -> None:
    """Refuse ``--explainer local:PATH`` unless PATH is a ``.gguf`` file or a model folder (a ``config.json``
    beside it), before the pass rather than when the labels are due."""
    from pathlib import Path

    path = Path(spec.partition(":")[2]).expanduser()
    accepted = (
        "local:PATH of a chat model's folder (saved with save_pretrained) or of a .gguf file, or offline"
    )
    if not spec.partition(":")[2]:
        raise InputError(f"--explainer {spec!r} names no path; accepted: {accepted}.")
    if not path.exists():
        raise InputError(f"--explainer {spec!r}: {str(path)!r} does not exist; accepted: {accepted}.")
    if path.is_file() and path.suffix != ".gguf":
        raise InputError(
            f"--explainer {spec!r}: {str(path)!r} is a file but not a .gguf file; accepted: {accepted}."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise InputError(
            f"--explainer {spec!r}: {str(path)!r} is a folder without config.json; accepted: {accepted}."
        )


def check_causal_budget(dataset: Any, windows: int, seed: int = 0) -> int:
    """Before the pass: the documents the label causal checks can reach (one window per document of the
    ``causal`` split, at most ``windows``); warns, naming what helps, when fewer than ``MIN_DOCUMENTS``
    (their intervals would be reported unavailable). Returns that count (0 when the checks are off)."""
    import warnings

    import torch

    from tl_moe.analysis.splits import document_split
    from tl_moe.explain.examples import SPLIT_FRACTIONS, SPLIT_KEY, SPLITS

    if windows <= 0:
        return 0
    rows = torch.arange(len(dataset))
    split = document_split(rows, SPLIT_FRACTIONS, seed=seed, key=SPLIT_KEY)
    available = int((split == SPLITS.index("causal")).sum())
    reach = min(windows, available)
    if reach < MIN_DOCUMENTS:
        advice = (
            f"raise --explain-causal-windows to at least {MIN_DOCUMENTS}"
            if available >= MIN_DOCUMENTS
            else f"the corpus split has only {available} documents in the causal fifth: use a corpus with "
            f"at least {5 * MIN_DOCUMENTS} documents"
        )
        warnings.warn(
            f"--explain-causal-windows {windows} reaches at most {reach} documents; the label causal checks' "
            f"intervals need {MIN_DOCUMENTS} and will be reported unavailable ({advice}).",
            stacklevel=2,
        )
    return reach


class Explain(Analysis):
    """Label every expert (offline dissection, an OpenAI-compatible endpoint or a local chat model) and
    score each label on held-out documents beside chance and the shuffled-label control."""

    name = "explain"
    config_class = ExplainConfig
    title = "Automatic expert labels"
    summary = "label every expert and score the label (balanced accuracy vs a shuffled-label control and a token-set baseline)"
    default = False
    intro = (
        "Each expert's contexts come from the collection pass: top contexts by routing weight × ‖expert output‖ "
        "and contexts spread over its saliency quantiles, routed tokens marked. Documents are split by a hash "
        "of their row: labels are made from 'explain' documents and scored on 'score' documents only. Scoring "
        "items: the expert's own score-split contexts (positives) and, drawn per expert, random contexts "
        "routed elsewhere and other experts' top contexts (negatives). The offline explainer chooses among "
        "candidate labels — a token-level concept, a token set, concept ∧ or ∨ token set, concept ∨ concept, concept ∧ "
        "domain — by balanced accuracy on the explain documents, keeping the simpler label unless a composition "
        f"gains more than {RICHER_LABEL_MARGIN}; its scorer applies the label's rule to each item's target token. Reported as "
        "delphi does: balanced accuracy (headline), F1, precision, recall, AUC where graded. Controls: chance, "
        "the same scorer given another expert's label of the same layer (shuffled), and a token-set baseline "
        "(the labeler's own best token set alone, chosen on the explain documents by balanced accuracy). "
        "Intervals: bootstrap over the score documents (experts share them; balanced accuracy, F1, precision, "
        "recall, AUC and the share of experts beating their shuffled control, each expert's score recomputed in "
        "every resample; unavailable below 30 documents), and per expert over the documents of its items. Causal "
        "checks ('causal' documents, --explain-causal-windows): on the positions where the expert is routed, "
        "|Δloss| under removing or boosting it on described minus other tokens at equal mixing weight (a "
        "least-squares adjustment; the unadjusted difference beside it), labeled minus a control expert "
        "chosen by its routing at the described tokens of the explain documents (the routing rates on the "
        "causal windows show how far the two are balanced there), overall and per group of label kinds; 95% bootstrap "
        "over documents (unavailable below 30)."
    )

    def check(self, run: RunContext) -> None:
        config = run.options.config("explain")
        spec = config.explainer
        if spec != "offline" and not spec.startswith(("openai:", "local:")):
            raise InputError(f"--explainer must be offline, openai:URL or local:PATH, got {spec!r}.")
        unknown = [s for s in (config.scorers or ()) if s not in SCORERS]
        if unknown:
            raise InputError(f"--explain-scorers {unknown} unknown; choose from {', '.join(SCORERS)}.")
        if spec == "offline" and set(config.scorers or ()) - {"concept"}:
            raise InputError("the offline explainer's labels are scored by the concept scorer only "
                             "(the detection, fuzzing and intruder scorers need a language model).")  # fmt: skip
        if config.causal_windows < 0:
            raise InputError(f"--explain-causal-windows must be 0 (no causal checks) or positive, got "
                             f"{config.causal_windows}.")  # fmt: skip
        if config.concurrency < 1:
            raise InputError(f"--explain-concurrency must be positive, got {config.concurrency}.")
        if spec.startswith("openai:"):
            check_endpoint_answers(spec)
        if spec.startswith("local:"):
            check_local_explainer(spec)
        check_causal_budget(run.dataset, config.causal_windows, seed=run.options.seed)

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, ExpertExamplesSpec(seed=run.options.seed))]

    def finalize(self, run: RunContext, inputs: Inputs) -> ExplainResult:
        options, config = run.options, run.options.config("explain")
        examples = inputs[Need(run.main, ExpertExamplesSpec(seed=options.seed))]
        model = run.model(run.main)
        records = examples.records(model.tokenizer, LogitReadout.from_model(model), seed=options.seed)
        out = Path(options.out) / "explain"
        if config.explainer == "offline":
            explainer: Any = DissectionExplainer(examples)
            names = config.scorers or ("concept",)
            client = None
        else:
            client = CachedChatClient(
                client_from_spec(config.explainer, model=config.model, timeout=config.timeout,
                                 max_retries=config.retries),
                out / "cache.sqlite",
            )  # fmt: skip
            explainer = LMExplainer(client)
            names = config.scorers or ("detection",)
        factories = {
            "concept": lambda: ConceptScorer(examples.concept_names),
            "detection": lambda: DetectionScorer(client, seed=options.seed),
            "fuzzing": lambda: FuzzingScorer(client, seed=options.seed),
            "intruder": lambda: IntruderScorer(client, seed=options.seed),
        }
        scorers = [factories[name]() for name in names]
        labeling = label_experts(
            records,
            explainer,
            scorers,
            concurrency=config.concurrency,
            results_path=out / "results.jsonl",
            shuffle_seed=options.seed,
            progress=options.progress,
            # offline: the token-set baseline on the same items; with a language model it would double the requests
            baseline=TokenSetBaseline() if config.explainer == "offline" else None,
            n_resamples=options.bootstrap_resamples,
            min_documents=options.min_documents,
        )
        main = "concept" if "concept" in names else names[0]
        causal = None
        labels = [e for e in labeling.explanations.values() if e.ok and (e.rule or e.concept) is not None]
        if config.causal_windows > 0 and labels:  # every label a rule can evaluate
            causal = causal_checks(
                model, run.dataset, examples, labels,
                seq_len=options.seq_len, max_windows=config.causal_windows,
                n_resamples=options.bootstrap_resamples, seed=options.seed, progress=options.progress,
            )  # fmt: skip
        cards = expert_cards(records, labeling, examples, main)
        lens, drivers = inputs.optional_result("logit_lens"), inputs.optional_result("drivers")
        dashboard = dashboard_cards(
            records, labeling, examples, model.tokenizer, main, causal=causal,
            lens=getattr(lens, "top_tokens", None), drivers=getattr(drivers, "experts", None),
        )  # fmt: skip
        return ExplainResult(
            labeling=labeling, explainer=explainer.name, main_scorer=main, causal=causal, cards=cards,
            dashboard=dashboard,
        )  # fmt: skip

    def render(self, result: Result, section: Any, run: RunContext) -> None:
        """The default section, then the expert dashboard."""
        super().render(result, section, run)
        if isinstance(result, ExplainResult) and result.dashboard:
            section.add_dashboard(result.dashboard, "experts", DASHBOARD_CAPTION)
