"""The associations analysis as one configured object: :class:`AssociationStudy`.

Which input tokens go with which experts — the lift P(expert | token) / P(expert) and PMI of every
supported (block, expert, token id), tested within documents on the selection half with
Benjamini–Hochberg and measured again on the report half
(:func:`~tl_moe.analysis.token_association.token_expert_associations`) — and the position effect of the
driver experts: how often a token's routed set holds a driver by the token's position in its sentence /
statement / line, on report-half documents, against the drivers' matched controls and within token ids
(:func:`~tl_moe.analysis.positions.position_effect`). It knows nothing of the pipeline.

Example (``drivers`` from :class:`~tl_moe.analysis.driver_study.DriverStudy` on the same model)::

    study = AssociationStudy(model.moe_cfg.num_experts)
    records = collect(model, corpus, {"r": study.accumulator(model.moe_cfg.sparse_layers, 20_000)},
                      max_tokens=20_000)["r"]
    positions, segmentation = segment_positions_of(records, corpus, model.tokenizer, domain_names(corpus))
    found = study(records, drivers.experts, positions, segmentation=segmentation)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.configs.associations import AssociationsConfig
from tl_moe.analysis.configs.statistics import Statistics
from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.positions import PositionEffect, position_effect
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.token_association import (
    AssociationTable,
    RoutingRecords,
    RoutingRecordsResult,
    token_expert_associations,
)
from tl_moe.data.segments import segment_starts, segmentation_for_domain, token_segment_positions
from tl_moe.errors import InputError
from tl_moe.settings import is_integer

__all__ = ["AssociationOutcome", "AssociationStudy", "expert_masks", "segment_positions_of"]


@dataclass(frozen=True)
class AssociationOutcome:
    """What :class:`AssociationStudy` found.

    Attributes:
        associations: the token–expert association tests (:class:`AssociationTable`).
        positions: the position curve and effects of the driver experts (:class:`PositionEffect`).
        segmentation: per domain, the segmentation used, its documents and segments.
    """

    associations: AssociationTable
    positions: PositionEffect
    segmentation: pd.DataFrame


@dataclass(frozen=True)
class AssociationStudy:
    """Token–expert associations (selection half, confirmed on the report half) and the drivers' position
    effect (report half).

    Args:
        num_experts: experts per sparse block.
        config: which token ids are tested and which segment positions are early.
        statistics: the seed, the false-discovery rate, the bootstrap resamples and ``min_documents``: a
            report-half lift, and the position effect, get an interval from that many documents on. NOT
            read: ``selection_fraction`` — the selection and report halves are the fixed 50/50 hash halves
            the drivers use (:data:`~tl_moe.analysis.splits.HALVES_KEY`).

    Usage::

        study = AssociationStudy(cfg.num_experts, statistics=Statistics(seed=1))
        outcome = study(records, drivers.experts, positions)  # records: RoutingRecords' result
        outcome.associations.table, outcome.positions.effects
    """

    num_experts: int
    config: AssociationsConfig = field(default_factory=AssociationsConfig)
    statistics: Statistics = field(default_factory=Statistics)

    def __post_init__(self) -> None:
        if not is_integer(self.num_experts) or self.num_experts < 2:
            raise InputError(
                f"AssociationStudy num_experts must be an integer of at least 2, got {self.num_experts!r}."
            )

    def _check_inputs(
        self, records: RoutingRecordsResult, drivers: pd.DataFrame, positions: np.ndarray
    ) -> None:
        """Refuse, in one line, positions, experts or a drivers frame that do not fit the records."""
        if len(np.asarray(positions)) != len(records):
            raise InputError(
                f"AssociationStudy positions hold {len(np.asarray(positions))} values; accepted: one per record "
                f"({len(records)}, segment_positions_of(records, ...))."
            )
        most = int(records.experts.max()) if records.experts.numel() else -1
        if most >= self.num_experts:
            raise InputError(
                f"AssociationStudy num_experts {self.num_experts} is below the records' expert id {most}; "
                "accepted: the experts per sparse block of the model that made the records."
            )
        missing = [c for c in ("layer", "expert", "driver", "control for") if c not in drivers.columns]
        if missing:
            raise InputError(
                f"AssociationStudy drivers frame lacks the columns {missing}; accepted: DriverOutcome.experts."
            )
        unknown = sorted(set(drivers["layer"]) - set(records.layers))
        if unknown:
            raise InputError(
                f"AssociationStudy drivers name layers {unknown}; accepted: the records' layers {records.layers}."
            )

    def accumulator(self, layers: Sequence[int], max_tokens: int) -> RoutingRecords:
        """A fresh accumulator of the routed experts of the first ``max_tokens`` streamed tokens."""
        return RoutingRecords(layers, max_tokens)

    def __call__(
        self,
        records: RoutingRecordsResult,
        drivers: pd.DataFrame,
        positions: np.ndarray,
        *,
        segmentation: pd.DataFrame | None = None,
        token_names: Callable[[int], str] | None = None,
        progress: bool = False,
    ) -> AssociationOutcome:
        """The associations and the position effect.

        Args:
            records: the routing of every streamed token (:class:`RoutingRecords`' result).
            drivers: the drivers' per-expert frame (``layer``, ``expert``, ``driver``, ``control for``:
                :attr:`~tl_moe.analysis.driver_study.DriverOutcome.experts`).
            positions: ``[record]`` each record's position in its segment, -1 for none
                (:func:`segment_positions_of`).
            segmentation: the segmentation per domain, kept in the outcome (default: empty).
            token_names: the text of a token id, for the table.
        """
        self._check_inputs(records, drivers, positions)
        stats = self.statistics
        associations = token_expert_associations(
            records,
            self.num_experts,
            min_count=self.config.min_count,
            min_documents=self.config.min_token_documents,
            min_report_documents=stats.min_documents,
            fdr=stats.fdr,
            n_resamples=stats.bootstrap_resamples,
            seed=stats.seed,
            token_names=token_names,
            progress=progress,
        )
        in_drivers, in_controls = expert_masks(drivers, records.layers, self.num_experts)
        report = document_split(records.doc_index.numpy(), key=HALVES_KEY) == 1
        effect = position_effect(
            records.experts.numpy()[report].astype(np.int64),
            np.asarray(positions)[report],
            records.token_id.numpy()[report],
            records.doc_index.numpy()[report],
            in_drivers,
            in_controls,
            early=self.config.early,
            n_resamples=stats.bootstrap_resamples,
            seed=stats.seed,
            min_documents=stats.min_documents,
        )
        return AssociationOutcome(
            associations, effect, pd.DataFrame() if segmentation is None else segmentation
        )


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


def expert_masks(
    experts: pd.DataFrame, layers: tuple[int, ...], n_experts: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[layer, expert]`` membership of the drivers and of their controls in ``experts`` (the drivers'
    per-expert frame, :attr:`~tl_moe.analysis.driver_study.DriverOutcome.experts`), rows in ``layers`` order."""
    row_of = {layer: i for i, layer in enumerate(layers)}
    rows = experts["layer"].map(row_of).to_numpy(dtype=np.int64)
    columns = experts["expert"].to_numpy(dtype=np.int64)
    drivers = np.zeros((len(layers), n_experts), dtype=bool)
    controls = np.zeros_like(drivers)
    drivers[rows, columns] = experts["driver"].to_numpy(dtype=bool)
    controls[rows, columns] = (experts["control for"] != "").to_numpy()
    return drivers, controls
