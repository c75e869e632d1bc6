"""Token–expert association and the position effect of the driver experts: the adapter that feeds
:class:`~tl_moe.analysis.association_study.AssociationStudy` from a run (the routing of every streamed
token, each token's segment position, the drivers' result) and wraps its outcome in
:class:`~tl_moe.pipeline.results.associations.AssociationsResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_moe.analysis.association_study import AssociationStudy
from tl_moe.analysis.association_study import segment_positions_of as segment_positions_of
from tl_moe.analysis.configs import AssociationsConfig
from tl_moe.analysis.token_association import RoutingRecords
from tl_moe.collect.accumulator import Accumulator
from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import MIN_DOCUMENTS_MARK, AccumulatorSpec, Analysis, Inputs, Need
from tl_moe.pipeline.results.associations import AssociationsResult as AssociationsResult

__all__ = ["Associations", "TokenRouting"]


@dataclass(frozen=True)
class TokenRouting(AccumulatorSpec):
    """The routed experts of every streamed token (first ``max_tokens``), with token id and document."""

    max_tokens: int = 200_000

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return RoutingRecords(model.moe_cfg.sparse_layers, self.max_tokens)

    def estimate_bytes(self, cfg: MoEConfig, run: RunContext) -> int:
        return self.max_tokens * (4 * 8 + len(cfg.sparse_layers) * cfg.experts_per_token * 4)


class Associations(Analysis):
    """Token–expert association and the position effect of the driver experts."""

    name = "associations"
    config_class = AssociationsConfig
    title = "Token–expert association and the position effect"
    summary = (
        "token–expert lift/PMI tested within documents (BH, held out); driver experts by sentence position"
    )
    intro = (
        "Which input tokens go with which experts: for every token id seen often enough on the selection half of "
        "the documents, and every expert of every sparse block, the lift P(expert | token) / P(expert) and "
        "PMI, tested against permutations of token ids inside each document (exact; document-level confounds such as "
        "domain cannot make an association), with Benjamini–Hochberg; discoveries are measured again on the "
        f"other half with a document-bootstrap interval where at least {MIN_DOCUMENTS_MARK} report documents hold "
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
        """:class:`~tl_moe.analysis.association_study.AssociationStudy` on the routing records, with each
        token's position in its segment and the drivers' experts and controls."""
        records = inputs[Need(run.main, TokenRouting(max_tokens=run.options.max_tokens))]
        model = run.model(run.main)
        positions, segmentation = segment_positions_of(
            records, run.dataset, model.tokenizer, run.domain_names
        )
        study = AssociationStudy(
            model.moe_cfg.num_experts, run.options.config("associations"), run.options.statistics
        )
        outcome = study(
            records,
            inputs.result("drivers").experts,
            positions,
            segmentation=segmentation,
            token_names=lambda t: model.tokenizer.decode([t]),
            progress=run.options.progress,
        )
        return AssociationsResult.of(outcome)
