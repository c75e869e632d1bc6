"""Domain ``math``: synthetic LaTeX prose printed by sympy (see :mod:`tl_moe.data.sources.sympy_math`);
v2 adds LaTeX written in docstrings (:mod:`tl_moe.data.sources.docstring_latex`).

sympy is imported only when documents are generated, so importing the source registry stays cheap.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import zip_longest

from tl_moe.data.sources.base import Document, DomainSource

DOCUMENTS = 600
"""How many documents the source yields (about 300 K characters); it never runs out earlier."""


def iter_math_documents(rng: random.Random) -> Iterator[Document]:
    """``DOCUMENTS`` synthetic documents, each drawn from ``rng``."""
    from tl_moe.data.sources.sympy_math import math_document

    for _ in range(DOCUMENTS):
        yield Document(text=math_document(rng), domain="math", language="latex", source="synthetic:sympy")


MATH_SOURCE = DomainSource(
    domain="math",
    description="Synthetic mathematical prose with LaTeX formulas printed by sympy (random expressions).",
    iter_documents=iter_math_documents,
    packages=("sympy",),
    licence="generated here from random expressions (sympy: BSD-3-Clause)",
)


def iter_math_documents_v2(rng: random.Random) -> Iterator[Document]:
    """Docstring LaTeX written by people and the v1 synthetic documents, taking turns."""
    from tl_moe.data.sources.docstring_latex import iter_docstring_latex_documents

    for pair in zip_longest(iter_docstring_latex_documents(rng), iter_math_documents(rng)):
        yield from (document for document in pair if document is not None)


MATH_SOURCE_V2 = DomainSource(
    domain="math",
    description="LaTeX from the docstrings of sympy and scipy (RST math as `$...$` / `\\[...\\]`), "
    "and the v1 synthetic sympy documents, taking turns.",
    iter_documents=iter_math_documents_v2,
    packages=("sympy", "scipy"),
    licence="BSD-3-Clause (sympy and scipy docstrings); synthetic part generated here",
)
