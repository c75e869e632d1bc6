"""Domain ``legal``: licence texts from the ScanCode licence database (``licensedcode-data``)."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource, split_paragraphs

TARGET_CHUNK_CHARS = 3000
MAX_CHUNKS_PER_LICENSE = 3  # long licences (GPL, ...) would otherwise fill the domain alone
LICENCE = "database: CC-BY-4.0 (licensedcode-data, code Apache-2.0); each text: its own terms"
MAX_CHUNKS_PER_LICENSE_V2 = 12  # corpus v2: nearly every licence whole (the GPL v3 is 12 chunks)


def license_files() -> list[Path]:
    """The ``*.LICENSE`` files of the installed ``licensedcode-data`` package (empty if missing)."""
    spec = importlib.util.find_spec("licensedcode")
    if spec is None or not spec.submodule_search_locations:
        return []
    files: list[Path] = []
    for location in spec.submodule_search_locations:
        files.extend(Path(location, "data", "licenses").glob("*.LICENSE"))
    return sorted(files)


def parse_license_file(raw: str) -> tuple[dict[str, str], str]:
    """Split a ``*.LICENSE`` file into its flat front-matter fields and its licence text.

    The file is ``---`` / YAML front matter / ``---`` / text. Only top-level ``key: value`` lines of
    the front matter are read (lists and nested values are skipped).
    """
    fields: dict[str, str] = {}
    if not raw.startswith("---"):
        return fields, raw
    _, front_matter, body = (raw.split("---", 2) + ["", ""])[:3]
    for line in front_matter.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields, body.strip()


def iter_license_documents(
    rng: random.Random, max_chunks_per_license: int = MAX_CHUNKS_PER_LICENSE
) -> Iterator[Document]:
    """Licence texts cut at paragraph boundaries, licences visited in an order drawn from ``rng``.

    Only the first ``max_chunks_per_license`` chunks of each licence are yielded.
    """
    files = license_files()
    rng.shuffle(files)
    for path in files:
        fields, body = parse_license_file(path.read_text(encoding="utf-8", errors="replace"))
        if not body or fields.get("is_deprecated") == "yes":
            continue
        language = fields.get("language", "en").split("-")[0]
        for chunk in split_paragraphs(body, TARGET_CHUNK_CHARS)[:max_chunks_per_license]:
            yield Document(
                text=chunk, domain="legal", language=language, source=f"licensedcode-data:{path.stem}"
            )


LICENSE_SOURCE = DomainSource(
    domain="legal",
    description="Licence texts of the ScanCode licence database (first three ~3 KB chunks of each licence).",
    iter_documents=iter_license_documents,
    packages=("licensedcode-data",),
    licence=LICENCE,
)


def _iter_license_documents_v2(rng: random.Random) -> Iterator[Document]:
    return iter_license_documents(rng, MAX_CHUNKS_PER_LICENSE_V2)


LICENSE_SOURCE_V2 = DomainSource(
    domain="legal",
    description="Licence texts of the ScanCode licence database (first twelve ~3 KB chunks of each licence).",
    iter_documents=_iter_license_documents_v2,
    packages=("licensedcode-data",),
    licence=LICENCE,
)
