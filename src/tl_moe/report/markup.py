"""A tiny Markdown subset rendered to escaped HTML.

Supported, and nothing more:

- paragraphs separated by blank lines (single newlines inside a paragraph join into one line),
- bullet lists: lines starting with ``- `` or ``* ``; an indented line continues the item above,
- inline ``code`` spans between backticks (their content is shown verbatim),
- **bold** between double asterisks.

Everything else is plain text: every character that means something in HTML is escaped, so text
taken from a corpus or a model (``<script>``, ``&``, quotes) is shown as written and never run.
"""

from __future__ import annotations

import html
import re
import textwrap
import unicodedata

__all__ = [
    "char_code",
    "code_token",
    "escape_controls",
    "inline_to_html",
    "markdown_to_html",
    "visible_token",
]

_CODE_SPAN = re.compile(r"(`[^`\n]+`)")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")


_TOKEN_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def char_code(char: str) -> str:
    r"""``char`` as Python's ``repr`` writes an unprintable character: ``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _unprintable(char: str) -> bool:
    """A control, format, unassigned or private character, or a separator other than the plain space."""
    return unicodedata.category(char)[0] in "CZ" and char != " "


def visible_token(text: str) -> str:
    r"""A vocabulary token as a sentence shows it: backslash, newline, tab and carriage return as
    ``\\``, ``\n``, ``\t``, ``\r``, and every other control, format or separator character (NUL, a
    zero-width joiner, a line separator...) as its ``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN`` code, as
    Python's ``repr`` writes it; printable characters and the plain space unchanged."""
    return "".join(
        _TOKEN_ESCAPES.get(char) or (char_code(char) if _unprintable(char) else char) for char in text
    )


SPACE_MARK = "·"
"""How a token's space is drawn where it would otherwise vanish or end a word (a literal ``·`` is then
written as its code, ``\xb7``)."""

CELL_MARKS = {"\n": "⏎", "\t": "⇥", "\r": "␍"}
"""How a table cell draws a newline, a tab and a carriage return (a literal mark is then written as its code)."""


def code_token(text: str) -> str:
    r"""A vocabulary token as a finding's code span or a metric name shows it: :func:`visible_token`,
    each space as ``·``, and a literal ``·`` and a backtick as their codes ``\xb7`` and ``\x60`` (so
    no two tokens look alike and a backtick never ends the code span)."""
    shown = {" ": SPACE_MARK, SPACE_MARK: char_code(SPACE_MARK), "`": char_code("`")}
    return "".join(shown.get(char) or visible_token(char) for char in text)


def escape_controls(text: str) -> str:
    r"""``text`` with a backslash written as ``\\``, every unprintable character but newline, tab and
    carriage return (NUL, a zero-width joiner, a line separator...) as its ``\xNN`` / ``\uNNNN`` code,
    and a literal :data:`CELL_MARKS` mark as its code, as a table cell shows it
    (:func:`~tl_moe.report.html.visible_whitespace` then draws those three with the marks)."""
    marks = set(CELL_MARKS.values())
    return "".join(
        "\\\\"
        if char == "\\"
        else char_code(char)
        if char in marks or (_unprintable(char) and char not in CELL_MARKS)
        else char
        for char in text
    )


def escape(text: str) -> str:
    """``text`` with ``& < > " '`` replaced by HTML entities (safe in element content and attributes)."""
    return html.escape(text, quote=True)


def inline_to_html(text: str) -> str:
    """One line (or run) of text with the inline subset (``code``, **bold**) rendered, the rest escaped."""
    parts = []
    for piece in _CODE_SPAN.split(text):
        if len(piece) > 2 and piece.startswith("`") and piece.endswith("`"):
            parts.append(f"<code>{escape(piece[1:-1])}</code>")
        else:
            parts.append(_BOLD.sub(r"<strong>\1</strong>", escape(piece)))
    return "".join(parts)


def markdown_to_html(text: str) -> str:
    """Render ``text`` (the Markdown subset above, or plain text) as a sequence of ``<p>`` and ``<ul>``.

    Common leading indentation is removed first, so triple-quoted strings from indented code render
    as intended. Returns an empty string for blank text.
    """
    blocks: list[str] = []
    paragraph: list[str] = []
    items: list[list[str]] = []

    def close_paragraph() -> None:
        if paragraph:
            blocks.append(f"<p>{inline_to_html(' '.join(paragraph))}</p>")
            paragraph.clear()

    def close_list() -> None:
        if items:
            rendered = "".join(f"<li>{inline_to_html(' '.join(item))}</li>" for item in items)
            blocks.append(f"<ul>{rendered}</ul>")
            items.clear()

    for line in textwrap.dedent(text).splitlines():
        bullet = _BULLET.match(line)
        if not line.strip():
            close_paragraph()
            close_list()
        elif bullet:
            close_paragraph()
            items.append([bullet.group(1).strip()])
        elif items and line[:1].isspace():
            items[-1].append(line.strip())
        else:
            close_list()
            paragraph.append(line.strip())
    close_paragraph()
    close_list()
    return "\n".join(blocks)
