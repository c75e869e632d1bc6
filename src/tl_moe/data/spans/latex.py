"""Spans of LaTeX constructs, found by a small lexer plus a brace-matching scanner.

The lexer cuts the text into commands (``\\frac``, ``\\,``), braces, script markers, dollar
delimiters and single characters. Math regions come from the delimiters ``$ $``, ``$$ $$``,
``\\( \\)``, ``\\[ \\]`` and display environments (``equation``, ``align``, ...). Arguments of
``^``, ``_``, ``\\frac`` and ``\\sqrt`` are a brace group (up to its matching ``}``) or a single
token, as in TeX. Unbalanced input is tolerated: an unclosed group or math region runs to the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tl_moe.data.spans import Span

DISPLAY_ENVIRONMENTS = frozenset(
    {"equation", "equation*", "align", "align*", "gather", "gather*", "multline", "multline*", "displaymath"}
)
FRACTION_COMMANDS = frozenset({"\\frac", "\\dfrac", "\\tfrac", "\\cfrac"})
GREEK_LETTERS = frozenset(
    "\\" + name
    for name in (
        "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi varpi "
        "rho varrho sigma varsigma tau upsilon phi varphi chi psi omega "
        "Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega"
    ).split()
)
BIG_OPERATORS = frozenset(
    "\\" + name
    for name in "sum prod coprod int iint iiint oint lim limsup liminf sup inf max min bigcup bigcap".split()
)
FUNCTION_NAMES = frozenset(
    "\\" + name
    for name in "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp det gcd arg".split()
)

_LEXEME = re.compile(r"\\[A-Za-z]+\*?|\\.|\$\$|[{}^_$&\[\]]|\s+|.", re.DOTALL)


@dataclass(frozen=True)
class Lexeme:
    """One LaTeX lexeme and its character offsets."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class MathRegion:
    """A math region: its content span, whether it is display math, and its delimiter spans."""

    content: Span
    display: bool
    delimiters: tuple[Span, ...]


@lru_cache(maxsize=32)
def lex(text: str) -> tuple[Lexeme, ...]:
    """The lexemes of ``text`` (whitespace runs included, so offsets are contiguous)."""
    return tuple(Lexeme(m.group(), m.start(), m.end()) for m in _LEXEME.finditer(text))


@lru_cache(maxsize=32)
def matching_braces(text: str) -> dict[int, int]:
    """For each ``{`` lexeme index, the index of its matching ``}`` (or ``len(lexemes)`` if unclosed)."""
    lexemes = lex(text)
    matches, stack = {}, []
    for index, lexeme in enumerate(lexemes):
        if lexeme.text == "{":
            stack.append(index)
        elif lexeme.text == "}" and stack:
            matches[stack.pop()] = index
    for index in stack:
        matches[index] = len(lexemes)
    return matches


def _environment_name(lexemes: tuple[Lexeme, ...], index: int) -> tuple[str, int] | None:
    """For ``\\begin{name}`` / ``\\end{name}`` at ``index``: ``(name, index of the closing brace)``."""
    if index + 1 >= len(lexemes) or lexemes[index + 1].text != "{":
        return None
    for close in range(index + 2, len(lexemes)):
        if lexemes[close].text == "}":
            return "".join(lexeme.text for lexeme in lexemes[index + 2 : close]), close
    return None


_INLINE_CLOSERS = {"$": "$", "\\(": "\\)"}
_DISPLAY_CLOSERS = {"$$": "$$", "\\[": "\\]"}


@lru_cache(maxsize=32)
def math_regions(text: str) -> tuple[MathRegion, ...]:
    """Every top-level math region of ``text``, in order."""
    lexemes = lex(text)
    regions = []
    index = 0
    while index < len(lexemes):
        lexeme = lexemes[index]
        closer, display, open_end_index = None, False, index
        if lexeme.text in _INLINE_CLOSERS:
            closer = _INLINE_CLOSERS[lexeme.text]
        elif lexeme.text in _DISPLAY_CLOSERS:
            closer, display = _DISPLAY_CLOSERS[lexeme.text], True
        elif lexeme.text == "\\begin":
            environment = _environment_name(lexemes, index)
            if environment and environment[0] in DISPLAY_ENVIRONMENTS:
                closer, display, open_end_index = ("\\end", environment[0]), True, environment[1]
        if closer is None:
            index += 1
            continue
        opening = (lexeme.start, lexemes[open_end_index].end)
        close_index, close_end_index = len(lexemes), len(lexemes)
        for candidate in range(open_end_index + 1, len(lexemes)):
            if isinstance(closer, tuple):
                environment = lexemes[candidate].text == "\\end" and _environment_name(lexemes, candidate)
                if environment and environment[0] == closer[1]:
                    close_index, close_end_index = candidate, environment[1]
                    break
            elif lexemes[candidate].text == closer:
                close_index = close_end_index = candidate
                break
        content_end = lexemes[close_index].start if close_index < len(lexemes) else len(text)
        delimiters = [opening]
        if close_index < len(lexemes):
            delimiters.append((lexemes[close_index].start, lexemes[close_end_index].end))
        regions.append(MathRegion((opening[1], content_end), display, tuple(delimiters)))
        index = close_end_index + 1
    return tuple(regions)


def _argument(text: str, index: int) -> tuple[Span, int] | None:
    """The macro argument starting at or after lexeme ``index`` (whitespace skipped).

    Returns ``(content span, index of its last lexeme)``: a brace group's inside, or one lexeme.
    """
    lexemes = lex(text)
    while index < len(lexemes) and lexemes[index].text.isspace():
        index += 1
    if index >= len(lexemes) or lexemes[index].text in ("}", "^", "_", "&"):
        return None
    if lexemes[index].text == "{":
        close = matching_braces(text)[index]
        end = lexemes[close].start if close < len(lexemes) else len(text)
        return (lexemes[index].end, end), close
    return (lexemes[index].start, lexemes[index].end), index


