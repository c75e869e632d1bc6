"""The drivers analysis as one configured object: :class:`DriverStudy`.

From what one collection pass gathered — the exact per-document effects of removing / zeroing every
expert (:class:`~tl_moe.collect.ExpertEffects`), routed counts and REAP saliency
(:class:`~tl_moe.analysis.drivers.ExpertSaliency`) and, optionally, the first-order estimate
(:class:`~tl_moe.analysis.effect_estimate.FirstOrderEffects`) — it chooses the driver experts on the
selection half of the documents, reports their exact effect on the other half against
routing-frequency-matched controls, scores REAP saliency and the first-order estimate against the exact
effect, and, given the domains analysis' domain experts, compares drivers with domain experts
(docs/METHODS.md, "Driver experts"). It knows nothing of the pipeline.

Example (a model the user holds, e.g. ``tl_moe.load("toy/moe-8x2")``, and a corpus)::

    study = DriverStudy(model.moe_cfg.sparse_layers, model.moe_cfg.num_experts, DriversConfig(tokens=4000))
    found = study(**collect(model, corpus, study.accumulators(), max_tokens=4000))
    found.comparison  # drivers vs matched controls on the report half, with 95% intervals
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tl_moe.analysis.configs.drivers import DriversConfig
from tl_moe.analysis.configs.statistics import Statistics
from tl_moe.analysis.driver_domain import (
    DomainRouting,
    DriverDomainComparison,
    ReportDocuments,
    compare_drivers_with_domain_experts,
)
from tl_moe.analysis.drivers import ExpertSaliency, ExpertSaliencyResult, driver_report, max_drivers
from tl_moe.analysis.effect_estimate import (
    FirstOrderEffects,
    FirstOrderEffectsResult,
    estimate_report,
    estimate_vs_reap,
)
from tl_moe.analysis.stats import Interval
from tl_moe.collect.expert_effects import ExpertEffects, ExpertEffectsResult
from tl_moe.errors import InputError
from tl_moe.settings import ModelDefault, is_integer

__all__ = ["DriverOutcome", "DriverStudy"]

HALF = 0.5
"""The drivers' selection share: the fixed hash halves (:data:`~tl_moe.analysis.splits.HALVES_KEY`)."""

EDIT_KINDS = ("remove", "zero")
"""The edits whose exact effects the study measures; the first chooses the drivers."""


@dataclass(frozen=True)
class DriverOutcome:
    """What :class:`DriverStudy` found.

    Attributes:
        experts: one row per (layer, expert): routed share, REAP saliency, effects per edit and half,
            ``driver`` and ``control for`` (:func:`~tl_moe.analysis.drivers.driver_report`).
        comparison: drivers vs matched controls on the report half, with 95% document-bootstrap intervals.
        saliency_spearman: Spearman ρ between REAP saliency (selection half) and the removal effect
            (report half), over the experts the document gate keeps.
        estimates: one row per (layer, expert) over all documents: exact effects, first-order estimate,
            REAP saliency (:func:`~tl_moe.analysis.effect_estimate.estimate_report`; None without an
            estimate).
        agreement: Spearman ρ and top-n overlap of the estimate and of REAP saliency with each exact
            effect, per layer and over all layers (None without an estimate).
        domain_overlap: drivers vs the domains analysis' domain experts (None without domain experts).
        paired: Spearman ρ of the first-order estimate and of REAP saliency with the exact zeroing effect
            on the same experts, and their difference, with a 95% document-bootstrap interval
            (:func:`~tl_moe.analysis.effect_estimate.estimate_vs_reap`; None without an estimate).
        resumed: whether every edited forward resumed from the edited layer (False: the model's resumed
            forward did not reproduce its clean one, and the edited forwards ran on the whole model).
        saliency_interval: the document-bootstrap interval of ``saliency_spearman`` (None without
            per-document saliency).
        saliency_gate: the experts in ``saliency_spearman`` and the names of those the document gate
            left out (routed on fewer than :data:`~tl_moe.analysis.stats.RHO_MIN_EXPERT_DOCUMENTS`
            documents of a half).
    """

    experts: pd.DataFrame
    comparison: pd.DataFrame
    saliency_spearman: float
    estimates: pd.DataFrame | None = None
    agreement: pd.DataFrame | None = None
    domain_overlap: DriverDomainComparison | None = None
    paired: pd.DataFrame | None = None
    resumed: bool = True
    saliency_interval: Interval | None = None
    saliency_gate: tuple[int, list[str]] | None = None

    @property
    def drivers(self) -> pd.DataFrame:
        """The driver experts' rows of ``experts``."""
        return self.experts[self.experts["driver"]]

    @property
    def controls(self) -> pd.DataFrame:
        """The matched controls' rows of ``experts`` (``control for`` names each one's driver)."""
        return self.experts[self.experts["control for"] != ""]


