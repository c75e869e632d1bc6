"""The embedded corpus (sources, caps, split, cache), user corpora, and corpus statistics."""

from __future__ import annotations

import ast
import hashlib
import json
import time
from pathlib import Path

import datasets
import pandas as pd
import pytest

from tl_moe.data import corpus as corpus_module
from tl_moe.data.concepts import CONCEPTS
from tl_moe.data.corpus import build_corpus, corpus_stats, load_corpus, split_of
from tl_moe.data.sources.base import pack_blocks, split_paragraphs
from tl_moe.data.sources.chat import conversations_of
from tl_moe.data.sources.hpo import format_term, parse_obo_terms
from tl_moe.data.sources.licenses import parse_license_file
from tl_moe.data.sources.python_code import python_chunks
from tl_moe.errors import InputError
from tl_moe.zoo.datacard import markdown_table

EXPECTED_DOMAINS = {"python", "c", "legal", "biomedical", "chat", "math", "prose"}
SMALL = {"max_docs_per_domain": 12, "max_chars_per_domain": 15_000}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return build_corpus(cache_dir=tmp_path_factory.mktemp("corpus"), seed=0, **SMALL)


def all_rows(dataset_dict):
    return [row | {"split": split} for split, dataset in dataset_dict.items() for row in dataset]


def test_small_corpus_has_every_domain_and_the_documented_columns(small_corpus):
    assert list(small_corpus) == ["train", "validation", "test"]
    for dataset in small_corpus.values():
        assert dataset.column_names == ["text", "domain", "language", "source"]
    rows = all_rows(small_corpus)
    assert {row["domain"] for row in rows} == EXPECTED_DOMAINS
    chat_languages = {row["language"] for row in rows if row["domain"] == "chat"}
    assert len(chat_languages) >= 6 and chat_languages <= {"en", "es", "de", "fr", "it", "pt", "nl", "ru"}


def test_caps_deduplication_and_split_rule(small_corpus):
    rows = all_rows(small_corpus)
    frame = pd.DataFrame(rows)
    per_domain = frame.groupby("domain").agg(
        docs=("text", "size"), chars=("text", lambda t: t.str.len().sum())
    )
    assert (per_domain["docs"] <= SMALL["max_docs_per_domain"]).all()
    assert (per_domain["chars"] <= SMALL["max_chars_per_domain"]).all()
    assert frame["text"].is_unique
    for row in rows:  # the documented rule: sha256 -> first 8 bytes -> % 100 -> 80/10/10
        bucket = int(hashlib.sha256(row["text"].encode()).hexdigest()[:16], 16) % 100
        assert row["split"] == ("train" if bucket < 80 else "validation" if bucket < 90 else "test")


def test_documents_are_what_their_domain_says(small_corpus):
    rows = all_rows(small_corpus)
    for row in rows:
        assert row["text"].strip()
        if row["domain"] == "python":
            ast.parse(row["text"])  # every chunk is valid Python on its own
            assert row["source"].startswith("stdlib:") and row["language"] == "python"
        elif row["domain"] == "math":
            assert row["source"] == "synthetic:sympy" and "\\" in row["text"]
            assert any(d in row["text"] for d in ("$", "\\[", "\\(", "\\begin{equation}"))
        elif row["domain"] == "legal":
            assert row["source"].startswith("licensedcode-data:") and not row["text"].startswith("---")
        elif row["domain"] == "biomedical":
            assert row["source"].startswith("hpo:HP:")


def test_build_is_deterministic_cached_and_seeded(small_corpus, tmp_path, monkeypatch):
    again = build_corpus(cache_dir=tmp_path, seed=0, **SMALL)
    assert all_rows(again) == all_rows(small_corpus)

    def refuse(*args, **kwargs):
        raise AssertionError("the cached corpus should have been loaded, not rebuilt")

    monkeypatch.setattr(corpus_module, "collect_documents", refuse)
    assert all_rows(build_corpus(cache_dir=tmp_path, seed=0, **SMALL)) == all_rows(small_corpus)
    monkeypatch.undo()
    other_seed = build_corpus(cache_dir=tmp_path, seed=1, **SMALL)
    assert {r["text"] for r in all_rows(other_seed)} != {r["text"] for r in all_rows(small_corpus)}


