"""The explain section's Result: the labels, their scores and controls, the causal checks, and the
expert cards, as the report shows them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tl_moe.explain import LabelingResult
from tl_moe.explain.causal import CausalResult
from tl_moe.explain.examples import ExpertExamples
from tl_moe.explain.labeler import LabelOutcome
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem
from tl_moe.pipeline.results.explain_cards import expert_cards
from tl_moe.pipeline.results.explain_causal import causal_expert_table, causal_finding, causal_value
from tl_moe.pipeline.results.explain_dashboard import dashboard_cards
from tl_moe.pipeline.results.explain_findings import METRIC_NAMES, _f1_below_chance, labels_finding
from tl_moe.report.dashboard import ExpertCard
from tl_moe.report.numbers import format_interval, is_defined

__all__ = ["ExplainResult", "explain_result", "f1_histograms"]


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
            m = METRIC_NAMES.get(row["metric"], row["metric"])
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
            if is_defined(row.get("own - chance")):
                out[f"{key}: own - chance {m} [95% CI]"] = _interval(
                    row["own - chance"], row["chance diff ci low"], row["chance diff ci high"],
                    row.get("interval unavailable", ""),
                )  # fmt: skip
            for name in ("bootstrap bias", "position in interval"):  # the mean's interval's diagnostics
                if is_defined(row.get(name)):
                    out[f"{key}: mean {m} | {name}"] = round(float(row[name]), 4)
            if row["metric"] == "balanced_accuracy" or row["metric"] == "accuracy":
                out[f"{key}: experts scored / not scored"] = (
                    f"{row['experts scored']} / {row['experts not scored']}"
                )
        kinds = self.labeling.frame.get("kind")
        if kinds is not None and kinds.notna().any():
            out["label kinds"] = ", ".join(f"{k} {n}" for k, n in kinds.value_counts().items())
        if self.causal is not None:
            for row in self.causal.summary.to_dict("records"):
                out[f"causal: {row['quantity']} [95% CI]"] = causal_value(row)
            out["causal: windows / documents"] = f"{self.causal.n_windows} / {self.causal.n_documents}"
            for row in self.causal.balanced.to_dict("records"):  # experts whose control is balanced
                out[f"causal, balanced controls ({row['experts']} experts): {row['quantity']} [95% CI]"] = (
                    causal_value(row)
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
                      "interval of the difference over the documents of the expert's items, the token-set baseline's (the labeler's best token set); F1 with its interval over the same documents (unavailable below --min-documents), "
                      "chance F1 (answering 'yes' to every item), precision, recall, AUC where graded.", max_rows=200),
            TableItem("explain_summary", self.labeling.summary.round(4), "Per layer and metric: mean over experts "
                      "with a 95% bootstrap interval over the score documents ('interval over': documents for "
                      "balanced accuracy, F1, precision, recall, AUC — each expert's score recomputed in every resample; unavailable below --min-documents documents), "
                      "the shuffled-label control and the token-set baseline with the paired differences, chance."),
        ] + ([TableItem("explain_causal", self.causal.summary.round(4), "Causal checks on held-out documents, on "
              "the positions where each expert is routed: mean over experts of |Δloss| on label-described minus "
              "other routed positions, removing or boosting the expert, unadjusted and at equal mixing weight "
              "(_weight_adjusted: least-squares adjustment for the expert's mixing weight); the same for a "
              "control expert of the layer chosen by its routing at the described tokens of the explain documents, and their difference "
              "(labeled_minus_control); routing rates and mixing weights at described and other positions; the "
              "control's balance at the described positions of the causal windows (labeled − control routing rate "
              "and its standardized difference, |d| ≤ 0.1 read as balanced); "
              f"95% bootstrap intervals over documents (unavailable, with the reason, below {self.causal.min_documents} "
              "documents, or when fewer hold a described routed position). DLA rank-1 rate: the paper's check, labeled − "
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
                                    f"documents (unavailable, with the reason, below {self.causal.min_documents} "
                                    "documents), and their balance on the causal windows."))  # fmt: skip
        if len(self.causal.by_kind):
            tables.append(TableItem("explain_causal_by_kind", self.causal.by_kind.round(4), "Causal checks per "
                                    "group of label kinds (one concept, one token set, a composition): mean over the "
                                    "group's experts with a 95% bootstrap interval over documents (unavailable, with "
                                    f"the reason, below {self.causal.min_documents} documents)."))  # fmt: skip
        return tables

    def figures(self) -> list[FigureItem]:
        return [FigureItem("explain_f1_histograms", f1_histograms(self.labeling, self.main_scorer),
                           "Balanced accuracy of each expert's own label vs another expert's label, per layer; "
                           "dashed: chance (0.5).")]  # fmt: skip


def explain_result(
    outcome: LabelOutcome,
    examples: ExpertExamples,
    tokenizer: Any,
    *,
    lens: pd.DataFrame | None = None,
    drivers: pd.DataFrame | None = None,
) -> ExplainResult:
    """The section's Result of a labeling ``outcome``, with its browse table and dashboard cards
    (``lens``: the logit-lens analysis' top tokens; ``drivers``: the drivers analysis' per-expert table)."""
    records, labeling, main = list(outcome.records), outcome.labeling, outcome.main_scorer
    cards = expert_cards(records, labeling, examples, main)
    dashboard = dashboard_cards(
        records, labeling, examples, tokenizer, main, causal=outcome.causal, lens=lens, drivers=drivers
    )
    return ExplainResult(
        labeling=labeling, explainer=outcome.explainer, main_scorer=main, causal=outcome.causal, cards=cards,
        dashboard=dashboard,
    )  # fmt: skip


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
        ax.set_xlabel(METRIC_NAMES.get(metric, metric))
        if i == 0:
            ax.set_ylabel("experts")
            ax.legend(fontsize=7)
    figure.tight_layout()
    return figure
