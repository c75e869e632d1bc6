"""Spans of surface text forms: word shapes, digits, punctuation, sentence and line starts, brackets.

A *word* is a maximal run of Unicode letters (``[^\\W\\d_]+``), so ``naïve`` is one word and
``x2`` is the word ``x`` followed by a digit.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

from tl_moe.data.spans import Span

_WORD = re.compile(r"[^\W\d_]+")
_DIGITS = re.compile(r"\d+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_NEWLINES = re.compile(r"\n+")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\"'\]\[]+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HYPHENATED = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)+")
_CONTRACTION = re.compile(r"[^\W\d_]+['’][^\W\d_]+")
_DOUBLE_QUOTED = re.compile(r"\"([^\"\n]+)\"|“([^”\n]+)”")
_LINE_FIRST = re.compile(r"^[ \t]*(\S+)", re.MULTILINE)
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"'”’)\]]*\s+|\n\s*\n")
_SENTENCE_OPENERS = "\"'“‘(¿¡[«"
LONG_WORD_LETTERS = 10
"""Length, in letters, from which a word counts as long."""


@lru_cache(maxsize=8)
def _word_matches(text: str) -> tuple[tuple[str, int, int], ...]:
    return tuple((m.group(), m.start(), m.end()) for m in _WORD.finditer(text))


def _words(text: str, accept) -> list[Span]:
    return [(start, end) for word, start, end in _word_matches(text) if accept(word, start)]


def capitalized_word_spans(text: str) -> list[Span]:
    """Words whose first letter is upper case, except all-caps words of two or more letters."""
    return _words(text, lambda w, _: w[0].isupper() and (len(w) == 1 or not w.isupper()))


def all_caps_word_spans(text: str) -> list[Span]:
    """Words of two or more letters, all upper case."""
    return _words(text, lambda w, _: len(w) >= 2 and w.isupper())


def lowercase_word_spans(text: str) -> list[Span]:
    """Words all in lower case."""
    return _words(text, lambda w, _: w.islower())


def long_word_spans(text: str) -> list[Span]:
    """Words of ten letters or more (``LONG_WORD_LETTERS``)."""
    return _words(text, lambda w, _: len(w) >= LONG_WORD_LETTERS)


def whitespace_led_word_spans(text: str) -> list[Span]:
    """Words that directly follow a whitespace character."""
    return _words(text, lambda w, start: start > 0 and text[start - 1].isspace())


def _pattern(pattern: re.Pattern, text: str) -> list[Span]:
    return [m.span() for m in pattern.finditer(text)]


def digit_spans(text: str) -> list[Span]:
    """Runs of decimal digits."""
    return _pattern(_DIGITS, text)


def non_ascii_spans(text: str) -> list[Span]:
    """Runs of characters outside ASCII."""
    return _pattern(_NON_ASCII, text)


def newline_spans(text: str) -> list[Span]:
    """Runs of line breaks."""
    return _pattern(_NEWLINES, text)


def url_spans(text: str) -> list[Span]:
    """Web addresses starting with ``http://``, ``https://`` or ``www.`` (trailing ``.,;:!?`` left out)."""
    return [(m.start(), m.start() + len(m.group().rstrip(".,;:!?"))) for m in _URL.finditer(text)]


def email_spans(text: str) -> list[Span]:
    """E-mail addresses."""
    return _pattern(_EMAIL, text)


def hyphenated_word_spans(text: str) -> list[Span]:
    """Words joined by hyphens (``well-known``), the whole compound."""
    return _pattern(_HYPHENATED, text)


def contraction_spans(text: str) -> list[Span]:
    """Words joined by an apostrophe (``don't``, ``l'homme``), the whole form."""
    return _pattern(_CONTRACTION, text)


@lru_cache(maxsize=4)
def _category_pattern(prefix: str) -> re.Pattern:
    """A regex matching runs of characters whose Unicode category starts with ``prefix``.

    Built once per prefix from every code point (a fraction of a second), as ranges.
    """
    ranges: list[list[int]] = []
    for code_point in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code_point)).startswith(prefix):
            if ranges and ranges[-1][1] == code_point - 1:
                ranges[-1][1] = code_point
            else:
                ranges.append([code_point, code_point])
    char_class = "".join(
        re.escape(chr(first)) if first == last else f"{re.escape(chr(first))}-{re.escape(chr(last))}"
        for first, last in ranges
    )
    return re.compile(f"[{char_class}]+")


def _category_runs(text: str, prefix: str) -> list[Span]:
    return _pattern(_category_pattern(prefix), text)


def punctuation_spans(text: str) -> list[Span]:
    """Runs of punctuation characters (Unicode categories P*)."""
    return _category_runs(text, "P")


def symbol_spans(text: str) -> list[Span]:
    """Runs of symbol characters (Unicode categories S*: ``+ = < $ ^ ~ ©`` ...)."""
    return _category_runs(text, "S")


def line_start_spans(text: str) -> list[Span]:
    """The first run of non-space characters on each line."""
    return [m.span(1) for m in _LINE_FIRST.finditer(text)]


def sentence_start_spans(text: str) -> list[Span]:
    """The first word of each sentence.

    A sentence starts at the beginning of the text, after ``.``, ``!`` or ``?`` (and closing
    quotes or brackets) followed by whitespace, or after a blank line; opening quotes, brackets
    and ``¿ ¡`` before the word are skipped.
    """
    starts = [0] + [m.end() for m in _SENTENCE_BREAK.finditer(text)]
    spans = []
    for start in starts:
        while start < len(text) and (text[start] in _SENTENCE_OPENERS or text[start].isspace()):
            start += 1
        match = _WORD.match(text, start)
        if match and (not spans or spans[-1] != match.span()):
            spans.append(match.span())
    return spans


def parenthesized_spans(text: str) -> list[Span]:
    """The inside of each pair of matched round brackets (nested pairs included, brackets excluded)."""
    spans, stack = [], []
    for index, char in enumerate(text):
        if char == "(":
            stack.append(index)
        elif char == ")" and stack:
            start = stack.pop() + 1
            if index > start:
                spans.append((start, index))
    return sorted(spans)


def quoted_spans(text: str) -> list[Span]:
    """The inside of double quotes (``"..."`` or ``“...”``) closed on the same line."""
    return [m.span(1) if m.group(1) is not None else m.span(2) for m in _DOUBLE_QUOTED.finditer(text)]
