"""Routing and functional specialization: the adapter that feeds
:class:`~tl_moe.analysis.specialization_study.SpecializationStudy` from a run (the routed counts, the
expert lens and the routing per token of the analyzed model, and of its untrained null when the probing
section's untrained pass runs anyway, not with ``--skip-untrained-null``) and wraps its outcome in
:class:`~tl_moe.pipeline.results.specialization.SpecializationSummary`.
"""

from __future__ import annotations

from tl_moe.analysis.configs import SpecializationConfig
from tl_moe.analysis.specialization_permutation import BOOTSTRAP_PERMUTATIONS
from tl_moe.analysis.specialization_study import (
    FUNCTIONAL_NO_CONTROL,
    DocumentRouting,
    SpecializationCounts,
    SpecializationStudy,
)
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import ExpertLens, RoutedByDomain, RoutedByTokenGroup, RoutingPerToken
from tl_moe.pipeline.protocol import Analysis, Inputs, Need
from tl_moe.pipeline.results.specialization import SpecializationSummary
from tl_moe.pipeline.untrained import untrained_pass_runs

__all__ = ["FUNCTIONAL_NO_CONTROL", "Specialization", "SpecializationSummary", "untrained_pass_runs"]


class Specialization(Analysis):
    """JSD of each expert's token distribution (input clusters, domains, logit-lens output) vs its layer's."""

    name = "specialization"
    config_class = SpecializationConfig
    uses = ("probing",)
    title = "Routing and functional specialization"
    summary = "routing and functional specialization (JSD above a sampling baseline)"
    intro = (
        "Per expert, JSD (bits) between the distribution of its tokens over groups and its layer's pooled "
        "distribution, minus the mean JSD of multinomial samples of the same size from the pooled "
        "distribution (the sampling baseline). Groups: spherical k-means clusters of the unembedding "
        "(input tokens routed to the expert: routing specialization; tokens in its logit-lens top-3: "
        "functional specialization), or corpus domains. The baseline's sample size is the expert's number "
        "of TOKENS (a token's top-3 logit-lens entries are not independent draws). Layer means: "
        "token-weighted over experts with at least --min-expert-tokens tokens (smaller experts are listed "
        "in their own table); the unweighted mean over all experts is kept beside it. For the routing "
        "measures, a second, **document-permutation** baseline: every token keeps its routing but takes "
        "the group of a token of another document (documents permuted, a document's tokens drawn without "
        "replacement), so content clumped within documents is not mistaken for specialization; its "
        "excess is given with a 95% document-bootstrap interval (documents resampled, score and null mean "
        f"recomputed on them; the null mean over the first {BOOTSTRAP_PERMUTATIONS} permutations) and a "
        "permutation p-value (--permutations permutations; its floor, 1/(1 + permutations), means no "
        "permutation reached the score, and two models at the floor are not told apart by it: their "
        "trained − untrained difference, with a paired document-bootstrap interval, is). Functional "
        "specialization has no control: "
        + FUNCTIONAL_NO_CONTROL
        + ". Dashed curves: the untrained model of the same config (random init, the run's "
        "seed), whose pass the probing section's untrained null runs (not with --skip-untrained-null)."
    )

    def needs(self, run: RunContext) -> list[Need]:
        specs = (RoutedByTokenGroup(), RoutedByDomain(), ExpertLens(), RoutingPerToken())
        needs = [Need(run.main, spec) for spec in specs]
        if untrained_pass_runs(run):
            untrained = untrained_name(run.main)
            needs += [
                Need(untrained, spec) for spec in (RoutedByTokenGroup(), RoutedByDomain(), RoutingPerToken())
            ]
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> SpecializationSummary:
        """:class:`~tl_moe.analysis.specialization_study.SpecializationStudy` on the trained model's counts
        and lens, and the untrained null's counts when its pass ran."""
        cfg = run.config(run.main)
        study = SpecializationStudy(
            tuple(cfg.sparse_layers),
            cfg.num_experts,
            run.options.n_token_groups,
            len(run.domain_names),
            run.options.config("specialization"),
            run.options.statistics,
        )
        untrained = self._counts(run, inputs, untrained_name(run.main)) if untrained_pass_runs(run) else None
        lens_counts = inputs[Need(run.main, ExpertLens())].dense_counts()
        outcome = study(self._counts(run, inputs, run.main), lens_counts, untrained)
        return SpecializationSummary.of(outcome)

    def _counts(self, run: RunContext, inputs: Inputs, model: str) -> SpecializationCounts:
        """What model ``model``'s pass gave: routed counts by token cluster and domain, routing per token."""
        routing = DocumentRouting.from_stored(
            inputs.get(Need(model, RoutingPerToken())), run.config(run.main).sparse_layers, run.token_groups
        )
        return SpecializationCounts(
            inputs[Need(model, RoutedByTokenGroup())], inputs[Need(model, RoutedByDomain())], routing
        )