def _arguments_after(
    text: str, markers: frozenset[str], which: int, skip_optional: bool = False
) -> list[Span]:
    """The ``which``-th (0-based) argument of every lexeme in ``markers``."""
    lexemes = lex(text)
    spans = []
    for index, lexeme in enumerate(lexemes):
        if lexeme.text not in markers:
            continue
        position = index + 1
        if skip_optional and position < len(lexemes) and lexemes[position].text == "[":
            while position < len(lexemes) and lexemes[position].text != "]":
                position += 1
            position += 1
        argument = None
        for _ in range(which + 1):
            argument = _argument(text, position)
            if argument is None:
                break
            position = argument[1] + 1
        if argument is not None and argument[0][1] > argument[0][0]:
            spans.append(argument[0])
    return spans


def math_spans(text: str) -> list[Span]:
    """Content of every math region (delimiters excluded)."""
    return [region.content for region in math_regions(text) if region.content[1] > region.content[0]]


def inline_math_spans(text: str) -> list[Span]:
    """Content of inline math: ``$...$`` and ``\\(...\\)``."""
    return [r.content for r in math_regions(text) if not r.display and r.content[1] > r.content[0]]


def display_math_spans(text: str) -> list[Span]:
    """Content of display math: ``$$...$$``, ``\\[...\\]`` and display environments."""
    return [r.content for r in math_regions(text) if r.display and r.content[1] > r.content[0]]


def math_delimiter_spans(text: str) -> list[Span]:
    """The delimiters that open and close math (``$``, ``$$``, ``\\(``, ``\\]``, ``\\begin{equation}``, ...)."""
    return [delimiter for region in math_regions(text) for delimiter in region.delimiters]


def _lexemes_where(text: str, accept) -> list[Span]:
    return [(lexeme.start, lexeme.end) for lexeme in lex(text) if accept(lexeme.text)]


def command_spans(text: str) -> list[Span]:
    """Control words: a backslash followed by letters (``\\frac``, ``\\alpha``, ``\\left``)."""
    return _lexemes_where(text, lambda s: len(s) > 1 and s[0] == "\\" and s[1].isalpha())


def greek_letter_spans(text: str) -> list[Span]:
    """Greek-letter commands (``\\alpha`` ... ``\\Omega``)."""
    return _lexemes_where(text, lambda s: s in GREEK_LETTERS)


def big_operator_spans(text: str) -> list[Span]:
    """Large operators and limits (``\\sum``, ``\\prod``, ``\\int``, ``\\lim``, ...)."""
    return _lexemes_where(text, lambda s: s in BIG_OPERATORS)


def function_name_spans(text: str) -> list[Span]:
    """Named functions (``\\sin``, ``\\log``, ``\\exp``, ...)."""
    return _lexemes_where(text, lambda s: s in FUNCTION_NAMES)


def open_brace_spans(text: str) -> list[Span]:
    """Unescaped ``{``."""
    return _lexemes_where(text, lambda s: s == "{")


def close_brace_spans(text: str) -> list[Span]:
    """Unescaped ``}``."""
    return _lexemes_where(text, lambda s: s == "}")


def superscript_spans(text: str) -> list[Span]:
    """The argument of ``^`` (inside of its braces, or its single token)."""
    return _arguments_after(text, frozenset({"^"}), 0)


def subscript_spans(text: str) -> list[Span]:
    """The argument of ``_`` (inside of its braces, or its single token)."""
    return _arguments_after(text, frozenset({"_"}), 0)


def numerator_spans(text: str) -> list[Span]:
    """The first argument of ``\\frac`` (and ``\\dfrac``, ``\\tfrac``, ``\\cfrac``)."""
    return _arguments_after(text, FRACTION_COMMANDS, 0)


def denominator_spans(text: str) -> list[Span]:
    """The second argument of ``\\frac`` (and ``\\dfrac``, ``\\tfrac``, ``\\cfrac``)."""
    return _arguments_after(text, FRACTION_COMMANDS, 1)


def sqrt_argument_spans(text: str) -> list[Span]:
    """The radicand of ``\\sqrt`` (after an optional ``[n]``)."""
    return _arguments_after(text, frozenset({"\\sqrt"}), 0, skip_optional=True)


def left_right_spans(text: str) -> list[Span]:
    """``\\left`` / ``\\right`` together with the delimiter that follows each."""
    lexemes = lex(text)
    spans = []
    for index, lexeme in enumerate(lexemes):
        if lexeme.text in ("\\left", "\\right"):
            end = lexemes[index + 1].end if index + 1 < len(lexemes) else lexeme.end
            spans.append((lexeme.start, end))
    return spans


def environment_spans(text: str) -> list[Span]:
    """``\\begin{name}`` and ``\\end{name}`` markers, name included."""
    lexemes = lex(text)
    spans = []
    for index, lexeme in enumerate(lexemes):
        if lexeme.text in ("\\begin", "\\end"):
            environment = _environment_name(lexemes, index)
            end = lexemes[environment[1]].end if environment else lexeme.end
            spans.append((lexeme.start, end))
    return spans


def alignment_spans(text: str) -> list[Span]:
    """Column separators ``&`` and row separators ``\\\\`` inside math."""
    regions = [region.content for region in math_regions(text)]
    return [
        (lexeme.start, lexeme.end)
        for lexeme in lex(text)
        if lexeme.text in ("&", "\\\\") and any(start <= lexeme.start < end for start, end in regions)
    ]
