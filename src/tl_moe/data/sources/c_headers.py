"""Domain ``c``: the C header files of the running Python's own C API (``sysconfig`` include path)."""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource, split_paragraphs

TARGET_CHUNK_CHARS = 3000


def c_header_files() -> list[Path]:
    """Every ``.h`` file under the interpreter's include directory, sorted."""
    root = Path(sysconfig.get_paths()["include"])
    return sorted(root.rglob("*.h")) if root.is_dir() else []


def iter_c_documents(rng: random.Random) -> Iterator[Document]:
    """Header files cut at blank lines into chunks, files visited in an order drawn from ``rng``."""
    root = Path(sysconfig.get_paths()["include"])
    files = c_header_files()
    rng.shuffle(files)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        relative = path.relative_to(root).as_posix()
        for chunk in split_paragraphs(text, TARGET_CHUNK_CHARS):
            yield Document(text=chunk + "\n", domain="c", language="c", source=f"python-include:{relative}")


C_SOURCE = DomainSource(
    domain="c",
    description="C header files of the Python C API shipped with the interpreter, cut at blank lines.",
    iter_documents=iter_c_documents,
    licence="PSF License 2.0 (the Python C API headers)",
)
