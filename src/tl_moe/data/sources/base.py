"""What every corpus source yields, and the text chunking they share."""

from __future__ import annotations

import importlib.metadata
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypedDict


class Document(TypedDict):
    """One corpus document: its text and where it came from."""

    text: str
    domain: str  # e.g. "python", "legal", "chat"
    language: str  # ISO 639-1 code for natural language ("en", "es", ...), or "python" / "c" / "latex"
    source: str  # provenance, e.g. "licensedcode-data:mit" or "synthetic:sympy"


@dataclass(frozen=True)
class DomainSource:
    """A domain of the embedded corpus and the function that yields its documents.

    ``iter_documents(rng)`` yields documents in a random order decided by ``rng`` so that a
    caller can stop after a budget of documents or characters and still get a varied sample.
    ``packages`` are the distributions the texts are read from: their versions enter the corpus
    cache key so that an upgrade rebuilds the corpus. ``licence`` says under which terms the texts
    are distributed (for docs/DATA.md).
    """

    domain: str
    description: str
    iter_documents: Callable[[random.Random], Iterator[Document]]
    packages: tuple[str, ...] = ()
    licence: str = ""

    def package_versions(self) -> dict[str, str]:
        """Installed version of each package this source reads (``"missing"`` if not installed)."""
        versions = {}
        for name in self.packages:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = "missing"
        return versions


def pack_blocks(blocks: list[str], target_chars: int, separator: str = "\n\n") -> list[str]:
    """Greedily join consecutive ``blocks`` with ``separator`` into chunks of at most ``target_chars``.

    A block longer than ``target_chars`` becomes a chunk on its own (it is never cut).
    Blank blocks are dropped.
    """
    chunks: list[str] = []
    current: list[str] = []
    current_len = 0
    for block in blocks:
        if not block.strip():
            continue
        added = len(block) + (len(separator) if current else 0)
        if current and current_len + added > target_chars:
            chunks.append(separator.join(current))
            current, current_len = [], 0
            added = len(block)
        current.append(block)
        current_len += added
    if current:
        chunks.append(separator.join(current))
    return chunks


def split_paragraphs(text: str, target_chars: int) -> list[str]:
    """Cut ``text`` at blank lines into chunks of at most ``target_chars`` (longer paragraphs stay whole)."""
    paragraphs = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
    return pack_blocks(paragraphs, target_chars)