@dataclass(frozen=True)
class DriverStudy:
    """Driver experts chosen on the selection half and reported on the other, against matched controls.

    Args:
        layers: the model's sparse layers (block indices) whose experts are edited.
        num_experts: experts per sparse layer.
        config: how many tokens the edited forwards see and how many drivers are reported
            (``config.count`` left at its default is fitted to half the experts).
        statistics: the run's statistical settings. Read: ``seed`` and ``bootstrap_resamples`` (every
            interval: the drivers' comparison, the saliency ρ, the paired estimate-vs-REAP table, the
            domain comparison) and ``min_documents`` (fewest documents behind every one of those
            intervals; for a split-halves ρ, in each half). NOT read: ``selection_fraction`` and the seed of the split —
            drivers are chosen and reported on the fixed 50/50 hash halves of the documents
            (:data:`~tl_moe.analysis.splits.HALVES_KEY`) that the token associations and the expert
            re-weighting share, so a ``selection_fraction`` other than 0.5 is refused.

    Usage::

        study = DriverStudy(cfg.sparse_layers, cfg.num_experts, DriversConfig(tokens=4000, count=4))
        gathered = collect(model, corpus, study.accumulators(), max_tokens=4000)
        outcome = study(**gathered)  # effects=..., saliency=..., estimate=...
        outcome.comparison, outcome.drivers, outcome.controls
    """

    layers: Sequence[int]
    num_experts: int
    config: DriversConfig = field(default_factory=DriversConfig)
    statistics: Statistics = field(default_factory=Statistics)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or not all(is_integer(layer) and layer >= 0 for layer in layers):
            raise InputError(
                f"DriverStudy layers must be one or more sparse-layer block indices, got {self.layers!r}."
            )
        if not is_integer(self.num_experts) or self.num_experts < 2:
            raise InputError(
                f"DriverStudy num_experts must be an integer of at least 2 (experts per sparse layer), "
                f"got {self.num_experts!r}."
            )
        if self.statistics.selection_fraction != HALF:
            raise InputError(
                f"DriverStudy takes no selection_fraction ({self.statistics.selection_fraction!r} given): the "
                "drivers use the fixed 50/50 document halves they share with the associations and the "
                "re-weighting; accepted: 0.5 (the default)."
            )

    @classmethod
    def of(
        cls,
        moe_cfg: Any,
        layers: Sequence[int] | None = None,
        config: DriversConfig | None = None,
        statistics: Statistics | None = None,
    ) -> DriverStudy:
        """The study of a model's config (``model.moe_cfg``): its sparse layers (or ``layers``, each of
        which must be sparse) and experts per layer."""
        sparse = tuple(moe_cfg.sparse_layers)
        chosen = sparse if layers is None else tuple(layers)
        dense = [layer for layer in chosen if layer not in sparse]
        if dense:
            raise InputError(
                f"DriverStudy layers {dense} are not sparse layers of this model; accepted: {sparse}."
            )
        return cls(chosen, moe_cfg.num_experts, config or DriversConfig(), statistics or Statistics())

    @property
    def n_drivers(self) -> int:
        """Drivers reported: ``config.count``, a default fitted to half the experts; an explicit count
        above that is refused (each driver needs a distinct control)."""
        most = max_drivers(len(tuple(self.layers)), self.num_experts)
        count = self.config.count
        if isinstance(count, ModelDefault):
            return min(int(count), most)
        if count > most:
            raise InputError(
                f"DriversConfig.count {count} is more than half of the {len(tuple(self.layers)) * self.num_experts} "
                f"experts: each driver needs a distinct control; accepted: 1 to {most}."
            )
        return int(count)

    def accumulators(self) -> dict[str, Any]:
        """Fresh accumulators for one :func:`~tl_moe.collect.collect` pass, named as :meth:`__call__`
        takes their results: the exact effects (``config.tokens`` tokens), saliency, the estimate."""
        return {
            "effects": ExpertEffects(self.layers, EDIT_KINDS, max_tokens=self.config.tokens),
            "saliency": ExpertSaliency(self.layers, self.num_experts),
            "estimate": FirstOrderEffects(self.layers, self.num_experts, self.config.tokens),
        }

    def __call__(
        self,
        effects: Any,
        saliency: Any,
        estimate: Any = None,
        *,
        domain_experts: pd.DataFrame | None = None,
        document_domains: Sequence[int] | None = None,
    ) -> DriverOutcome:
        """Drivers and controls from the pass's results.

        Args:
            effects: :class:`~tl_moe.collect.ExpertEffectsResult` (the first edit kind chooses drivers).
            saliency: :class:`~tl_moe.analysis.drivers.ExpertSaliencyResult`.
            estimate: :class:`~tl_moe.analysis.effect_estimate.FirstOrderEffectsResult` on the same
                batches, or None (no estimate tables).
            domain_experts: :meth:`~tl_moe.analysis.DomainExperts.to_frame`, to compare drivers with
                domain experts (None: no comparison).
            document_domains: the domain code of every corpus row, so that the domain score is
                recomputed per resample (None: the domain experts' own score, descriptive).
        """
        self._check_results(effects, saliency, estimate)
        self._check_layers(effects, saliency, estimate)
        count = self.n_drivers
        seed = self.statistics.seed
        resamples, fewest = self.statistics.bootstrap_resamples, self.statistics.min_documents
        experts, comparison = driver_report(
            effects,
            saliency,
            n_drivers=count,
            n_resamples=resamples,
            seed=seed,
            min_interval_documents=self.statistics.min_documents,
        )
        estimates = agreement = paired = None
        if estimate is not None:
            estimates, agreement = estimate_report(effects, saliency, estimate, n_top=count, seed=seed)
            paired = estimate_vs_reap(
                effects,
                saliency,
                estimate,
                n_resamples=resamples,
                seed=seed,
                min_documents=fewest,
                n_top=count,
            )
        overlap = None
        if domain_experts is not None:
            overlap = compare_drivers_with_domain_experts(
                experts,
                domain_experts,
                effect=f"{EDIT_KINDS[0]}: effect (report)",
                documents=ReportDocuments.from_effects(effects, EDIT_KINDS[0]),
                routing=_domain_routing(saliency, effects, document_domains),
                n_resamples=resamples,
                seed=seed,
                min_documents=fewest,
            )
        return DriverOutcome(
            experts,
            comparison,
            comparison.attrs["saliency_spearman"],
            estimates=estimates,
            agreement=agreement,
            domain_overlap=overlap,
            paired=paired,
            resumed=effects.resumed,
            saliency_interval=_saliency_interval(comparison),
            saliency_gate=_saliency_gate(comparison),
        )

    def _check_results(self, effects: Any, saliency: Any, estimate: Any) -> None:
        """Refuse, in one line, results of the wrong kind or of another number of experts per layer."""
        expected = (
            ("effects", effects, ExpertEffectsResult, "sums", 2),
            ("saliency", saliency, ExpertSaliencyResult, "routed", 2),
            ("estimate", estimate, FirstOrderEffectsResult, "sums", 1),
        )
        for name, result, kind, tensor, axis in expected:
            if result is None and name == "estimate":
                continue
            if not isinstance(result, kind):
                raise InputError(
                    f"DriverStudy's {name} is a {type(result).__name__}; accepted: a {kind.__name__} "
                    f"(study.accumulators()[{name!r}] after collect)."
                )
            if tensor is not None and getattr(result, tensor).shape[axis] != self.num_experts:
                raise InputError(
                    f"DriverStudy's {name} hold {getattr(result, tensor).shape[axis]} experts per layer; "
                    f"accepted: the study's num_experts {self.num_experts}."
                )

    def _check_layers(self, effects: Any, saliency: Any, estimate: Any) -> None:
        """Refuse, in one line, results gathered on other layers than the study's."""
        layers = tuple(int(layer) for layer in self.layers)
        for name, result in (("effects", effects), ("saliency", saliency), ("estimate", estimate)):
            if result is not None and tuple(int(layer) for layer in result.layers) != layers:
                raise InputError(
                    f"DriverStudy's {name} cover layers {tuple(result.layers)}; accepted: results gathered on "
                    f"the study's layers {layers} (use study.accumulators())."
                )


