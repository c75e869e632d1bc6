"""k-sparse probing of expert neurons against dense FFN neurons (and the routing-matched control)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from tl_moe.analysis.concept_probing import (
    best_f1_by_k,
    experts_near_best,
    probe_dense,
    probe_experts,
    routed_counts,
)
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import DenseNeurons, ExpertNeurons
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.report.figures import line_plot

__all__ = ["Probing", "ProbingResult", "probe_settings", "probing_curves"]

MOE_CURVE = "MoE: best of layers x experts"
DENSE_CURVE = "dense: best of layers"
MATCHED_CURVE = "dense, routing-matched subsets: best of layers x draws"


def probe_settings(run: RunContext) -> dict[str, Any]:
    """Keyword arguments of :class:`~tl_moe.analysis.probing.KSparseProbe` for this run."""
    options = run.options
    return {"ks": options.probe_ks, "min_examples": options.min_examples, "random_state": options.seed}


def probing_curves(moe: pd.DataFrame, dense: pd.DataFrame | None) -> pd.DataFrame:
    """Mean over concepts of the best F1 per k, for the MoE and (if given) the dense baselines.

    Only concepts probed successfully in every compared model are averaged, so the curves
    average the same concepts.
    """
    frames = {MOE_CURVE: moe}
    if dense is not None:
        frames[DENSE_CURVE] = dense[dense["draw"] < 0]
        if (dense["draw"] >= 0).any():
            frames[MATCHED_CURVE] = dense[dense["draw"] >= 0]
    concepts = None
    for frame in frames.values():
        ok = set(frame.dropna(subset=["f1"])["concept"])
        concepts = ok if concepts is None else concepts & ok
    rows = []
    for name, frame in frames.items():
        curve = best_f1_by_k(frame[frame["concept"].isin(concepts)])
        rows.append(curve.assign(model=name))
    return pd.concat(rows, ignore_index=True).rename(columns={"mean": "mean_best_f1", "count": "concepts"})


@dataclass(frozen=True)
class ProbingResult(Result):
    """Every probe of the MoE's experts and of the dense baseline's layers.

    Attributes:
        moe_units: one row per (layer, expert, concept, k): F1 on the test split, status, sizes.
        dense_units: one row per (dense layer or routing-matched draw, concept, k); None without a
            dense baseline. ``draw = -1``: the whole layer; ``draw >= 0``: a random token subset the
            size of one expert's routed set.
        curves: mean over the commonly probed concepts of the best F1 per k, per compared model.
        near_best: per concept at k = 1, the best expert, its F1 and how many experts reach 95% of it.
        ks: the probe sizes.
    """

    moe_units: pd.DataFrame
    dense_units: pd.DataFrame | None
    curves: pd.DataFrame
    near_best: pd.DataFrame
    ks: tuple[int, ...]

    def to_frame(self) -> pd.DataFrame:
        return self.curves

    def metrics(self) -> dict[str, Any]:
        metrics = {}
        for name, group in self.curves.groupby("model", sort=False):
            for k in (1, max(self.ks)):
                value = group.loc[group["k"] == k, "mean_best_f1"]
                if len(value):
                    metrics[f"{name} | k={k}"] = round(float(value.iloc[0]), 4)
        metrics["concepts compared"] = int(self.curves["concepts"].max())
        metrics["median experts within 95% of best (k=1)"] = float(
            self.near_best["experts_near_best"].median()
        )
        return metrics

    def findings(self) -> list[str]:
        at_k1 = self.curves[self.curves["k"] == 1].set_index("model")["mean_best_f1"]
        if MOE_CURVE not in at_k1:
            return []
        text = f"**Probing, the paper's protocol** (best unit picked on the split it is scored on): at k = 1 the MoE's best expert reaches mean F1 {at_k1[MOE_CURVE]:.3f}"
        if DENSE_CURVE in at_k1:
            text += f" vs {at_k1[DENSE_CURVE]:.3f} for the dense model's best layer"
        if MATCHED_CURVE in at_k1:
            text += f" and {at_k1[MATCHED_CURVE]:.3f} for its neurons on routing-matched random token subsets"
        concepts = int(self.curves["concepts"].max())
        return [text + f", over {concepts} concepts; single split, no interval."]

    def figures(self) -> list[FigureItem]:
        figure = line_plot(
            self.curves,
            "k",
            "mean_best_f1",
            hue="model",
            title="Best F1 vs k",
            xlabel="k (neurons in the probe)",
            ylabel="mean over concepts of best test F1",
            logx=True,
        )
        return [FigureItem("probing_f1_vs_k", figure, "Mean best F1 over concepts vs k.")]

    def tables(self) -> list[TableItem]:
        tables = [
            TableItem("probing_curves", self.curves, "Mean best F1 per k."),
            TableItem(
                "probing_experts_near_best",
                self.near_best.sort_values("best_f1", ascending=False).reset_index(drop=True),
                "Per concept at k=1: best expert, its F1, and how many experts reach 95% of it.",
            ),
            TableItem("probing_moe_units", self.moe_units, "Every (expert, concept, k) probe.", max_rows=20),
        ]
        if self.dense_units is not None:
            tables.append(
                TableItem(
                    "probing_dense_units",
                    self.dense_units,
                    "Every dense (layer or draw, concept, k) probe.",
                    max_rows=20,
                )
            )
        return tables


class Probing(Analysis):
    """k-sparse probes on each expert's neurons (its routed tokens) vs the dense twin's FFN neurons."""

    name = "probing"
    title = "k-sparse probing of expert neurons"
    summary = "k-sparse probes of expert neurons vs dense FFN neurons, with a routing-matched control"
    intro = (
        "For each token-level concept, a logistic-regression probe on the top-k neurons (ranked by "
        "|mean(pos) - mean(neg)| on the train split) of each expert, on the tokens routed to it, "
        "balanced classes, 75/25 split, F1 on the held-out split. Each concept is probed only on "
        "documents of the domains it is defined on. The dense model's best-of-layers has fewer draws "
        "than the MoE's best-of-experts, so the dense model is also probed on random token subsets "
        "the sizes of the experts' routed token sets (one draw per expert)."
    )

    def check(self, run: RunContext) -> None:
        run.probed_layers()  # refuses --probe-layers that are not sparse layers

    def needs(self, run: RunContext) -> list[Need]:
        needs = [Need(run.main, ExpertNeurons(run.probed_layers()))]
        if run.dense is not None:
            needs.append(Need(run.dense, DenseNeurons()))
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> ProbingResult:
        cfg = run.config(run.main)
        layers = run.probed_layers()
        settings = probe_settings(run)
        min_examples = run.options.min_examples
        stored = inputs[Need(run.main, ExpertNeurons(layers))]
        moe = probe_experts(
            stored,
            layers,
            cfg.num_experts,
            settings,
            min_positives=min_examples,
            progress=run.options.progress,
        )
        dense = None
        if run.dense is not None:
            dense_cfg = run.config(run.dense)
            middle = layers[len(layers) // 2]
            dense = probe_dense(
                inputs[Need(run.dense, DenseNeurons())],
                dense_cfg.dense_layers,
                settings,
                min_positives=min_examples,
                routed_counts=routed_counts(stored, middle, cfg.num_experts),
                seed=run.options.seed,
            )
        return ProbingResult(
            moe_units=moe,
            dense_units=dense,
            curves=probing_curves(moe, dense),
            near_best=experts_near_best(moe, k=1),
            ks=tuple(run.options.probe_ks),
        )
