"""Token–expert association (lift / PMI, within-document permutation test, BH, held out) and the position
effect of the driver experts (by position in the sentence / statement / line, against matched controls
and with token identity controlled)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.positions import PositionEffect, position_effect
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS as MIN_INTERVAL_DOCUMENTS
from tl_moe.analysis.token_association import (
    AssociationTable,
    RoutingRecords,
    RoutingRecordsResult,
    token_expert_associations,
)
from tl_moe.collect.accumulator import Accumulator
from tl_moe.data.segments import segment_starts, segmentation_for_domain, token_segment_positions
from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import AccumulatorSpec, Analysis, FigureItem, Inputs, Need, Result, TableItem
from tl_moe.report.figures import new_figure
from tl_moe.report.numbers import format_interval

__all__ = ["Associations", "AssociationsResult", "TokenRouting", "segment_positions_of"]

MIN_COUNT = 20
"""Occurrences (selection half) a token id needs to be tested."""
MIN_DOCUMENTS = 5
"""Documents a token id must occur in, on the selection half, to be tested (a report-half lift gets an
interval from :data:`~tl_moe.defaults.MIN_DOCUMENTS` report documents holding its token on)."""
EARLY = 3
"""Positions ``< EARLY`` of a segment are *early*."""


@dataclass(frozen=True)
class TokenRouting(AccumulatorSpec):
    """The routed experts of every streamed token (first ``max_tokens``), with token id and document."""

    max_tokens: int = 200_000

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return RoutingRecords(model.moe_cfg.sparse_layers, self.max_tokens)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        return self.max_tokens * (4 * 8 + len(cfg.sparse_layers) * cfg.experts_per_token * 4)


def segment_positions_of(
    records: RoutingRecordsResult, dataset: Any, tokenizer: Any, domain_names: tuple[str, ...]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Each record's position in its segment (-1: whitespace-only token), and per domain the
    segmentation used, its documents and segments.

    Documents are re-tokenized exactly as the collection pass does (no special tokens), with offsets.
    """
    docs = np.unique(records.doc_index.numpy())
    rows = dataset.select(docs.tolist())
    texts = ["" if text is None else str(text) for text in rows["text"]]
    domains = rows["domain"] if "domain" in rows.column_names else [None] * len(texts)
    languages = rows["language"] if "language" in rows.column_names else [None] * len(texts)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    by_doc, stats = {}, {}
    for i, doc in enumerate(docs.tolist()):
        domain = domains[i]
        name = domain_names[int(domain)] if isinstance(domain, int | np.integer) else domain
        kind = segmentation_for_domain(name)
        starts = segment_starts(texts[i], kind, languages[i])
        by_doc[doc] = token_segment_positions(texts[i], encoded["offset_mapping"][i], starts)
        entry = stats.setdefault(str(name), {"segmentation": kind, "documents": 0, "segments": 0})
        entry["documents"] += 1
        entry["segments"] += len(starts)
    positions = np.full(len(records), -1, dtype=np.int64)
    doc_index, doc_position = records.doc_index.numpy(), records.doc_position.numpy()
    for doc, table in by_doc.items():
        where = np.nonzero(doc_index == doc)[0]
        inside = doc_position[where] < len(table)
        positions[where[inside]] = table[doc_position[where[inside]]]
    frame = pd.DataFrame([{"domain": k, **v} for k, v in sorted(stats.items())])
    return positions, frame


