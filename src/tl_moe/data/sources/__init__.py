"""The domain sources of the embedded corpus: one module per source, each exposing a ``DomainSource``."""

from tl_moe.data.sources.base import Document, DomainSource
from tl_moe.data.sources.c_headers import C_SOURCE
from tl_moe.data.sources.chat import CHAT_SOURCE
from tl_moe.data.sources.hpo import HPO_SOURCE
from tl_moe.data.sources.licenses import LICENSE_SOURCE, LICENSE_SOURCE_V2
from tl_moe.data.sources.math_latex import MATH_SOURCE, MATH_SOURCE_V2
from tl_moe.data.sources.prose import PROSE_SOURCE, PROSE_SOURCE_V2
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
"""The sources of the embedded corpus (v1, the default), one per domain, in a fixed order."""

EMBEDDED_SOURCES_V2: tuple[DomainSource, ...] = (
    PYTHON_SOURCE,
    C_SOURCE,
    LICENSE_SOURCE_V2,
    HPO_SOURCE,
    CHAT_SOURCE,
    MATH_SOURCE_V2,
    PROSE_SOURCE_V2,
)
"""The sources of corpus v2 (opt-in): the same domains, more licence text, real LaTeX, scripture."""

__all__ = ["Document", "DomainSource", "EMBEDDED_SOURCES", "EMBEDDED_SOURCES_V2"]
