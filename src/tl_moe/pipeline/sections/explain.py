"""The explain section: feeds :class:`~tl_moe.explain.labeler.ExpertLabeler` from a run and wraps its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_moe.analysis.configs import ExplainConfig
from tl_moe.analysis.readout import LogitReadout
from tl_moe.collect.accumulator import Accumulator
from tl_moe.data.concepts import TokenConceptLabeler, concepts_for_corpus
from tl_moe.explain import ExpertExamplesAccumulator
from tl_moe.explain.checks import check_causal_budget, check_explain_config, check_explainer_reachable
from tl_moe.explain.labeler import ExpertLabeler
from tl_moe.explain.labels import RICHER_LABEL_MARGIN
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.protocol import MIN_DOCUMENTS_MARK, AccumulatorSpec, Analysis, Inputs, Need, Result
from tl_moe.pipeline.results.explain import ExplainResult, explain_result
from tl_moe.pipeline.results.explain_dashboard import DASHBOARD_CAPTION

__all__ = ["Explain", "ExplainResult", "ExpertExamplesSpec"]


@dataclass(frozen=True)
class ExpertExamplesSpec(AccumulatorSpec):
    """Every expert's top / quantile / random contexts and dissection counts (:mod:`tl_moe.explain.examples`)."""

    seed: int = 0

    def build(self, model: Any, run: RunContext) -> Accumulator:
        return ExpertExamplesAccumulator(
            model,
            run.domain_names,
            TokenConceptLabeler(concepts_for_corpus(run.options.corpus)).concept_names,
            seed=self.seed,
        )


class Explain(Analysis):
    """Label every expert (offline dissection, an OpenAI-compatible endpoint or a local chat model) and
    score each label on held-out documents beside chance and the shuffled-label control."""

    name = "explain"
    config_class = ExplainConfig
    title = "Automatic expert labels"
    summary = "label every expert and score the label (balanced accuracy vs a shuffled-label control and a token-set baseline)"
    default = False
    own_forwards = (
        "the causal checks (--explain.causal-windows > 0) remove each labelled expert and its matched "
        "control on windows where the label says the expert should matter; those windows exist only once "
        "the labels do, after the pass, so their edited forwards run here"
    )
    intro = (
        "Each expert's contexts come from the collection pass: top contexts by routing weight × ‖expert output‖ "
        "and contexts spread over its saliency quantiles, routed tokens marked. Documents are split by a hash "
        "of their row: labels are made from 'explain' documents and scored on 'score' documents only. Scoring "
        "items: the expert's own score-split contexts (positives) and, drawn per expert, random contexts "
        "routed elsewhere and other experts' top contexts (negatives). The offline explainer chooses among "
        "candidate labels — a token-level concept, a token set, concept ∧ or ∨ token set, concept ∨ concept, concept ∧ "
        "domain — by balanced accuracy on the explain documents, keeping the simpler label unless a composition "
        f"gains more than {RICHER_LABEL_MARGIN}; its scorer applies the label's rule to each item's target token. Reported as "
        "delphi does: balanced accuracy (headline), F1, precision, recall, AUC where graded. Controls: chance "
        "(own − chance beside own − shuffled: the shuffled control sits below chance), "
        "the same scorer given another expert's label of the same layer (shuffled), and a token-set baseline "
        "(the labeler's own best token set alone, chosen on the explain documents by balanced accuracy). "
        "Intervals: bootstrap over the score documents (experts share them; balanced accuracy, F1, precision, "
        "recall, AUC and the share of experts beating their shuffled control, each expert's score recomputed in "
        f"every resample; unavailable below {MIN_DOCUMENTS_MARK} documents), and per expert over the documents of its items. Causal "
        "checks ('causal' documents, --explain-causal-windows): on the positions where the expert is routed, "
        "|Δloss| under removing or boosting it on described minus other tokens, unadjusted and at equal mixing "
        "weight (a least-squares adjustment; the two side by side), labeled minus a control expert "
        "chosen by its routing at the described tokens of the explain documents (the routing rates on the "
        "causal windows show how far the two are balanced there), overall and per group of label kinds; 95% bootstrap "
        f"over documents (unavailable below {MIN_DOCUMENTS_MARK})."
    )

    def check(self, run: RunContext) -> None:
        config = run.options.config("explain")
        check_explain_config(config)
        check_explainer_reachable(config.explainer)
        check_causal_budget(run.dataset, config.causal_windows, seed=run.options.statistics.seed)

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, ExpertExamplesSpec(seed=run.options.statistics.seed))]

    def finalize(self, run: RunContext, inputs: Inputs) -> ExplainResult:
        options, statistics = run.options, run.options.statistics
        examples = inputs[Need(run.main, ExpertExamplesSpec(seed=statistics.seed))]
        model = run.model(run.main)
        labeler = ExpertLabeler(
            options.config("explain"),
            statistics,
            out=Path(options.out) / "explain",
            progress=options.progress,
        )
        outcome = labeler(
            examples, model.tokenizer, readout=LogitReadout.from_model(model), model=model, dataset=run.dataset,
            seq_len=options.seq_len,
        )  # fmt: skip
        lens, drivers = inputs.optional_result("logit_lens"), inputs.optional_result("drivers")
        return explain_result(
            outcome, examples, model.tokenizer,
            lens=getattr(lens, "top_tokens", None), drivers=getattr(drivers, "experts", None),
        )  # fmt: skip

    def render(self, result: Result, section: Any, run: RunContext) -> None:
        """The default section, then the expert dashboard."""
        super().render(result, section, run)
        if isinstance(result, ExplainResult) and result.dashboard:
            section.add_dashboard(result.dashboard, "experts", DASHBOARD_CAPTION)
