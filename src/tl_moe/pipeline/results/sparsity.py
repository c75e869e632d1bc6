"""The sparsity section's :class:`~tl_moe.pipeline.protocol.Result`: the family's paper table and held-out
comparisons as the report shows them, with the verdicts of
:class:`~tl_moe.analysis.sparsity_family.SparsityVerdicts` (findings in :mod:`.sparsity_findings`,
figures in :mod:`.sparsity_figures`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from tl_moe.analysis.sparsity_family import HEADLINE, SparsityVerdicts, held_out_records
from tl_moe.pipeline.protocol import FigureItem, Result, TableItem
from tl_moe.pipeline.results import sparsity_figures
from tl_moe.pipeline.results.sparsity_findings import confound, held_out_findings

__all__ = ["VERDICTS", "SparsityResult", "test_p_value"]


def _deterministic(comparison: str, n_draws: int | None) -> bool:
    """Whether the held-out comparison's control is deterministic (its arms as the probing section declares)."""
    from tl_moe.pipeline.sections.probing import (  # the sections import this module
        DETERMINISTIC,
        comparison_draws,
    )

    return comparison_draws(comparison, n_draws) == DETERMINISTIC


#: The verdicts of the held-out comparisons, each control drawn as the probing section declares it.
VERDICTS = SparsityVerdicts(deterministic=_deterministic)
#: The p-value of 0 a held-out record is Holm-tested with, and its test's name.
test_p_value = VERDICTS.p_value


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
        from tl_moe.pipeline.sections.probing import PAPER, _interval_text  # the sections import this module

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
        return held_out_records(self.held_out, metric)

    def findings(self) -> list[str]:
        findings = held_out_findings(self.held_out, VERDICTS)
        points = self.table[self.table["k"] == 1].sort_values("active_ratio")
        trend = ", ".join(f"{row.mean_best_f1:.3f} at {row.active_ratio:g}" for row in points.itertuples())
        findings.append(
            f"**Sparsity family, the paper's protocol** (for comparison with published numbers; best unit "
            f"picked on the split it is scored on, k = 1, no interval): mean best F1 by active ratio: {trend}."
        )
        if self.parameters:
            findings.append(confound(self.parameters))
        return findings

    def headline_metric(self) -> str:
        """The metric of the headline tests (:meth:`SparsityVerdicts.headline_metric`)."""
        return VERDICTS.headline_metric(self.held_out)

    def verdict_metrics(self) -> list[str]:
        """The verdict metrics this run recorded (:meth:`SparsityVerdicts.metrics`)."""
        return VERDICTS.metrics(self.held_out)

    def verdict_tests(self) -> list[dict]:
        """Every test the verdict sentence reads, Holm-adjusted as ONE family (:meth:`SparsityVerdicts.family`)."""
        return VERDICTS.family(self.held_out)

    def headline_tests(self, comparison: str = HEADLINE, metric: str | None = None) -> list[dict]:
        """One row per (member, k) of ``comparison`` in ``metric`` with its Holm verdict
        (:meth:`SparsityVerdicts.tests`)."""
        return VERDICTS.tests(self.held_out, comparison, metric)

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
        return sparsity_figures.paper_figure(self.table, self.ks)

    def held_out_figure(self) -> Figure:
        """Held-out protocol: MoE − control (mean F1 difference, 95% CI) vs active ratio, per k."""
        return sparsity_figures.held_out_figure(pd.DataFrame(self._held_out_records()), self.ks)

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
