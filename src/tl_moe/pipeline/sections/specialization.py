"""Routing and functional specialization: the adapter that feeds
:class:`~tl_moe.analysis.specialization_study.SpecializationStudy` from a run (the routed counts, the
expert lens and the routing per token of the analyzed model, and of its untrained null when the probing
section's untrained pass runs anyway, not with ``--skip-untrained-null``; then also the routing per token
of ``--specialization.untrained-inits`` − 1 further initializations of it) and wraps its outcome in
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
        "seed), whose pass the probing section's untrained null runs (not with --skip-untrained-null). "
        "The trained − untrained excess is taken against the mean over --specialization.untrained-inits "
        "random initializations (seeds: the run's, + 1, + 2, ...; each past the first adds a routing-only "
        "pass), with a t interval whose variance is the document-bootstrap variance of trained − the "
        "first initialization plus the variance between initializations over their number (Satterthwaite "
        "degrees of freedom); with one initialization it is the paired bootstrap interval, conditional on it."
    )

    def needs(self, run: RunContext) -> list[Need]:
        specs = (RoutedByTokenGroup(), RoutedByDomain(), ExpertLens(), RoutingPerToken())
        needs = [Need(run.main, spec) for spec in specs]
        if untrained_pass_runs(run):
            untrained = untrained_name(run.main)
            needs += [
                Need(untrained, spec) for spec in (RoutedByTokenGroup(), RoutedByDomain(), RoutingPerToken())
            ]
            needs += [Need(name, RoutingPerToken()) for name in self._more_inits(run)]
        return needs

    def _more_inits(self, run: RunContext) -> list[str]:
        """The names of the untrained model's further initializations (none past the first by default)."""
        inits = run.options.config("specialization").untrained_inits
        return [untrained_name(run.main, init) for init in range(1, inits)]

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
        untrained, more = None, []
        if untrained_pass_runs(run):
            untrained = self._counts(run, inputs, untrained_name(run.main))
            more = [self._routing(run, inputs, name) for name in self._more_inits(run)]
        lens_counts = inputs[Need(run.main, ExpertLens())].dense_counts()
        outcome = study(
            self._counts(run, inputs, run.main), lens_counts, untrained, [r for r in more if r is not None]
        )
        return SpecializationSummary.of(outcome)

    def _counts(self, run: RunContext, inputs: Inputs, model: str) -> SpecializationCounts:
        """What model ``model``'s pass gave: routed counts by token cluster and domain, routing per token."""
        return SpecializationCounts(
            inputs[Need(model, RoutedByTokenGroup())],
            inputs[Need(model, RoutedByDomain())],
            self._routing(run, inputs, model),
        )

    def _routing(self, run: RunContext, inputs: Inputs, model: str) -> DocumentRouting | None:
        """Model ``model``'s routing per token with its documents (None: not stored)."""
        return DocumentRouting.from_stored(
            inputs.get(Need(model, RoutingPerToken())), run.config(run.main).sparse_layers, run.token_groups
        )
