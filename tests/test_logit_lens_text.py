"""The logit-lens report shows vocabulary tokens with control characters escaped (``\\n``, ``\\t``,
``\\x00``), in its table, its metric names and its findings; the data it keeps (``top_tokens``, the
Python view) holds the tokens as decoded."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import torch

from tl_moe.pipeline.results.logit_lens import LogitLensResult
from tl_moe.report.markup import visible_token

RAW = ["\n", "a\tb", "\x00", " the", "back\\slash", "\u200d", "\r\n", "é"]
SHOWN = ["\\n", "a\\tb", "\\x00", " the", "back\\\\slash", "\\u200d", "\\r\\n", "é"]


def test_tokens_are_shown_as_repr_writes_them_inside_its_quotes():
    assert [visible_token(t) for t in RAW] == SHOWN
    for token in RAW:  # the same escapes as Python's repr of the string, quotes aside
        assert visible_token(token) == repr(token)[1:-1]


def _result(token_text: str) -> LogitLensResult:
    frame = pd.DataFrame(
        {
            "layer": [0] * len(RAW),
            "expert": list(range(len(RAW))),
            "rank": [0] * len(RAW),
            "token_id": list(range(len(RAW))),
            "token": RAW,
            "mean_logit": [1.0] * len(RAW),
        }
    )
    return LogitLensResult(lens=None, top_tokens=frame, share=None, token_text=token_text)


def test_the_table_shows_escaped_tokens_and_the_data_keeps_them_as_decoded():
    result = _result("\n")
    (table,) = result.tables()
    assert table.frame["token"].tolist() == SHOWN
    missing = LogitLensResult(None, result.top_tokens.assign(token=[None, *RAW[1:]]), None, None)
    shown = missing.shown_top_tokens()["token"].tolist()
    assert pd.isna(shown[0]) and shown[1:] == SHOWN[1:]  # no token: none shown
    assert table.frame["token_id"].tolist() == list(range(len(RAW)))
    assert result.to_frame()["token"].tolist() == RAW  # the data, unchanged
    assert "\n" not in "".join(table.frame["token"])


def test_findings_name_the_token_escaped_on_one_line():
    result = _result("\n\x00 x")
    view = SimpleNamespace(
        top_tokens=result.top_tokens,
        share=SimpleNamespace(held_out=False, all_documents_share=0.5, reason="too few documents"),
        lens=SimpleNamespace(n_routed=torch.ones(4)),
        _shown=result._shown,
    )
    (finding,) = LogitLensResult.findings(view)
    assert "`\\n\\x00·x`" in finding and "\n" not in finding and "\x00" not in finding
