"""The corpus logit lens of every expert: the tokens its output promotes most on average.

The finding (the token most experts rank first) is controlled by the untrained model of the same
config, when its pass runs anyway, with document-bootstrap intervals
(:mod:`tl_moe.analysis.logit_lens_null`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.analysis.logit_lens_null import TopTokenShare, top_token_share
from tl_moe.analysis.readout import LogitReadout
from tl_moe.analysis.stats import Interval
from tl_moe.pipeline.context import RunContext, untrained_name
from tl_moe.pipeline.needs import ExpertLens
from tl_moe.pipeline.protocol import Analysis, Inputs, Need, Result, TableItem
from tl_moe.pipeline.sections.specialization import untrained_pass_runs
from tl_moe.report import TableSummary

__all__ = ["LogitLens", "LogitLensResult"]


@dataclass(frozen=True)
class LogitLensResult(Result):
    """Each expert's top mean-lens tokens over the corpus.

    Attributes:
        lens: the accumulated lens (top-n counts, DLA on the next token, top mean-lens tokens).
        top_tokens: long table: layer, expert, rank, token id, token text, mean logit.
    """

    lens: ExpertLogitLensResult
    top_tokens: pd.DataFrame
    share: TopTokenShare | None = None
    token_text: str | None = None

    def to_frame(self) -> pd.DataFrame:
        return self.top_tokens

    def share_frame(self) -> pd.DataFrame:
        """The most common top-1 token's share of experts: trained, untrained, trained − untrained."""
        if self.share is None:
            return pd.DataFrame()
        rows = [("trained", self.share.trained), ("untrained", self.share.untrained)]
        rows.append(("trained − untrained", self.share.difference))
        rows.append(("untrained, its own most common top-1", self.share.untrained_own))
        rows.append(("trained − untrained (each its own token)", self.share.own_difference))
        return pd.DataFrame(
            [
                {
                    "model": model,
                    "token_id": self.share.token,
                    "token": self.token_text,
                    "held out": self.share.held_out,
                    "selection documents": self.share.selection_documents,
                    "test documents": self.share.test_documents,
                    **interval.to_dict(),
                }
                for model, interval in rows
                if interval is not None
            ]
        )

    def metrics(self) -> dict[str, Any]:
        if self.share is None:
            return {}
        metrics = {
            f"share of experts ranking `{self._shown()}` first | trained": _share_text(self.share.trained),
            "token chosen on | selection documents": self.share.selection_documents,
            "share measured on | test documents": self.share.test_documents,
        }
        if not self.share.held_out:
            metrics["not held out"] = self.share.reason
        if self.share.untrained is not None:
            metrics[f"share of experts ranking `{self._shown()}` first | untrained"] = _share_text(
                self.share.untrained
            )
            metrics[f"share of experts ranking `{self._shown()}` first | trained − untrained"] = _share_text(
                self.share.difference, signed=True
            )
            own = self.share.untrained_own_top_share
            metrics["untrained | share of experts ranking its own most common top-1 first"] = (
                None if own is None or not math.isfinite(own) else round(own, 4)
            )
            if self.share.untrained_own is not None:
                metrics["untrained | share of experts ranking its own most common top-1 first | interval"] = (
                    _share_text(self.share.untrained_own)
                )
                metrics["trained share − untrained own-token share"] = _share_text(
                    self.share.own_difference, signed=True
                )
        return metrics

    def _shown(self) -> str:
        return (self.token_text or "").replace("\n", "⏎").replace(" ", "·")

    def findings(self) -> list[str]:
        first = self.top_tokens[(self.top_tokens["rank"] == 0) & self.top_tokens["token"].notna()]
        if first.empty or self.share is None:
            return []
        share = self.share
        if not share.held_out:
            n_all = int((self.lens.n_routed > 0).sum())
            return [
                f"**Expert logit lens**: the most common top-1 of the experts' mean output over all documents is "
                f"`{self._shown()}` (top-1 of {round(share.all_documents_share * n_all)} of {n_all} experts; "
                "counted on the documents it was chosen on, so descriptive only): no held-out share "
                f"({share.reason}), no claim that training put it there."
            ]
        count = _count(share.trained, share.n_experts)
        head = (
            f"**Expert logit lens**: the token most experts' mean output promotes first on the "
            f"{share.selection_documents} selection documents is `{self._shown()}`; on the other "
            f"{share.test_documents} (test) documents it is the top-1 of {count} of the {share.n_experts} experts "
            f"routed there, share {_share_text(share.trained)}"
        )
        if share.untrained is None:
            return [head + "; no untrained null in this run, so no claim that training put it there."]
        head += (
            f"; untrained model of the same config: {_count(share.untrained, share.n_experts_untrained)} of "
            f"{share.n_experts_untrained}, {_share_text(share.untrained)}; trained − untrained "
            f"{_share_text(share.difference, signed=True)} (95% bootstrap over the test documents; the split is "
            "the held-out probing one)"
        )
        return [head + "; " + self._own_token_verdict() + "."]

    def _own_token_verdict(self) -> str:
        """The conclusion, from trained share − the untrained model's share of its own most common top-1
        (each model's token chosen on its own selection documents)."""
        share = self.share
        own, difference = share.untrained_own, share.own_difference
        if own is None or difference is None:
            return (
                "the untrained model's own most common top-1 has no per-document sums, so training is not "
                "shown to concentrate the experts' top-1"
            )
        text = (
            "picking the most common token on its own selection documents, the untrained model reaches a share "
            f"of {_share_text(own)} on its test documents; trained share − that share "
            f"{_share_text(difference, signed=True)} (each model's token chosen the same way"
            + (", paired over the test documents)" if difference.available else ")")
        )
        if not difference.available:
            return f"{text}: no interval, so training is not shown to concentrate the experts' top-1"
        if difference.low > 0:
            return (
                f"{text}: training concentrates the experts' top-1 on one token more than random weights do "
                "(trained − untrained on the trained model's token alone would credit training with the choice)"
            )
        if difference.high < 0:
            return f"{text}: random weights concentrate the experts' top-1 more than training does"
        return f"{text}: the untrained model concentrates its top-1 as much, so training is not shown to favour `{self._shown()}`"

    def tables(self) -> list[TableItem]:
        share = self.share_frame()
        extra = (
            [
                TableItem(
                    "logit_lens_top1_share",
                    share,
                    "Share of experts whose mean-lens top-1 on the test documents is the trained model's most "
                    "common top-1 token on the selection documents: trained, untrained, trained − untrained "
                    "(95% bootstrap over the test documents).",
                )
            ]
            if len(share)
            else []
        )
        summary = TableSummary(
            score="mean_logit",
            by=("layer",),
            counts=("token",),
            columns=("layer", "expert", "rank", "token", "mean_logit"),
            top=20,
        )
        return [
            TableItem(
                "logit_lens_top_tokens", self.top_tokens, "Top promoted tokens per expert.", summary=summary
            ),
            *extra,
        ]


