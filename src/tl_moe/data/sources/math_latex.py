"""Domain ``math``: synthetic LaTeX prose printed by sympy (see :mod:`tl_moe.data.sources.sympy_math`).

sympy is imported only when documents are generated, so importing the source registry stays cheap.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

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
)