def _domain_routing(
    saliency: Any, effects: Any, document_domains: Sequence[int] | None
) -> DomainRouting | None:
    """Routed slots per selection-half document with each document's domain (None without domains, without
    per-document saliency sums, an older checkpoint, or with fewer than two domains on the selection half)."""
    if document_domains is None or saliency.doc_routed is None:
        return None
    routing = DomainRouting.from_saliency(saliency, effects, np.asarray(document_domains))
    return routing if routing.n_domains >= 2 else None


def _saliency_gate(comparison: pd.DataFrame) -> tuple[int, list[str]] | None:
    """The experts in the REAP saliency ρ and those the document gate left out, kept by :func:`driver_report`."""
    kept = comparison.attrs.get("saliency_spearman_interval")
    if kept is None or "experts" not in kept:
        return None
    return int(kept["experts"]), list(kept["left out"])


def _saliency_interval(comparison: pd.DataFrame) -> Interval | None:
    """The REAP saliency ρ's document-bootstrap interval kept by :func:`driver_report` (None if none)."""
    kept = comparison.attrs.get("saliency_spearman_interval")
    if kept is None:
        return None
    nan = float("nan")
    low, high = (nan if kept[k] is None else kept[k] for k in ("low", "high"))
    bias = kept.get("bootstrap bias")
    return Interval(
        comparison.attrs["saliency_spearman"],
        low,
        high,
        kept["documents"],
        method=kept.get("method", "percentile"),
        available=not kept["unavailable"],
        reason=kept["unavailable"] or None,
        bias=nan if bias is None else bias,
    )
