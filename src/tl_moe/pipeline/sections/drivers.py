"""Driver experts: the adapter that feeds :class:`~tl_moe.analysis.driver_study.DriverStudy` from a run
(its accumulators in the one pass, the domains analysis' experts when it ran) and wraps its outcome in
:class:`~tl_moe.pipeline.results.drivers.DriversResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from tl_moe.analysis.configs import DriversConfig
from tl_moe.analysis.driver_study import HALF, DriverStudy
from tl_moe.analysis.drivers import ExpertSaliency, max_drivers
from tl_moe.analysis.effect_estimate import FirstOrderEffects
from tl_moe.collect.accumulator import Accumulator
from tl_moe.collect.batching import document_domain_codes
from tl_moe.collect.expert_effects import ExpertEffects
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.memory import backward_bytes
from tl_moe.pipeline.protocol import MIN_DOCUMENTS_MARK, AccumulatorSpec, Analysis, Inputs, Need, OptionLimit

# importable from here as before; their home is pipeline/results/drivers.py
from tl_moe.pipeline.results.drivers import EDITED_FORWARDS as EDITED_FORWARDS
from tl_moe.pipeline.results.drivers import WITHIN as WITHIN
from tl_moe.pipeline.results.drivers import DriversResult as DriversResult
from tl_moe.pipeline.validation import check_driver_budget, check_n_drivers, check_removable_experts

__all__ = ["DriverEffects", "DriverEstimate", "DriverSaliency", "Drivers"]


@dataclass(frozen=True)
class DriverEffects(AccumulatorSpec):
    """Per-document loss changes of removing / zeroing each expert of every sparse layer."""

    kinds: tuple[str, ...] = ("remove", "zero")
    max_tokens: int = 8000

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return ExpertEffects(model.moe_cfg.sparse_layers, self.kinds, max_tokens=self.max_tokens)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        return len(self.kinds) * len(cfg.sparse_layers) * cfg.num_experts * len(run.dataset) * 8


@dataclass(frozen=True)
class DriverSaliency(AccumulatorSpec):
    """Routed counts, REAP saliency and document positions of every expert, per document half."""

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return ExpertSaliency(model.moe_cfg.sparse_layers, model.moe_cfg.num_experts)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        """Its per-document routed counts and saliency sums (float64, every corpus row at most)."""
        return 2 * len(cfg.sparse_layers) * cfg.num_experts * len(run.dataset) * 8


@dataclass(frozen=True)
class DriverEstimate(AccumulatorSpec):
    """First-order zeroing estimate of every expert (one backward per batch), on the same batches."""

    max_tokens: int = 8000

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return FirstOrderEffects(model.moe_cfg.sparse_layers, model.moe_cfg.num_experts, self.max_tokens)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        """Its per-document sums, plus what its backward pass keeps for one batch."""
        dtype_bytes = torch.finfo(getattr(torch, run.options.dtype)).bits // 8
        sums = 2 * len(cfg.sparse_layers) * cfg.num_experts * len(run.dataset) * 8
        return sums + backward_bytes(cfg, run.options, dtype_bytes)


class Drivers(Analysis):
    """Exact per-expert causal effects (remove / zero) through the interventional pass."""

    name = "drivers"
    config_class = DriversConfig
    title = "Driver experts"
    summary = "exact loss change when each expert is removed or zeroed; drivers vs matched controls, held out"
    intro = (
        "For every expert of every sparse layer, the change in next-token loss when it is removed from routing "
        "(tokens re-route to the next best) and when its output is zeroed (no re-routing), computed exactly by "
        "interventional forwards on the first --driver-tokens tokens (resumed from the edited layer, or of the "
        "whole model when the first batch shows a resumed forward does not reproduce the clean one: the "
        "'edited forwards' metric says which). Documents are split in two halves by a "
        "hash; driver experts are the largest removal effects on the selection half and are reported on the "
        "other half against, for each driver, the expert of the same layer with the closest routing frequency "
        "(of another layer when the driver's layer has no non-driver expert left; the tables say which). "
        f"Intervals: 95% percentile bootstrap over report-half documents, unavailable below {MIN_DOCUMENTS_MARK} documents. Beside the exact effects: the first-order "
        "(attribution-patching) estimate of every zeroing effect from one backward per batch, −w·∂L/∂w summed over "
        "the expert's slots, and REAP saliency, each scored by its rank correlation with the exact zeroing effect, "
        "and the two compared on the same experts by a paired document bootstrap of the difference of ρ, pooled over "
        "layers and within each layer (a pooled ρ also counts differences between layers)."
    )
    default = False

    def option_limits(self, run: RunContext) -> dict[str, OptionLimit]:
        layers, experts = len(run.config(run.main).sparse_layers), run.config(run.main).num_experts
        why = f"each driver needs a distinct control: half of {layers * experts} experts"
        return {"n_drivers": OptionLimit(max_drivers(layers, experts), why)}

    def check(self, run: RunContext) -> None:
        """Before the pass: at most half the experts as drivers, and edited forwards that reach documents on
        both halves (:func:`~tl_moe.pipeline.validation.check_driver_budget`; a warning below --min-documents
        report documents)."""
        self.check_config(run)
        cfg, options, config = run.config(run.main), run.options, run.options.config("drivers")
        # the same rule as option_limits; after the fitted defaults, so not in check_config
        check_n_drivers(config.count, len(cfg.sparse_layers), cfg.num_experts)
        tokenizer = run.model(run.main).tokenizer
        check_driver_budget(
            run.dataset, tokenizer, seq_len=options.seq_len, batch_size=options.batch_size,
            max_tokens=options.max_tokens, driver_tokens=config.tokens,
            interval_documents=options.statistics.min_documents,
        )  # fmt: skip

    def check_config(self, run: RunContext) -> None:
        """Tokens must leave some expert unused (k < n experts), or no expert can be removed from routing."""
        cfg = run.config(run.main)
        check_removable_experts(run.main, cfg.num_experts, cfg.experts_per_token)

    def needs(self, run: RunContext) -> list[Need]:
        tokens = run.options.config("drivers").tokens
        return [
            Need(run.main, DriverEffects(max_tokens=tokens)),
            Need(run.main, DriverSaliency()),
            Need(run.main, DriverEstimate(max_tokens=tokens)),
        ]

    def finalize(self, run: RunContext, inputs: Inputs) -> DriversResult:
        """:class:`~tl_moe.analysis.driver_study.DriverStudy` on the pass's effects, saliency and estimate,
        with the domains analysis' domain experts when it ran too."""
        cfg, tokens = run.config(run.main), run.options.config("drivers").tokens
        # --selection-fraction moves the probes' split, never the drivers' fixed 50/50 halves
        halves = dataclasses.replace(run.options.statistics, selection_fraction=HALF)
        study = DriverStudy(cfg.sparse_layers, cfg.num_experts, run.options.config("drivers"), halves)
        domains = inputs.optional_result("domains")
        outcome = study(
            inputs[Need(run.main, DriverEffects(max_tokens=tokens))],
            inputs[Need(run.main, DriverSaliency())],
            inputs[Need(run.main, DriverEstimate(max_tokens=tokens))],
            domain_experts=None if domains is None else domains.experts.to_frame(),
            document_domains=None if domains is None else document_domain_codes(run.dataset),
        )
        return DriversResult.of(outcome)
