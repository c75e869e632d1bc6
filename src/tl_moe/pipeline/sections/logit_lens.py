"""The corpus logit lens of every expert: the tokens its output promotes most on average."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import ExpertLens
from tl_moe.pipeline.protocol import Analysis, Inputs, Need, Result, TableItem
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

    def to_frame(self) -> pd.DataFrame:
        return self.top_tokens

    def metrics(self) -> dict[str, Any]:
        return {}

    def findings(self) -> list[str]:
        first = self.top_tokens[(self.top_tokens["rank"] == 0) & self.top_tokens["token"].notna()]
        if first.empty:
            return []
        counts = first["token"].value_counts()
        token = counts.index[0].replace("\n", "⏎").replace(" ", "·")
        return [
            f"**Expert logit lens**: the most common top promoted token is `{token}` "
            f"(top-1 of {int(counts.iloc[0])} of {len(first)} experts)."
        ]

    def tables(self) -> list[TableItem]:
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
            )
        ]


class LogitLens(Analysis):
    """Per expert, the tokens its output (through the final norm's gain) promotes most on average."""

    name = "logit_lens"
    title = "Expert logit lens"
    summary = "the tokens each expert's output promotes most, over the corpus"
    intro = (
        "Per expert, the tokens its output (before the routing weight, through the final norm's gain) "
        "promotes most on average over the tokens routed to it."
    )

    def needs(self, run: RunContext) -> list[Need]:
        return [Need(run.main, ExpertLens())]

    def finalize(self, run: RunContext, inputs: Inputs) -> LogitLensResult:
        lens = inputs[Need(run.main, ExpertLens())]
        return LogitLensResult(lens=lens, top_tokens=lens.top_tokens(run.model(run.main).tokenizer))
