"""Spans of Python code constructs, found with the standard library's own :mod:`tokenize`.

The text is tokenized once (cached); every finder reads that token stream. Text that stops
tokenizing (an unterminated string or bracket, inconsistent dedent) keeps the tokens found up
to that point, so finders work on fragments as well as on whole modules.
"""

from __future__ import annotations

import builtins
import io
import keyword
import tokenize
from dataclasses import dataclass
from functools import lru_cache

from tl_moe.data.spans import Span

KEYWORDS = frozenset(keyword.kwlist)
BUILTIN_NAMES = frozenset(name for name in dir(builtins) if not name.startswith("_")) - KEYWORDS
CONTROL_FLOW_KEYWORDS = frozenset(
    {"if", "elif", "else", "try", "except", "finally", "with", "return", "raise", "break", "continue", "pass"}
)
LOOP_KEYWORDS = frozenset({"for", "while"})
ASSIGNMENT_OPERATORS = frozenset(
    {"=", "+=", "-=", "*=", "/=", "//=", "%=", "**=", "@=", "&=", "|=", "^=", ">>=", "<<=", ":="}
)
OPERATORS = ASSIGNMENT_OPERATORS | frozenset(
    {
        "+",
        "-",
        "*",
        "/",
        "//",
        "%",
        "**",
        "@",
        "==",
        "!=",
        "<",
        ">",
        "<=",
        ">=",
        "&",
        "|",
        "^",
        "~",
        "<<",
        ">>",
    }
)
OPENING_BRACKETS = frozenset("([{")
CLOSING_BRACKETS = frozenset(")]}")
_LAYOUT_TOKENS = frozenset(
    {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE, tokenize.ENDMARKER}
)


@dataclass(frozen=True)
class PyToken:
    """One token of :mod:`tokenize` with character offsets into the whole text."""

    kind: int  # tokenize token type (tokenize.NAME, tokenize.OP, ...)
    string: str
    start: int
    end: int
    line_start: int  # offset of the first character of the physical line the token starts on


@lru_cache(maxsize=32)
def python_tokens(text: str) -> tuple[PyToken, ...]:
    """Every token of ``text`` (comments and layout tokens included), in order."""
    lines = io.StringIO(text).readlines()
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line))

    def offset(row: int, col: int) -> int:
        return line_starts[min(row - 1, len(lines))] + col if row >= 1 else 0

    tokens: list[PyToken] = []
    try:
        for token in tokenize.generate_tokens(iter(lines).__next__):
            if token.type == tokenize.ENDMARKER:
                break
            start, end = offset(*token.start), offset(*token.end)
            line_start = line_starts[min(token.start[0] - 1, len(lines))]
            tokens.append(PyToken(token.type, token.string, start, end, line_start))
    except (tokenize.TokenError, IndentationError, SyntaxError, StopIteration):
        pass
    return tuple(tokens)


@lru_cache(maxsize=32)
def logical_lines(text: str) -> tuple[tuple[PyToken, ...], ...]:
    """The significant tokens (no comments or layout tokens) of each logical line of ``text``."""
    lines: list[tuple[PyToken, ...]] = []
    current: list[PyToken] = []
    for token in python_tokens(text):
        if token.kind == tokenize.NEWLINE:
            if current:
                lines.append(tuple(current))
            current = []
        elif token.kind not in _LAYOUT_TOKENS:
            current.append(token)
    if current:
        lines.append(tuple(current))
    return tuple(lines)


def _significant(text: str) -> list[PyToken]:
    return [token for line in logical_lines(text) for token in line]


def _names(text: str, accept) -> list[Span]:
    """Spans of NAME tokens for which ``accept(previous, token, following)`` is true."""
    tokens = _significant(text)
    spans = []
    for index, token in enumerate(tokens):
        if token.kind != tokenize.NAME:
            continue
        previous = tokens[index - 1] if index > 0 else None
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if accept(previous, token, following):
            spans.append((token.start, token.end))
    return spans


def _is(token: PyToken | None, *strings: str) -> bool:
    return token is not None and token.string in strings


def keyword_spans(text: str) -> list[Span]:
    """Hard keywords (``def``, ``if``, ``return``, ``None``, ...)."""
    return _names(text, lambda prev, tok, nxt: tok.string in KEYWORDS)


def identifier_spans(text: str) -> list[Span]:
    """Names that are not hard keywords (variables, functions, attributes, modules, builtins)."""
    return _names(text, lambda prev, tok, nxt: tok.string not in KEYWORDS)


def def_name_spans(text: str) -> list[Span]:
    """The name a ``def`` statement defines."""
    return _names(text, lambda prev, tok, nxt: _is(prev, "def"))


def class_name_spans(text: str) -> list[Span]:
    """The name a ``class`` statement defines."""
    return _names(text, lambda prev, tok, nxt: _is(prev, "class"))


def function_call_spans(text: str) -> list[Span]:
    """The called name in a call: a name followed by ``(`` that is not a keyword nor being defined."""
    return _names(
        text,
        lambda prev, tok, nxt: _is(nxt, "(") and tok.string not in KEYWORDS and not _is(prev, "def", "class"),
    )


def attribute_spans(text: str) -> list[Span]:
    """Names right after a ``.`` (attribute and method names)."""
    return _names(text, lambda prev, tok, nxt: _is(prev, "."))


def builtin_name_spans(text: str) -> list[Span]:
    """Names of builtins (``len``, ``print``, ``ValueError``, ...) not used as attributes or definitions."""
    return _names(
        text,
        lambda prev, tok, nxt: tok.string in BUILTIN_NAMES and not _is(prev, ".", "def", "class"),
    )


