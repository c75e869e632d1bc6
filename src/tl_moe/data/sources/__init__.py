"""The domain sources of the embedded corpus: one module per source, each exposing a ``DomainSource``."""

from tl_moe.data.sources.base import Document, DomainSource
from tl_moe.data.sources.c_headers import C_SOURCE
from tl_moe.data.sources.chat import CHAT_SOURCE
from tl_moe.data.sources.hpo import HPO_SOURCE
from tl_moe.data.sources.licenses import LICENSE_SOURCE
from tl_moe.data.sources.math_latex import MATH_SOURCE
from tl_moe.data.sources.prose import PROSE_SOURCE
from tl_moe.data.sources.python_code import PYTHON_SOURCE

EMBEDDED_SOURCES: tuple[DomainSource, ...] = (
    PYTHON_SOURCE,
    C_SOURCE,
    LICENSE_SOURCE,
    HPO_SOURCE,
    CHAT_SOURCE,
    MATH_SOURCE,
    PROSE_SOURCE,
)
"""The sources of the embedded corpus, one per domain, in a fixed order."""

__all__ = ["Document", "DomainSource", "EMBEDDED_SOURCES"]
