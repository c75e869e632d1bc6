"""Sentence / statement boundaries of a document, and each token's position inside its segment.

A *segment* is the unit a token's position is counted in:

- ``"sentences"`` (prose; the default): paragraphs split at blank lines, then sentences by ``pysbd``
  (rule-based sentence boundary disambiguation; its rules ship in the wheel), in the document's
  language when ``pysbd`` has rules for it, else English. Single line breaks inside a paragraph
  (wrapped text) are not boundaries.
- ``"lines_then_sentences"`` (dialogue, one turn per line): every non-blank line, then sentences
  inside it by ``pysbd``.
- ``"python"``: logical lines (statements) from the standard library's :mod:`tokenize` — a
  statement continued over several physical lines is one segment; a comment-only line is one
  segment. Where :mod:`tokenize` fails (a truncated fragment), the rest of the text falls back to
  physical lines.
- ``"lines"`` (C and other line-oriented code): every non-blank physical line.

:func:`segment_starts` gives the character offset where each segment's first non-whitespace
character lies; :func:`token_segment_positions` gives each token's 0-based position in its segment,
counting only tokens that hold a non-whitespace character (whitespace-only tokens — indentation,
line breaks — get position -1 and are left out of every position statistic).
"""

from __future__ import annotations

import bisect
import io
import re
import tokenize
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from jaxtyping import Int

from tl_moe.errors import InputError

__all__ = [
    "SEGMENTATIONS",
    "segment_starts",
    "segmentation_for_domain",
    "token_segment_positions",
]

SEGMENTATIONS = ("sentences", "lines_then_sentences", "python", "lines")
"""The segmentation kinds :func:`segment_starts` accepts."""

_DOMAIN_SEGMENTATION = {"python": "python", "c": "lines", "chat": "lines_then_sentences"}
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def segmentation_for_domain(domain: str | None) -> str:
    """The segmentation of a domain: statements for ``python``, lines for ``c``, one turn per line then
    sentences for ``chat``, sentences for every other domain (prose, legal, biomedical, math)."""
    return _DOMAIN_SEGMENTATION.get(str(domain).lower(), "sentences")


@lru_cache(maxsize=32)
def _segmenter(language: str):
    try:
        import pysbd
    except ImportError:  # pragma: no cover - a dependency of the package
        raise InputError("sentence segmentation needs the 'pysbd' package: pip install pysbd.") from None
    from pysbd.languages import LANGUAGE_CODES

    return pysbd.Segmenter(language=language if language in LANGUAGE_CODES else "en", clean=False)


def _first_non_space(text: str, start: int, end: int) -> int | None:
    for i in range(start, end):
        if not text[i].isspace():
            return i
    return None


def _sentence_starts(text: str, start: int, end: int, language: str, join_lines: bool) -> list[int]:
    """Starts of pysbd's sentences of ``text[start:end]``, located in order in the text."""
    piece = text[start:end]
    if join_lines:  # wrapped lines: a line break is a space (same length, so offsets stay valid)
        piece = piece.replace("\n", " ")
    starts, cursor = [], 0
    for sentence in _segmenter(language).segment(piece):
        stripped = sentence.strip()
        if not stripped:
            continue
        found = piece.find(stripped, cursor)
        if found < 0:  # pysbd changed the text: keep the boundaries found so far
            continue
        starts.append(start + found)
        cursor = found + len(stripped)
    return starts


def _lines(text: str, start: int = 0) -> list[tuple[int, int]]:
    spans, offset = [], start
    for line in text[start:].split("\n"):
        spans.append((offset, offset + len(line)))
        offset += len(line) + 1
    return spans


def _python_starts(text: str) -> list[int]:
    line_offsets = [0]
    for line in text.split("\n")[:-1]:
        line_offsets.append(line_offsets[-1] + len(line) + 1)

    def offset(row_col: tuple[int, int]) -> int:
        return line_offsets[row_col[0] - 1] + row_col[1]

    starts: list[int] = []
    open_segment, comment_only, last_good_line = False, False, 0
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.NEWLINE, tokenize.NL):
                if token.type == tokenize.NEWLINE or comment_only:
                    open_segment, comment_only = False, False
                    last_good_line = token.end[0]
                elif not open_segment:
                    last_good_line = token.end[0]
                continue
            if token.type in skip:
                continue
            if not open_segment:
                starts.append(offset(token.start))
                open_segment, comment_only = True, token.type == tokenize.COMMENT
    except (tokenize.TokenError, IndentationError, SyntaxError):
        if open_segment:
            starts.pop()  # the statement that failed restarts as physical lines
        rest = line_offsets[last_good_line] if last_good_line < len(line_offsets) else len(text)
        starts.extend(_line_starts(text, rest))
    return starts


def _line_starts(text: str, start: int = 0) -> list[int]:
    starts = []
    for line_start, line_end in _lines(text, start):
        first = _first_non_space(text, line_start, line_end)
        if first is not None:
            starts.append(first)
    return starts


def segment_starts(text: str, kind: str = "sentences", language: str | None = None) -> list[int]:
    """Sorted character offsets of the first non-whitespace character of every segment of ``text``.

    Args:
        text: the document.
        kind: one of :data:`SEGMENTATIONS` (see the module docstring).
        language: ISO code of the document's language (``pysbd``'s rules for it when it has them).
    """
    if kind not in SEGMENTATIONS:
        raise InputError(f"segmentation must be one of {', '.join(SEGMENTATIONS)}, got {kind!r}.")
    language = (language or "en").lower()
    if kind == "lines":
        starts = _line_starts(text)
    elif kind == "python":
        starts = _python_starts(text)
    else:
        if kind == "sentences":
            blocks, cursor = [], 0
            for match in _BLANK_LINE.finditer(text):
                blocks.append((cursor, match.start()))
                cursor = match.end()
            blocks.append((cursor, len(text)))
        else:
            blocks = _lines(text)
        starts = []
        for start, end in blocks:
            if _first_non_space(text, start, end) is not None:
                starts.extend(_sentence_starts(text, start, end, language, kind == "sentences"))
    return sorted(set(starts))


def token_segment_positions(
    text: str, offsets: Sequence[tuple[int, int]], starts: Sequence[int]
) -> Int[np.ndarray, " n_tokens"]:
    """Position of each token inside its segment (0 = the segment's first token).

    Args:
        text: the document.
        offsets: ``[n_tokens]`` character span ``(start, end)`` of each token (a fast tokenizer's
            ``offset_mapping``).
        starts: segment starts from :func:`segment_starts`.

    Returns:
        ``[n_tokens]`` int64: a token belongs to the segment holding its first non-whitespace
        character; its position counts the earlier such tokens of that segment. -1 for tokens
        without a non-whitespace character.
    """
    positions = np.full(len(offsets), -1, dtype=np.int64)
    starts = list(starts)
    current, count = None, 0
    for i, (start, end) in enumerate(offsets):
        first = _first_non_space(text, int(start), int(end))
        if first is None:
            continue
        segment = bisect.bisect_right(starts, first) - 1  # -1: text before the first segment
        if segment != current:
            current, count = segment, 0
        positions[i] = count
        count += 1
    return positions
