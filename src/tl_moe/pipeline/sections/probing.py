"""k-sparse probing of expert neurons against dense FFN neurons: two protocols side by side, with controls.

- **held-out** (the headline): units chosen on selection documents, F1 reported on disjoint test
  documents (:mod:`tl_moe.analysis.held_out_probing`), every comparison a paired difference with a
  document-level bootstrap interval; controls in the same run: dense neurons on each expert's routed
  tokens (all of them, and d_expert random ones per draw), routing-matched random subsets, an untrained
  MoE of the same config, permuted labels (MoE vs dense, and MoE vs the matched-count control).
- **paper** (for comparison with published numbers, labelled as such): sampled, split and scored as
  the paper's reference code does (:data:`~tl_moe.analysis.concept_probing.PAPER_PROTOCOL`); best
  test F1 over units, averaged over concepts (arXiv 2604.02178); its maximum is taken on the split
  it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.activations import StoredTokens
from tl_moe.analysis.bounded_store import BoundedStoredTokens
from tl_moe.analysis.concept_probing import (
    PAPER_PROTOCOL,
    best_f1_by_k,
    experts_near_best,
    probe_dense,
    probe_experts,
    routed_counts,
)
from tl_moe.analysis.configs import ProbingConfig
from tl_moe.analysis.held_out_probing import (
    ROUTED_COUNT_DRAWS,
    SWAP_PERMUTATIONS,
    HeldOutArm,
    compare,
    dense_layer_blocks,
    dense_matched_blocks,
    dense_routed_blocks,
    dense_routed_count_blocks,
    expert_blocks,
    held_out_arm,
    is_document_concept,
    layer_map,
    permuted_labels,
)
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import cluster_bootstrap
from tl_moe.collect.steps import Step, run_now
from tl_moe.data.concepts import KNOWN_CONCEPTS
from tl_moe.errors import AnalysisUnavailable, InputError
from tl_moe.models.hook_names import get_act_name
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import DenseNeurons, ExpertNeurons
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, OptionLimit, Result, TableItem
from tl_moe.report import TableSummary
from tl_moe.report.figures import line_plot
from tl_moe.report.numbers import format_number

#: The matched-count routed-token control (d_expert random dense neurons per draw) and its permuted null.
ROUTED_COUNT = "dense_on_routed_tokens_matched_count"
ROUTED_COUNT_PERMUTED = "dense_on_routed_tokens_matched_count_permuted_labels"

__all__ = [
    "ARM_DRAWS",
    "COMPARISONS",
    "DETERMINISTIC",
    "ONE_RANDOM_DRAW",
    "RANDOM_DRAWS",
    "comparison_draws",
    "LEAD_GROUP",
    "LEAD_METRIC",
    "NULL_CORRECTED",
    "held_out_comparisons",
    "ROUTED_COUNT",
    "ROUTED_COUNT_PERMUTED",
    "Probing",
    "ProbingResult",
    "concept_group",
    "group_comparisons",
    "held_out_probing",
    "paper_comparisons",
    "probe_settings",
    "probing_curves",
]

#: Held-out comparisons: name -> (arm, arm it is compared with); estimate = mean F1(first) - mean F1(second).
#: An arm probed in seeded draws is stored as ``name[0]``, ``name[1]``, ... and compared as one control
#: (per concept, the mean over its draws; :func:`~tl_moe.analysis.held_out_probing.compare`).
COMPARISONS = {
    "moe_vs_dense": ("moe", "dense"),
    "moe_vs_dense_on_routed_tokens": ("moe", "dense_on_routed_tokens"),
    "moe_vs_dense_on_routed_tokens_matched_count": ("moe", ROUTED_COUNT),
    "moe_vs_matched_subsets": ("moe", "dense_matched_subsets"),
    "moe_vs_untrained": ("moe", "untrained_moe"),
    "permuted_labels": ("moe_permuted_labels", "dense_permuted_labels"),
    "permuted_labels_on_routed_tokens": ("moe_permuted_labels", ROUTED_COUNT_PERMUTED),
}
#: Differences tested against their own null: name -> ((arm, control), (arm, control) with permuted labels);
#: estimate = (mean score(arm) - mean score(control)) - (the same with labels permuted), one document
#: bootstrap of the whole (:func:`~tl_moe.analysis.held_out_probing.compare` with ``null``).
NULL_CORRECTED = {
    "matched_count_minus_its_null": (("moe", ROUTED_COUNT), ("moe_permuted_labels", ROUTED_COUNT_PERMUTED)),
}
#: How a held-out arm is drawn. DETERMINISTIC: the same units and tokens for every seed (the MoE's experts,
#: the dense layers, all dense neurons on each expert's routed tokens). ONE_RANDOM_DRAW: one seeded random
#: draw that every test of it holds fixed, so the test is conditional on that draw (the routing-matched
#: token subsets, the untrained initialization, a permutation of the labels). RANDOM_DRAWS: the mean of
#: several seeded draws (``d_expert`` random dense neurons); it has one draw only when that draw is every
#: neuron of the dense layer (``d_expert`` >= ``d_mlp``), which is then deterministic.
DETERMINISTIC, ONE_RANDOM_DRAW, RANDOM_DRAWS = "deterministic", "one random draw", "random draws"
ARM_DRAWS = {
    "moe": DETERMINISTIC,
    "dense": DETERMINISTIC,
    "dense_on_routed_tokens": DETERMINISTIC,
    ROUTED_COUNT: RANDOM_DRAWS,
    "dense_matched_subsets": ONE_RANDOM_DRAW,
    "untrained_moe": ONE_RANDOM_DRAW,
    "moe_permuted_labels": ONE_RANDOM_DRAW,
    "dense_permuted_labels": ONE_RANDOM_DRAW,
    ROUTED_COUNT_PERMUTED: RANDOM_DRAWS,
}


def comparison_draws(comparison: str, n_draws: int | None = None) -> str:
    """How a held-out comparison's arms are drawn (:data:`ARM_DRAWS`): ONE_RANDOM_DRAW if any arm is one
    random draw held fixed (a RANDOM_DRAWS arm with several draws is not: its draws' variation is tested),
    else RANDOM_DRAWS if an arm averages several draws (``n_draws`` > 1), else DETERMINISTIC.

    Raises:
        KeyError: ``comparison`` is not one of :data:`COMPARISONS` or :data:`NULL_CORRECTED`.
    """
    if comparison in COMPARISONS:
        arms = COMPARISONS[comparison]
    elif comparison in NULL_CORRECTED:
        arms = tuple(arm for pair in NULL_CORRECTED[comparison] for arm in pair)
    else:
        raise KeyError(
            f"unknown held-out comparison {comparison!r}; known: {sorted({*COMPARISONS, *NULL_CORRECTED})}"
        )
    kinds = {ARM_DRAWS[arm] for arm in arms}
    several = (n_draws or 1) > 1
    if ONE_RANDOM_DRAW in kinds:
        return ONE_RANDOM_DRAW
    if RANDOM_DRAWS in kinds and several:
        return RANDOM_DRAWS
    return DETERMINISTIC  # a RANDOM_DRAWS arm with one draw holds every neuron


#: The metric every held-out headline leads with: balanced accuracy, chance 0.5 for any probe (F1's
#: chance level moves with how often a probe says positive; docs/METHODS.md). F1 is shown beside it.
LEAD_METRIC = "balanced_accuracy"
#: The concept group the held-out findings lead with (every token-level group is reported on its own).
LEAD_GROUP = "text"
#: Prefix of the paper protocol's metrics (the numbers of the code before the held-out protocol).
PAPER = "paper protocol | "

MOE_CURVE = "MoE: best of layers x experts"
DENSE_CURVE = "dense: best of layers"
MATCHED_CURVE = "dense, routing-matched subsets: best of layers x draws"


def probe_settings(run: RunContext) -> dict[str, Any]:
    """Keyword arguments of :class:`~tl_moe.analysis.probing.KSparseProbe` for this run."""
    probing = run.options.config("probing")
    return {"ks": probing.ks, "min_examples": probing.min_examples, "random_state": run.options.seed}


def probing_steps(run: RunContext, analysis: str, models: list[str]) -> Step:
    """The resumable steps of probing ``models``: each finished layer / arm saved in ``OUT/checkpoints``.

    Keyed by the probing options and the pass identities of ``models``, so a rerun resumes after the
    last finished unit and a changed model, corpus or option recomputes (docs/RUNS.md).
    """
    options = run.options
    settings = {
        "probe": probe_settings(run),
        "paper_protocol": PAPER_PROTOCOL,
        "probe_layers": list(run.probed_layers()),
        "held_out_min_examples": run.options.config("probing").held_out_min_examples,
        "selection_fraction": options.selection_fraction,
        # 2: units, concepts and choices decided on the selection documents alone (saved steps of the
        # earlier rule, which also required test-side counts, are not reused).
        "held_out_rule": 2,
    }
    return run.steps(analysis, settings, models)


def probing_curves(moe: pd.DataFrame, dense: pd.DataFrame | None) -> pd.DataFrame:
    """Mean over concepts of the best F1 per k, for the MoE and (if given) the dense baselines.

    Only token-level concepts probed successfully in every compared model are averaged, so the curves
    average the same concepts (document-level ``domain_*`` / ``language_*`` concepts are left out, as
    in every comparison).
    """
    frames = {MOE_CURVE: moe}
    if dense is not None:
        frames[DENSE_CURVE] = dense[dense["draw"] < 0]
        if (dense["draw"] >= 0).any():
            frames[MATCHED_CURVE] = dense[dense["draw"] >= 0]
    concepts = None
    for frame in frames.values():
        ok = {c for c in frame.dropna(subset=["f1"])["concept"] if not is_document_concept(c)}
        concepts = ok if concepts is None else concepts & ok
    rows = []
    for name, frame in frames.items():
        curve = best_f1_by_k(frame[frame["concept"].isin(concepts)])
        rows.append(curve.assign(model=name))
    return pd.concat(rows, ignore_index=True).rename(columns={"mean": "mean_best_f1", "count": "concepts"})


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
            metrics[label] = _interval_text(record)
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
        return self._held_out_findings() + self._paper_findings()

    def _held_out_findings(self) -> list[str]:
        """One finding per concept group (:data:`LEAD_GROUP` first), then the pooled comparison, each led
        by :data:`LEAD_METRIC` with F1 beside it."""
        if not len(self.comparisons):
            return ["**Probing, held-out protocol**: not available in this run (see the probing notes)."]
        findings = []
        groups = self.groups.astype(object).where(self.groups.notna(), None).to_dict("records")
        for group in dict.fromkeys(r["group"] for r in groups):
            rows = [r for r in groups if r["group"] == group and r["k"] == 1]
            findings.append(_held_out_finding(rows, f"{group} concepts"))
        pooled = [
            r
            for r in self.comparisons.astype(object).where(self.comparisons.notna(), None).to_dict("records")
            if r["protocol"] == "held_out" and r["k"] == 1
        ]
        kept = sorted({r["group"] for r in groups if r.get("n_concepts")})
        if len(kept) != 1:  # one group kept: the pooled comparison is that group's
            what = "all token-level concepts that pass the gate, pooled" + (
                f" ({', '.join(kept)})" if kept else ""
            )
            findings.append(_held_out_finding(pooled, what))
        findings = [f for f in findings if f]
        return findings or [
            "**Probing, held-out protocol**: not available in this run (see the probing notes)."
        ]

    def _paper_findings(self) -> list[str]:
        at_k1 = self.curves[self.curves["k"] == 1].set_index("model")["mean_best_f1"]
        if MOE_CURVE not in at_k1:
            return []
        text = (
            "**Probing, the paper's protocol** (as its reference code: per-document balanced sample, F1 at "
            "each unit's routed class ratio, best unit picked on the split it is scored on): at k = 1 the "
            f"MoE's best expert reaches mean F1 {format_number(at_k1[MOE_CURVE], '.3f', NO_UNIT)}"
        )
        if DENSE_CURVE in at_k1:
            text += (
                f" vs {format_number(at_k1[DENSE_CURVE], '.3f', NO_UNIT)} for the dense model's best layer"
            )
        if MATCHED_CURVE in at_k1:
            text += (
                f" and {format_number(at_k1[MATCHED_CURVE], '.3f', NO_UNIT)} for its neurons on routing-matched random "
                "token subsets"
            )
        concepts = int(self.curves["concepts"].max())
        return [
            text
            + f", over {concepts} concepts; single split, estimates only (no interval: the units are picked on the split they are scored on, and concepts share documents)."
        ]

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
                    "Every comparison: mean F1 difference (first minus second arm) with its 95% interval.",
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


#: Why a mean F1 is undefined: no (unit, concept) had enough positives and negatives.
NO_UNIT = "no unit had enough examples of a concept"


#: How the held-out findings name each comparison (MoE first, the control second).
_FINDING_LABELS = {
    "moe_vs_dense_on_routed_tokens_matched_count": (
        "vs d_expert random dense neurons on each expert's routed tokens (matched neuron count, mean of the "
        "draws; count-matched, the fair comparison of neuron selection; all dense neurons on the routed tokens, "
        "listed after it, is the stricter control)"
    ),
    "matched_count_minus_its_null": (
        "that difference minus its own permuted-label null ((MoE − control) − the same with labels permuted)"
    ),
    "moe_vs_dense_on_routed_tokens": "vs all dense neurons on each expert's routed tokens",
    "moe_vs_dense": "vs the dense model",
    "moe_vs_matched_subsets": (
        "vs dense neurons on routing-matched token subsets (one seeded draw of the subsets; the interval is "
        "conditional on it)"
    ),
    "moe_vs_untrained": "vs the untrained MoE (one random initialization; the interval is conditional on it)",
    "permuted_labels": (
        "MoE − dense with labels permuted (the protocol's own bias, ≈ 0 expected; one permutation, the "
        "interval conditional on it)"
    ),
    "permuted_labels_on_routed_tokens": "MoE − the matched-count control with labels permuted (≈ 0 expected)",
}
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "class-balanced F1"}


def _with_positives(record: dict) -> str:
    """`` (positives in n of them)``: the test documents holding a positive of a kept concept, which bound
    how many independent units carry the positive class."""
    n = record.get("n_documents_with_positives")
    return f" (a kept concept's positives in {_count(n)} of them)" if n is not None else ""


def _held_out_finding(records: list[dict], what: str) -> str:
    """The k = 1 held-out finding over ``records`` (one concept group's, or the pooled ones): every
    comparison in :data:`LEAD_METRIC` with F1 beside it, the concepts kept and dropped by the gate."""
    by = {(r["comparison"], r.get("metric") or "f1"): r for r in records}
    lead = by.get(("moe_vs_dense", LEAD_METRIC)) or next(
        (r for r in records if (r.get("metric") or "f1") == LEAD_METRIC), None
    )
    if lead is None:
        return ""
    head = (
        f"**Probing, held-out protocol, {what}** (unit chosen on selection documents, expert minus control "
        f"at k = 1 on {_count(lead.get('n_documents'))} test documents{_with_positives(lead)}, "
        f"{METRIC_NAMES[LEAD_METRIC]} first, class-balanced F1 in brackets, nominal 95% document intervals: "
        "percentile bootstraps, which under-cover when few documents hold the positives, except the "
        "count-matched control's and its null-corrected difference's, t intervals over the control's random "
        "draws and the documents; docs/METHODS.md, held-out protocol)"
    )
    counts = f"{_count(lead.get('n_concepts'))} concepts kept" + (
        f", {_count(lead['n_concepts_dropped'])} dropped by the gate"
        if lead.get("n_concepts_dropped")
        else ""
    )
    if lead.get("estimate") is None:
        reason = lead.get("interval_unavailable_reason") or "not computed"
        return f"{head}: no estimate ({reason}; {counts}){_dropped_example(lead)}."
    parts = []
    for name, label in _FINDING_LABELS.items():
        first, f1 = by.get((name, LEAD_METRIC)), by.get((name, "f1"))
        if first is None or first.get("estimate") is None:
            continue
        text = f"{label} {_short_interval(first)}"
        if f1 is not None and f1.get("estimate") is not None:
            text += f" (F1 {_short_interval(f1)})"
        parts.append(text)
    return f"{head}, {counts}{_dropped_example(lead)}: " + "; ".join(parts) + "."


def _count(value) -> int:
    """A count read back from a table (a float where the column holds a missing value), as an integer."""
    return int(value or 0)


def _dropped_example(record: dict) -> str:
    """The first concept the gate dropped, with its reason (the record lists them all)."""
    dropped = record.get("dropped_concepts")
    if not dropped:
        return ""
    first = dropped.split("; ")[0]
    return f" (e.g. {first})"


def _short_interval(record: dict) -> str:
    text = f"{record['estimate']:+.4f}"
    if record.get("interval_available"):
        return text + f" [{record['ci_low']:+.4f}, {record['ci_high']:+.4f}]"
    return text + f" (no interval: {record.get('interval_unavailable_reason')})"


def _interval_text(record: dict) -> str:
    if record.get("estimate") is None or (
        isinstance(record["estimate"], float) and np.isnan(record["estimate"])
    ):
        return f"unavailable ({record.get('interval_unavailable_reason')})"
    text = f"{record['estimate']:+.4f}"
    if record.get("interval_available"):
        text += f" [{record['ci_low']:+.4f}, {record['ci_high']:+.4f}]"
    else:
        text += f" (no interval: {record.get('interval_unavailable_reason')})"
    return text + f"; {record['a_mean']:.4f} vs {record['b_mean']:.4f}, {record['n_concepts']} concepts"


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


def paper_comparisons(
    moe: pd.DataFrame, dense: pd.DataFrame | None, *, n_resamples: int = 2000, seed: int = 0
) -> list[dict]:
    """Paper protocol: mean over concepts of best-F1 differences, with a bootstrap over CONCEPTS.

    Its units are chosen on the split it reports and its test split is of tokens, not documents, so
    no document-level interval exists for it; the concept bootstrap says only how much the mean would
    move with other concepts. Document-level concepts are left out, as in the held-out records.
    """
    if dense is None:
        return []
    arms = {
        "moe_vs_dense": dense[dense["draw"] < 0],
        "moe_vs_matched_subsets": dense[dense["draw"] >= 0],
    }
    records = []

    def best(frame: pd.DataFrame) -> pd.Series:
        ok = frame.dropna(subset=["f1"])
        ok = ok[~ok["concept"].map(is_document_concept)]
        return ok.groupby(["k", "concept"])["f1"].max()

    moe_best = best(moe)
    for name, frame in arms.items():
        if not len(frame):
            continue
        other = best(frame)
        for k in sorted(moe_best.index.get_level_values("k").unique()):
            a, b = moe_best.get(k), other.get(k) if k in other.index.get_level_values("k") else None
            if a is None or b is None:
                continue
            both = a.index.intersection(b.index)
            diff = (a[both] - b[both]).to_numpy()
            interval = cluster_bootstrap(
                lambda w, d=diff: (w @ d) / w.sum(1),
                len(diff),
                n_resamples=n_resamples,
                seed=seed,
                on_too_few="unavailable",
                what=f"the paper-protocol {name} at k={k} (concepts)",
            )
            record = {
                "protocol": "paper",
                "comparison": name,
                "k": int(k),
                "metric": "f1",
                **interval.to_dict(),
            }
            record.pop("n_documents")
            record.update(
                first="moe",
                second="dense" if name == "moe_vs_dense" else "dense_routing_matched_draws",
                n_concepts=len(diff),
                n_documents=None,
                interval_over="concepts",
                a_mean=float(a[both].mean()),
                b_mean=float(b[both].mean()),
            )
            records.append(record)
    return records


def concept_group(name: str) -> str:
    """The concept library's group of a concept (``code``, ``text``, ``pos``, ...; ``other`` if unknown)."""
    concept = KNOWN_CONCEPTS.get(name)
    return concept.group if concept is not None else "other"


def group_comparisons(
    arms: dict[str, HeldOutArm], *, n_resamples: int, seed: int, min_clusters: int, k: int = 1
) -> list[dict]:
    """Every held-out comparison at ``k`` restricted to each concept group (the concept library's groups).

    One record per (comparison, group, metric), as :func:`compare`'s plus ``group``, :data:`LEAD_GROUP`
    first. Each concept passes :func:`compare`'s per-concept gate (positives and negatives in at least
    ``min_clusters`` test documents in every arm) or is listed in ``dropped_concepts`` with the reason; a
    group none of whose concepts passes has no estimate (the reason says so).
    """
    if "moe" not in arms:
        return []
    groups: dict[str, list[str]] = {}
    for name in arms["moe"].concepts:
        if not is_document_concept(name):
            groups.setdefault(concept_group(name), []).append(name)
    if k not in arms["moe"].ks:
        return []
    records = []
    for group in sorted(groups, key=lambda g: (g != LEAD_GROUP, g)):
        for record in held_out_comparisons(
            arms,
            n_resamples=n_resamples,
            seed=seed,
            min_clusters=min_clusters,
            concepts=set(groups[group]),
            ks=(k,),
            what=f", {group} concepts",
        ):
            records.append({"protocol": "held_out", "group": group, **record})
    return records


def arm_draws(arms: dict[str, HeldOutArm], name: str) -> list[HeldOutArm]:
    """The arm ``name``, or its seeded draws ``name[0]``, ``name[1]``, ... (empty: not computed)."""
    if name in arms:
        return [arms[name]]
    return [arm for key, arm in arms.items() if key.startswith(name + "[")]


def usable_on_selection(stored: StoredTokens, selection: torch.Tensor, min_positives: int) -> StoredTokens:
    """``stored`` with the concept columns that have ``min_positives`` positive tokens on the SELECTION
    documents (``selection``: ``[token]`` mask); the test documents are never counted to keep a concept."""
    positives = stored.labels[selection].sum(0)
    keep = [c for c in range(stored.labels.shape[1]) if int(positives[c]) >= min_positives]
    if not keep:
        raise AnalysisUnavailable(
            f"No concept has {min_positives} positive tokens on the selection documents; collect more tokens."
        )
    return stored.with_concepts(keep)


def held_out_probing(
    run: RunContext,
    moe: StoredTokens,
    dense: StoredTokens | None,
    untrained: StoredTokens | None,
    layers: tuple[int, ...],
    step: Step = run_now,
    *,
    model: str | None = None,
    permuted: bool = True,
    routed_null: bool = True,
) -> tuple[dict[str, HeldOutArm], list[dict], list[str]]:
    """The held-out protocol's arms and their comparisons (records), plus notes on what is missing.

    Args:
        moe, dense, untrained: stored tokens of the MoE, the dense baseline and the untrained null
            (None: that arm and its comparisons are left out).
        layers: the MoE's probed sparse layers.
        step: how each arm, and each block of units inside it, runs (see :func:`probing_steps`).
        model: the MoE's name in the run (default: the analyzed model; the sparsity family passes
            each of its members).
        permuted: also probe both models with permuted labels (the protocol's own bias).
        routed_null: also probe the MoE and the matched-count routed-token control with permuted labels
            (the same permutation in both: that control's own null).
    """
    options = run.options
    cfg = run.config(run.main if model is None else model)
    params = probe_settings(run)
    minimum = run.options.config("probing").held_out_min_examples
    notes: list[str] = []
    if moe.doc_index is None:
        raise ValueError("the held-out protocol needs document ids in the stored tokens.")

    def split(stored: StoredTokens) -> torch.Tensor:
        side = document_split(
            stored.doc_index.numpy(),
            (options.selection_fraction, 1 - options.selection_fraction),
            seed=options.seed,
            min_per_side=options.min_documents,
        )
        return torch.from_numpy(side == 0)

    selection = split(moe)
    moe = usable_on_selection(moe, selection, minimum)
    test_docs = [moe.doc_index[~selection].numpy()]
    if dense is not None:
        dense_selection = split(dense)
        dense = usable_on_selection(dense, dense_selection, minimum)
        test_docs.append(dense.doc_index[~dense_selection].numpy())
    if untrained is not None:
        untrained_selection = split(untrained)
        untrained = usable_on_selection(untrained, untrained_selection, minimum)
        test_docs.append(untrained.doc_index[~untrained_selection].numpy())
    docs = np.unique(np.concatenate(test_docs))

    def arm(name, stored, blocks, side, labels=None) -> HeldOutArm:
        return held_out_arm(name, stored, blocks, side, docs, params, minimum, labels=labels, step=step)

    arms = {"moe": arm("moe", moe, expert_blocks(moe, layers, cfg.num_experts), selection)}
    moe_permuted = permuted_labels(moe, seed=options.seed + 1)
    if dense is not None:
        dense_cfg = run.config(run.dense)
        arms["dense"] = arm(
            "dense", dense, dense_layer_blocks(dense, dense_cfg.dense_layers), dense_selection
        )
        aligned = moe.token_index.shape == dense.token_index.shape and torch.equal(
            moe.input_ids, dense.input_ids
        )
        if aligned:
            mapping = layer_map(layers, dense_cfg.dense_layers, cfg.n_layers, dense_cfg.n_layers)
            # The dense model's stored tokens with the MoE's concept columns (same tokens, same labels).
            dense_as_moe = StoredTokens(
                moe.token_index,
                moe.input_ids,
                moe.domain,
                moe.labels,
                dense.rows,
                moe.domain_names,
                moe.concept_names,
                moe.doc_index,
            )
            arms["dense_on_routed_tokens"] = arm(
                "dense_on_routed_tokens",
                dense_as_moe,
                dense_routed_blocks(moe, dense_as_moe, layers, cfg.num_experts, mapping),
                selection,
            )
            arms["dense_matched_subsets"] = arm(
                "dense_matched_subsets",
                dense_as_moe,
                dense_matched_blocks(moe, dense_as_moe, layers, cfg.num_experts, mapping, seed=options.seed),
                selection,
            )

            def routed_count_arms(name: str, labels=None) -> dict[str, HeldOutArm]:
                """The matched-count routed-token control: one arm per draw of d_expert dense neurons."""
                d_mlp = dense.rows[get_act_name("neuron", dense_cfg.dense_layers[0])].shape[-1]
                draws = ROUTED_COUNT_DRAWS if d_mlp > cfg.d_expert else 1  # all neurons: one draw is all
                return {
                    f"{name}[{d}]": arm(
                        f"{name}[{d}]",
                        dense_as_moe,
                        dense_routed_count_blocks(
                            moe, dense_as_moe, layers, cfg.num_experts, mapping, cfg.d_expert, d, options.seed
                        ),
                        selection,
                        labels=labels,
                    )
                    for d in range(draws)
                }

            arms.update(routed_count_arms(ROUTED_COUNT))
            if routed_null:
                arms["moe_permuted_labels"] = arm(
                    "moe_permuted_labels",
                    moe,
                    expert_blocks(moe, layers, cfg.num_experts),
                    selection,
                    labels=moe_permuted,
                )
                arms.update(routed_count_arms(ROUTED_COUNT_PERMUTED, labels=moe_permuted))
        else:
            notes.append(
                "the dense model's stored tokens differ from the MoE's (another tokenizer, or a probing "
                "store full at --probe-rows-per-class keeps different tokens per model): the dense-on-routed-"
                "tokens and matched-subset controls need the same tokens and were not computed."
            )
    if dense is not None and permuted:
        if "moe_permuted_labels" not in arms:
            arms["moe_permuted_labels"] = arm(
                "moe_permuted_labels",
                moe,
                expert_blocks(moe, layers, cfg.num_experts),
                selection,
                labels=moe_permuted,
            )
        arms["dense_permuted_labels"] = arm(
            "dense_permuted_labels",
            dense,
            dense_layer_blocks(dense, dense_cfg.dense_layers),
            dense_selection,
            labels=permuted_labels(dense, seed=options.seed + 2),
        )
    if untrained is not None:
        arms["untrained_moe"] = arm(
            "untrained_moe", untrained, expert_blocks(untrained, layers, cfg.num_experts), untrained_selection
        )
    elif not run.options.config("probing").skip_untrained_null and model is None:
        notes.append("the untrained null was not computed.")

    records = [
        {"protocol": "held_out", **record, "interval_over": "test documents"}
        for record in held_out_comparisons(
            arms,
            n_resamples=options.bootstrap_resamples,
            seed=options.seed,
            min_clusters=options.min_documents,
            permutations=max(options.permutations, SWAP_PERMUTATIONS),
        )
    ]
    return arms, records, notes


def held_out_comparisons(
    arms: dict[str, HeldOutArm],
    *,
    n_resamples: int,
    seed: int,
    min_clusters: int,
    permutations: int = 0,
    concepts: set[str] | None = None,
    ks: tuple[int, ...] | None = None,
    what: str = "",
) -> list[dict]:
    """Every comparison of :data:`COMPARISONS` and :data:`NULL_CORRECTED` whose arms were computed: the
    records of :func:`~tl_moe.analysis.held_out_probing.compare` with ``comparison``, ``first``, ``second``.
    ``permutations`` > 0 adds each plain comparison's document swap test (``swap_p``)."""
    records = []
    for name, (first, second) in COMPARISONS.items():
        controls = arm_draws(arms, second)
        if first not in arms or not controls:
            continue
        for record in compare(
            arms[first],
            controls,
            n_resamples=n_resamples,
            seed=seed,
            min_clusters=min_clusters,
            permutations=permutations,
            concepts=concepts,
            ks=ks,
            what=f"{name}{what}",
        ):
            records.append({"comparison": name, **record, "first": first, "second": second})
    for name, ((first, second), (null_first, null_second)) in NULL_CORRECTED.items():
        controls, null_controls = arm_draws(arms, second), arm_draws(arms, null_second)
        if first not in arms or null_first not in arms or not controls or not null_controls:
            continue
        for record in compare(
            arms[first],
            controls,
            null=(arms[null_first], null_controls),
            n_resamples=n_resamples,
            seed=seed,
            min_clusters=min_clusters,
            concepts=concepts,
            ks=ks,
            what=f"{name}{what}",
        ):
            records.append({"comparison": name, **record, "first": first, "second": second})
    return records


class Probing(Analysis):
    """k-sparse probes on each expert's neurons (its routed tokens) vs the dense twin's FFN neurons."""

    name = "probing"
    config_class = ProbingConfig
    title = "k-sparse probing of expert neurons"
    summary = "k-sparse probes of experts vs dense neurons: held-out selection with controls, and the paper's protocol"
    intro = (
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
        "and F1 at different class ratios is not on one scale; its intervals resample concepts only."
    )

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        neurons = run.config(run.main).d_expert
        return {"probe_ks": OptionLimit(neurons, f"{run.main}'s experts have {neurons} neurons")}

    def check(self, run: RunContext) -> None:
        from tl_moe.pipeline.validation import check_probe_ks

        run.probed_layers()  # refuses --probe-layers that are not sparse layers
        check_probe_ks(run.options.config("probing").ks, self.option_limits(run)["probe_ks"].most)

    def needs(self, run: RunContext) -> list[Need]:
        needs = [Need(run.main, ExpertNeurons(run.probed_layers()))]
        if run.dense is not None:
            needs.append(Need(run.dense, DenseNeurons()))
        if not run.options.config("probing").skip_untrained_null:
            needs.append(Need(untrained_name(run.main), ExpertNeurons(run.probed_layers())))
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> ProbingResult:
        cfg = run.config(run.main)
        layers = run.probed_layers()
        settings = probe_settings(run)
        min_examples = run.options.config("probing").min_examples
        stored = inputs[Need(run.main, ExpertNeurons(layers))]
        models = [run.main]
        if run.dense is not None:
            models.append(run.dense)
        if not run.options.config("probing").skip_untrained_null:
            models.append(untrained_name(run.main))
        step = probing_steps(run, self.name, models)
        moe = probe_experts(
            stored,
            layers,
            cfg.num_experts,
            settings,
            min_positives=min_examples,
            progress=run.options.progress,
            step=step,
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
                step=step,
            )
        untrained = None
        if not run.options.config("probing").skip_untrained_null:
            untrained = inputs[Need(untrained_name(run.main), ExpertNeurons(layers))]
        try:
            arms, records, notes = held_out_probing(
                run,
                stored,
                None if run.dense is None else inputs[Need(run.dense, DenseNeurons())],
                untrained,
                layers,
                step=step,
            )
        except InputError as error:  # too few documents / examples: say so, never a silent number
            arms, notes = {}, [f"held-out protocol unavailable: {error}"]
            records = [
                {
                    "protocol": "held_out",
                    "comparison": name,
                    "k": k,
                    "n_concepts": 0,
                    "interval_available": False,
                    "interval_unavailable_reason": str(error),
                }
                for name in COMPARISONS
                for k in sorted(set(run.options.config("probing").ks))
            ]
        groups = group_comparisons(
            arms,
            n_resamples=run.options.bootstrap_resamples,
            seed=run.options.seed,
            min_clusters=run.options.min_documents,
        )
        records += paper_comparisons(
            moe, dense, n_resamples=run.options.bootstrap_resamples, seed=run.options.seed
        )
        notes = [*notes, *_store_notes(run, inputs, layers)]
        return ProbingResult(
            moe_units=moe,
            dense_units=dense,
            curves=probing_curves(moe, dense),
            near_best=experts_near_best(moe, k=1),
            ks=tuple(run.options.config("probing").ks),
            held_out=arms,
            comparisons=_comparison_frame(records),
            notes=tuple(notes),
            groups=_group_frame(groups),
        )


def _store_notes(run: RunContext, inputs: Inputs, layers: tuple[int, ...]) -> list[str]:
    """One note per model whose bounded probing store dropped rows (some key had more than N)."""
    needs = [(run.main, ExpertNeurons(layers))]
    if run.dense is not None:
        needs.append((run.dense, DenseNeurons()))
    if not run.options.config("probing").skip_untrained_null:
        needs.append((untrained_name(run.main), ExpertNeurons(layers)))
    notes = []
    for model, spec in needs:
        stored = inputs.get(Need(model, spec))
        if isinstance(stored, BoundedStoredTokens) and stored.n_capped:
            notes.append(
                f"the probing store of {model} kept {stored.rows_per_class} tokens per (unit, concept, class, "
                f"document side) where more were streamed ({stored.n_capped} of {stored.n_seen.numel()} keys): "
                f"{len(stored.token_index)} tokens stored (--probe-rows-per-class)."
            )
    return notes


def _group_frame(records: list[dict]) -> pd.DataFrame:
    """The per-group records as a table: the comparison columns with ``group`` after ``comparison``."""
    if not records:
        return pd.DataFrame()
    frame = _comparison_frame(records)
    frame.insert(2, "group", [r["group"] for r in records])
    return frame


def _comparison_frame(records: list[dict]) -> pd.DataFrame:
    columns = [
        "protocol",
        "comparison",
        "k",
        "metric",
        "estimate",
        "ci_low",
        "ci_high",
        "n_concepts",
        "n_concepts_selected",
        "n_concepts_dropped",
        "dropped_concepts",
        "n_documents",
        "n_documents_with_positives",
        "n_draws",
        "draws_df",
        "a_mean",
        "b_mean",
        "first",
        "second",
        "interval_over",
        "confidence",
        "interval_method",
        "interval_available",
        "interval_unavailable_reason",
        "bootstrap_bias",
        "bootstrap_p",
        "bootstrap_resamples",
        "swap_p",
        "swap_permutations",
    ]
    frame = pd.DataFrame.from_records(records)
    for column in columns:
        if column not in frame:
            frame[column] = None
    for column in _COUNT_COLUMNS:  # counts stay integers where some records lack them (None, not NaN)
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        frame[column] = frame[column].map(lambda v: None if v is None else int(v))
    return frame[columns]


_COUNT_COLUMNS = (
    "n_concepts_selected",
    "n_concepts_dropped",
    "n_documents_with_positives",
    "n_draws",
    "swap_permutations",
    "bootstrap_resamples",
)