def test_full_corpus_builds_quickly_within_the_size_target(tmp_path):
    started = time.perf_counter()
    dataset_dict = build_corpus(cache_dir=tmp_path)
    elapsed = time.perf_counter() - started
    stats = corpus_stats(dataset_dict).groupby("domain")["characters"].sum()
    assert elapsed < 60
    assert 1_000_000 <= stats.sum() <= 3_000_000
    assert stats.max() / stats.sum() < 0.25  # no domain dominates
    assert len(dataset_dict["validation"]) > 100 and len(dataset_dict["test"]) > 100


def test_split_of_is_stable_and_roughly_80_10_10():
    assert split_of("hello") == split_of("hello")
    counts = pd.Series([split_of(f"document {i}") for i in range(3000)]).value_counts(normalize=True)
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["validation"] - 0.1) < 0.02


def test_pack_blocks_joins_greedily_without_cutting():
    assert pack_blocks(["aaa", "bb", "", "c", "dddddd", "e"], target_chars=6, separator="+") == [
        "aaa+bb",
        "c",
        "dddddd",
        "e",
    ]
    assert split_paragraphs("one\n\ntwo\r\n\r\nthree", target_chars=8) == ["one\n\ntwo", "three"]


def test_python_chunks_cut_long_classes_into_parseable_pieces():
    methods = "".join(f"    def method_{i}(self):\n        return {i}{' + 1' * 200}\n\n" for i in range(12))
    source = f'"""Module."""\nimport os\n\n\nclass Big:\n    """Doc."""\n\n{methods}\ndef tail():\n    pass\n'
    chunks = python_chunks(source)
    assert len(chunks) > 2
    for chunk in chunks:
        ast.parse(chunk)
        assert len(chunk) <= 6000
    joined = "".join(chunks)
    assert all(f"def method_{i}(self)" in joined for i in range(12))
    assert "class Big:" in joined and "def tail():" in joined and "import os" in joined
    assert python_chunks("def broken(:\n") == []


def test_obo_parser_reads_definitions_and_skips_obsolete_terms():
    obo = (
        "format-version: 1.2\n\n"
        "[Term]\nid: HP:0000001\nname: All\n\n"
        '[Term]\nid: HP:0000002\nname: Short stature\ndef: "Height below \\"normal\\"." [PMID:1]\n'
        'comment: Common.\nsynonym: "Dwarfism" EXACT []\n\n'
        '[Term]\nid: HP:0000003\nname: Gone\ndef: "Old." []\nis_obsolete: true\n\n'
        "[Typedef]\nid: part_of\n"
    )
    terms = parse_obo_terms(obo)
    assert terms == [
        {"id": "HP:0000002", "name": "Short stature", "def": 'Height below "normal".', "comment": "Common."}
    ]
    assert format_term(terms[0]) == 'Short stature: Height below "normal".\nCommon.'


def test_license_front_matter_is_split_from_the_text():
    fields, body = parse_license_file(
        "---\nkey: mit\nlanguage: de\nnotes:\n  - x\n---\n\nPermission is granted.\n"
    )
    assert fields == {"key": "mit", "language": "de", "notes": ""}
    assert body == "Permission is granted."


def test_chat_conversations_become_one_message_per_line():
    yaml_text = "categories:\n- x\nconversations:\n- - Hola\n  - ¿Qué tal?\n- - 'Solo'\n- Suelto\n"
    assert conversations_of(yaml_text) == ["Hola\n¿Qué tal?", "Solo", "Suelto"]


