"""Probing against routing sparsity (active ratio k / E) across a family of MoEs: the method.

- **paper protocol** (:func:`paper_table`): per member, the mean over the concepts probed in every
  model of the best test F1 over its layers x experts (the dense twin: its layers), per k.
- **held-out protocol** (:class:`SparsityVerdicts`): per member, the held-out comparisons of
  :func:`~tl_moe.analysis.held_out_probing.compare` against matched controls. Which test gives each
  comparison's p-value (:meth:`SparsityVerdicts.p_value`), and the verdicts: every test the verdict
  reads — both routed-token controls (:data:`VERDICT_CONTROLS`) in both metrics
  (:data:`VERDICT_METRICS`) at every member and k — Holm-adjusted as ONE family at family-wise
  :data:`ALPHA` (:meth:`SparsityVerdicts.family`); any other comparison over its own tests
  (:meth:`SparsityVerdicts.tests`).

The members differ in total parameters as well as sparsity (one seed each): the family cannot separate
the two, whatever the verdicts say.

Example (``held_out``: one row per member, comparison, metric and k, the columns of the held-out
comparison records plus ``model`` and ``active_ratio``)::

    from tl_moe.analysis import SparsityVerdicts
    from tl_moe.analysis.sparsity_family import UNMATCHED

    verdicts = SparsityVerdicts(deterministic=lambda comparison, n_draws: comparison == UNMATCHED)
    for row in verdicts.family(held_out):
        print(row["model"], row["k"], row["metric"], row["comparison"], row["p_holm"], row["verdict"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tl_moe.analysis.concept_probing import best_f1_by_k
from tl_moe.analysis.stats import holm
from tl_moe.errors import InputError

__all__ = [
    "ALPHA",
    "FAMILY_COMPARISONS",
    "FamilyMember",
    "SparsityVerdicts",
    "adjusted_verdict",
    "interval_disagrees",
    "paper_table",
]

#: How the paper table names the dense twin (active ratio 1, one "expert").
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
#: The controls whose tests the verdict counts, in its order: the count-matched headline and the stricter
#: control, all dense neurons on the routed tokens.
VERDICT_CONTROLS = (HEADLINE, UNMATCHED)
#: The metrics the verdict reads: balanced accuracy (the headline) and F1 (the metric the headline was
#: first published in; it moved to balanced accuracy after the F1 results were seen).
VERDICT_METRICS = (HEADLINE_METRIC, "f1")
#: Family-wise error rate of the Holm correction over the verdict family (members × ks × metrics × controls).
ALPHA = 0.05

#: ``p_test`` of a document swap test: of a deterministic control, and of a random control whose one draw
#: (or several draws) the swaps hold fixed, conditional on that draw.
SWAP = "swap"
SWAP_ONE_DRAW = "swap (one random draw held fixed)"
SWAP_DRAWS = "swap (random draws held fixed)"

#: Where a Holm-tested difference lies (:func:`adjusted_verdict`).
ABOVE, BELOW, NEITHER, NONE = "above 0", "below 0", "not separated from 0", "no interval"
VERDICT_KINDS = (ABOVE, BELOW, NEITHER, NONE)

#: The dimensions of the verdict family, as (record key, singular, plural).
DIMENSIONS = (
    ("model", "member", "members"),
    ("k", "k", "ks"),
    ("metric", "metric", "metrics"),
    ("comparison", "control", "controls"),
)


@dataclass(frozen=True)
class FamilyMember:
    """One model of the family as the paper table reads it.

    Attributes:
        name: the model's name.
        active_ratio: experts per token over experts, k / E.
        experts: its number of experts E.
        units: the paper protocol's probe results of its units (columns ``concept``, ``k``, ``f1``, ...).
    """

    name: str
    active_ratio: float
    experts: int
    units: pd.DataFrame


def paper_table(members: Sequence[FamilyMember], dense_units: pd.DataFrame | None) -> pd.DataFrame:
    """The paper protocol per member and k: ``mean_best_f1`` and ``concepts`` over the concepts probed
    in every model (``dense_units``: the dense twin's layers, rows with ``draw`` < 0, active ratio 1 and
    one "expert"), with ``model``, ``active_ratio`` and ``experts``; members in the order given."""
    concepts = None
    for member in members:
        ok = set(member.units.dropna(subset=["f1"])["concept"])
        concepts = ok if concepts is None else concepts & ok
    if dense_units is not None:
        concepts &= set(dense_units[dense_units["draw"] < 0].dropna(subset=["f1"])["concept"])
    rows = []
    for member in members:
        curve = best_f1_by_k(member.units[member.units["concept"].isin(concepts)])
        rows.append(curve.assign(model=member.name, active_ratio=member.active_ratio, experts=member.experts))
    if dense_units is not None:
        curve = best_f1_by_k(dense_units[(dense_units["draw"] < 0) & dense_units["concept"].isin(concepts)])
        rows.append(curve.assign(model=DENSE_TWIN, active_ratio=1.0, experts=1))
    return pd.concat(rows, ignore_index=True).rename(columns={"mean": "mean_best_f1", "count": "concepts"})


@dataclass(frozen=True)
class SparsityVerdicts:
    """The held-out verdicts of the family: which test gives each comparison's p-value, and Holm.

    Attributes:
        deterministic: whether a comparison's control is deterministic, given its name and number of
            draws (all dense neurons on the routed tokens is; routing-matched token subsets, one random
            draw, are not). It names the swap test a p-value comes from (:meth:`p_value`).

    Every method reads ``held_out``: one row per (model, comparison, metric, k), the held-out comparison
    records' columns plus ``model`` and ``active_ratio``.
    """

    deterministic: Callable[[str, int | None], bool]

    def p_value(self, record: dict) -> tuple[float | None, str]:
        """The p-value of 0 that a held-out ``record`` is Holm-tested with, and its test's name.

        A control with several random draws (``n_draws`` > 1, e.g. random neuron subsets) is tested
        against the population the draws come from, so its p-value must carry the draws' variation:
        ``bootstrap_p``, the draw-mean t test's (``"draws_t"``: the documents' bootstrap variance plus the
        variance between the draws, Satterthwaite's degrees of freedom ``draws_df``; a run before that
        test recorded the two-stage bootstrap's, ``"bootstrap"``). Otherwise (one draw, or a record with
        no other p-value) the document swap test's, named by how the comparison's control is drawn
        (:attr:`deterministic`, a declared property of the comparison, not read from ``n_draws``):
        ``"swap"`` for a deterministic control, :data:`SWAP_ONE_DRAW` where a random control's one draw
        is held fixed (the test is conditional on that draw), :data:`SWAP_DRAWS` where several random
        draws are held fixed."""
        swap, boot = record.get("swap_p"), record.get("bootstrap_p")
        several = (record.get("n_draws") or 1) > 1
        if swap is not None and (not several or boot is None):
            if self.deterministic(record["comparison"], record.get("n_draws")):
                return swap, SWAP
            return swap, SWAP_DRAWS if several else SWAP_ONE_DRAW
        return boot, "draws_t" if finite(record.get("draws_df")) else "bootstrap"

    def adjust(self, records: list[dict]) -> list[dict]:
        """One row per held-out record, Holm-adjusted together over those with an interval and a
        p-value: the estimate, its interval, ``p`` and ``p_test`` (:meth:`p_value`), ``p_holm``,
        ``verdict`` (:func:`adjusted_verdict`), ``interval_disagrees`` (:func:`interval_disagrees`),
        ``tests_in_family`` and ``family`` (its dimensions, :func:`family_dims`)."""
        tested, tests = [], []
        for r in records:
            p, test = self.p_value(r)
            ok = bool(r.get("interval_available")) and finite(p)
            tested.append(float(p) if ok else np.nan)
            tests.append(test if ok else None)
        adjusted = holm(np.asarray(tested, dtype=float)) if records else np.array([])
        dims = family_dims([r for r, p in zip(records, tested, strict=True) if np.isfinite(p)])
        keys = ("model", "active_ratio", "k", "estimate", "ci_low", "ci_high", "bootstrap_p", "n_concepts")
        out = []
        for record, p, test, p_holm in zip(records, tested, tests, adjusted, strict=True):
            row = {key: record.get(key) for key in keys}
            row.update(
                p=None if np.isnan(p) else float(p),
                p_test=test,
                swap_permutations=record.get("swap_permutations") if is_swap(test) else None,
                bootstrap_resamples=record.get("bootstrap_resamples"),
                n_draws=record.get("n_draws"),
                draws_df=float(record["draws_df"]) if finite(record.get("draws_df")) else None,
                comparison=record.get("comparison"),
                metric=record.get("metric"),
                interval_available=bool(record.get("interval_available")),
                interval_unavailable_reason=record.get("interval_unavailable_reason"),
                p_holm=None if np.isnan(p_holm) else float(p_holm),
                tests_in_family=int(np.isfinite(adjusted).sum()),
                family=dims,
            )
            row["verdict"] = adjusted_verdict(row)
            row["interval_disagrees"] = interval_disagrees(row)
            out.append(row)
        return out

    def metrics(self, held_out: pd.DataFrame) -> list[str]:
        """The metrics of :data:`VERDICT_METRICS` ``held_out`` recorded (balanced accuracy first)."""
        return [metric for metric in VERDICT_METRICS if held_out_records(held_out, metric)]

    def headline_metric(self, held_out: pd.DataFrame) -> str:
        """The metric of the headline tests: class-balanced accuracy (:data:`HEADLINE_METRIC`), whose
        chance level is 0.5 for any probe, so the protocol's permuted-label null sits near 0; F1's chance
        level moves with how often a probe says positive. F1 when nothing recorded balanced accuracy."""
        return HEADLINE_METRIC if held_out_records(held_out, HEADLINE_METRIC) else "f1"

    def family(self, held_out: pd.DataFrame) -> list[dict]:
        """Every test the verdict reads, Holm-adjusted as ONE family: each (member, k) of both routed-token
        controls (:data:`VERDICT_CONTROLS`) in both metrics (:data:`VERDICT_METRICS`: the headline moved
        from F1 to balanced accuracy after the F1 results were seen, so both are read and both are in the
        family). Rows as :meth:`adjust`, ordered by metric, control, active ratio and k."""
        rows = [
            record
            for metric in self.metrics(held_out)
            for comparison in VERDICT_CONTROLS
            for record in comparison_records(held_out, comparison, metric)
        ]
        return self.adjust(rows)

    def tests(
        self, held_out: pd.DataFrame, comparison: str = HEADLINE, metric: str | None = None
    ) -> list[dict]:
        """One row per (member, k) of ``comparison`` in ``metric`` (default :meth:`headline_metric`), as
        :meth:`adjust`. A comparison of the verdict family (:data:`VERDICT_CONTROLS` in a :meth:`metrics`
        metric) is adjusted over that whole family (:meth:`family`); any other comparison (matched
        subsets, the nulls) over its own (member, k) tests in ``metric``."""
        metric = metric or self.headline_metric(held_out)
        if comparison in VERDICT_CONTROLS and metric in self.metrics(held_out):
            return [
                r for r in self.family(held_out) if r["comparison"] == comparison and r["metric"] == metric
            ]
        return self.adjust(comparison_records(held_out, comparison, metric))


#: The columns every held-out frame the verdicts read must have.
HELD_OUT_COLUMNS = ("model", "active_ratio", "comparison", "metric", "k")


def held_out_records(held_out: pd.DataFrame, metric: str = "f1") -> list[dict]:
    """The rows of ``held_out`` in ``metric`` as records (missing values None), by active ratio and k."""
    if not len(held_out):
        return []
    missing = [column for column in HELD_OUT_COLUMNS if column not in held_out.columns]
    if missing:
        raise InputError(
            f"the held-out frame lacks the columns {missing}; accepted: the held-out comparisons of every "
            f"member with {list(HELD_OUT_COLUMNS)} (one row per member, comparison, metric and k)."
        )
    frame = held_out[held_out["metric"] == metric].sort_values(["active_ratio", "k"])
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def active_ratio(held_out: pd.DataFrame, model: str) -> float:
    """``model``'s active ratio in ``held_out`` (NaN if it has no row)."""
    rows = held_out[held_out["model"] == model]
    return float(rows["active_ratio"].iloc[0]) if len(rows) else float("nan")


