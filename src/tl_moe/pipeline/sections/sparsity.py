"""Probing F1 against routing sparsity (active ratio k / E) across the toy family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from tl_moe.analysis.concept_probing import best_f1_by_k, probe_experts
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import ExpertNeurons
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.pipeline.sections.probing import ProbingResult, probe_settings
from tl_moe.report.figures import new_figure
from tl_moe.zoo.family import TOY_FAMILY

__all__ = ["Sparsity", "SparsityResult"]

DENSE_TWIN = "dense twin"


@dataclass(frozen=True)
class SparsityResult(Result):
    """Mean best F1 per (model, k) over the concepts probed in every model of the family.

    Attributes:
        table: one row per (model, k): ``mean_best_f1``, ``concepts``, ``active_ratio``, ``experts``;
            the dense twin has active ratio 1 and one "expert".
        ks: the k values drawn in the figure (1 and the largest).
    """

    table: pd.DataFrame
    ks: tuple[int, ...]

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def metrics(self) -> dict[str, Any]:
        return {
            f"{row.model} (active ratio {row.active_ratio:g}) | k=1": round(float(row.mean_best_f1), 4)
            for row in self.table[self.table["k"] == 1].itertuples()
        }

    def findings(self) -> list[str]:
        points = self.table[self.table["k"] == 1].sort_values("active_ratio")
        trend = ", ".join(f"{row.mean_best_f1:.3f} at {row.active_ratio:g}" for row in points.itertuples())
        return [f"**Sparsity family** (paper's protocol, k = 1): mean best F1 by active ratio: {trend}."]

    def figures(self) -> list[FigureItem]:
        return [FigureItem("probing_f1_vs_sparsity", self.figure(), "Mean best F1 vs active ratio.")]

    def figure(self) -> Figure:
        fig, ax = new_figure(6.4, 4.2)
        for k in self.ks:
            points = self.table[self.table["k"] == k].sort_values("active_ratio")
            ax.plot(points["active_ratio"], points["mean_best_f1"], marker="o", label=f"k = {k}")
            for _, row in points.iterrows():
                ax.annotate(
                    row["model"].removeprefix("toy/"),
                    (row["active_ratio"], row["mean_best_f1"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("active ratio k / E (1.0 = dense twin)")
        ax.set_ylabel("mean over concepts of best test F1")
        ax.set_title("Probing F1 vs routing sparsity")
        ax.grid(alpha=0.3)
        ax.legend()
        return fig

    def tables(self) -> list[TableItem]:
        return [TableItem("probing_f1_vs_sparsity", self.table, "Mean best F1 per model and k.", max_rows=40)]


class Sparsity(Analysis):
    """Expert probing on every MoE of the toy family, against the dense twin (needs probing)."""

    name = "sparsity"
    title = "Probing F1 vs routing sparsity"
    summary = "probe every toy MoE and plot F1 vs active ratio (also: --sparsity-family)"
    intro = (
        "The toy family differs only in the number of experts (same data, steps, seed and active "
        "neurons per token). Each point is the mean over the concepts probed in every model of the best "
        "F1 over that model's layers x experts (dense twin: layers)."
    )
    depends_on = ("probing",)
    default = False

    def family(self, run: RunContext) -> list[str]:
        """The toy MoEs probed besides the analyzed model (whose probing result is reused)."""
        return [name for name, cfg in TOY_FAMILY.items() if cfg.is_moe and name != run.main]

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(name, ExpertNeurons()) for name in self.family(run)]

    def finalize(self, run: RunContext, inputs: Inputs) -> SparsityResult:
        probing: ProbingResult = inputs.result("probing")
        frames = {run.main: (run.config(run.main), probing.moe_units)}
        for name in self.family(run):
            cfg = TOY_FAMILY[name]
            stored = inputs[Need(name, ExpertNeurons())]
            frames[name] = (
                cfg,
                probe_experts(
                    stored,
                    cfg.sparse_layers,
                    cfg.num_experts,
                    probe_settings(run),
                    min_positives=run.options.min_examples,
                    progress=run.options.progress,
                    # each layer saved as it finishes, keyed by the probe options and this model's pass
                    step=run.steps(self.name, {"probe": probe_settings(run)}, [name]),
                ),
            )
        frames = dict(sorted(frames.items(), key=lambda item: item[1][0].num_experts))
        dense = probing.dense_units
        concepts = None
        for _, frame in frames.values():
            ok = set(frame.dropna(subset=["f1"])["concept"])
            concepts = ok if concepts is None else concepts & ok
        if dense is not None:
            concepts &= set(dense[dense["draw"] < 0].dropna(subset=["f1"])["concept"])
        rows = []
        for name, (cfg, frame) in frames.items():
            curve = best_f1_by_k(frame[frame["concept"].isin(concepts)])
            rows.append(curve.assign(model=name, active_ratio=cfg.active_ratio, experts=cfg.num_experts))
        if dense is not None:
            curve = best_f1_by_k(dense[(dense["draw"] < 0) & dense["concept"].isin(concepts)])
            rows.append(curve.assign(model=DENSE_TWIN, active_ratio=1.0, experts=1))
        table = pd.concat(rows, ignore_index=True).rename(
            columns={"mean": "mean_best_f1", "count": "concepts"}
        )
        return SparsityResult(table=table, ks=tuple(sorted({1, max(run.options.probe_ks)})))