class WhitespaceTokenizer:
    """Stands in for a Hugging Face tokenizer: one token per whitespace-separated word."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [text.split() for text in texts]}


def test_corpus_stats_counts_documents_characters_and_tokens():
    dataset_dict = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a b", "ccc", "d e f"], "domain": ["x", "y", "x"]}),
            "test": datasets.Dataset.from_dict({"text": ["gg hh"], "domain": ["y"]}),
        }
    )
    stats = corpus_stats(dataset_dict, WhitespaceTokenizer()).set_index(["split", "domain"])
    assert stats.loc[("train", "x")].tolist() == [2, 8, 5]
    assert stats.loc[("train", "y")].tolist() == [1, 3, 1]
    assert stats.loc[("test", "y")].tolist() == [1, 5, 2]
    assert "tokens" not in corpus_stats(dataset_dict).columns


def test_load_corpus_reads_every_accepted_file_type(tmp_path):
    records = [{"text": f"document number {i}", "domain": "a" if i % 2 else "b"} for i in range(20)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    pd.DataFrame(records).to_csv(tmp_path / "docs.csv", index=False)
    pd.DataFrame(records).to_parquet(tmp_path / "docs.parquet")
    for name in ("docs.jsonl", "docs.csv", "docs.parquet"):
        loaded = load_corpus(tmp_path / name, require_domain=True)
        rows = all_rows(loaded)
        assert sorted(r["text"] for r in rows) == sorted(r["text"] for r in records)
        assert all(r["split"] == split_of(r["text"]) for r in rows)
        assert {r["language"] for r in rows} == {"unknown"} and {r["source"] for r in rows} == {name}


def test_load_corpus_reads_text_folders_saved_datasets_and_explicit_splits(tmp_path, small_corpus):
    (tmp_path / "txt" / "poems").mkdir(parents=True)
    (tmp_path / "txt" / "poems" / "one.txt").write_text("Roses are red.")
    (tmp_path / "txt" / "notes.txt").write_text("No domain here.")
    rows = all_rows(load_corpus(tmp_path / "txt"))
    assert {(r["text"], r["domain"]) for r in rows} == {
        ("Roses are red.", "poems"),
        ("No domain here.", "unknown"),
    }
    with pytest.raises(ValueError, match="1 rows without"):
        load_corpus(tmp_path / "txt", require_domain=True)

    small_corpus.save_to_disk(str(tmp_path / "saved"))
    assert all_rows(load_corpus(tmp_path / "saved", require_domain=True)) == all_rows(small_corpus)

    frame = pd.DataFrame({"text": ["x", "y"], "domain": ["d", "d"], "split": ["test", "train"]})
    frame.to_parquet(tmp_path / "split.parquet")
    loaded = load_corpus(tmp_path / "split.parquet")
    assert loaded["test"]["text"] == ["x"] and loaded["train"]["text"] == ["y"]


def test_load_corpus_errors_say_what_is_wrong_and_what_is_accepted(tmp_path):
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad.csv' has no 'text' column.*\['body'\].*accepted"):
        load_corpus(tmp_path / "bad.csv")
    pd.DataFrame({"text": ["x"]}).to_csv(tmp_path / "nodomain.csv", index=False)
    with pytest.raises(InputError, match="no 'domain' column"):
        load_corpus(tmp_path / "nodomain.csv", require_domain=True)
    assert all(
        "domain" not in split.column_names for split in load_corpus(tmp_path / "nodomain.csv").values()
    )
    with pytest.raises(InputError, match="does not exist.*jsonl"):
        load_corpus(tmp_path / "missing.jsonl")
    (tmp_path / "notes.md").write_text("# hi")
    with pytest.raises(InputError, match="unsupported type '.md'"):
        load_corpus(tmp_path / "notes.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no corpus file"):
        load_corpus(tmp_path / "empty")
    with pytest.raises(TypeError, match="accepted"):  # also an InputError
        load_corpus(42)


def test_markdown_table_escapes_pipes_and_formats_integers():
    frame = pd.DataFrame({"name": ["a|b", "``c``"], "count": [1234567, 3]})
    assert markdown_table(frame) == "| name | count |\n| --- | --- |\n| a\\|b | 1,234,567 |\n| `c` | 3 |"


def test_data_doc_lists_every_concept_and_domain():
    text = (Path(__file__).parents[1] / "docs" / "DATA.md").read_text(encoding="utf-8")
    for name in CONCEPTS:
        assert f"| {name} |" in text
    for domain in EXPECTED_DOMAINS:
        assert f"| {domain} |" in text
