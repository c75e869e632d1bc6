"""Domain ``legal``: licence texts from the ScanCode licence database (``licensedcode-data``)."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource, split_paragraphs

TARGET_CHUNK_CHARS = 3000
MAX_CHUNKS_PER_LICENSE = 3  # long licences (GPL, ...) would otherwise fill the domain alone


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


def iter_license_documents(rng: random.Random) -> Iterator[Document]:
    """Licence texts cut at paragraph boundaries, licences visited in an order drawn from ``rng``."""
    files = license_files()
    rng.shuffle(files)
    for path in files:
        fields, body = parse_license_file(path.read_text(encoding="utf-8", errors="replace"))
        if not body or fields.get("is_deprecated") == "yes":
            continue
        language = fields.get("language", "en").split("-")[0]
        for chunk in split_paragraphs(body, TARGET_CHUNK_CHARS)[:MAX_CHUNKS_PER_LICENSE]:
            yield Document(
                text=chunk, domain="legal", language=language, source=f"licensedcode-data:{path.stem}"
            )


LICENSE_SOURCE = DomainSource(
    domain="legal",
    description="Licence texts of the ScanCode licence database (first three ~3 KB chunks of each licence).",
    iter_documents=iter_license_documents,
    packages=("licensedcode-data",),
)
