"""Re-weighting and steering experts: chosen on the selection half of the documents, reported on the
held-out half against routing-rate-matched random experts (docs/METHODS.md).

The adapter of :class:`~tl_moe.analysis.expert_reweighting.ExpertReweighting`, which runs forwards of
its own (``own_forwards`` says why); the result is
:class:`~tl_moe.pipeline.results.reweighting.ReweightingResult`.
"""

from __future__ import annotations

from tl_moe.analysis.configs import ReweightingConfig
from tl_moe.analysis.edit_windows import held_out_windows
from tl_moe.analysis.expert_reweighting import ExpertReweighting
from tl_moe.errors import InputError
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import MIN_DOCUMENTS_MARK, Analysis, Inputs, Need
from tl_moe.pipeline.results.reweighting import ReweightingResult

__all__ = ["Reweighting", "ReweightingResult", "held_out_windows"]


class Reweighting(Analysis):
    """Re-weighting domain / driver experts and SteerMoE-style switching, evaluated on held-out documents."""

    name = "reweighting"
    config_class = ReweightingConfig
    title = "Re-weighting and steering experts"
    summary = (
        "scale domain/driver experts' weights, switch contrast experts on/off; held out vs random experts"
    )
    intro = (
        "Documents are split by the drivers' hash into a selection half and a held-out half. For each domain D, "
        "candidate expert sets are its domain experts (BH q <= --fdr of the domain-expert permutation test on the "
        "selection half's routing), the driver experts (drivers analysis, chosen on the same selection half) and their "
        "union; every set × factor of --reweight-factors scales those experts' mixing weights on D's selection "
        "documents, and the pair with the lowest loss is chosen. It is reported on D's held-out documents beside "
        "--reweight-draws random sets (each expert replaced by one of the 3 experts of its layer with the closest "
        "routing rate on D) with the same factor, and applied to every other domain's held-out text (the "
        "matrix). Steering: the expert of each sparse layer with the largest routing-rate difference between two "
        "contrasting groups (selection half) is switched on (router logit raised above the token's largest) or "
        "off (removed) on held-out text of both groups, against matched random experts. Each domain gets "
        "--reweight-tokens tokens per half. Intervals: 95% percentile bootstrap over held-out documents, paired; "
        "where a number averages the control's random draws, a t interval whose variance is the documents' "
        "bootstrap variance of the draw mean plus the variance between the draws over their number "
        f"(Satterthwaite's degrees of freedom) (unavailable below {MIN_DOCUMENTS_MARK} documents); every domain's "
        "chosen − control is reported with a Holm-adjusted t interval over the domains, none singled out."
    )
    depends_on = ("domains", "drivers")
    own_forwards = (
        "the re-weighting grid runs on the selection half, and the held-out edits are the ones it chose "
        "there (with domain experts found on that half): edits that depend on earlier results of the run "
        "cannot join the collection pass, so this analysis runs its own edited forwards on its own "
        "windows of --reweight-tokens tokens per domain and half"
    )
    default = False

    def check(self, run: RunContext) -> None:
        if len(run.domain_names) < 2:
            raise InputError("the 'reweighting' analysis needs a corpus with at least two domains.")
        domain, a, b = self.method(run).contrast(run.dataset)
        if domain is None:
            unknown = [name for name in (a, b) if name not in run.domain_names]
            if unknown:
                raise InputError(
                    f"--steer-contrast names unknown domains {unknown}; domains: {list(run.domain_names)}."
                )
        elif domain not in run.domain_names or "language" not in run.dataset.column_names:
            raise InputError(
                f"--steer-contrast {domain}:{a},{b} needs domain {domain!r} and a 'language' column; "
                f"domains: {list(run.domain_names)}."
            )
        if run.options.seq_len < 2:
            raise InputError("--seq-len must be at least 2.")
        from tl_moe.pipeline.validation import check_reweight_budget

        check_reweight_budget(
            run.dataset,
            run.model(run.main).tokenizer,
            seq_len=run.options.seq_len,
            reweight_tokens=run.options.config(self.name).tokens,
            domains=run.domain_names,
            interval_documents=run.options.statistics.min_documents,
        )

    def needs(self, run: RunContext) -> list[Need]:
        return []  # its forwards are its own: see own_forwards

    def method(self, run: RunContext) -> ExpertReweighting:
        """The configured method of this run."""
        return ExpertReweighting(run.options.config(self.name), run.options.statistics)

    def finalize(self, run: RunContext, inputs: Inputs) -> ReweightingResult:
        experts = inputs.result("drivers").experts
        drivers = tuple(
            (int(r.layer), int(r.expert)) for r in experts[experts["driver"]].itertuples(index=False)
        )
        outcome = self.method(run)(
            run.model(run.main),
            run.dataset,
            seq_len=run.options.seq_len,
            batch_size=run.options.batch_size,
            driver_experts=drivers,
            max_domain_experts=run.options.config("drivers").count,
            domain_rule=inputs.result("domains").experts,
            progress=run.options.progress,
        )
        return ReweightingResult.from_outcome(outcome)
