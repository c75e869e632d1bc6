"""The logit-lens section's :class:`~tl_moe.pipeline.protocol.Result`: a
:class:`~tl_moe.analysis.logit_lens_study.LogitLensOutcome` as the report shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from tl_moe.analysis.logit_lens_study import LogitLensOutcome
from tl_moe.analysis.stats import Interval
from tl_moe.pipeline.protocol import Result, TableItem
from tl_moe.report import TableSummary
from tl_moe.report.markup import code_token

__all__ = ["LogitLensResult"]


@dataclass(frozen=True)
class LogitLensResult(LogitLensOutcome, Result):
    """A :class:`~tl_moe.analysis.logit_lens_study.LogitLensOutcome` (the same fields) with the report's view."""

    @classmethod
    def of(cls, outcome: LogitLensOutcome) -> LogitLensResult:
        """The report's view of what :class:`~tl_moe.analysis.logit_lens_study.LogitLensStudy` found."""
        return cls(**{spec.name: getattr(outcome, spec.name) for spec in fields(outcome)})

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
        """The token as the findings and metric names show it (:func:`~tl_moe.report.markup.code_token`)."""
        return code_token(self.token_text or "")

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
            "; untrained model of the same config (one random initialization: its share and the interval "
            "are conditional on it and leave out the variance between initializations): "
            f"{_count(share.untrained, share.n_experts_untrained)} of "
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
                f"{text}: training concentrates the experts' top-1 on one token more than this one random "
                "initialization does "
                "(trained − untrained on the trained model's token alone would credit training with the choice)"
            )
        if difference.high < 0:
            return f"{text}: this one random initialization concentrates the experts' top-1 more than training does"
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
