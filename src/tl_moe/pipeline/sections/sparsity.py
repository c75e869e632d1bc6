"""Probing against routing sparsity (active ratio k / E) across the toy family, under both protocols.

- **held-out** (the headline): per family member, the held-out protocol of the probing section
  (:func:`tl_moe.pipeline.sections.probing.held_out_probing`, the same functions and settings) with
  its matched controls — the dense twin's layers, dense neurons on each expert's routed tokens, and
  routing-matched random subsets (sizes per layer and concept) — each a paired difference with a
  document-bootstrap interval. The headline is the count-matched control, d_expert random dense neurons
  on the expert's routed tokens (same tokens, as many candidate neurons; mean of seeded draws; the
  draw-mean t test), and beside it at every k the stricter control, all dense neurons on those tokens
  (deterministic; the document swap test). The verdict counts both controls in both metrics (balanced
  accuracy, and F1, the metric the headline was first published in), Holm-adjusted as ONE family over
  members x ks x metrics x controls. Matched subsets (one random draw of token subsets, its swap test
  conditional on that draw) and the control's permuted-label null are shown beside them. The members
  differ in total parameters as well as sparsity (one seed each), which the findings state: the family
  cannot separate the two.
- **paper** (labelled as such): the mean best test F1 per model, the maximum taken on the split it
  reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tl_moe.analysis.concept_probing import PAPER_PROTOCOL, best_f1_by_k, probe_experts
from tl_moe.analysis.stats import holm
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import DenseNeurons, ExpertNeurons
from tl_moe.pipeline.protocol import Analysis, FigureItem, Inputs, Need, OptionLimit, Result, TableItem
from tl_moe.pipeline.sections.probing import (
    DETERMINISTIC,
    METRIC_NAMES,
    PAPER,
    ProbingResult,
    _comparison_frame,
    _interval_text,
    comparison_draws,
    held_out_probing,
    probe_settings,
    probing_steps,
)
from tl_moe.report.figures import new_figure
from tl_moe.zoo.family import TOY_FAMILY

__all__ = ["FAMILY_COMPARISONS", "Sparsity", "SparsityResult"]

DENSE_TWIN = "dense twin"
#: The held-out comparisons drawn per family member (names as in ``probing.comparisons``).
FAMILY_COMPARISONS = (
    "moe_vs_dense",
    "moe_vs_dense_on_routed_tokens",
    "moe_vs_dense_on_routed_tokens_matched_count",
    "moe_vs_matched_subsets",
    "permuted_labels_on_routed_tokens",
    "matched_count_minus_its_null",
)
#: The headline's control: dense neurons on each expert's routed tokens, d_expert of them per draw.
HEADLINE = "moe_vs_dense_on_routed_tokens_matched_count"
#: Shown beside the headline: all dense neurons on the routed tokens (more candidates for the probe).
UNMATCHED = "moe_vs_dense_on_routed_tokens"
#: The headline control's own null: MoE minus the matched-count control, both on permuted labels.
NULL = "permuted_labels_on_routed_tokens"
#: The headline tested against that null directly: (MoE − control) − (the same with permuted labels).
NULL_CORRECTED = "matched_count_minus_its_null"
HEADLINE_METRIC = "balanced_accuracy"
#: The controls whose tests the verdict sentence counts, in its order: the count-matched headline and the
#: stricter control, all dense neurons on the routed tokens.
VERDICT_CONTROLS = (HEADLINE, UNMATCHED)
#: The metrics the verdict sentence reads: balanced accuracy (the headline) and F1 (the metric the headline
#: was first published in; it moved to balanced accuracy after the F1 results were seen).
VERDICT_METRICS = (HEADLINE_METRIC, "f1")
#: How the verdict sentence names each control.
CONTROL_NAMES = {
    HEADLINE: "the count-matched control",
    UNMATCHED: "all dense neurons on the routed tokens",
    "moe_vs_matched_subsets": "dense neurons on routing-matched token subsets",
}
#: How a cell names its second metric.
METRIC_LABELS = {"balanced_accuracy": "balanced accuracy", "f1": "F1"}
#: Family-wise error rate of the Holm correction over the verdict family (members × ks × metrics × controls).
ALPHA = 0.05


@dataclass(frozen=True)
class SparsityResult(Result):
    """Probing per member of the toy family, under both protocols.

    Attributes:
        table: paper protocol: one row per (model, k): ``mean_best_f1``, ``concepts``, ``active_ratio``,
            ``experts`` over the concepts probed in every model; the dense twin has active ratio 1 and
            one "expert".
        ks: the k values drawn in the figure (1 and the largest).
        held_out: held-out protocol: one row per (model, comparison, metric, k), the columns of
            ``probing.comparisons`` plus ``model``, ``active_ratio``, ``experts`` (empty without a dense
            twin).
        notes: why a member's held-out numbers are missing, if they are.
        parameters: total parameters of each member (shipped checkpoints' metadata), for the confound.
    """

    table: pd.DataFrame
    ks: tuple[int, ...]
    held_out: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: tuple[str, ...] = ()
    parameters: dict[str, int] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def metrics(self) -> dict[str, Any]:
        metrics = {
            f"{PAPER}{row.model} (active ratio {row.active_ratio:g}) | k=1": round(float(row.mean_best_f1), 4)
            for row in self.table[self.table["k"] == 1].itertuples()
        }
        for record in self._held_out_records(metric="f1"):
            if record["k"] in self.ks:
                label = f"held-out | {record['model']} (active ratio {record['active_ratio']:g}) | "
                metrics[label + f"{record['comparison']} | k={record['k']}"] = _interval_text(record)
        for i, note in enumerate(self.notes):
            metrics[f"note {i + 1}"] = note
        return metrics

    def _held_out_records(self, metric: str = "f1") -> list[dict]:
        if not len(self.held_out):
            return []
        frame = self.held_out[self.held_out["metric"] == metric].sort_values(["active_ratio", "k"])
        return frame.astype(object).where(frame.notna(), None).to_dict("records")

    def findings(self) -> list[str]:
        findings = self._held_out_findings()
        points = self.table[self.table["k"] == 1].sort_values("active_ratio")
        trend = ", ".join(f"{row.mean_best_f1:.3f} at {row.active_ratio:g}" for row in points.itertuples())
        findings.append(
            f"**Sparsity family, the paper's protocol** (for comparison with published numbers; best unit "
            f"picked on the split it is scored on, k = 1, no interval): mean best F1 by active ratio: {trend}."
        )
        if self.parameters:
            findings.append(_confound(self.parameters))
        return findings

    def headline_metric(self) -> str:
        """The metric of the headline tests: class-balanced accuracy (:data:`HEADLINE_METRIC`), whose
        chance level is 0.5 for any probe, so the protocol's permuted-label null sits near 0; F1's chance
        level moves with how often a probe says positive (docs/METHODS.md). F1 when a run recorded no
        balanced accuracy."""
        return HEADLINE_METRIC if self._held_out_records(HEADLINE_METRIC) else "f1"

    def verdict_metrics(self) -> list[str]:
        """The metrics of :data:`VERDICT_METRICS` this run recorded (balanced accuracy first)."""
        return [metric for metric in VERDICT_METRICS if self._held_out_records(metric)]

    def verdict_tests(self) -> list[dict]:
        """Every test the verdict sentence reads, Holm-adjusted as ONE family: each (member, k) of both
        routed-token controls (:data:`VERDICT_CONTROLS`: the count-matched one and all dense neurons) in
        both metrics (:data:`VERDICT_METRICS`: the headline moved from F1 to balanced accuracy after the F1
        results were seen, so both are read and both are in the family). Rows as :meth:`headline_tests`,
        ordered by metric, control, active ratio and k."""
        rows = [
            record
            for metric in self.verdict_metrics()
            for comparison in VERDICT_CONTROLS
            for record in self._comparison_records(comparison, metric)
        ]
        return _holm_tests(rows)

    def headline_tests(self, comparison: str = HEADLINE, metric: str | None = None) -> list[dict]:
        """One row per (member, k) of ``comparison`` in ``metric`` (default :meth:`headline_metric`): the
        estimate, its 95% interval, the p-value of 0 (:func:`test_p_value`: the draw-mean t test's where the
        control has several random draws, the document swap test's otherwise; ``p_test`` says which and
        whether the swap test held a random draw fixed) and Holm's adjusted p-value with the verdict it
        supports at family-wise 5% (:func:`_adjusted_verdict`), and ``interval_disagrees`` (whether the
        unadjusted interval and the unadjusted p-value disagree on 0 at 5%).

        A comparison of the verdict family (:data:`VERDICT_CONTROLS` in a :meth:`verdict_metrics` metric)
        is adjusted over that whole family (:meth:`verdict_tests`, ``tests_in_family`` tests); any other
        comparison (matched subsets, the nulls) over its own (member, k) tests in ``metric``."""
        metric = metric or self.headline_metric()
        if comparison in VERDICT_CONTROLS and metric in self.verdict_metrics():
            return [
                r for r in self.verdict_tests() if r["comparison"] == comparison and r["metric"] == metric
            ]
        return _holm_tests(self._comparison_records(comparison, metric))

    def _comparison_records(self, comparison: str, metric: str) -> list[dict]:
        """The held-out records of ``comparison`` in ``metric``, by active ratio and k."""
        rows = [r for r in self._held_out_records(metric) if r["comparison"] == comparison]
        return sorted(rows, key=lambda r: (self._ratio(r["model"]), r["k"]))

    def _held_out_findings(self) -> list[str]:
        """The held-out finding: per member and k both routed-token controls in both metrics, Holm over all
        of them as one family, with matched subsets and the headline control's null beside them; then the
        verdict sentence that counts each control's verdicts in each metric."""
        headline = self.headline_tests(HEADLINE)
        if not headline:
            return []
        family = self.verdict_tests()
        if not any(r.get("p_holm") is not None for r in family):
            return [_untested_text(family)]
        metric = headline[0]["metric"]
        second = next((m for m in self.verdict_metrics() if m != metric), None)
        tested = {(r["comparison"], r["metric"], r["model"], r["k"]): r for r in family}
        others = {
            name: {(r["model"], r["k"]): r for r in self.headline_tests(name, metric)}
            for name in ("moe_vs_matched_subsets", NULL, NULL_CORRECTED)
        }
        members = sorted({r["model"] for r in headline}, key=self._ratio)
        # Matched subsets and the nulls beside the smallest and the largest k only (the controls at every k).
        ends = {min(r["k"] for r in headline), max(r["k"] for r in headline)}
        parts = []
        for model in members:
            cells = []
            for r in (r for r in headline if r["model"] == model):
                key = (model, r["k"])

                def both(comparison: str, key=key) -> str:
                    first = tested.get((comparison, metric, *key)) or (
                        others.get(comparison, {}).get(key) if comparison != HEADLINE else None
                    )
                    if first is None:
                        return "unavailable"
                    other = tested.get((comparison, second, *key)) if second else None
                    return _cell(first) + (f" | {METRIC_LABELS[second]} {_cell(other)}" if other else "")

                text = f"k = {r['k']}: {both(HEADLINE)}"
                if (UNMATCHED, metric, *key) in tested:
                    text += f"; all dense neurons {both(UNMATCHED)}"
                beside = [
                    f"{label} {_short(others[name].get(key))}"
                    for name, label in (
                        ("moe_vs_matched_subsets", "matched subsets"),
                        (NULL, "permuted-label null"),
                        (NULL_CORRECTED, "headline minus that null"),
                    )
                    if r["k"] in ends and key in others[name]
                ]
                cells.append(text + (f" ({'; '.join(beside)})" if beside else ""))
            parts.append(f"{model.removeprefix('toy/')} ({self._ratio(model):g}): " + ", ".join(cells))
        described = (
            "balanced accuracy first (chance 0.5 for any probe, so the protocol's permuted-label null sits "
            "near 0, unlike F1's), class-balanced F1 after the | of each test"
            if metric == "balanced_accuracy" and second
            else METRIC_NAMES[metric]
        )
        text = (
            f"**Sparsity family, held-out protocol** ({described}; 95% intervals over test documents, every "
            "probed k; the concepts that pass the per-concept test-document gate). "
            + _family_text(family)
            + f" p-values from {_test_text(family)}. "
            + _reading_text(family)
            + " Per member and k, first the count-matched control (the fair comparison of neuron selection): "
            "MoE expert minus the same number of dense neurons (d_expert, random, mean of the draws) on exactly "
            "the tokens routed to the expert; then all dense neurons on those tokens (the stricter control: "
            "the probe picks among every dense neuron); each cell with its number of gated concepts, which "
            "differs between members and k (sparser members route fewer tokens per expert, so fewer concepts "
            "pass the gate: a trend over members mixes sparsity with which concepts are compared); beside them "
            "at the smallest and largest k, outside the family: dense neurons on routing-matched random subsets "
            "(one random draw of the token subsets; its test holds that draw fixed, so it is conditional on "
            "the draw), the count-matched control's permuted-label null, and the headline minus that null "
            "(one paired document bootstrap): " + "; ".join(parts) + "."
        )
        text += self._changed_text(headline, metric)
        text += self._changed_text(self.headline_tests(UNMATCHED, metric), metric, stricter=True)
        text += " " + _verdict_sentence(family, self.verdict_metrics())
        text += _floor_text(family)
        return [text]

    def _changed_text(self, headline: list[dict], metric: str, stricter: bool = False) -> str:
        """Where the matched-subsets comparison (Holm over its own tests) and a routed-token control (Holm
        over the verdict family; the count-matched one, or ``stricter``: all dense neurons on the routed
        tokens) disagree, grouped by the pair of verdicts: one clause per pair, members with their ks."""
        subsets = {(r["model"], r["k"]): r for r in self.headline_tests("moe_vs_matched_subsets", metric)}
        groups: dict[tuple[str, str], dict[str, list[int]]] = {}
        for r in headline:
            other = subsets.get((r["model"], r["k"]))
            if other is None or _NONE in (r["verdict"], other["verdict"]) or other["verdict"] == r["verdict"]:
                continue
            members = groups.setdefault((other["verdict"], r["verdict"]), {})
            members.setdefault(r["model"].removeprefix("toy/"), []).append(int(r["k"]))
        if not groups:
            return ""
        clauses = [
            f"{on_subsets} on matched subsets, {on_routed} on routed tokens in "
            f"{sum(map(len, members.values()))} of {len(headline)} tests ("
            + "; ".join(f"{model} at k = {', '.join(map(str, ks))}" for model, ks in members.items())
            + ")"
            for (on_subsets, on_routed), members in groups.items()
        ]
        n = next((r["tests_in_family"] for r in subsets.values()), 0)
        if stricter:
            return (
                f" The stricter control, all dense neurons on the routed tokens (Holm over the family above), "
                f"against matched subsets ({METRIC_NAMES[metric]}): " + "; ".join(clauses) + "."
            )
        return (
            f" The routed-token control changes the conclusion ({METRIC_NAMES[metric]}; matched subsets "
            f"Holm-adjusted over its own {n} member × k tests, each conditional on its one draw of token "
            "subsets; the count-matched control over the family above): "
            + "; ".join(clauses)
            + ": there, the matched-subsets advantage comes with routing's choice of tokens, and the "
            "controlled result is the finding."
        )

    def _ratio(self, model: str) -> float:
        rows = self.held_out[self.held_out["model"] == model]
        return float(rows["active_ratio"].iloc[0]) if len(rows) else float("nan")

    def records(self) -> dict[str, Any]:
        records = self._held_out_records("f1") + self._held_out_records("balanced_accuracy")
        out: dict[str, Any] = {"comparisons": records} if records else {}
        if records:
            out["headline_tests"] = self.verdict_tests()
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        return out

    def figures(self) -> list[FigureItem]:
        items = [
            FigureItem(
                "probing_f1_vs_sparsity",
                self.figure(),
                "Paper protocol: mean best F1 (unit picked on the split it is scored on) vs active ratio.",
            )
        ]
        if any(r["estimate"] is not None for r in self._held_out_records()):
            items.append(
                FigureItem(
                    "probing_held_out_vs_sparsity",
                    self.held_out_figure(),
                    "Held-out protocol: MoE expert minus each matched control vs active ratio, mean F1 "
                    "difference with its 95% document-level bootstrap interval.",
                )
            )
        return items

    def figure(self) -> Figure:
        """Paper protocol: mean best F1 vs active ratio, one line per k."""
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
        ax.set_title("Paper protocol: probing F1 vs routing sparsity")
        ax.grid(alpha=0.3)
        ax.legend()
        return fig

    def held_out_figure(self) -> Figure:
        """Held-out protocol: MoE − control (mean F1 difference, 95% CI) vs active ratio, per k."""
        fig, ax = new_figure(6.4, 4.2)
        frame = pd.DataFrame(self._held_out_records())
        frame = frame[frame["estimate"].notna()]
        styles = {k: style for k, style in zip(self.ks, ("-", "--", ":"), strict=False)}
        for i, name in enumerate(FAMILY_COMPARISONS):
            for j, k in enumerate(self.ks):
                rows = frame[(frame["comparison"] == name) & (frame["k"] == k)].sort_values("active_ratio")
                if not len(rows):
                    continue
                x = rows["active_ratio"].to_numpy(dtype=float) * 2 ** ((i - 1) * 0.04 + j * 0.015)
                estimate = rows["estimate"].to_numpy(dtype=float)
                low = estimate - rows["ci_low"].to_numpy(dtype=float)
                high = rows["ci_high"].to_numpy(dtype=float) - estimate
                ax.errorbar(
                    x,
                    estimate,
                    yerr=[np.nan_to_num(low), np.nan_to_num(high)],
                    marker="o",
                    capsize=3,
                    linestyle=styles.get(k, "-"),
                    color=f"C{i}",
                    label=f"{name}, k = {k}",
                )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("active ratio k / E")
        ax.set_ylabel("mean F1 difference (held-out), 95% CI")
        ax.set_title("Held-out protocol: MoE expert minus matched control")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        return fig

    def tables(self) -> list[TableItem]:
        tables = [
            TableItem(
                "probing_f1_vs_sparsity",
                self.table,
                "Paper protocol: mean best F1 per model and k.",
                max_rows=40,
            )
        ]
        if len(self.held_out):
            tables.append(
                TableItem(
                    "probing_held_out_vs_sparsity",
                    self.held_out,
                    "Held-out protocol per family member: MoE expert minus each control, with its 95% "
                    "interval over test documents.",
                    max_rows=60,
                )
            )
        return tables


def test_p_value(record: dict) -> tuple[float | None, str]:
    """The p-value of 0 that a held-out ``record`` is Holm-tested with, and its test's name.

    A control with several random draws (``n_draws`` > 1, e.g. random neuron subsets) is tested against
    the population the draws come from, so its p-value must carry the draws' variation: ``bootstrap_p``,
    the draw-mean t test's (``"draws_t"``: the documents' bootstrap variance plus the variance between
    the draws, Satterthwaite's degrees of freedom ``draws_df``; a run before that test recorded the
    two-stage bootstrap's, ``"bootstrap"``). Otherwise (one draw, or a record with no other p-value) the
    document swap test's, named by how the comparison's control is drawn (a declared property of the
    comparison, :func:`~tl_moe.pipeline.sections.probing.comparison_draws`, not read from ``n_draws``):
    ``"swap"`` for a deterministic control (all dense neurons on the routed tokens),
    :data:`SWAP_ONE_DRAW` where a random control's one draw is held fixed (the routing-matched token
    subsets, a label permutation: the test is conditional on that draw), :data:`SWAP_DRAWS` where
    several random draws are held fixed."""
    swap, boot = record.get("swap_p"), record.get("bootstrap_p")
    several = (record.get("n_draws") or 1) > 1
    if swap is not None and (not several or boot is None):
        kind = comparison_draws(record["comparison"], record.get("n_draws"))
        if kind == DETERMINISTIC:
            return swap, SWAP
        return swap, SWAP_DRAWS if several else SWAP_ONE_DRAW
    return boot, "draws_t" if _finite(record.get("draws_df")) else "bootstrap"


#: ``p_test`` of a document swap test: of a deterministic control, and of a random control whose one draw
#: (or several draws) the swaps hold fixed, conditional on that draw.
SWAP = "swap"
SWAP_ONE_DRAW = "swap (one random draw held fixed)"
SWAP_DRAWS = "swap (random draws held fixed)"


def _is_swap(test: str | None) -> bool:
    return bool(test) and test.startswith(SWAP)


def _finite(value) -> bool:
    """Whether a record's value is a number (not None, not the NaN a frame gives a missing one)."""
    return value is not None and bool(np.isfinite(value))


def _holm_tests(records: list[dict]) -> list[dict]:
    """One row per held-out record, Holm-adjusted together over those with an interval and a p-value:
    the estimate, its interval, ``p`` and ``p_test`` (:func:`test_p_value`), ``p_holm``, ``verdict``,
    ``interval_disagrees``, ``tests_in_family`` and ``family`` (its dimensions, :func:`_family_dims`)."""
    tested, tests = [], []
    for r in records:
        p, test = test_p_value(r)
        ok = bool(r.get("interval_available")) and _finite(p)
        tested.append(float(p) if ok else np.nan)
        tests.append(test if ok else None)
    adjusted = holm(np.asarray(tested, dtype=float)) if records else np.array([])
    dims = _family_dims([r for r, p in zip(records, tested, strict=True) if np.isfinite(p)])
    out = []
    for record, p, test, p_holm in zip(records, tested, tests, adjusted, strict=True):
        row = {
            key: record.get(key)
            for key in (
                "model",
                "active_ratio",
                "k",
                "estimate",
                "ci_low",
                "ci_high",
                "bootstrap_p",
                "n_concepts",
            )
        }
        row.update(
            p=None if np.isnan(p) else float(p),
            p_test=test,
            swap_permutations=record.get("swap_permutations") if _is_swap(test) else None,
            bootstrap_resamples=record.get("bootstrap_resamples"),
            n_draws=record.get("n_draws"),
            draws_df=float(record["draws_df"]) if _finite(record.get("draws_df")) else None,
            comparison=record.get("comparison"),
            metric=record.get("metric"),
            interval_available=bool(record.get("interval_available")),
            interval_unavailable_reason=record.get("interval_unavailable_reason"),
            p_holm=None if np.isnan(p_holm) else float(p_holm),
            tests_in_family=int(np.isfinite(adjusted).sum()),
            family=dims,
        )
        row["verdict"] = _adjusted_verdict(row)
        row["interval_disagrees"] = _interval_disagrees(row)
        out.append(row)
    return out


def _interval_disagrees(row: dict) -> bool | None:
    """Whether the printed (unadjusted) interval and the unadjusted p-value of the named test disagree on
    0 at 5% (one excludes 0, the other does not); None without an interval or a p-value."""
    if row.get("p") is None or not row.get("interval_available") or not _finite(row.get("ci_low")):
        return None
    excludes = row["ci_low"] > 0 or row["ci_high"] < 0
    return bool(excludes != (row["p"] <= ALPHA))


#: The dimensions of the verdict family, as (record key, singular, plural).
_DIMENSIONS = (
    ("model", "member", "members"),
    ("k", "k", "ks"),
    ("metric", "metric", "metrics"),
    ("comparison", "control", "controls"),
)


def _family_counts(rows: list[dict]) -> list[int]:
    """How many members, ks, metrics and controls ``rows`` hold (distinct values of each)."""
    return [len({r.get(key) for r in rows}) for key, _, _ in _DIMENSIONS]


def _family_dims(rows: list[dict]) -> str:
    """A Holm family's dimensions, e.g. "4 members × 7 ks × 2 metrics × 2 controls"."""
    return " × ".join(
        f"{n} {one if n == 1 else many}"
        for n, (_, one, many) in zip(_family_counts(rows), _DIMENSIONS, strict=True)
    )


def _family_text(family: list[dict]) -> str:
    """What the verdicts' Holm family is: its size and dimensions, and why it holds both controls and
    both metrics."""
    tested = [r for r in family if r.get("p_holm") is not None]
    n, dims = len(tested), _family_dims(tested)
    cells = int(np.prod(_family_counts(tested))) if tested else 0
    size = (
        f"Holm over {_tests_word(n)}: {dims} (members × ks × metrics × controls)"
        if n == cells
        else f"Holm over {_tests_word(n)} (of the {dims} = {cells} cells (members × ks × metrics × "
        "controls), those with an interval and a p-value)"
    )
    controls = sorted({r["comparison"] for r in tested}, key=VERDICT_CONTROLS.index)
    which = (
        "both routed-token controls (the count-matched one and all dense neurons on the routed tokens)"
        if len(controls) > 1
        else f"one control ({', '.join(CONTROL_NAMES[c] for c in controls)}, the only one recorded)"
    )
    metrics = {r["metric"] for r in tested}
    why = (
        "both metrics (balanced accuracy became the headline metric after the F1 results were seen, so F1 "
        "stays in the family)"
        if len(metrics) > 1
        else f"one metric ({', '.join(METRIC_NAMES.get(m, m) for m in sorted(metrics))}, the only one recorded)"
    )
    return f"Verdicts: {size}, every test the verdict sentence below reads: {which} and {why}, at family-wise 5%."


def _reading_text(family: list[dict]) -> str:
    """How to read a cell: the verdict is the Holm-adjusted p of the named test, the interval is not the
    test; how many cells' unadjusted interval and p-value disagree on 0 (they are marked)."""
    disagree = sum(bool(r.get("interval_disagrees")) for r in family)
    judged = sum(r.get("interval_disagrees") is not None for r in family)
    t_interval = any(r.get("p_test") == "draws_t" for r in family)
    return (
        "Each verdict (above 0, below 0, not separated) follows the Holm-adjusted p-value of the named test; "
        "the interval printed beside it is unadjusted, the document bootstrap's"
        + (" (the count-matched control's: the draw-mean t interval)" if t_interval else "")
        + ", and need not come from that test, so near 5% the two can fall on different sides of 0: the "
        "unadjusted interval "
        f'and the unadjusted p-value disagree in {disagree} of the {judged} tests (marked "{_DISAGREE}"), '
        "and there the Holm verdict stands."
    )


_DISAGREE = "interval and test disagree"


def _cell(row: dict | None) -> str:
    """A tested cell: estimate, interval, gated concepts, Holm p and verdict, and the disagreement mark."""
    if row is None:
        return "unavailable"
    p = row.get("p")
    mark = (
        f" ({_DISAGREE}: unadjusted p = {p:.3g}, the interval {'excludes' if p > ALPHA else 'covers'} 0)"
        if row.get("interval_disagrees")
        else ""
    )
    return _short(row) + _holm_text(row) + mark


def _test_text(tests: list[dict]) -> str:
    """Which test gave the Holm p-values of ``tests``, per control, and why (:func:`test_p_value`)."""
    by_kind: dict[str, list[dict]] = {}
    for r in tests:
        if r.get("p_test"):
            by_kind.setdefault(r["p_test"], []).append(r)
    clauses = []
    for kind, rows in by_kind.items():
        names = sorted(
            {CONTROL_NAMES.get(r["comparison"], r["comparison"]) for r in rows if r.get("comparison")}
        )
        clauses.append(_kind_text(kind, rows) + (f" for {' and '.join(names)}" if names else ""))
    return "; ".join(clauses)


def _kind_text(kind: str, tests: list[dict]) -> str:
    """One test's description (``p_test`` = ``kind``) from its ``tests``' records."""
    if _is_swap(kind):
        n = next((r["swap_permutations"] for r in tests if r.get("swap_permutations")), None)
        swaps = f"{int(n):,} random swaps" if n else "random swaps"
        held = {
            SWAP: "the control is deterministic",
            SWAP_ONE_DRAW: "the control is one random draw, held fixed: the test is conditional on that draw",
            SWAP_DRAWS: "the control's random draws are held fixed: the test is conditional on them",
        }[kind]
        return f"two-sided document swap tests ({swaps} of the two arms' counts per test document; {held})"
    draws = int(max((r.get("n_draws") or 1 for r in tests), default=1))
    if kind == "draws_t":
        return (
            f"two-sided t tests of the draw mean (the variance of the difference is the test documents' "
            f"bootstrap variance plus the variance between the control's {draws} random neuron draws over "
            f"{draws}, on Satterthwaite's degrees of freedom, so the p-value carries the draws' variation and "
            "tests the expert against random dense neurons, not against these particular draws as the document "
            "swap test would; on a planted null with draws that vary it rejects at about its nominal rate, "
            "docs/METHODS.md)"
        )
    resamples = next((r["bootstrap_resamples"] for r in tests if r.get("bootstrap_resamples")), None)
    return (
        "the two-sided two-stage bootstrap"
        + (f" ({int(resamples):,} resamples" if resamples else " (")
        + f"{', ' if resamples else ''}test documents and the control's {draws} random neuron draws both "
        "resampled, so the p-value carries the draws' variation and tests the expert against random dense "
        "neurons, not against these particular draws as the document swap test would"
        + (f"; floor {2 / (1 + resamples):.2g}" if resamples else "")
        + (
            f"; a run recorded before the draw-mean t test: with {draws} draws the second stage understates "
            "the draws' variation, so on a planted null with draws that vary this test rejects more often than "
            "its nominal level (docs/METHODS.md): read a single separated test near the threshold as tentative"
            if draws < 20
            else ""
        )
        + ")"
    )


def _holm_text(row: dict) -> str:
    if row.get("p_holm") is None:
        return ""
    p = row["p_holm"]
    edge = (
        " (within resampling error of 0.05: read as borderline)"
        if row.get("verdict") != _NEITHER and 0.04 <= p <= ALPHA
        else ""
    )
    return f", Holm p = {p:.4g}: {row['verdict']}{edge}"


def _adjusted_verdict(row: dict) -> str:
    """Where a Holm-tested difference lies at family-wise 5%: above 0, below 0, not separated, or no
    interval (no test)."""
    if row.get("p_holm") is None or row.get("estimate") is None:
        return _NONE
    if row["p_holm"] > ALPHA:
        return _NEITHER
    return _ABOVE if row["estimate"] > 0 else _BELOW


def _short(record: dict | None) -> str:
    if record is None or record.get("estimate") is None:
        reason = (record or {}).get("interval_unavailable_reason")
        return f"unavailable ({reason})" if reason else "unavailable"
    text = f"{record['estimate']:+.3f}"
    if record.get("interval_available"):
        text += f" [{record['ci_low']:+.3f}, {record['ci_high']:+.3f}]"
    else:
        text += f" (no interval: {record.get('interval_unavailable_reason') or 'not computed'})"
    if record.get("n_concepts"):
        text += f" ({int(record['n_concepts'])} concepts)"
    return text


_ABOVE, _BELOW, _NEITHER, _NONE = "above 0", "below 0", "not separated from 0", "no interval"


def _floor_text(tests: list[dict]) -> str:
    """How many separated tests rest on a raw p-value at its test's floor (no swap or resample reached
    the observed value), the floor, and the Holm p-value it gives (the number of tests times it), one
    sentence per kind of test with a floor (the draw-mean t test has none)."""
    separated = [r for r in tests if r["verdict"] in (_ABOVE, _BELOW)]
    raw = [r["p"] for r in tests if r.get("p") is not None]
    if not separated or not raw:
        return ""
    m = separated[0]["tests_in_family"]
    by_kind: dict[bool, list[float]] = {}
    for r in separated:
        floor = _p_floor(r, min(raw))
        if 0 < floor and r["p"] <= floor * (1 + 1e-9):
            by_kind.setdefault(_is_swap(r.get("p_test")), []).append(floor)
    text = ""
    for swap, floors in by_kind.items():
        floor = min(floors)
        holm_floor = min(1.0, m * floor)
        what = (
            "no swap reached the observed difference"
            if swap
            else "no resample of documents and control draws crossed 0"
        )
        text += (
            f" {len(floors)} of the {len(separated)} separated tests rest on their test's smallest p-value "
            f"({floor:.2g}: {what}); times the {m} tests that is {holm_floor:.2g}"
            + _floor_verdict(holm_floor, "swaps" if swap else "resamples")
        )
    return text


def _floor_verdict(holm_floor: float, draws: str) -> str:
    """Whether a test at its floor can still be separated after Holm's correction (``holm_floor`` < 5%)."""
    if holm_floor <= ALPHA / 10:
        return ", far below 0.05: those verdicts do not hang on the floor."
    if holm_floor < ALPHA:
        return f", below 0.05: a test at the floor can still be separated, though more {draws} would say by how much."
    return f", not below 0.05: more {draws} would be needed to separate a test at the floor."


def _p_floor(row: dict, smallest: float) -> float:
    """The smallest p-value ``row``'s test can give: 1 / (1 + swaps) for a swap test, 2 / (1 + resamples)
    for the two-sided percentile bootstrap, none (0) for the draw-mean t test; for an older run (no count recorded), the ``smallest`` p-value
    among its tests."""
    if _is_swap(row.get("p_test")) and row.get("swap_permutations"):
        return 1.0 / (1 + row["swap_permutations"])
    if row.get("p_test") == "bootstrap" and row.get("bootstrap_resamples"):
        return 2.0 / (1 + row["bootstrap_resamples"])
    if row.get("p_test") == "draws_t":
        return 0.0  # a t test's p-value has no floor
    return smallest


def _count_text(tests: list[dict]) -> str:
    """How many of ``tests`` (one control in one metric) put expert neurons above, below or level with the
    control: "better in a of the n member × k tests, worse in b, not separated in c"."""
    counts = {v: sum(r["verdict"] == v for r in tests) for v in _VERDICTS}
    return (
        f"better in {counts[_ABOVE]} of the {len(tests)} member × k tests, worse in {counts[_BELOW]}, "
        f"not separated in {counts[_NEITHER]}"
        + (f" (no interval in {counts[_NONE]})" if counts[_NONE] else "")
    )


def _verdict_sentence(family: list[dict], metrics: list[str]) -> str:
    """The verdict: per metric, each control's counts after Holm over the whole family."""
    n = family[0]["tests_in_family"] if family else 0
    clauses = []
    for metric in metrics:
        per_control = [
            f"vs {CONTROL_NAMES[control]}, expert neurons probe "
            + _count_text([r for r in family if r["metric"] == metric and r["comparison"] == control])
            for control in VERDICT_CONTROLS
            if any(r["metric"] == metric and r["comparison"] == control for r in family)
        ]
        lead = (
            "in class-balanced F1 (the held-out protocol's F1 on a balanced test set, not the paper's F1 at "
            "the routed class ratio; its permuted-label null is not 0, see the probing finding)"
            if metric == "f1"
            else f"in {METRIC_NAMES[metric]}"
        )
        clauses.append(f"{lead}: " + "; ".join(per_control))
    return (
        f"After Holm's correction over the {_tests_word(n)}, on the same tokens: " + "; ".join(clauses) + "."
    )


_VERDICTS = (_ABOVE, _BELOW, _NEITHER, _NONE)


def _confound(parameters: dict[str, int]) -> str:
    """The confound the family's design cannot remove, with the members' parameter counts."""
    ordered = sorted(parameters.items(), key=lambda item: item[1])
    counts = ", ".join(f"{name.removeprefix('toy/')} {n / 1e6:.2f} M" for name, n in ordered)
    return (
        "**Sparsity family: what it cannot separate.** The members keep the active FFN neurons per token "
        f"fixed but not the total parameters ({counts}), and each is one training run with one seed: "
        "the family cannot separate routing sparsity from model size (nor either from seed-to-seed "
        "variation), so no difference above is attributed to sparsity alone."
    )


def _parameters(names: list[str]) -> dict[str, int]:
    """Total parameters of each shipped toy model (its checkpoint's metadata); others are left out."""
    from tl_moe.zoo.registry import metadata

    counts = {}
    for name in names:
        try:
            counts[name] = int(metadata(name)["n_parameters"])
        except (InputError, KeyError, OSError):
            continue
    return counts


class Sparsity(Analysis):
    """Expert probing on every MoE of the toy family, against the dense twin (needs probing)."""

    name = "sparsity"
    title = "Probing F1 vs routing sparsity"
    summary = "probe every toy MoE and plot F1 vs active ratio (also: --sparsity-family)"
    intro = (
        "The toy family changes the number of experts at fixed active neurons per token (same data, "
        "steps and seed), so total parameters grow with the experts and each member is one seed: the "
        "family cannot separate routing sparsity from model size. **Held-out protocol (the headline):** "
        "for every member, the probing "
        "section's held-out protocol and its matched controls on the same documents: MoE expert minus "
        "the dense twin's layers, minus dense neurons on exactly each expert's routed tokens (all of them, "
        "and d_expert random ones: the headline; both Holm-adjusted as one family over members, k, both metrics and both controls), and minus "
        "dense neurons on random token subsets with the routed sizes per layer and concept (the control "
        "for the number and sizes of units, which grow with the number of experts); paired differences "
        "of mean class-balanced F1 with 95% bootstrap intervals over test documents. **Paper protocol "
        "(for comparison with published numbers):** the mean over the concepts probed in every model of "
        "the best test F1 over that model's layers x experts (dense twin: layers)."
    )
    depends_on = ("probing",)
    default = False

    def family(self, run: RunContext) -> list[str]:
        """The toy MoEs probed besides the analyzed model (whose probing result is reused)."""
        return [name for name, cfg in TOY_FAMILY.items() if cfg.is_moe and name != run.main]

    @staticmethod
    def _config(run: RunContext, name: str):
        """A family member's config: the toy zoo's, or the run's for a model given by the caller."""
        return TOY_FAMILY[name] if name in TOY_FAMILY else run.config(name)

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        sizes = {run.main: run.config(run.main).d_expert}
        sizes.update({name: self._config(run, name).d_expert for name in self.family(run)})
        smallest = min(sizes, key=sizes.get)
        return {
            "probe_ks": OptionLimit(
                sizes[smallest], f"the smallest experts probed, {smallest}'s, have {sizes[smallest]} neurons"
            )
        }

    def check(self, run: RunContext) -> None:
        from tl_moe.pipeline.validation import check_probe_ks

        check_probe_ks(run.options.config("probing").ks, self.option_limits(run)["probe_ks"].most)

    def needs(self, run: RunContext) -> list[Need]:
        needs = [Need(name, ExpertNeurons()) for name in self.family(run)]
        if run.dense is not None:
            needs.append(Need(run.dense, DenseNeurons()))  # shared with probing's
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> SparsityResult:
        probing: ProbingResult = inputs.result("probing")
        frames = {run.main: (run.config(run.main), probing.moe_units)}
        stored_by_name = {}
        for name in self.family(run):
            cfg = self._config(run, name)
            stored = stored_by_name[name] = inputs[Need(name, ExpertNeurons())]
            frames[name] = (
                cfg,
                probe_experts(
                    stored,
                    cfg.sparse_layers,
                    cfg.num_experts,
                    probe_settings(run),
                    min_positives=run.options.config("probing").min_examples,
                    progress=run.options.progress,
                    # each layer saved as it finishes, keyed by the probe options and this model's pass
                    step=run.steps(
                        self.name, {"probe": probe_settings(run), "paper_protocol": PAPER_PROTOCOL}, [name]
                    ),
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
        held_out, notes = self._held_out(run, inputs, probing, stored_by_name, frames)
        return SparsityResult(
            table=table,
            ks=tuple(sorted({1, max(run.options.config("probing").ks)})),
            held_out=held_out,
            notes=tuple(notes),
            parameters=_parameters([*frames, *([run.dense] if run.dense else [])]),
        )

    def _held_out(self, run, inputs, probing, stored_by_name, frames) -> tuple[pd.DataFrame, list[str]]:
        """Held-out records per member: the analyzed model's from probing, the others computed here."""
        if run.dense is None:
            return pd.DataFrame(), ["no dense twin (--dense-baseline none): no held-out comparison."]
        dense_stored = inputs[Need(run.dense, DenseNeurons())]
        frames_out, notes = [], []
        for name, (cfg, _) in frames.items():
            if name == run.main:
                records = [
                    r
                    for r in probing.comparisons.to_dict("records")
                    if r["protocol"] == "held_out" and r["comparison"] in FAMILY_COMPARISONS
                ]
            else:
                try:
                    _, records, _ = held_out_probing(
                        run,
                        stored_by_name[name],
                        dense_stored,
                        None,
                        tuple(cfg.sparse_layers),
                        # each arm and block saved as it finishes (keyed by this member's and the twin's passes)
                        step=probing_steps(run, self.name, [name, run.dense]),
                        model=name,
                        permuted=False,
                    )
                except InputError as error:  # too few documents / examples: say so, never a number
                    notes.append(f"{name}: held-out protocol unavailable: {error}")
                    records = [
                        {
                            "protocol": "held_out",
                            "comparison": comparison,
                            "k": k,
                            "metric": "f1",
                            "n_concepts": 0,
                            "interval_available": False,
                            "interval_unavailable_reason": str(error),
                        }
                        for comparison in FAMILY_COMPARISONS
                        for k in sorted(set(run.options.config("probing").ks))
                    ]
                records = [r for r in records if r["comparison"] in FAMILY_COMPARISONS]
            frame = _comparison_frame(records) if records else pd.DataFrame()
            if len(frame):
                frame["metric"] = frame["metric"].fillna("f1")  # unavailable records name no metric
                frames_out.append(
                    frame.assign(model=name, active_ratio=cfg.active_ratio, experts=cfg.num_experts)
                )
        held_out = pd.concat(frames_out, ignore_index=True) if frames_out else pd.DataFrame()
        return held_out, notes


def _tests_word(n: int) -> str:
    """``n`` with "test" or "tests"."""
    return f"{n} test" if n == 1 else f"{n} tests"


def _untested_text(family: list[dict]) -> str:
    """The finding when no test of the verdict family has an interval: no verdict, each reason once."""
    reasons = sorted({r.get("interval_unavailable_reason") or "no interval" for r in family})
    return (
        f"**Sparsity family, held-out protocol**: none of the {len(family)} tests of the verdict family (both "
        "routed-token controls, every member, k and metric) has an interval, so there is no verdict: "
        + " ".join(reason if reason.endswith(".") else reason + "." for reason in reasons)
    )
