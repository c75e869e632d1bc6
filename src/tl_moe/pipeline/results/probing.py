"""The probing section's :class:`ProbingResult`: both protocols' numbers as the report shows them
(metrics, findings, tables, figures, the ``results.json`` records). The methods are
:class:`~tl_moe.analysis.held_out_study.HeldOutProbing` and :class:`~tl_moe.analysis.paper_study.PaperProtocol`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.held_out_comparisons import comparison_frame
from tl_moe.analysis.held_out_probing import HeldOutArm
from tl_moe.analysis.held_out_study import HeldOutOutcome
from tl_moe.analysis.paper_study import PaperOutcome
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem
from tl_moe.pipeline.results.probing_findings import held_out_findings, interval_text, paper_findings
from tl_moe.report import TableSummary
from tl_moe.report.figures import line_plot

__all__ = ["INTRO", "PAPER", "ProbingResult"]

#: The section's introduction on the report page (both protocols, in words).
INTRO = (
    "For each concept, a logistic-regression probe (class-weighted) on the top-k neurons (ranked by "
    "|mean(pos) - mean(neg)| on the train split) of each expert, on the tokens routed to it, 75/25 "
    "split. Each concept is probed only on documents of the domains it is defined on. "
    "**Held-out protocol (the headline):** documents are split in a selection and a test half; each "
    "unit's probe is fitted on a class-balanced sample of its selection-document tokens, the unit "
    "with the best selection F1 is chosen "
    "per concept and k, and its probe's class-balanced F1 (and balanced accuracy) on the test "
    "documents is reported. Every comparison is a paired difference of mean F1 over the token-level "
    "concepts both arms probed, with a 95% bootstrap interval over test documents: MoE vs dense "
    "layers; vs dense neurons on exactly each expert's routed tokens (separates neuron selectivity "
    "from routing's pre-filtering of tokens), with all of them and with d_expert random ones per draw "
    "(as many candidates as an expert offers; the mean of 3 seeded draws), the latter with its own "
    "permuted-label null; vs random dense subsets with the routed sizes per layer "
    "and concept; vs an untrained MoE of the same config; and MoE vs dense with permuted labels "
    "(must be ~0), and the matched-count difference minus its own permuted-label null in one paired "
    "bootstrap. Every choice (concepts, units, neurons) is made on the selection documents; the "
    "test documents only score. A concept enters a comparison only if its positives and its negatives "
    "each sit in at least --min-documents test documents in every arm (decided before resampling; the "
    "dropped ones are listed with the reason). The k = 1 differences are reported per concept group, "
    "text first, in balanced accuracy with F1 beside it; the matched-count control's interval adds the "
    "variance between its random draws to the documents' (t on Satterthwaite's degrees of freedom). "
    "**Paper protocol (for comparison with published numbers), as the paper's "
    "reference code samples and scores:** per concept, each document's positives and as many of its "
    "negatives, drawn before routing; every such token a unit saw, 75/25 stratified; F1 on the test "
    "split at the class ratio routing left the unit; best test F1 over units, averaged over concepts "
    "— the maximum is taken on the reported split, which favours the many small units of an MoE, "
    "and F1 at different class ratios is not on one scale; its differences are estimates with no interval."
)
#: Prefix of the paper protocol's metrics (the numbers of the code before the held-out protocol).
PAPER = "paper protocol | "


@dataclass(frozen=True)
class ProbingResult(Result):
    """Every probe of the MoE's experts and of the dense baseline, under both protocols.

    Attributes:
        moe_units: paper protocol: one row per (layer, expert, concept, k): test F1, status, sizes.
        dense_units: paper protocol: one row per (dense layer or routing-matched draw, concept, k); None
            without a dense baseline. ``draw = -1``: the whole layer; ``draw >= 0``: a random token subset
            the size of one expert's routed set.
        curves: paper protocol: mean over the commonly probed concepts of the best F1 per k.
        near_best: paper protocol: per concept at k = 1, the best expert, its F1 and how many experts
            reach 95% of it.
        ks: the probe sizes.
        held_out: held-out protocol: arm name -> :class:`HeldOutArm` (empty when not run).
        comparisons: one row per (protocol, comparison, k): ``estimate`` (mean F1 difference), ``ci_low``,
            ``ci_high``, ``n_concepts`` and more; see docs/REPORT.md.
        notes: why a control or interval is missing, if one is.
        groups: held-out protocol at k = 1: every comparison per concept group (``group``, with the
            group's ``n_concepts`` and ``n_documents_with_positives``; no interval below the minimum
            of test documents with positives).
    """

    moe_units: pd.DataFrame
    dense_units: pd.DataFrame | None
    curves: pd.DataFrame
    near_best: pd.DataFrame
    ks: tuple[int, ...]
    held_out: dict[str, HeldOutArm] = field(default_factory=dict)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: tuple[str, ...] = ()
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def of(
        cls, paper: PaperOutcome, held_out: HeldOutOutcome, ks: Sequence[int], notes: Sequence[str] = ()
    ) -> ProbingResult:
        """The result of both protocols' outcomes; ``notes`` are added after the held-out protocol's."""
        return cls(
            moe_units=paper.moe_units,
            dense_units=paper.dense_units,
            curves=paper.curves,
            near_best=paper.near_best,
            ks=tuple(ks),
            held_out=held_out.arms,
            comparisons=comparison_frame([*held_out.records, *paper.records]),
            notes=(*held_out.notes, *notes),
            groups=held_out.group_table,
        )

    def to_frame(self) -> pd.DataFrame:
        return self.curves

    def comparison(self, protocol: str, name: str, k: int, metric: str = "f1") -> dict[str, Any]:
        """The record of one comparison (raises KeyError when it was not computed)."""
        frame = self.comparisons
        rows = frame[
            (frame["protocol"] == protocol)
            & (frame["comparison"] == name)
            & (frame["k"] == k)
            & (frame["metric"] == metric)
        ]
        if not len(rows):
            raise KeyError(f"no {protocol} comparison {name!r} at k={k} in this result.")
        return rows.iloc[0].to_dict()

    def held_out_frame(self) -> pd.DataFrame:
        """Held-out protocol: per arm, concept and k, the chosen unit and its test numbers."""
        frames = [arm.chosen.assign(arm=name) for name, arm in self.held_out.items() if len(arm.chosen)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def metrics(self) -> dict[str, Any]:
        metrics = {}
        for record in self.comparisons.to_dict("records") if len(self.comparisons) else []:
            if record["protocol"] != "held_out" or record["k"] not in (1, max(self.ks)):
                continue
            label = f"held-out | {record['comparison']} | k={record['k']}"
            if record.get("metric") == "balanced_accuracy":
                label += " | balanced accuracy"
            metrics[label] = interval_text(record)
        for name, group in self.curves.groupby("model", sort=False):
            for k in (1, max(self.ks)):
                value = group.loc[group["k"] == k, "mean_best_f1"]
                if len(value):
                    metrics[f"{PAPER}{name} | k={k}"] = round(float(value.iloc[0]), 4)
        metrics[f"{PAPER}concepts compared"] = int(self.curves["concepts"].max())
        metrics[f"{PAPER}median experts within 95% of best (k=1)"] = float(
            self.near_best["experts_near_best"].median()
        )
        for i, note in enumerate(self.notes):
            metrics[f"note {i + 1}"] = note
        return metrics

    def findings(self) -> list[str]:
        return held_out_findings(self.comparisons, self.groups) + paper_findings(self.curves)

    def records(self) -> dict[str, Any]:
        if not len(self.comparisons):
            return {}
        frame = self.comparisons.astype(object).where(self.comparisons.notna(), None)
        out = {"comparisons": frame.to_dict("records")}
        if len(self.groups):
            groups = self.groups.astype(object).where(self.groups.notna(), None)
            out["groups"] = groups.to_dict("records")
        return out

    def figures(self) -> list[FigureItem]:
        figure = line_plot(
            self.curves,
            "k",
            "mean_best_f1",
            hue="model",
            title="Paper protocol: best F1 vs k (best unit chosen on the reported split)",
            xlabel="k (neurons in the probe)",
            ylabel="mean over concepts of best test F1",
            logx=True,
        )
        figures = [FigureItem("probing_f1_vs_k", figure, "Paper protocol: mean best F1 over concepts vs k.")]
        held = None
        if len(self.comparisons):
            frame = self.comparisons
            held = frame[(frame["protocol"] == "held_out") & (frame["metric"] == "f1")]
        if held is not None and len(held):
            figures.append(
                FigureItem(
                    "probing_held_out_differences",
                    _difference_figure(held),
                    "Held-out protocol: MoE minus each control, mean F1 difference with its 95% "
                    "document-level bootstrap interval.",
                )
            )
        return figures

    def tables(self) -> list[TableItem]:
        tables = []
        if len(self.comparisons):
            tables.append(
                TableItem(
                    "probing_comparisons",
                    self.comparisons,
                    "Every comparison: mean difference (first minus second arm; F1 and balanced accuracy rows) with its 95% interval where one exists; the paper protocol's rows are estimates only (interval_unavailable_reason says why).",
                    max_rows=200,  # shown in full: 2 metrics x 7 held-out + 2 paper comparisons x every k
                )
            )
        if len(self.groups):
            tables.append(
                TableItem(
                    "probing_held_out_by_group",
                    self.groups,
                    "Held-out protocol at k = 1, per concept group: each comparison over the group's concepts, "
                    "with the group's concepts and test documents holding its positives (fewer than the "
                    "minimum: no interval).",
                    max_rows=200,
                )
            )
        held = self.held_out_frame()
        if len(held):
            tables.append(
                TableItem(
                    "probing_held_out_chosen",
                    held,
                    "Held-out protocol: per arm, concept and k, the unit chosen on the selection documents "
                    "and its F1 / balanced accuracy on the test documents.",
                    max_rows=40,
                    summary=TableSummary(
                        score="test_f1",
                        by=("arm", "k"),
                        counts=("arm",),
                        columns=("arm", "concept", "k", "unit", "selection_f1", "test_f1", "n_pos_test"),
                        top=20,
                    ),
                )
            )
        tables += [
            TableItem("probing_curves", self.curves, "Paper protocol: mean best F1 per k."),
            TableItem(
                "probing_experts_near_best",
                self.near_best.sort_values("best_f1", ascending=False).reset_index(drop=True),
                "Paper protocol, per concept at k=1: best expert, its F1, and how many experts reach 95% of it.",
                max_rows=100,  # one row per concept: shown in full
            ),
            TableItem(
                "probing_moe_units",
                self.moe_units,
                "Paper protocol: every (expert, concept, k) probe.",
                max_rows=20,
                summary=_UNITS_SUMMARY,
            ),
        ]
        if self.dense_units is not None:
            tables.append(
                TableItem(
                    "probing_dense_units",
                    self.dense_units,
                    "Paper protocol: every dense (layer or draw, concept, k) probe.",
                    max_rows=20,
                    summary=TableSummary(
                        score="f1",
                        by=("layer", "k"),
                        columns=("unit", "layer", "draw", "concept", "k", "f1", "n_pos", "n_neg"),
                        top=20,
                    ),
                )
            )
        return tables


#: How the page summarizes the per-unit probe tables (tens of thousands of rows, mostly too small to probe).
_UNITS_SUMMARY = TableSummary(
    score="f1",
    by=("layer", "k"),
    columns=("unit", "layer", "expert", "concept", "k", "f1", "n_pos", "n_neg"),
    top=20,
)


def _difference_figure(held: pd.DataFrame):
    from tl_moe.report.figures import new_figure

    fig, ax = new_figure(6.4, 4.2)
    names = list(dict.fromkeys(held["comparison"]))
    for i, name in enumerate(names):
        rows = held[held["comparison"] == name].dropna(subset=["estimate"]).sort_values("k")
        x = np.log2(rows["k"].to_numpy(dtype=float)) + (i - len(names) / 2) * 0.06
        low = rows["estimate"] - rows["ci_low"].astype(float)
        high = rows["ci_high"].astype(float) - rows["estimate"]
        ax.errorbar(
            x, rows["estimate"], yerr=[low.fillna(0), high.fillna(0)], marker="o", capsize=3, label=name
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ks = sorted(held["k"].unique())
    ax.set_xticks(np.log2(ks), [str(k) for k in ks])
    ax.set_xlabel("k (neurons in the probe)")
    ax.set_ylabel("mean F1 difference (held-out), 95% CI")
    ax.set_title("Held-out protocol: MoE minus control")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
