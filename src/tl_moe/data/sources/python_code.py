"""Domain ``python``: source files of the Python standard library, cut into valid-Python chunks.

Files are cut at statement boundaries found with :mod:`ast`, so every chunk is itself a
syntactically valid module. A top-level class that is too long is cut between its members,
and each member run is dedented, so it still parses. Units that cannot be cut small enough are
dropped rather than broken mid-statement.
"""

from __future__ import annotations

import ast
import random
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource, pack_blocks

TARGET_CHUNK_CHARS = 3000
MAX_CHUNK_CHARS = 6000
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3", "ensurepip"}
)


def stdlib_python_files() -> list[Path]:
    """The standard library's ``.py`` files, without tests, bundled packages and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        relative_parts = path.relative_to(root).parts[:-1]
        if not EXCLUDED_DIRS.intersection(relative_parts):
            files.append(path)
    return sorted(files)


def _statement_blocks(lines: list[str], body: list[ast.stmt], end_line: int) -> list[tuple[str, ast.stmt]]:
    """Text of each statement in ``body`` with the comments and blank lines that precede it.

    ``lines`` are the file's lines (with line ends); line numbers in ``ast`` are 1-based.
    The first statement starts at its own first line (or first decorator); each following one
    starts right after the previous statement ended. ``end_line`` bounds the last statement.
    """
    blocks = []
    for index, node in enumerate(body):
        if index == 0:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        else:
            first = body[index - 1].end_lineno + 1
        last = node.end_lineno if index + 1 < len(body) else max(node.end_lineno, end_line)
        blocks.append(("".join(lines[first - 1 : last]), node))
    return blocks


def _split_statement(lines: list[str], text: str, node: ast.stmt) -> list[str]:
    """Cut an over-long class into its header and dedented member runs; drop what cannot be cut."""
    if len(text) <= MAX_CHUNK_CHARS:
        return [text]
    if not isinstance(node, ast.ClassDef) or len(node.body) < 2:
        return []
    header_end = node.body[1].lineno - 1
    header_first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    header_text = "".join(lines[header_first - 1 : header_end])
    pieces = [header_text] if len(header_text) <= MAX_CHUNK_CHARS else []
    for member_text, member in _statement_blocks(lines, node.body[1:], node.end_lineno):
        for piece in _split_statement(lines, member_text, member):
            dedented = textwrap.dedent(piece)
            if _parses(dedented):
                pieces.append(dedented)
    return pieces


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def python_chunks(source: str) -> list[str]:
    """Cut Python ``source`` into chunks of about ``TARGET_CHUNK_CHARS`` that each parse on their own.

    Returns an empty list if ``source`` does not parse.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    if not tree.body:
        return []
    lines = source.splitlines(keepends=True)
    blocks: list[str] = []
    for text, node in _statement_blocks(lines, tree.body, len(lines)):
        blocks.extend(_split_statement(lines, text, node))
    return [chunk.strip("\n") + "\n" for chunk in pack_blocks(blocks, TARGET_CHUNK_CHARS, separator="")]


def iter_python_documents(rng: random.Random) -> Iterator[Document]:
    """Chunks of standard-library modules, files visited in an order drawn from ``rng``."""
    files = stdlib_python_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    rng.shuffle(files)
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        relative = path.relative_to(root).as_posix()
        for chunk in python_chunks(source):
            yield Document(text=chunk, domain="python", language="python", source=f"stdlib:{relative}")


PYTHON_SOURCE = DomainSource(
    domain="python",
    description="Python standard-library source files, cut at statement boundaries (each chunk parses).",
    iter_documents=iter_python_documents,
    licence="PSF License 2.0 (the Python standard library)",
)
