"""The corpus logit lens of every expert: the adapter that feeds
:class:`~tl_moe.analysis.logit_lens_study.LogitLensStudy` from a run (the expert lens of the analyzed
model, and of its untrained null when the probing section's untrained pass runs anyway) and wraps its
outcome in :class:`~tl_moe.pipeline.results.logit_lens.LogitLensResult`."""

from __future__ import annotations

from tl_moe.analysis.logit_lens_study import LogitLensStudy
from tl_moe.analysis.readout import LogitReadout
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import ExpertLens
from tl_moe.pipeline.protocol import Analysis, Inputs, Need
from tl_moe.pipeline.results.logit_lens import LogitLensResult
from tl_moe.pipeline.untrained import untrained_pass_runs

__all__ = ["LogitLens", "LogitLensResult"]


class LogitLens(Analysis):
    """Per expert, the tokens its output (through the final norm's gain) promotes most on average."""

    name = "logit_lens"
    uses = ("probing",)
    title = "Expert logit lens"
    summary = "the tokens each expert's output promotes most, over the corpus"
    intro = (
        "Per expert, the tokens its output (before the routing weight, through the final norm's gain) "
        "promotes most on average over the tokens routed to it. The token most experts rank first is "
        "chosen on the selection side of the held-out probing document split and counted on the test side only, "
        "against the untrained model of the same config (the probing section's untrained null; not "
        "with --skip-untrained-null): the share of experts ranking it first in each model on the test documents "
        "and their difference, with 95% bootstrap intervals over the test documents (each expert's mean "
        "output and its top-1 recomputed; paired over the same documents), beside the share the "
        "untrained model's own most common top-1, chosen the same way, reaches (what picking the most common "
        "token gives without training), with its interval and trained share − that share, paired: the "
        "finding's conclusion rests on this difference, each model's token chosen the same way."
    )

    def needs(self, run: RunContext) -> list[Need]:
        needs = [Need(run.main, ExpertLens())]
        if untrained_pass_runs(run):
            needs.append(Need(untrained_name(run.main), ExpertLens()))
        return needs

    def finalize(self, run: RunContext, inputs: Inputs) -> LogitLensResult:
        """:class:`~tl_moe.analysis.logit_lens_study.LogitLensStudy` on the trained model's lens, against
        the untrained null's when its pass ran."""
        model = run.model(run.main)
        untrained, untrained_logits = None, None
        if untrained_pass_runs(run):
            name = untrained_name(run.main)
            untrained = inputs[Need(name, ExpertLens())]
            untrained_logits = LogitReadout.from_model(run.model(name)).vocab_logits
        outcome = LogitLensStudy(run.options.statistics)(
            inputs[Need(run.main, ExpertLens())],
            LogitReadout.from_model(model).vocab_logits,
            model.tokenizer,
            untrained=untrained,
            untrained_logits=untrained_logits,
        )
        return LogitLensResult.of(outcome)