def _count(interval: Interval, n_experts: int | None) -> str:
    """Experts behind a share (``?`` when the share is undefined)."""
    if n_experts is None or not math.isfinite(interval.estimate):
        return "?"
    return str(round(interval.estimate * n_experts))


def _share_text(interval: Interval, signed: bool = False) -> str:
    number = "{:+.2f}" if signed else "{:.2f}"
    if not math.isfinite(interval.estimate):
        return f"unavailable ({interval.reason})"
    if not interval.available:
        return number.format(interval.estimate) + f" (interval unavailable: {interval.reason})"
    low, high = (number.format(value) for value in (interval.low, interval.high))
    return number.format(interval.estimate) + f" [{low}, {high}]"


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
        model = run.model(run.main)
        lens = inputs[Need(run.main, ExpertLens())]
        top_tokens = lens.top_tokens(model.tokenizer)
        if not (lens.n_routed > 0).any():
            return LogitLensResult(lens=lens, top_tokens=top_tokens)
        untrained, untrained_logits = None, None
        if untrained_pass_runs(run):
            name = untrained_name(run.main)
            untrained = inputs[Need(name, ExpertLens())]
            untrained_logits = LogitReadout.from_model(run.model(name)).vocab_logits
        share = top_token_share(
            lens,
            _cpu_lens(LogitReadout.from_model(model).vocab_logits),
            untrained,
            None if untrained_logits is None else _cpu_lens(untrained_logits),
            n_resamples=run.options.bootstrap_resamples,
            seed=run.options.seed,
            selection_fraction=run.options.selection_fraction,
            split_seed=run.options.seed,
        )
        return LogitLensResult(
            lens=lens, top_tokens=top_tokens, share=share, token_text=model.tokenizer.decode([share.token])
        )


def _cpu_lens(vocab_logits):
    """The readout's lens on CPU float64 outputs (the per-document sums live on the CPU)."""
    return lambda x: vocab_logits(x).cpu()