def _masks(experts: pd.DataFrame, layers: tuple[int, ...], n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """``[layer, expert]`` membership of the drivers and of their controls in the drivers result."""
    row_of = {layer: i for i, layer in enumerate(layers)}
    rows = experts["layer"].map(row_of).to_numpy(dtype=np.int64)
    columns = experts["expert"].to_numpy(dtype=np.int64)
    drivers = np.zeros((len(layers), n_experts), dtype=bool)
    controls = np.zeros_like(drivers)
    drivers[rows, columns] = experts["driver"].to_numpy(dtype=bool)
    controls[rows, columns] = (experts["control for"] != "").to_numpy()
    return drivers, controls


@dataclass(frozen=True)
class AssociationsResult(Result):
    """Attributes:
    associations: the token–expert association tests (:class:`AssociationTable`).
    positions: the position curve and effects of the driver experts (:class:`PositionEffect`).
    segmentation: per domain, the segmentation used, its documents and segments.
    """

    associations: AssociationTable
    positions: PositionEffect
    segmentation: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.associations.table

    def _effect(self, name: str) -> pd.Series:
        return self.positions.effects.set_index("effect").loc[name]

    def metrics(self) -> dict[str, Any]:
        summary = self.associations.summary
        metrics: dict[str, Any] = {
            key: summary[key]
            for key in (
                "tested triples",
                "discoveries",
                "discoveries (Benjamini–Yekutieli)",
                "discoveries measured on the report half",
                "discoveries without a report interval",
                "report interval above 1 (unadjusted)",
                "confirmed",
                "confirmed (Benjamini–Yekutieli)",
            )
            if key in summary
        }
        for key, value in summary.items():
            if key.startswith("mean report lift"):
                metrics[key] = _round(value["estimate"])
                metrics[f"{key} | 95% CI"] = [_round(value["ci_low"]), _round(value["ci_high"])]
        for row in self.positions.effects.to_dict("records"):
            metrics[f"position | {row['effect']}"] = _round(row["estimate"])
            metrics[f"position | {row['effect']} | 95% CI"] = [_round(row["ci low"]), _round(row["ci high"])]
        metrics["position | report documents"] = self.positions.n_documents
        effects = self.positions.effects
        if len(effects):
            metrics["position | early tokens"] = int(effects["early tokens"].iloc[0])
            metrics["position | late tokens"] = int(effects["late tokens"].iloc[0])
        metrics["association | report documents"] = summary.get("report documents", 0)
        return metrics

    def records(self) -> dict[str, Any]:
        effects = [
            {
                "effect": row["effect"],
                "estimate": _round(row["estimate"]),
                "ci_low": _round(row["ci low"]),
                "ci_high": _round(row["ci high"]),
                "n": int(row["documents"]),
                "early_tokens": int(row["early tokens"]),
                "late_tokens": int(row["late tokens"]),
            }
            for row in self.positions.effects.to_dict("records")
        ]
        summary = dict(self.associations.summary)
        return {
            "position_effects": effects,
            "association_summary": summary,
            "early_positions": self.positions.early,
        }

    def findings(self) -> list[str]:
        summary = self.associations.summary

        def show(name: str) -> str:
            row = self._effect(name)
            why = row.get("interval unavailable") or f"fewer than {MIN_INTERVAL_DOCUMENTS} documents"
            return format_interval(row["estimate"], row["ci low"], row["ci high"], "+.3f", "no document", why)

        early = self.positions.early
        return [
            f"**Position effect**: the driver experts' hit rate (share of their blocks that route the token to "
            f"one) is {show('drivers: early − late')} higher on the first {early} tokens of a sentence / statement / "
            f"line than on later ones (matched controls {show('controls: early − late')}; difference "
            f"{show('drivers − controls: early − late')}). Within token id (the same token early vs late): drivers "
            f"{show('drivers: early − late, within token id')}, controls "
            f"{show('controls: early − late, within token id')}, difference "
            f"{show('drivers − controls: early − late, within token id')}; 95% bootstrap over "
            f"{self.positions.n_documents} report-half documents.",
            _association_finding(summary),
        ]

    def figures(self) -> list[FigureItem]:
        curve = self.positions.curve
        fig, ax = new_figure(6.4, 4.0)
        x = np.arange(len(curve))
        for name, color in (("drivers", "tab:red"), ("controls", "tab:blue")):
            label = "driver experts" if name == "drivers" else "frequency-matched controls"
            ax.plot(x, curve[f"{name} rate"], marker="o", color=color, label=label)
            ax.fill_between(x, curve[f"{name} ci low"], curve[f"{name} ci high"], color=color, alpha=0.2)
        ax.set_xticks(x, curve["position"])
        ax.axvline(self.positions.early - 0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("position of the token in its sentence / statement / line")
        ax.set_ylabel("hit rate: share of the blocks routing the token to one")
        ax.set_title("Driver experts by position (report half)")
        ax.legend(fontsize=8)
        figures = [
            FigureItem(
                "associations_position_curve",
                fig,
                "Hit rate of the driver experts and of their routing-frequency-matched controls by position, "
                f"with 95% document-bootstrap bands ({self.positions.n_documents} report-half documents); "
                f"left of the dashed line: early positions (< {self.positions.early}).",
            )
        ]
        table = self.associations.table
        if len(table) and table["report ci low"].notna().any():
            fig, ax = new_figure(5.2, 4.2)
            measured = table[table["report ci low"].notna()]  # lifts with an interval
            ax.errorbar(
                measured["lift"],
                measured["report lift"],
                yerr=[
                    measured["report lift"] - measured["report ci low"],
                    measured["report ci high"] - measured["report lift"],
                ],
                fmt="o",
                ms=3,
                alpha=0.7,
            )
            top = float(np.nanmax(np.r_[measured["lift"], measured["report ci high"]])) * 1.1
            ax.plot([0, top], [0, top], color="grey", lw=0.8)
            ax.axhline(1, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("lift on the selection half")
            ax.set_ylabel("lift on the report half (95% CI)")
            ax.set_title("Discovered token–expert associations, held out")
            figures.append(
                FigureItem(
                    "associations_lift_held_out",
                    fig,
                    "Each dot a (block, expert, token) discovered on the selection half whose token sits in at "
                    f"least {MIN_INTERVAL_DOCUMENTS} report documents; below the diagonal: selection's optimism.",
                )
            )
        return figures

    def tables(self) -> list[TableItem]:
        return [
            TableItem(
                "associations_position_effects", self.positions.effects, "Early − late effects (report half)."
            ),
            TableItem("associations_position_curve", self.positions.curve, "Hit rates by position bin."),
            TableItem(
                "associations_discoveries",
                self.associations.table,
                "Token–expert associations discovered on the selection half (q ≤ FDR, lift > 1), "
                "measured on the report half.",
            ),
            TableItem("associations_segmentation", self.segmentation, "Segmentation per domain."),
        ]


def _association_finding(summary: dict[str, Any]) -> str:
    """Discoveries on the selection half (BH, BY beside it) and how many the report half confirms after
    a multiplicity correction over the measured discoveries (BH, BY as the check)."""
    fdr = summary.get("fdr", 0.05)
    discoveries = summary.get("discoveries", 0)
    measured = summary.get("discoveries measured on the report half", 0)
    least = summary.get("least report documents for an interval", MIN_INTERVAL_DOCUMENTS)
    text = (
        f"**Token–expert association**: {discoveries} of {summary.get('tested triples', 0)} (block, expert, "
        f"token) triples enriched within documents at FDR {fdr} on the selection half by Benjamini–Hochberg, "
        f"{summary.get('discoveries (Benjamini–Yekutieli)', 0)} by Benjamini–Yekutieli (valid under the "
        f"negative dependence of one token's experts). On the report half, {measured} of the {discoveries} BH "
        f"discoveries have a lift interval (their token in at least {least} report documents; the other "
        f"{summary.get('discoveries without a report interval', discoveries - measured)} have an estimate "
        "only, no interval)"
    )
    if not measured:
        return text + ", so none is confirmed."
    return (
        text + f"; {summary.get('confirmed', 0)} of those {measured} keep a lift above 1 after "
        f"Benjamini–Hochberg at {fdr} over the {measured} (bootstrap p-values of lift = 1), "
        f"{summary.get('confirmed (Benjamini–Yekutieli)', 0)} after Benjamini–Yekutieli "
        f"({summary.get('report interval above 1 (unadjusted)', 0)} have an unadjusted 95% interval above 1)."
    )


def _round(value: Any, digits: int = 5) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


class Associations(Analysis):
    """Token–expert association and the position effect of the driver experts."""

    name = "associations"
    title = "Token–expert association and the position effect"
    summary = (
        "token–expert lift/PMI tested within documents (BH, held out); driver experts by sentence position"
    )
    intro = (
        "Which input tokens go with which experts: for every token id seen often enough on the selection half of "
        "the documents, and every expert of every sparse block, the lift P(expert | token) / P(expert) and "
        "PMI, tested against permutations of token ids inside each document (exact; document-level confounds such as "
        "domain cannot make an association), with Benjamini–Hochberg; discoveries are measured again on the "
        f"other half with a document-bootstrap interval where at least {MIN_INTERVAL_DOCUMENTS} report documents hold "
        "the token, and confirmed by Benjamini–Hochberg over those intervals' p-values (Benjamini–Yekutieli as "
        "the check). The position effect: how often a token's routed set "
        "holds a driver expert (from the drivers analysis) by its position in its sentence (pysbd for prose), "
        "statement (Python) or line (C), on report-half documents, against the drivers' frequency-matched "
        "controls and within token ids."
    )
    depends_on = ("drivers",)
    default = False

    def check(self, run: RunContext) -> None:
        tokenizer = run.model(run.main).tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(
                "the 'associations' analysis needs a fast tokenizer (character offsets of tokens); "
                f"{run.main}'s tokenizer is {type(tokenizer).__name__}."
            )

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, TokenRouting(max_tokens=run.options.max_tokens))]

    def finalize(self, run: RunContext, inputs: Inputs) -> AssociationsResult:
        records = inputs[Need(run.main, TokenRouting(max_tokens=run.options.max_tokens))]
        model = run.model(run.main)
        options = run.options
        tokenizer = model.tokenizer
        positions, segmentation = segment_positions_of(records, run.dataset, tokenizer, run.domain_names)
        associations = token_expert_associations(
            records,
            model.moe_cfg.num_experts,
            min_count=MIN_COUNT,
            min_documents=MIN_DOCUMENTS,
            min_report_documents=MIN_INTERVAL_DOCUMENTS,
            fdr=options.fdr,
            n_resamples=options.bootstrap_resamples,
            seed=options.seed,
            token_names=lambda t: tokenizer.decode([t]),
            progress=options.progress,
        )
        drivers, controls = _masks(
            inputs.result("drivers").experts, records.layers, model.moe_cfg.num_experts
        )
        report = document_split(records.doc_index.numpy(), key=HALVES_KEY) == 1
        effect = position_effect(
            records.experts.numpy()[report].astype(np.int64),
            positions[report],
            records.token_id.numpy()[report],
            records.doc_index.numpy()[report],
            drivers,
            controls,
            early=EARLY,
            n_resamples=options.bootstrap_resamples,
            seed=options.seed,
        )
        return AssociationsResult(associations, effect, segmentation)
