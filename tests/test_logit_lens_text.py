"""The logit-lens report shows vocabulary tokens with a visible escape: its findings and metric names as
Python's ``repr`` writes them (``\\n``, ``\\t``, ``\\x00``), its table's page cells as every table's (newline
⏎, tab ⇥, other control characters as ``\\x00``); the data it keeps (``top_tokens``, the table's CSV and
parquet) holds the tokens as decoded."""

from __future__ import annotations

import unicodedata
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


def test_the_page_shows_the_table_escaped_and_the_data_keeps_the_tokens_as_decoded():
    import re

    from tl_moe.report.html import _data_table

    result = _result("\n")
    (table,) = result.tables()
    assert table.frame["token"].tolist() == RAW == result.to_frame()["token"].tolist()  # the data, unchanged
    page = _data_table(table.frame, False, "logit lens")
    cells = re.findall(r"<td>(.*?)</td>", page, flags=re.S)
    tokens = [cell for cell in cells if cell not in {"0", "1"} and not cell.isdigit()]
    assert tokens == ["⏎", "a⇥b", "\\x00", "·the", "back\\\\slash", "\\u200d", "␍⏎", "é"]
    assert not any(unicodedata.category(char)[0] == "C" for char in page.replace("\n", ""))  # no control char


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


TRICKY = [" ", "·", "\\", "x", "0", "\n", "⏎", "\t", "⇥", "\x00", "`", "∅", "–", "u", "b", "7", "a"]


def _short_texts():
    from itertools import product

    return ["".join(chars) for n in range(4) for chars in product(TRICKY, repeat=n)]


def test_every_distinct_text_has_a_distinct_table_cell():
    """Exhaustively over short texts of characters that a cell draws, escapes or uses as marks (a space
    and a literal ·, a NUL and the literal text ``\\x00``, a newline and a literal ⏎, empty and ∅...), no
    two texts share a cell, and the missing value's ``–`` is no text's cell."""
    from tl_moe.report.html import format_value

    texts = _short_texts()
    cells = [format_value(text) for text in texts]
    assert len(set(cells)) == len(texts)
    assert format_value(None) not in set(cells)
    assert format_value("\x00") != format_value("\\x00") and format_value(" ") != format_value("·")


def test_every_distinct_token_has_a_distinct_name_and_no_backtick():
    """Findings and metric names: no two tokens look alike (a space and a literal ·, a NUL and the literal
    text ``\\x00``), and a token never carries a backtick that would end its code span."""
    from tl_moe.report.markup import code_token

    texts = _short_texts()
    shown = [code_token(text) for text in texts]
    assert len(set(shown)) == len(texts)
    assert not any("`" in name or " " in name for name in shown)
    assert code_token(" ") == "·" and code_token("·") == "\\xb7" and code_token("\x00") == "\\x00"
    assert code_token("\\x00") == "\\\\x00"


def test_a_token_with_a_backtick_stays_inside_its_code_span():
    from tl_moe.report.markup import inline_to_html

    view = SimpleNamespace(
        top_tokens=_result("a`b").top_tokens,
        share=SimpleNamespace(held_out=False, all_documents_share=0.5, reason="too few documents"),
        lens=SimpleNamespace(n_routed=torch.ones(4)),
        _shown=_result("a`b")._shown,
    )
    (finding,) = LogitLensResult.findings(view)
    assert "<code>a\\x60b</code> (top-1" in inline_to_html(finding)