def comparison_records(held_out: pd.DataFrame, comparison: str, metric: str) -> list[dict]:
    """The held-out records of ``comparison`` in ``metric``, by active ratio and k."""
    rows = [r for r in held_out_records(held_out, metric) if r["comparison"] == comparison]
    return sorted(rows, key=lambda r: (active_ratio(held_out, r["model"]), r["k"]))


def adjusted_verdict(row: dict) -> str:
    """Where a Holm-tested difference lies at family-wise :data:`ALPHA`: above 0, below 0, not separated,
    or no interval (no test)."""
    if row.get("p_holm") is None or row.get("estimate") is None:
        return NONE
    if row["p_holm"] > ALPHA:
        return NEITHER
    return ABOVE if row["estimate"] > 0 else BELOW


def interval_disagrees(row: dict) -> bool | None:
    """Whether the printed (unadjusted) interval and the unadjusted p-value of the named test disagree on
    0 at 5% (one excludes 0, the other does not); None without an interval or a p-value."""
    if row.get("p") is None or not row.get("interval_available") or not finite(row.get("ci_low")):
        return None
    excludes = row["ci_low"] > 0 or row["ci_high"] < 0
    return bool(excludes != (row["p"] <= ALPHA))


def p_floor(row: dict, smallest: float) -> float:
    """The smallest p-value ``row``'s test can give: 1 / (1 + swaps) for a swap test, 2 / (1 + resamples)
    for the two-sided percentile bootstrap, none (0) for the draw-mean t test; for an older run (no count
    recorded), the ``smallest`` p-value among its tests."""
    if is_swap(row.get("p_test")) and row.get("swap_permutations"):
        return 1.0 / (1 + row["swap_permutations"])
    if row.get("p_test") == "bootstrap" and row.get("bootstrap_resamples"):
        return 2.0 / (1 + row["bootstrap_resamples"])
    if row.get("p_test") == "draws_t":
        return 0.0  # a t test's p-value has no floor
    return smallest


def family_counts(rows: list[dict]) -> list[int]:
    """How many members, ks, metrics and controls ``rows`` hold (distinct values of each)."""
    return [len({r.get(key) for r in rows}) for key, _, _ in DIMENSIONS]


def family_dims(rows: list[dict]) -> str:
    """A Holm family's dimensions, e.g. "4 members × 7 ks × 2 metrics × 2 controls"."""
    return " × ".join(
        f"{n} {one if n == 1 else many}"
        for n, (_, one, many) in zip(family_counts(rows), DIMENSIONS, strict=True)
    )


def is_swap(test: str | None) -> bool:
    """Whether ``p_test`` names a document swap test."""
    return bool(test) and test.startswith(SWAP)


def finite(value) -> bool:
    """Whether a record's value is a number (not None, not the NaN a frame gives a missing one)."""
    return value is not None and bool(np.isfinite(value))