def self_spans(text: str) -> list[Span]:
    """The conventional instance and class parameters ``self`` and ``cls``."""
    return _names(text, lambda prev, tok, nxt: tok.string in ("self", "cls"))


def control_flow_spans(text: str) -> list[Span]:
    """Branching and jumping keywords: ``if elif else try except finally with return raise break continue pass``."""
    return _names(text, lambda prev, tok, nxt: tok.string in CONTROL_FLOW_KEYWORDS)


def loop_spans(text: str) -> list[Span]:
    """Loop keywords ``for`` and ``while`` (comprehensions included)."""
    return _names(text, lambda prev, tok, nxt: tok.string in LOOP_KEYWORDS)


def _kind_spans(text: str, kind: int) -> list[Span]:
    return [(token.start, token.end) for token in python_tokens(text) if token.kind == kind]


def string_spans(text: str) -> list[Span]:
    """String literals, prefixes and quotes included (f-strings whole)."""
    start_kind = getattr(tokenize, "FSTRING_START", None)
    end_kind = getattr(tokenize, "FSTRING_END", None)
    spans, open_fstrings = [], []
    for token in python_tokens(text):
        if token.kind == start_kind:
            open_fstrings.append(token.start)
        elif token.kind == end_kind and open_fstrings:
            start = open_fstrings.pop()
            if not open_fstrings:
                spans.append((start, token.end))
        elif token.kind == tokenize.STRING and not open_fstrings:
            spans.append((token.start, token.end))
    return spans


def comment_spans(text: str) -> list[Span]:
    """Comments, from ``#`` to the end of the line."""
    return _kind_spans(text, tokenize.COMMENT)


def number_spans(text: str) -> list[Span]:
    """Numeric literals."""
    return _kind_spans(text, tokenize.NUMBER)


def operator_spans(text: str) -> list[Span]:
    """Arithmetic, comparison, bitwise and assignment operators (a line-leading ``@`` is a decorator)."""
    spans = []
    for line in logical_lines(text):
        for index, token in enumerate(line):
            if (
                token.kind == tokenize.OP
                and token.string in OPERATORS
                and not (index == 0 and token.string == "@")
            ):
                spans.append((token.start, token.end))
    return spans


def opening_bracket_spans(text: str) -> list[Span]:
    """``(``, ``[`` and ``{``."""
    return [
        (t.start, t.end)
        for t in python_tokens(text)
        if t.kind == tokenize.OP and t.string in OPENING_BRACKETS
    ]


def closing_bracket_spans(text: str) -> list[Span]:
    """``)``, ``]`` and ``}``."""
    return [
        (t.start, t.end)
        for t in python_tokens(text)
        if t.kind == tokenize.OP and t.string in CLOSING_BRACKETS
    ]


def _whole_lines(text: str, starts_with) -> list[Span]:
    return [(line[0].start, line[-1].end) for line in logical_lines(text) if starts_with(line)]


def decorator_spans(text: str) -> list[Span]:
    """Decorator lines, from ``@`` to the end of the decorator expression."""
    return _whole_lines(text, lambda line: line[0].string == "@")


def import_spans(text: str) -> list[Span]:
    """Whole ``import ...`` and ``from ... import ...`` statements."""
    return _whole_lines(text, lambda line: line[0].string in ("import", "from"))


def _is_definition_header(line: tuple[PyToken, ...]) -> bool:
    first = 1 if line[0].string == "async" and len(line) > 1 else 0
    return line[first].string in ("def", "class") and line[-1].string == ":"


def docstring_spans(text: str) -> list[Span]:
    """String statements that open the text or a ``def`` / ``class`` body (docstrings)."""
    spans = []
    lines = logical_lines(text)
    for index, line in enumerate(lines):
        if not all(token.kind == tokenize.STRING for token in line):
            continue
        if index == 0 or _is_definition_header(lines[index - 1]):
            spans.append((line[0].start, line[-1].end))
    return spans


def assignment_target_spans(text: str) -> list[Span]:
    """The target of an assignment statement: everything before its first top-level ``=`` (or ``+=``, ...).

    Lines that start with a keyword (``def``, ``for``, ``lambda``, ...) are not assignment statements.
    """
    spans = []
    for line in logical_lines(text):
        if line[0].string in KEYWORDS or line[0].string == "@":
            continue
        depth = 0
        for index, token in enumerate(line):
            if token.kind != tokenize.OP:
                continue
            if token.string in OPENING_BRACKETS:
                depth += 1
            elif token.string in CLOSING_BRACKETS:
                depth -= 1
            elif depth == 0 and token.string in ASSIGNMENT_OPERATORS and token.string != ":=" and index > 0:
                spans.append((line[0].start, line[index - 1].end))
                break
    return spans


def parameter_spans(text: str) -> list[Span]:
    """Parameter names in ``def`` signatures (not their annotations or defaults)."""
    spans = []
    for line in logical_lines(text):
        first = 1 if line[0].string == "async" and len(line) > 1 else 0
        if line[first].string != "def":
            continue
        depth = 0
        for index, token in enumerate(line[first:], start=first):
            if token.kind == tokenize.OP and token.string in OPENING_BRACKETS:
                depth += 1
            elif token.kind == tokenize.OP and token.string in CLOSING_BRACKETS:
                depth -= 1
                if depth == 0:
                    break
            elif (
                depth == 1 and token.kind == tokenize.NAME and line[index - 1].string in ("(", ",", "*", "**")
            ):
                spans.append((token.start, token.end))
    return spans


def indentation_spans(text: str) -> list[Span]:
    """Leading whitespace of each logical line that is indented."""
    return [
        (line[0].line_start, line[0].start)
        for line in logical_lines(text)
        if line[0].start > line[0].line_start
    ]
